#!/usr/bin/env python3
"""Round-trip time of a read tool call through `vx mcp`, p50/p99.

    tests/bench/mcp-rtt.py [--packages N] [--calls N] [--modes LIST]

On a generated workspace (tests/bench/kit/gen-workspace.py, default 1,000
packages / 3,000 tasks), built once with `vx run build` so keys and cache
entries exist, a real MCP client (the PyPI `mcp` package, from the peers venv
tests/peers/.venv) launches `vx mcp` as an agent would, initializes, and calls

  * cache_stats                       (cache.stats)
  * explain_task  task=<leaf>#build    (task.explain: the key part by part)

--calls times each (after 20 untimed warm-up calls). A call's time is from the
client's `call_tool` to its answer: the JSON-RPC line through `vx mcp`'s stdio
bridge, the daemon's socket, the MCP server and the catalogue method, and back.

Modes: `daemon` (VX_DAEMON=1: `vx mcp` bridges to the workspace's daemon),
`no-daemon` (VX_DAEMON=0: `vx mcp` starts `vxd --stdio`), and `cli` for
reference: one `vx cache stats --json` / `vx explain TASK --json` process per
call against the same daemon (what an agent without MCP would run in a shell).

Needs python3, git, release binaries (cargo build --release -p vx -p vxd) and
the peers venv (tests/peers/setup.sh).
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BENCH = os.environ.get("BENCH", os.path.join(ROOT, "tests", "bench", "kit"))
VX = os.environ.get("VX_BIN", os.path.join(ROOT, "target", "release", "vx"))
VENV_PY = os.path.join(ROOT, "tests", "peers", ".venv", "bin", "python")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def env_for(mode, runtime):
    e = dict(os.environ, NO_COLOR="1", XDG_RUNTIME_DIR=runtime)
    e.pop("CI", None)
    e["VX_DAEMON"] = "0" if mode == "no-daemon" else "1"
    return e


async def mcp_times(ws, env, calls, task):
    from mcp import ClientSession, StdioServerParameters, stdio_client

    params = StdioServerParameters(command=VX, args=["mcp"], env=env, cwd=ws)
    out = {}
    async with stdio_client(params) as (r, w):
        async with ClientSession(r, w) as s:
            await s.initialize()
            for name, args in [("cache_stats", {}), ("explain_task", {"task": task})]:
                for _ in range(20):
                    res = await s.call_tool(name, args)
                    if res.is_error:
                        raise SystemExit(f"{name} failed: {res.content}")
                times = []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    res = await s.call_tool(name, args)
                    times.append((time.perf_counter() - t0) * 1000)
                    if res.is_error:
                        raise SystemExit(f"{name} failed: {res.content}")
                out[name] = times
    return out


def cli_times(ws, env, calls, task):
    out = {}
    for name, argv in [("cache_stats", ["cache", "stats", "--json"]),
                       ("explain_task", ["explain", task, "--json"])]:
        times = []
        for i in range(calls + 5):
            t0 = time.perf_counter()
            subprocess.run([VX] + argv, cwd=ws, env=env, check=True, stdout=subprocess.DEVNULL)
            if i >= 5:
                times.append((time.perf_counter() - t0) * 1000)
        out[name] = times
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--packages", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--modes", default="daemon,no-daemon,cli")
    a = ap.parse_args()
    venv = os.path.dirname(os.path.dirname(VENV_PY))
    if os.path.realpath(sys.prefix) != os.path.realpath(venv) and os.path.exists(VENV_PY):
        os.execv(VENV_PY, [VENV_PY] + sys.argv)
    try:
        import mcp  # noqa: F401
    except ImportError:
        raise SystemExit("the Python `mcp` package is missing: run tests/peers/setup.sh")
    tmp = tempfile.mkdtemp(prefix="vx-mcp-rtt-")
    ws = os.path.join(tmp, "ws")
    runtime = os.path.join(tmp, "run")
    os.makedirs(runtime, mode=0o700)
    subprocess.run([sys.executable, os.path.join(BENCH, "gen-workspace.py"), ws,
                    "--packages", str(a.packages)], check=True, stdout=subprocess.DEVNULL)
    meta = json.load(open(os.path.join(ws, "bench-meta.json")))
    leaf = os.path.basename(meta["leaf"]["dir"])
    shim = os.path.join(BENCH, "shim")
    rows = []
    for mode in a.modes.split(","):
        env = env_for(mode, runtime)
        env["PATH"] = shim + os.pathsep + env.get("PATH", "")
        subprocess.run([VX, "run", "build"], cwd=ws, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        task = f"{json.load(open(os.path.join(ws, meta['leaf']['dir'], 'package.json')))['name']}#build"
        if mode == "cli":
            times = cli_times(ws, env, a.calls, task)
        else:
            times = asyncio.run(mcp_times(ws, env, a.calls, task))
        for name, t in times.items():
            rows.append((mode, name, statistics.median(t), pct(t, 99), min(t), len(t)))
    subprocess.run([VX, "daemon", "stop"], cwd=ws, env=env_for("daemon", runtime),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    version = subprocess.run([VX, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"mcp round trip, {a.packages} packages, leaf {leaf}, {a.calls} calls each, {version}")
    print(f"{'mode':<10} {'tool':<13} {'p50 ms':>8} {'p99 ms':>8} {'min ms':>8} {'calls':>6}")
    for mode, name, p50, p99, mn, n in rows:
        print(f"{mode:<10} {name:<13} {p50:8.2f} {p99:8.2f} {mn:8.2f} {n:6d}")
    subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
