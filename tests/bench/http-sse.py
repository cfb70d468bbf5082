#!/usr/bin/env python3
"""SSE on the daemon: event delivery latency and the cost of subscribers.

Generates the bench workspace (tests/bench/kit/gen-workspace.py, 1,000
packages, 3,000 tasks), starts its daemon, runs it once cold, then times
fully cached runs (`vx run build test lint --json`, its output discarded) with 0, 1
and 10 SSE subscribers attached to `GET /events?timing=1`, taking turns
round by round. Each subscriber reads every event and records its latency:
the time it parsed the event minus the `: t=` stamp the daemon's event feed
put on it when the engine published it (the bus hands the event to the feed
synchronously, inside the engine's publish call; both clocks are this
machine's wall clock). Prints one markdown table.

Usage: tests/bench/http-sse.py [--packages 1000] [-n 5] [--keep DIR]
Environment: VX_BIN (default target/release/vx; vxd next to it).
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def sh(args, cwd, env, check=True):
    r = subprocess.run(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return r


class Subscriber(threading.Thread):
    """Reads /events until stopped; keeps each event's latency in µs."""

    def __init__(self, addr, token):
        super().__init__(daemon=True)
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        req = (
            f"GET /events?timing=1 HTTP/1.0\r\nHost: {addr}\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        )
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            b = self.sock.recv(1)
            if not b:
                raise OSError("the server closed the stream")
            head += b
        self.latencies = []
        self.events = 0
        self.run_finished = threading.Event()
        self.stop = False

    def run(self):
        # Whole chunks as the socket delivers them, split in C: the client's
        # own cost stays small next to the daemon's. An event's latency is
        # the chunk's arrival time minus the event's stamp.
        buf = b""
        try:
            while not self.stop:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    break
                now_us = time.time() * 1e6
                buf += chunk
                *events, buf = buf.split(b"\n\n")
                for e in events:
                    i = e.find(b"\n: t=")
                    if i >= 0:
                        j = e.find(b"\n", i + 5)
                        self.latencies.append(now_us - int(e[i + 5:j]))
                    if b"\ndata: " in e or e.startswith(b"data: "):
                        self.events += 1
                        if b'"method":"run.finished"' in e:
                            self.run_finished.set()
        except (OSError, ValueError):
            pass

    def close(self):
        self.stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--packages", type=int, default=1000)
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--keep")
    a = ap.parse_args()
    vx = os.environ.get("VX_BIN", os.path.join(REPO, "target/release/vx"))
    vx = os.path.abspath(vx)
    work = a.keep or tempfile.mkdtemp(prefix="vx-http-bench-")
    os.makedirs(work, exist_ok=True)
    ws = os.path.join(work, "ws")
    runtime = os.path.join(work, "rt")
    os.makedirs(runtime, mode=0o700, exist_ok=True)
    if not os.path.isdir(ws):
        sh([sys.executable, os.path.join(HERE, "kit/gen-workspace.py"), ws, "--packages", str(a.packages)], REPO, os.environ)
    env = dict(os.environ)
    env.update({
        "VX_DAEMON": "1",
        "VX_DAEMON_BIN": os.path.join(os.path.dirname(vx), "vxd"),
        "XDG_RUNTIME_DIR": runtime,
        "NO_COLOR": "1",
        "PATH": os.path.join(HERE, "kit/shim") + os.pathsep + env.get("PATH", ""),
    })
    env.pop("VX_HTTP", None)
    # `--json`: the engine publishes every task's events (cache hit, its
    # replayed output, finished); with `--output-logs=none` it publishes
    # only run.started and run.finished.
    run = [vx, "run", "build", "test", "lint", "--json"]
    try:
        sh([vx, "daemon", "start"], ws, env)
        url = sh([vx, "ui", "--no-open"], ws, env).stdout.strip()
        addr, token = url[len("http://"):].split("/?token=")
        sh(run, ws, env)  # cold
        sh(run, ws, env)  # warm
        counts = {0: [], 1: [], 10: []}
        lat = {1: [], 10: []}
        events = {1: [], 10: []}
        for _ in range(a.n):
            for n in (0, 1, 10):
                subs = [Subscriber(addr, token) for _ in range(n)]
                for s in subs:
                    s.start()
                t = time.monotonic()
                sh(run, ws, env)
                took = time.monotonic() - t
                counts[n].append(took)
                for s in subs:
                    if not s.run_finished.wait(60):
                        sys.exit("a subscriber never saw run.finished")
                    lat[n].extend(s.latencies)
                    events[n].append(s.events)
                    s.close()
        rss = json.loads(sh([vx, "daemon", "status", "--json"], ws, env).stdout)["rss_bytes"]
    finally:
        sh([vx, "daemon", "stop"], ws, env, check=False)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{a.packages} packages, {a.packages * 3} tasks, fully cached, {a.n} rounds; daemon RSS at the end {rss / 1048576:.1f} MiB\n")
    print("| SSE subscribers | run wall, median (min–max) | events per subscriber per run | delivery latency p50 | p99 |")
    print("|---|---|---|---|---|")
    for n in (0, 1, 10):
        w = counts[n]
        cell = f"{statistics.median(w):.3f} s ({min(w):.3f}–{max(w):.3f})"
        if n == 0:
            print(f"| 0 | {cell} | – | – | – |")
        else:
            ev = statistics.median(events[n])
            print(f"| {n} | {cell} | {ev:.0f} | {pct(lat[n], 50) / 1000:.2f} ms | {pct(lat[n], 99) / 1000:.2f} ms |")


if __name__ == "__main__":
    main()
