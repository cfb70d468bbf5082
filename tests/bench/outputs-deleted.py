#!/usr/bin/env python3
"""The "outputs deleted" row, daemon against no daemon, in one interleaved run.

    python3 tests/bench/outputs-deleted.py --vx target/release/vx [--old OTHER/vx]
                                           [--packages 1000] [-n 7] [--ws DIR]

Generates a workspace with tests/bench/kit/gen-workspace.py (unless --ws names an existing
one), fills the cache, then for each run and each mode in turn: restarts that mode's daemon
(daemon modes), one warm run, `rm -rf packages/*/dist`, 0.3 s, one timed
`vx run build test lint --output-logs=none`. Modes: the daemon with VX_WALK_THREADS=1 (the
changed projects re-walked one by one), the daemon, no daemon, and the daemon and no daemon of
--old.
Prints the median, min and max wall time per mode. Needs release binaries.
"""
import argparse, glob, os, shutil, statistics, subprocess, sys, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--vx", required=True)
ap.add_argument("--old")
ap.add_argument("--packages", type=int, default=1000)
ap.add_argument("-n", type=int, default=7)
ap.add_argument("--ws")
a = ap.parse_args()
here = os.path.dirname(os.path.abspath(__file__))
tmp = tempfile.mkdtemp(prefix="vx-od-")
ws = a.ws or os.path.join(tmp, "ws")
if not os.path.exists(os.path.join(ws, "package.json")):
    subprocess.run([sys.executable, os.path.join(here, "kit", "gen-workspace.py"), ws,
                    "--packages", str(a.packages)], check=True, stdout=subprocess.DEVNULL)
base = dict(os.environ, XDG_RUNTIME_DIR=os.path.join(tmp, "xdg"))
os.makedirs(base["XDG_RUNTIME_DIR"], exist_ok=True)
modes = {
    "daemon, VX_WALK_THREADS=1": dict(base, VX_DAEMON="1", VX_WALK_THREADS="1", _VX=a.vx),
    "daemon": dict(base, VX_DAEMON="1", _VX=a.vx),
    "no daemon": dict(base, VX_DAEMON="0", _VX=a.vx),
}
if a.old:
    modes["daemon, --old"] = dict(base, VX_DAEMON="1", _VX=a.old)
    modes["no daemon, --old"] = dict(base, VX_DAEMON="0", _VX=a.old)


def run(env):
    args = ["--no-daemon"] if env["VX_DAEMON"] == "0" else []
    t = time.monotonic()
    p = subprocess.run([env["_VX"], "run", "build", "test", "lint", "--output-logs=none", *args],
                       cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    dt = time.monotonic() - t
    if p.returncode != 0:
        sys.exit(f"vx failed ({p.returncode}):\n{p.stdout[-2000:]}")
    return dt


def stop(env):
    subprocess.run([env["_VX"], "daemon", "stop"], cwd=ws, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def rm_dist():
    for d in glob.glob(os.path.join(ws, "packages", "*", "dist")):
        shutil.rmtree(d)


run(modes["no daemon"])  # fills the cache
res = {m: [] for m in modes}
try:
    for i in range(a.n):
        for m, env in modes.items():
            if env["VX_DAEMON"] == "1":
                stop(env)
                run(env)
            rm_dist()
            time.sleep(0.3)
            res[m].append(run(env))
finally:
    for env in modes.values():
        stop(env)
for m, v in res.items():
    print(f"{m:28s} median {statistics.median(v):.3f} s  min {min(v):.3f}  max {max(v):.3f}  (n={len(v)})")
if not a.ws:
    shutil.rmtree(tmp, ignore_errors=True)
