#!/usr/bin/env python3
"""Worker links' scheduling overhead: a graph of N tasks of S seconds each
(`sleep S` + an output file), run with `vx run --distribute --no-local` on
1, 2 and 3 local `vxd worker`s (loopback, each in its own clone, a real
`vx-cache-server` as the remote cache), cold every time. Prints, per worker
count, the makespan and the per-task scheduling overhead:

    overhead = (makespan x total capacity - N x S) / N

i.e. how much of each worker slot's time per task was not the task's own
sleep (assignment, lease bookkeeping, the worker restoring its dependencies'
outputs and uploading its own, reporting). Results: docs/benchmarks.md.

    cargo build --release -p vx -p vxd -p vx-cache-server
    tests/bench/workers.py                 # 200 tasks of 0.2 s, capacity 4
    tests/bench/workers.py -n 40 --vx target/debug

The graph: task i depends on task i-W (W = --width, default 20 chains), so
dependencies' outputs really travel through the cache and the critical
path is N/W tasks long.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def sh(args, cwd, env=None, check=True):
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def git(cwd, *args):
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@example.com",
               GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@example.com")
    return sh(["git", *args], cwd, env).stdout.strip()


def fixture(root: Path, n: int, width: int, secs: float):
    root.mkdir(parents=True)
    (root / "vx.toml").write_text('[workspace]\nmembers = ["packages/*"]\n')
    (root / ".gitignore").write_text(".vx/\ndist/\n")
    for i in range(n):
        p = root / "packages" / f"p{i:04d}"
        (p / "src").mkdir(parents=True)
        (p / "src" / "in.txt").write_text(f"{i}\n")
        deps = f'[project]\ndeps = ["p{i - width:04d}"]\n\n' if i >= width else ""
        dep_on = 'depends_on = ["^build"]\n' if i >= width else ""
        (p / "vx.toml").write_text(
            f"{deps}[tasks.build]\n"
            f'command = "sleep {secs} && mkdir -p dist && cat src/in.txt > dist/out.txt"\n'
            f"{dep_on}"
            'inputs = ["src/**"]\noutputs = ["dist/**"]\n'
        )
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "bench fixture")


class Proc:
    def __init__(self, args, cwd, env, log: Path):
        self.log = log
        f = open(log, "w")
        self.p = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                  stdout=f, stderr=f)

    def text(self):
        return self.log.read_text(errors="replace")

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def wait_until(what, f, secs=60):
    t0 = time.monotonic()
    while not f():
        if time.monotonic() - t0 > secs:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.05)


def one(bins: Path, work: Path, n: int, width: int, secs: float, workers: int, cap: int):
    """Builds a fresh coordinator, cache and `workers` clones; returns the
    makespan of one cold distributed run."""
    base = work / f"w{workers}"
    coord = base / "coord"
    fixture(coord, n, width, secs)
    store = base / "store"
    store.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(base),
        "NO_COLOR": "1",
        "XDG_RUNTIME_DIR": str(base / "rt"),
        "VX_DAEMON_BIN": str(bins / "vxd"),
        "VX_DAEMON": "1",
    }
    (base / "rt").mkdir(mode=0o700)
    # The cache server on a free loopback port (it prints its URL).
    srv = Proc([str(bins / "vx-cache-server"), "--listen", "127.0.0.1:0", "--store", str(store),
                "--token-rw", "bench-rw-0001"], base, dict(env, RUST_LOG="info"), base / "srv.log")
    procs = [srv]
    try:
        url = None

        def found():
            nonlocal url
            for line in srv.text().splitlines():
                if line.startswith("vx-cache-server listening on "):
                    url = line.split()[-1]
                    return True
            return srv.p.poll() is not None

        wait_until("the cache server", found)
        if not url:
            sys.exit(f"the cache server did not start:\n{srv.text()}")
        env.update({"VX_REMOTE_CACHE_URL": url, "VX_REMOTE_CACHE_TOKEN": "bench-rw-0001",
                    "VX_REMOTE_CACHE_TEAM": "bench"})
        vx = str(bins / "vx")
        sh([vx, "daemon", "start"], coord, env)
        st = json.loads(sh([vx, "daemon", "status", "--json"], coord, env).stdout)
        worker_url = st.get("worker_url") or sys.exit(f"no worker_url in {st}")
        disc = json.loads(Path(st["socket"]).with_suffix(".json").read_text())
        wenv = dict(env, VX_WORKER_TOKEN=disc["token"])
        for k in range(workers):
            clone = base / f"clone{k}"
            git(base, "clone", "-q", str(coord), str(clone))
            w = Proc([str(bins / "vxd"), "worker", "--connect", worker_url, "--capacity", str(cap),
                      "--name", f"w{k}"], clone, dict(wenv, HOME=str(clone)), base / f"w{k}.log")
            procs.append(w)
        for w in procs[1:]:
            wait_until(f"{w.log.name} to connect",
                       lambda w=w: "connected to" in w.text() or w.p.poll() is not None)
            if w.p.poll() is not None:
                sys.exit(f"a worker exited:\n{w.text()}")
        t0 = time.monotonic()
        r = sh([vx, "run", "build", "--distribute", "--no-local", "--json"], coord, env, check=False)
        makespan = time.monotonic() - t0
        summary = None
        for line in r.stdout.splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("type") == "run_finished":
                summary = e["summary"]
        if r.returncode != 0 or not summary:
            sys.exit(f"the run failed ({r.returncode}):\n{r.stderr}\n"
                     + "\n".join(w.text() for w in procs[1:]))
        ran = [t for t in summary["tasks"] if t["status"] == "success" and t.get("worker")]
        if len(ran) != n:
            sys.exit(f"{len(ran)} of {n} tasks ran on workers: {summary['counts']}")
        sh([vx, "daemon", "stop"], coord, env, check=False)
        return makespan
    finally:
        for p in reversed(procs):
            p.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200, help="tasks (default 200)")
    ap.add_argument("--sleep", type=float, default=0.2, help="seconds per task (default 0.2)")
    ap.add_argument("--width", type=int, default=20, help="independent chains (default 20)")
    ap.add_argument("--capacity", type=int, default=4, help="capacity per worker (default 4)")
    ap.add_argument("--workers", default="1,2,3", help="worker counts (default 1,2,3)")
    ap.add_argument("--vx", type=Path, default=REPO / "target" / "release",
                    help="directory of vx, vxd, vx-cache-server (default target/release)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    bins = a.vx.resolve()
    for b in ("vx", "vxd", "vx-cache-server"):
        if not os.access(bins / b, os.X_OK):
            sys.exit(f"{bins / b} missing: cargo build --release -p vx -p vxd -p vx-cache-server")
    work = Path(tempfile.mkdtemp(prefix="vx-bench-workers-"))
    rows = []
    try:
        for k in [int(x) for x in a.workers.split(",")]:
            m = one(bins, work, a.n, a.width, a.sleep, k, a.capacity)
            total = k * a.capacity
            ideal = max(a.n * a.sleep / total, (a.n / a.width) * a.sleep)
            over = (m * total - a.n * a.sleep) / a.n
            rows.append((k, total, m, ideal, over))
            print(f"  {k} worker(s): {m:.2f} s", file=sys.stderr)
    finally:
        if a.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{a.n} tasks of {a.sleep} s, {a.width} chains, capacity {a.capacity} per worker, binaries {bins}")
    print(f"{'workers':>7} {'slots':>5} {'makespan':>9} {'ideal':>7} {'overhead/task':>14}")
    for k, total, m, ideal, over in rows:
        print(f"{k:>7} {total:>5} {m:>8.2f}s {ideal:>6.2f}s {over * 1000:>11.0f} ms")


if __name__ == "__main__":
    main()
