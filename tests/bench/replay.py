#!/usr/bin/env python3
"""The daemon's fully cached repeat run with and without the replay, interleaved.

    tests/bench/replay.py WORKSPACE [--vx PATH] [-n RUNS]

WORKSPACE: a gen-workspace.py workspace whose tasks are all cached (run it once first).
Runs `vx run build test lint --output-logs=none` under the workspace's daemon
(VX_DAEMON=1, a private XDG_RUNTIME_DIR), alternately replayed (the default) and with
VX_REPLAY=0 (computed afresh), after 3 warm-ups of each; prints p50/min/max wall times,
the load average and `vx daemon status`'s runs served/replayed, then stops the daemon.
"""
import argparse, os, statistics, subprocess, tempfile, time

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("workspace")
ap.add_argument("--vx", default=os.path.join(os.path.dirname(__file__), "../../target/release/vx"))
ap.add_argument("-n", type=int, default=15)
a = ap.parse_args()
a.vx = os.path.abspath(a.vx)
xdg = tempfile.mkdtemp(prefix="vx-replay-xdg.")
base = dict(os.environ, VX_DAEMON="1", XDG_RUNTIME_DIR=xdg)
modes = [("replayed", base), ("VX_REPLAY=0", dict(base, VX_REPLAY="0"))]


def one(env):
    t0 = time.perf_counter_ns()
    p = subprocess.run([a.vx, "run", "build", "test", "lint", "--output-logs=none"], cwd=a.workspace,
                       env=env, capture_output=True, text=True)
    ms = (time.perf_counter_ns() - t0) / 1e6
    if p.returncode != 0 or " 0 executed" not in p.stdout + p.stderr:
        raise SystemExit("not a fully cached run:\n" + p.stdout + p.stderr)
    return ms


print("load at start", open("/proc/loadavg").read().strip())
for _, env in modes:
    for _ in range(3):
        one(env)
res = {m: [] for m, _ in modes}
for _ in range(a.n):
    for m, env in modes:
        res[m].append(one(env))
for m, v in res.items():
    v.sort()
    print("%-12s p50 %8.1f ms  min %8.1f  max %8.1f  n=%d" % (m, statistics.median(v), v[0], v[-1], len(v)))
print("load at end  ", open("/proc/loadavg").read().strip())
st = subprocess.run([a.vx, "daemon", "status"], cwd=a.workspace, env=base, capture_output=True, text=True).stdout
print("".join(l + "\n" for l in st.splitlines() if "runs served" in l), end="")
subprocess.run([a.vx, "daemon", "stop"], cwd=a.workspace, env=base, capture_output=True)
