#!/usr/bin/env python3
"""Fully cached `vx run build test lint --no-daemon`: two binaries, interleaved.

    tests/bench/fully-cached.py --old /work/bin-base/vx --new target/release/vx -n 20

Generates one workspace (`kit/gen-workspace.py --packages N`), copies it once
per binary (the cache is `.vx/cache` inside each copy), fills each cache with
one run of its binary, then alternates the two binaries' fully cached runs
(which goes first alternates too), 0.4 s apart. Prints the wall medians,
min-max, the load average before and after, and the medians of the engine's
`VX_TIMING=1` stages. Every run must exit 0.
"""
import argparse, os, re, shutil, statistics, subprocess, sys, tempfile, time

here = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--old", required=True, help="the 'before' vx binary (its vxd beside it)")
ap.add_argument("--new", required=True, help="the 'after' vx binary (its vxd beside it)")
ap.add_argument("-n", type=int, default=20, help="fully cached runs per binary (default 20)")
ap.add_argument("--packages", type=int, default=1000)
ap.add_argument("--keep", help="put the workspaces here (must not exist) and keep them")
args = ap.parse_args()

top = args.keep or tempfile.mkdtemp(prefix="vx-fully-cached-")
gen = os.path.join(top, "gen")
# No background `git gc --auto` racing the copies below.
quiet_git = dict(os.environ, GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="gc.auto", GIT_CONFIG_VALUE_0="0")
subprocess.run([sys.executable, os.path.join(here, "kit", "gen-workspace.py"), "--packages",
                str(args.packages), gen], check=True, stdout=subprocess.DEVNULL, env=quiet_git)
runners = {}
for name, vx in (("old", args.old), ("new", args.new)):
    ws = os.path.join(top, name)
    shutil.copytree(gen, ws, symlinks=True)
    subprocess.run([os.path.abspath(vx), "run", "build", "test", "lint", "--no-daemon"], cwd=ws,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runners[name] = (os.path.abspath(vx), ws)

wall = {"old": [], "new": []}
stages = {"old": {}, "new": {}}
env = dict(os.environ, VX_TIMING="1")


def run(name):
    vx, ws = runners[name]
    t = time.monotonic()
    p = subprocess.run([vx, "run", "build", "test", "lint", "--no-daemon"], cwd=ws, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall[name].append(time.monotonic() - t)
    if p.returncode != 0:
        sys.exit(f"{name} failed:\n{p.stderr[-2000:]}")
    for m in re.finditer(r"vx timing: (.+?)\s+([0-9.]+) ms", p.stderr):
        stages[name].setdefault(m.group(1).strip(), []).append(float(m.group(2)))
    time.sleep(0.4)


print("load before:", open("/proc/loadavg").read().strip())
for i in range(args.n):
    for name in (("old", "new") if i % 2 == 0 else ("new", "old")):
        run(name)
print("load after: ", open("/proc/loadavg").read().strip())
for name in ("old", "new"):
    v = sorted(wall[name])
    print(f"{name}: wall median {statistics.median(v) * 1000:.1f} ms, "
          f"min {v[0] * 1000:.1f}, max {v[-1] * 1000:.1f} (n={len(v)})")
print(f"  {'stage':<12}{'old':>10}{'new':>10}")
for s in stages["old"]:
    o = statistics.median(stages["old"][s])
    n = statistics.median(stages["new"].get(s, [0.0]))
    print(f"  {s:<12}{o:10.2f}{n:10.2f}  ms (median)")
if not args.keep:
    shutil.rmtree(top)
