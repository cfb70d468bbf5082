#!/usr/bin/env python3
"""An example vx plugin in Python: logs the lifecycle of every run.

vx starts it once, as a child of the daemon, when the root vx.toml says:

    [[plugins]]
    name = "lifecycle-py"
    command = "python3"
    args = ["examples/plugins/lifecycle.py", "--out", ".vx/lifecycle.log"]
    events = ["run", "task"]

It speaks JSON-RPC 2.0, one message per line, on stdin/stdout
(docs/plugins.md): it answers the `initialize` request with the protocol
version it speaks and the hooks it implements, then reads notifications
(`run.started`, `events.event`, `run.finished`) until stdin closes. It
writes nothing else to stdout; diagnostics go to stderr (kept by vx for
its error messages) or as `log` notifications.
"""

import json
import os
import sys

PROTOCOL = 1


def main():
    out_path = None
    if "--out" in sys.argv:
        out_path = sys.argv[sys.argv.index("--out") + 1]
    out = open(out_path, "a", buffering=1) if out_path else sys.stderr

    def send(msg):
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        method = msg.get("method")
        params = msg.get("params") or {}
        if method == "initialize":
            if params.get("protocol") != PROTOCOL:
                send({"jsonrpc": "2.0", "id": msg["id"],
                      "error": {"code": -32600, "message": "protocol %s unsupported" % params.get("protocol")}})
                continue
            send({"jsonrpc": "2.0", "id": msg["id"],
                  "result": {"protocol": PROTOCOL, "version": "1.0.0", "hooks": []}})
            out.write("hello %d\n" % os.getpid())
            send({"jsonrpc": "2.0", "method": "log", "params": {"message": "lifecycle.py ready"}})
        elif method == "run.started":
            out.write("run.started %s\n" % params["run_id"])
        elif method == "run.finished":
            out.write("run.finished %s %s\n" % (params["run_id"], "ok" if params.get("ok") else "failed"))
        elif method == "events.event":
            ev = params.get("event", {})
            kind = ev.get("type")
            if kind == "task_finished":
                r = ev["result"]
                out.write("%s %s %s %s\n" % (kind, params["run_id"], r["id"], r["status"]))
            elif "id" in ev:
                out.write("%s %s %s\n" % (kind, params["run_id"], ev["id"]))


if __name__ == "__main__":
    main()
