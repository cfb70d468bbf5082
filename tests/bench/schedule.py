#!/usr/bin/env python3
"""Makespan with history-ordered (critical-path) scheduling vs the structural order.

    tests/bench/schedule.py [-n RUNS] [--concurrency N] [--daemon]

The workspace (generated in a temp dir) has skewed durations:

  * one long chain:   L1 -> L2 -> L3 -> L4, each `sleep 0.75` (3 s of critical path);
  * many short tasks: 8 chains of 12 tasks, each `sleep 0.05` (4.8 s of work),
    whose early links have more transitive dependents than L1, so the
    structural order (most transitive dependents first) starts them first
    and the long chain late.

Every task is uncached (no outputs), so each run executes all 100 tasks.
Three untimed runs record history; then RUNS timed runs per mode, interleaved:
  structural  VX_SCHEDULE=structural (the order used when there is no history)
  history     expected remaining critical path from the recorded p50s
Prints the median / min / max makespan (wall time of `vx run all`) per mode and the
lower bound max(critical path, total work / concurrency).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
VX = os.environ.get("VX_BIN", os.path.join(ROOT, "target", "release", "vx"))

LONG, LONG_S = 4, 0.75
CHAINS, CHAIN_LEN, SHORT_S = 8, 12, 0.05


def workspace(d):
    lines = ['[project]\nname = "w"\n']
    for i in range(1, LONG + 1):
        dep = f'depends_on = ["long{i-1}"]\n' if i > 1 else ""
        lines.append(f'[tasks.long{i}]\ncommand = "sleep {LONG_S}"\n{dep}')
    tails = [f"long{LONG}"]
    for c in range(CHAINS):
        for k in range(CHAIN_LEN):
            dep = f'depends_on = ["s{c}_{k-1}"]\n' if k > 0 else ""
            lines.append(f'[tasks.s{c}_{k}]\ncommand = "sleep {SHORT_S}"\n{dep}')
        tails.append(f"s{c}_{CHAIN_LEN-1}")
    lines.append("[tasks.all]\ndepends_on = [" + ", ".join(f'"{t}"' for t in tails) + "]\n")
    os.makedirs(os.path.join(d, "w"))
    with open(os.path.join(d, "vx.toml"), "w") as f:
        f.write('[workspace]\nmembers = ["w"]\n')
    with open(os.path.join(d, "w", "vx.toml"), "w") as f:
        f.write("\n".join(lines))


def run(d, env, conc):
    t = time.monotonic()
    r = subprocess.run([VX, "run", "all", "--concurrency", str(conc), "--output-logs", "none"],
                       cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f"vx run failed: {r.stderr}")
    return time.monotonic() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--daemon", action="store_true", help="through the daemon (default: no daemon)")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="vx-sched.")
    rt = tempfile.mkdtemp(prefix="vx-rt.")
    os.chmod(rt, 0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=rt, VX_DAEMON="1" if a.daemon else "0", NO_COLOR="1")
    env.pop("CI", None)
    env.pop("VX_SCHEDULE", None)
    try:
        workspace(d)
        for _ in range(3):
            run(d, env, a.concurrency)
        times = {"structural": [], "history": []}
        for _ in range(a.n):
            times["structural"].append(run(d, dict(env, VX_SCHEDULE="structural"), a.concurrency))
            times["history"].append(run(d, env, a.concurrency))
        if a.daemon:
            subprocess.run([VX, "daemon", "stop"], cwd=d, env=env, stdout=subprocess.DEVNULL)
    finally:
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(rt, ignore_errors=True)
    work = LONG * LONG_S + CHAINS * CHAIN_LEN * SHORT_S
    bound = max(LONG * LONG_S, work / a.concurrency)
    print(f"\nschedule: {LONG} x {LONG_S}s chain + {CHAINS} chains x {CHAIN_LEN} x {SHORT_S}s, "
          f"concurrency {a.concurrency}, {'daemon' if a.daemon else 'no daemon'}, {a.n} runs per mode; "
          f"lower bound {bound:.2f}s")
    print(f"{'order':<12} {'median s':>9} {'min':>7} {'max':>7}")
    for k, v in times.items():
        print(f"{k:<12} {statistics.median(v):>9.2f} {min(v):>7.2f} {max(v):>7.2f}")


if __name__ == "__main__":
    main()
