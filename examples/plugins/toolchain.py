#!/usr/bin/env python3
"""An example vx hook plugin in Python: keys tasks by a toolchain file and
weighs them for the scheduler.

Declared in the root vx.toml with the hooks it answers (every engine, the
no-daemon one too, then asks it, so keys agree):

    [[plugins]]
    name = "toolchain"
    command = "python3"
    args = ["examples/plugins/toolchain.py", "--file", ".tool-versions"]
    hooks = ["key"]                 # add "weights" with --weights FILE
    events = []                     # it wants no notifications

- `key`: each task's key material is the SHA-256 of FILE (`absent` when
  there is none), so a toolchain upgrade written there misses every task's
  cache, and `vx why` names the component `plugin:toolchain`.
  With `--only PROJECT[,PROJECT]` only those projects' tasks get material.
- `weights` (with `--weights JSON`): the expected cost in ms per task id,
  read from a JSON object `{"app#build": 12000, ...}`; the scheduler starts
  the tasks on the longest expected path first.
- `--stable`: says in the handshake that its material depends only on the
  request's task fields (`key_stable`), so a daemon asks once per task per
  plugin life. This example reads a file, so it is NOT stable unless the
  file never changes while the daemon runs; it is a switch for the tests.
- `--count FILE`: appends one line per key request (for the tests).

It speaks JSON-RPC 2.0, one message per line, on stdin/stdout
(docs/plugins.md); diagnostics go to stderr.
"""

import hashlib
import json
import sys

PROTOCOL = 1


def arg(name, default=None):
    if name in sys.argv:
        return sys.argv[sys.argv.index(name) + 1]
    return default


def main():
    path = arg("--file", ".tool-versions")
    weights_path = arg("--weights")
    count_path = arg("--count")
    only = arg("--only")
    only = set(only.split(",")) if only else None
    stable = "--stable" in sys.argv

    def send(msg):
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    def answer(msg, result):
        send({"jsonrpc": "2.0", "id": msg["id"], "result": result})

    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        method = msg.get("method")
        params = msg.get("params") or {}
        tasks = params.get("tasks") or []
        if method == "initialize":
            hooks = ["key"] + (["weights"] if weights_path else [])
            answer(msg, {"protocol": PROTOCOL, "version": "1.0.0",
                         "hooks": hooks, "key_stable": stable})
        elif method == "key":
            if count_path:
                with open(count_path, "a") as f:
                    f.write("key %d\n" % len(tasks))
            try:
                with open(path, "rb") as f:
                    material = hashlib.sha256(f.read()).hexdigest()
            except FileNotFoundError:
                material = "absent"
            answer(msg, {"material": {
                t["id"]: material for t in tasks
                if only is None or t["project"] in only}})
        elif method == "weights":
            try:
                with open(weights_path) as f:
                    table = json.load(f)
            except (OSError, ValueError) as e:
                sys.stderr.write("toolchain.py: no weights: %s\n" % e)
                table = {}
            answer(msg, {"weights": {
                t["id"]: table[t["id"]] for t in tasks if t["id"] in table}})
        elif "id" in msg:
            send({"jsonrpc": "2.0", "id": msg["id"],
                  "error": {"code": -32601, "message": "unknown method %s" % method}})


if __name__ == "__main__":
    main()
