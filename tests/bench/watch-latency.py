#!/usr/bin/env python3
"""Save-to-start latency of watch mode: vx (daemon), vx (no daemon) and turbo, side by side.

    tests/bench/watch-latency.py [--packages N] [--edits N] [--debounce MS] [--runners LIST]

For every runner, on its own copy of the same generated workspace
(tests/bench/kit/gen-workspace.py, default 1,000 packages / 3,000 tasks):

  1. the leaf package's `build` script gets a prefix that appends the start time
     (`date +%s%N`) to a stamp file: identical bytes for every runner;
  2. the cache is primed with one `run build`, then the watcher starts on `build`
     for the WHOLE workspace (`vx watch build`, `turbo watch build`) and is left
     to settle;
  3. N times (default 100): append a unique line to the leaf's source file, note
     the time right after the write returns, wait for the new stamp, then wait for
     the cycle to go quiet. latency = stamp - save time.

It prints p50 / p95 / min / max per runner and, for vx, the p50 beyond the
configured debounce (`--debounce`, passed to `vx watch --debounce`). Turbo's watch
debounce is its own (not configurable); its figure is the raw latency.

Needs python3, git, release binaries (cargo build --release -p vx -p vxd) and, for
turbo, `bash tests/bench/kit/setup-peers.sh`. Turbo runs scripts through npm; the
bench puts tests/bench/kit/shim first on PATH for every runner (see its README).
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BENCH = os.environ.get("BENCH", os.path.join(ROOT, "tests", "bench", "kit"))
VX = os.environ.get("VX_BIN", os.path.join(ROOT, "target", "release", "vx"))
TURBO = os.path.join(BENCH, "tools", "node_modules", "@turbo", "linux-64", "bin", "turbo")


def sh(cmd, cwd, env, quiet=True):
    r = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL if quiet else None,
                       stderr=subprocess.STDOUT if quiet else None)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd} ({r.returncode})")


def make_ws(dest, packages):
    subprocess.run([sys.executable, os.path.join(BENCH, "gen-workspace.py"), dest,
                    "--packages", str(packages)], check=True, stdout=subprocess.DEVNULL)
    meta = json.load(open(os.path.join(dest, "bench-meta.json")))
    leaf = meta["leaf"]
    pj = os.path.join(dest, leaf["dir"], "package.json")
    doc = json.load(open(pj))
    stamp = os.path.join(dest, "starts.log")
    doc["scripts"]["build"] = f"date +%s%N >> {stamp} && " + doc["scripts"]["build"]
    with open(pj, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    # Ignore the stamp file (it is not anyone's input, but keep git clean).
    with open(os.path.join(dest, ".gitignore"), "a") as f:
        f.write("starts.log\n.vx/\n.turbo/\n")
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@x", GIT_COMMITTER_NAME="b",
               GIT_COMMITTER_EMAIL="b@x")
    sh(["git", "add", "-A"], dest, env)
    sh(["git", "commit", "-qm", "stamp"], dest, env)
    return os.path.join(dest, leaf["touch"]), stamp


def stamps(path):
    try:
        with open(path) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def measure(name, cmd, prime, cwd, env, touch, stamp, edits, settle_s):
    sh(prime, cwd, env)
    out = open(os.path.join(cwd, f"watch-{name}.log"), "w")
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        time.sleep(settle_s)
        lat = []
        for i in range(edits + 1):  # the first edit is a warm-up
            before = len(stamps(stamp))
            with open(touch, "a") as f:
                f.write(f"// edit {name} {i} {time.time_ns()}\n")
            saved = time.time_ns()
            deadline = time.monotonic() + 60
            while len(stamps(stamp)) <= before:
                if p.poll() is not None:
                    raise SystemExit(f"{name}: the watcher exited ({p.returncode}); see {out.name}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name}: no task start within 60 s of edit {i}; see {out.name}")
                time.sleep(0.0005)
            started = stamps(stamp)[before]
            if i > 0:
                lat.append((started - saved) / 1e6)
            # Let the cycle (the leaf's build, test and dependents) finish.
            time.sleep(0.4)
        return lat
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def pct(xs, q):
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packages", type=int, default=1000)
    ap.add_argument("--edits", type=int, default=100)
    ap.add_argument("--debounce", type=int, default=100, help="vx watch --debounce (ms)")
    ap.add_argument("--runners", default="vx-daemon,vx,turbo")
    ap.add_argument("--keep", help="keep the workspaces in this directory")
    a = ap.parse_args()
    if not os.access(VX, os.X_OK):
        raise SystemExit(f"no vx binary at {VX}: cargo build --release -p vx -p vxd")
    work = a.keep or tempfile.mkdtemp(prefix="vx-watch-bench.")
    os.makedirs(work, exist_ok=True)
    base = dict(os.environ)
    base.update(TURBO_TELEMETRY_DISABLED="1", TURBO_NO_UPDATE_NOTIFIER="1", DO_NOT_TRACK="1",
                NO_COLOR="1", PATH=os.path.join(BENCH, "shim") + os.pathsep + os.environ["PATH"])
    base.pop("CI", None)
    rt = tempfile.mkdtemp(prefix="vx-rt.")
    os.chmod(rt, 0o700)
    runners = [r for r in a.runners.split(",") if r]
    rows = []
    try:
        for r in runners:
            ws = os.path.join(work, r)
            touch, stamp = make_ws(ws, a.packages)
            env = dict(base, XDG_RUNTIME_DIR=rt)
            deb = ["--debounce", str(a.debounce)]
            if r == "vx-daemon":
                env["VX_DAEMON"] = "1"
                lat = measure(r, [VX, "watch", "build"] + deb, [VX, "run", "build"], ws, env,
                              touch, stamp, a.edits, 3)
                subprocess.run([VX, "daemon", "stop"], cwd=ws, env=env, stdout=subprocess.DEVNULL)
            elif r == "vx":
                env["VX_DAEMON"] = "0"
                lat = measure(r, [VX, "--no-daemon", "watch", "build"] + deb, [VX, "run", "build"],
                              ws, env, touch, stamp, a.edits, 5)
            elif r == "turbo":
                if not os.access(TURBO, os.X_OK):
                    print(f"turbo: skipped (not installed; run bash {BENCH}/setup-peers.sh)")
                    continue
                lat = measure(r, [TURBO, "watch", "build"], [TURBO, "run", "build"], ws, env,
                              touch, stamp, a.edits, 15)
            else:
                raise SystemExit(f"unknown runner {r}")
            rows.append((r, lat))
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(rt, ignore_errors=True)
    version = subprocess.run([VX, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"\nwatch: save -> affected task start, {a.packages} packages ({3 * a.packages} tasks), "
          f"{a.edits} edits of the leaf's source, vx debounce {a.debounce} ms, {version}")
    print(f"{'runner':<12} {'p50 ms':>8} {'p95 ms':>8} {'min':>7} {'max':>7} {'p50 - debounce':>15}")
    for r, lat in rows:
        extra = f"{pct(lat, 0.5) - a.debounce:>15.1f}" if r.startswith("vx") else f"{'-':>15}"
        print(f"{r:<12} {pct(lat, 0.5):>8.1f} {pct(lat, 0.95):>8.1f} {min(lat):>7.1f} "
              f"{max(lat):>7.1f} {extra}")


if __name__ == "__main__":
    main()
