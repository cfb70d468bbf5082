#!/usr/bin/env python3
"""The vx daemon's resident memory after each benchmark scenario, for one or more vx builds
side by side (interleaved round by round on one workspace).

    tests/bench/daemon-rss.py --ws /tmp/rss-ws --vx /work/bin-base/vx --vx target/release/vx -n 2

The workspace is generated (tests/bench/kit/gen-workspace.py --packages N) unless --ws
already holds one. Per build and round: stop its daemon; cold run (cache and dist/
removed) -> RSS; restart the daemon, two fully cached runs -> RSS; rm -rf
packages/*/dist, one run -> RSS; two runs each after a line appended to the leaf
package's first source -> RSS. RSS is `vx daemon status --json`'s rss_bytes, read 1.5 s
after the run (the history record is written after the answer). Each build gets its own
XDG_RUNTIME_DIR, so daemons never mix.
"""
import argparse, glob, json, os, shutil, statistics, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
TASKS = ["build", "test", "lint"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vx", action="append", required=True, help="a vx binary (vxd next to it); repeat to compare")
    ap.add_argument("--ws", required=True, help="workspace dir (generated if missing)")
    ap.add_argument("--packages", type=int, default=1000)
    ap.add_argument("-n", type=int, default=2, help="rounds")
    a = ap.parse_args()
    if not os.path.exists(os.path.join(a.ws, "package.json")):
        subprocess.run([sys.executable, os.path.join(HERE, "kit", "gen-workspace.py"), a.ws, "--packages",
                        str(a.packages)], check=True, stdout=subprocess.DEVNULL)
    meta = json.load(open(os.path.join(a.ws, "bench-meta.json")))
    leaf_dir = os.path.join(a.ws, "packages", meta["leaf"]["name"].split("/")[-1], "src")
    leaf_src = sorted(glob.glob(os.path.join(leaf_dir, "*")))[0]
    print("daemon RSS (MiB)  %s  load %s" % (time.strftime("%Y-%m-%d %H:%M:%S %Z"), open("/proc/loadavg").read().split()[:3]))
    print("workspace %s (%s packages)" % (a.ws, meta["packages"]))
    res = {}
    for rnd in range(a.n):
        for vx in a.vx:
            env = dict(os.environ, XDG_RUNTIME_DIR="/tmp/daemon-rss-%d" % abs(hash(vx)))
            os.makedirs(env["XDG_RUNTIME_DIR"], exist_ok=True)
            run = lambda: subprocess.run([vx, "run", *TASKS, "--output-logs=none"], cwd=a.ws, env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            stop = lambda: subprocess.run([vx, "daemon", "stop"], cwd=a.ws, env=env, capture_output=True)

            def rss():
                time.sleep(1.5)
                out = subprocess.run([vx, "daemon", "status", "--json"], cwd=a.ws, env=env, capture_output=True,
                                     text=True, check=True).stdout
                return json.loads(out)["rss_bytes"] / 2**20

            def drop_dist():
                for d in glob.glob(os.path.join(a.ws, "packages", "*", "dist")):
                    shutil.rmtree(d)

            stop()
            shutil.rmtree(os.path.join(a.ws, ".vx", "cache"), ignore_errors=True)
            drop_dist()
            run()
            row = {"cold": rss()}
            stop()
            run(); run()
            row["fully cached (fresh daemon)"] = rss()
            drop_dist()
            run()
            row["outputs deleted"] = rss()
            for _ in range(2):
                with open(leaf_src, "a") as f:
                    f.write("// rss edit %d\n" % time.time_ns())
                run()
            row["one leaf edited"] = rss()
            stop()
            for k, v in row.items():
                res.setdefault((vx, k), []).append(v)
            print("  round %d  %-40s %s" % (rnd + 1, vx, "  ".join("%s %.1f" % (k, v) for k, v in row.items())), flush=True)
    keys = ["cold", "fully cached (fresh daemon)", "outputs deleted", "one leaf edited"]
    print()
    print("| scenario | " + " | ".join(a.vx) + " |")
    print("|---|" + "---|" * len(a.vx))
    for k in keys:
        print("| %s | %s |" % (k, " | ".join("%.1f (%.1f–%.1f)" % (statistics.median(res[(vx, k)]), min(res[(vx, k)]),
                                                                    max(res[(vx, k)])) for vx in a.vx)))
    print("| max | %s |" % " | ".join("%.1f" % max(max(res[(vx, k)]) for k in keys) for vx in a.vx))


if __name__ == "__main__":
    main()
