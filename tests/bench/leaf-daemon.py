#!/usr/bin/env python3
""""One leaf edited" under the daemon: OLD vs NEW vx, interleaved copy by copy.

Usage: leaf-daemon.py OLD_VX NEW_VX [COPIES=10] [RUNS_PER_COPY=2]

Needs a cached workspace at /tmp/leaf-bench/base (gen-workspace.py --packages 1000, then one
`vx run build test lint --no-daemon`). Each copy (cp -a) gets its own daemon: two warm runs and
one untimed leaf edit, then RUNS_PER_COPY timed runs, each after a unique line appended to the
leaf's source (every run with VX_TIMING=1: the same request). Prints medians, min-max, the load
and the engine's median stage timings (from the copy's .vx/daemon.log).
"""
import os, re, shutil, statistics, subprocess, sys, time, json
OLD, NEW = sys.argv[1], sys.argv[2]
COPIES = int(sys.argv[3]) if len(sys.argv) > 3 else 10
PER = int(sys.argv[4]) if len(sys.argv) > 4 else 2
BASE = "/tmp/leaf-bench/base"
XDG = "/tmp/leaf-bench/xdg"
os.makedirs(XDG, mode=0o700, exist_ok=True)
TASKS = ["build", "test", "lint", "--output-logs=none"]
meta = json.load(open(os.path.join(BASE, "bench-meta.json")))
def env(extra):
    e = dict(os.environ, VX_DAEMON="1", XDG_RUNTIME_DIR=XDG, **extra)
    return e
def run(vx, ws, extra={}):
    t = time.monotonic()
    p = subprocess.run([vx, "run", *TASKS], cwd=ws, env=env(extra), capture_output=True, text=True)
    w = (time.monotonic() - t) * 1000
    m = re.search(r"(\d+) total · (\d+) cached", p.stdout + p.stderr)
    return w, (m.group(1), m.group(2)) if m else None
res = {"old": [], "new": []}
stages = {"old": {}, "new": {}}
for c in range(COPIES):
    for name, vx in (("old", OLD), ("new", NEW)) if c % 2 == 0 else (("new", NEW), ("old", OLD)):
        ws = f"/tmp/leaf-bench/ws-{name}-{c}"
        shutil.rmtree(ws, ignore_errors=True)
        subprocess.run(["cp", "-a", BASE, ws], check=True)
        for _ in range(2):
            run(vx, ws, {"VX_TIMING": "1"})
        # One untimed edit: the steady state of "edit, run, edit, run".
        with open(os.path.join(ws, meta["leaf"]["touch"]), "a") as f:
            f.write(f"// warm {c} {time.time_ns()}\n")
        run(vx, ws, {"VX_TIMING": "1"})
        for k in range(PER):
            with open(os.path.join(ws, meta["leaf"]["touch"]), "a") as f:
                f.write(f"// edit {c} {k} {time.time_ns()}\n")
            logn = sum(1 for _ in open(os.path.join(ws, ".vx/daemon.log"))) if os.path.exists(os.path.join(ws, ".vx/daemon.log")) else 0
            w, hits = run(vx, ws, {"VX_TIMING": "1"})
            assert hits == ("3000", "2997"), (name, hits)
            res[name].append(w)
            for line in list(open(os.path.join(ws, ".vx/daemon.log")))[logn:]:
                m = re.match(r"vx timing: (\S+)\s+([\d.]+) ms", line)
                if m:
                    stages[name].setdefault(m.group(1), []).append(float(m.group(2)))
        subprocess.run([vx, "daemon", "stop"], cwd=ws, env=env({}), capture_output=True)
        shutil.rmtree(ws, ignore_errors=True)
    print(f"copy {c}: old {res['old'][-PER:]} new {res['new'][-PER:]}", file=sys.stderr, flush=True)
print("load:", open("/proc/loadavg").read().strip())
for name in ("old", "new"):
    v = res[name]
    print(f"{name}: n={len(v)} median {statistics.median(v):.1f} ms  min {min(v):.1f}  max {max(v):.1f}")
    print("   stages (median ms, runs that had the stage): " + ", ".join(f"{k} {statistics.median(x):.2f} (n={len(x)})" for k, x in stages[name].items()))
