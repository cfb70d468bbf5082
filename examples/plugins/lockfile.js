#!/usr/bin/env node
// An example vx hook plugin in Node: keys each task by its project's
// lockfile, so a dependency upgrade misses the cache of exactly the
// projects whose lockfile changed.
//
// Declared in the root vx.toml with the hook it answers (every engine, the
// no-daemon one too, then asks it, so keys agree):
//
//     [[plugins]]
//     name = "lockfile"
//     command = "node"
//     args = ["examples/plugins/lockfile.js"]
//     hooks = ["key"]
//     events = []                 # it wants no notifications
//
// - `key`: a task's material is `FILE sha256:HEX` for the first lockfile
//   found in its project's directory (package-lock.json, pnpm-lock.yaml,
//   yarn.lock, bun.lock; `--lockfiles a,b` changes the list), else in the
//   workspace root (the plugin's working directory), else `no lockfile`.
//   `vx why` then names the component `plugin:lockfile`.
// - `--node`: appends the version of the Node running the plugin
//   (`node v22.11.0`), so a Node upgrade misses every task's cache too.
//   It is the `command` of the entry: name an absolute path (or a version
//   manager's shim) there to make it the Node your tasks use.
// - `--count FILE`: appends one line per key request (for the tests).
//
// It reads files, so it does not claim `key_stable`: a daemon asks it once
// per run. JSON-RPC 2.0, one message per line, on stdin/stdout
// (docs/plugins.md); diagnostics go to stderr.
"use strict";
const crypto = require("crypto");
const fs = require("fs");
const path = require("path");
const readline = require("readline");

const PROTOCOL = 1;
const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
};
const lockfiles = arg("--lockfiles", "package-lock.json,pnpm-lock.yaml,yarn.lock,bun.lock")
  .split(",")
  .filter((s) => s.length > 0);
const withNode = process.argv.includes("--node");
const countPath = arg("--count", null);
const root = process.cwd();

const send = (m) => process.stdout.write(JSON.stringify(m) + "\n");

// The first lockfile in `dir` as `FILE sha256:HEX`, or null.
function lockfileIn(dir) {
  for (const name of lockfiles) {
    let data;
    try {
      data = fs.readFileSync(path.join(dir, name));
    } catch (e) {
      if (e.code === "ENOENT" || e.code === "ENOTDIR") continue;
      throw e; // unreadable: no answer beats a wrong one
    }
    return `${name} sha256:${crypto.createHash("sha256").update(data).digest("hex")}`;
  }
  return null;
}

function material(task) {
  // A task's dir comes from the workspace's config; never look outside it.
  const dir = path.resolve(root, typeof task.dir === "string" ? task.dir : ".");
  const inside = dir === root || dir.startsWith(root + path.sep);
  let m = (inside && lockfileIn(dir)) || lockfileIn(root) || "no lockfile";
  if (withNode) m += ` node ${process.version}`;
  return m;
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch {
    return;
  }
  if (msg === null || typeof msg !== "object") return;
  const params = msg.params || {};
  switch (msg.method) {
    case "initialize":
      send({
        jsonrpc: "2.0",
        id: msg.id,
        result: { protocol: PROTOCOL, version: "1.0.0", hooks: ["key"], key_stable: false },
      });
      break;
    case "key": {
      const tasks = Array.isArray(params.tasks) ? params.tasks : [];
      if (countPath) fs.appendFileSync(countPath, `key ${tasks.length}\n`);
      try {
        const out = {};
        for (const t of tasks) if (t && typeof t.id === "string") out[t.id] = material(t);
        send({ jsonrpc: "2.0", id: msg.id, result: { material: out } });
      } catch (e) {
        // vx then runs this run's tasks uncached, with one warning.
        send({ jsonrpc: "2.0", id: msg.id, error: { code: -32000, message: String(e.message || e) } });
      }
      break;
    }
    default:
      if (msg.id !== undefined) {
        send({ jsonrpc: "2.0", id: msg.id, error: { code: -32601, message: `unknown method ${msg.method}` } });
      }
  }
});
