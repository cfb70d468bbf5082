#!/usr/bin/env node
// An example vx plugin in Node: counts each run's tasks by status and
// writes one line per finished run.
//
//     [[plugins]]
//     name = "lifecycle-node"
//     command = "node"
//     args = ["examples/plugins/lifecycle.js", "--out", ".vx/lifecycle-node.log"]
//
// JSON-RPC 2.0, one message per line, on stdin/stdout (docs/plugins.md).
"use strict";
const fs = require("fs");
const readline = require("readline");

const PROTOCOL = 1;
const i = process.argv.indexOf("--out");
const out = i > 0 ? process.argv[i + 1] : null;
const write = (s) => (out ? fs.appendFileSync(out, s + "\n") : process.stderr.write(s + "\n"));
const send = (m) => process.stdout.write(JSON.stringify(m) + "\n");
const counts = new Map();

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch {
    return;
  }
  const p = msg.params || {};
  switch (msg.method) {
    case "initialize":
      send({ jsonrpc: "2.0", id: msg.id, result: { protocol: PROTOCOL, version: "0.1.0", hooks: [] } });
      write(`hello ${process.pid}`);
      break;
    case "run.started":
      counts.set(p.run_id, {});
      break;
    case "events.event":
      if (p.event && p.event.type === "task_finished") {
        const c = counts.get(p.run_id) || {};
        c[p.event.result.status] = (c[p.event.result.status] || 0) + 1;
        counts.set(p.run_id, c);
      }
      break;
    case "run.finished": {
      const c = counts.get(p.run_id) || {};
      counts.delete(p.run_id);
      const parts = Object.keys(c).sort().map((k) => `${k}=${c[k]}`);
      write(`run ${p.run_id} ${p.ok ? "ok" : "failed"} ${parts.join(" ")}`);
      break;
    }
  }
});
