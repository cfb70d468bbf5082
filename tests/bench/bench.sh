#!/usr/bin/env bash
# vx against its peers, side by side, in ONE run on ONE generated workspace shape.
#
#   tests/bench/bench.sh [--packages N] [--shape dense] [--large] [-n RUNS] [--keep DIR]
#                        [--runners LIST] [--timing]
#
#   --packages N   packages in the gen-workspace.py workspace (default 1000; the default
#                  shape has 3 tasks per package, so 3,000 tasks)
#   --shape S      default (gen-workspace.py's: 10 per layer, 3 deps each) or dense
#                  (--width 25 --fanin 4: wider and denser)
#   --large        5,000 packages / 15,000 tasks (the same as --packages 5000; slow:
#                  the cold and edited rows execute thousands of tasks per runner)
#   -n RUNS        timed runs per repeated scenario (default 5), after 1 untimed warm-up
#   --keep DIR     create the workspaces in DIR (must not exist or be empty) and keep them;
#                  default: a temporary directory, deleted at the end
#   --runners LIST comma list from: vx, vx-daemon, vx-daemon-fresh, vx-base,
#                  vx-base-daemon, turbo, nx (default vx,vx-daemon,turbo;
#                  vx-daemon-fresh is the daemon with VX_REPLAY=0, every run computed
#                  afresh; vx-base* measure VX_BASE_BIN, another commit's
#                  release vx, for before/after figures in one run). Missing peers are
#                  skipped with a note. nx is opt-in: it is slow at 1,000 packages.
#   --scenarios L  comma list of scenario keys to run (default: all): cold, cached, outputs,
#                  leaf, leaf-shim, root-shim, git (git status); e.g. `--large --scenarios
#                  cold,cached` for the 5,000-package repeat-run and RSS figures alone. Without
#                  cold, the first warm-up run of the first scenario fills the caches.
#   --timing       also set VX_TIMING=1 on vx's timed runs and print the median of each
#                  engine stage per scenario (stage lines go to stderr; cost is negligible,
#                  but the headline figures in docs/benchmarks.md are taken without it)
#
# Scenarios (rows), each measured for every runner (columns):
#   cold            caches + dist/ removed (untimed), ONE timed run
#   fully cached    outputs intact; 1 warm-up, RUNS timed runs
#   outputs deleted rm -rf packages/*/dist before every run (untimed) -> restored from cache
#   leaf edited     a unique line appended to the leaf package's source (bench-meta.json)
#                   before every run (untimed): that package's 3 tasks re-execute
#   leaf edited, npm shim   the same with tests/bench/kit/shim first on PATH
#   root edited, npm shim   a unique line appended to the root package's source (the one
#                   with the most dependents): it and every dependent's tasks re-execute
#   git status      `git status --porcelain` on vx's workspace copy (outputs in place):
#                   the floor a file-index load and walk can aim at (git's own index)
# "cold" and the shim row put tests/bench/kit/shim/npm first on PATH for every runner:
# Turborepo runs every task through `npm run`, and real npm costs ~0.5 s CPU per task
# here (a cold turbo run through real npm takes > 10 minutes at 1,000 packages). vx and
# nx run the script with `sh -c` themselves, so the shim changes nothing for them.
#
# Each runner gets its OWN copy of the workspace (gen-workspace.py is generated once per
# runner; its output is byte-identical for the same arguments, and a fresh `git init`
# keeps git's index valid, which turbo's hashing relies on), so caches and outputs never
# interfere. Within a scenario the runners are interleaved run by run (vx, turbo, vx,
# turbo, ...) so that background load hits every column alike.
#
# Per run: wall = monotonic clock from spawn to reap; cpu = user+sys of the process and
# every descendant it waited for (os.wait4 rusage), plus vx's engine `vxd --stdio`, which
# may exit after `vx` (it writes the history record after the answer): the script is a
# child subreaper and waits for it; peak = ru_maxrss (largest single process among those).
# stdout+stderr of timed runs go to a file, parsed for cache hits.
#
# Adding a runner (e.g. the vx daemon): add an entry to RUNNERS in the Python below
# (command, env, what "cold" deletes, how to read hits from its output).
#
# Needs bash, python3, git, the release binaries (cargo build --release -p vx -p vxd) and,
# for peers, `bash tests/bench/kit/setup-peers.sh` (installs turbo + nx into its tools/).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BENCH="${BENCH:-$ROOT/tests/bench/kit}"
[ -f "$BENCH/env.sh" ] || { echo "bench kit not found at $BENCH (set BENCH=/path/to/a/bench/kit)" >&2; exit 2; }
BENCH="$(cd "$BENCH" && pwd)"
# shellcheck source=/dev/null
source "$BENCH/env.sh"
VX_BIN="${VX_BIN:-$ROOT/target/release/vx}"

PACKAGES=1000 RUNS=5 KEEP= RUNNERS=vx,vx-daemon,turbo TIMING= SHAPE=default SCENARIOS=
BENCH_ARGV="tests/bench/bench.sh${*:+ $*}"
while [ $# -gt 0 ]; do
  case "$1" in
    --packages) PACKAGES=$2; shift 2 ;;
    --packages=*) PACKAGES=${1#*=}; shift ;;
    -n) RUNS=$2; shift 2 ;;
    --keep) KEEP=$2; shift 2 ;;
    --keep=*) KEEP=${1#*=}; shift ;;
    --runners) RUNNERS=$2; shift 2 ;;
    --runners=*) RUNNERS=${1#*=}; shift ;;
    --timing) TIMING=1; shift ;;
    --scenarios) SCENARIOS=$2; shift 2 ;;
    --scenarios=*) SCENARIOS=${1#*=}; shift ;;
    --shape) SHAPE=$2; shift 2 ;;
    --shape=*) SHAPE=${1#*=}; shift ;;
    --large) PACKAGES=5000; shift ;;
    -h|--help) sed -n '2,62p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$VX_BIN" ] || { echo "no vx binary at $VX_BIN: cargo build --release -p vx -p vxd (or set VX_BIN)" >&2; exit 2; }
if [ -n "$KEEP" ]; then
  mkdir -p "$KEEP"
  [ -z "$(ls -A "$KEEP")" ] || { echo "--keep $KEEP: directory is not empty" >&2; exit 2; }
  WORK="$(cd "$KEEP" && pwd)"
else
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/vx-bench.XXXXXX")"
  trap 'rm -rf "$WORK"' EXIT
fi

case "$SHAPE" in default|dense) ;; *) echo "--shape: default or dense, not $SHAPE" >&2; exit 2 ;; esac
export BENCH VX_BIN PACKAGES RUNS WORK RUNNERS TIMING KEEP SHAPE SCENARIOS
export BENCH_ARGV
python3 - <<'PY'
import ctypes, glob, hashlib, json, os, platform, re, shutil, statistics, subprocess, sys, time

# vx's foreground engine (`vxd --stdio`) writes the run's history record after the answer,
# so `vx` can exit before it: as a child subreaper this script inherits the orphaned engine
# and waits for it (`reap_engines`), so its CPU counts in the `cpu` column. Wall time stays
# the client's (what a user waits for). Linux only; elsewhere the engine's record is missed.
try:
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
except (OSError, AttributeError):
    pass


def reap_zombies():
    """Reaps children that already exited (a stopped daemon), discarding their usage."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def reap_engines():
    """Waits for the orphaned `vxd --stdio` children of the run that just ended (live, or
    already exited: a zombie has no cmdline) and returns their user+sys CPU."""
    cpu, pids = 0.0, []
    for tasks in glob.glob("/proc/self/task/*/children"):
        try:
            pids += [int(x) for x in open(tasks).read().split()]
        except OSError:
            pass
    for pid in pids:
        try:
            stat = open("/proc/%d/stat" % pid).read()
            cmd = open("/proc/%d/cmdline" % pid, "rb").read().split(b"\0")
        except OSError:
            continue
        zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
        if zombie or b"--stdio" in cmd:
            try:
                _, _, ru = os.wait4(pid, 0)
                cpu += ru.ru_utime + ru.ru_stime
            except ChildProcessError:
                pass
    return cpu

BENCH, VX_BIN, WORK = os.environ["BENCH"], os.environ["VX_BIN"], os.environ["WORK"]
PACKAGES, RUNS = int(os.environ["PACKAGES"]), int(os.environ["RUNS"])
TIMING = bool(os.environ.get("TIMING"))
SHAPE_ARGS = {"default": [], "dense": ["--width", "25", "--fanin", "4"]}[os.environ.get("SHAPE", "default")]
WANT = [r for r in os.environ["RUNNERS"].split(",") if r]
TURBO_BIN, NX_BIN = os.environ["TURBO_BIN"], os.environ["NX_BIN"]
SHIM = os.path.join(BENCH, "shim")
TASKS = ["build", "test", "lint"]
notes = []
failures = []


def sh_out(cmd, cwd=None, env=None):
    try:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120).stdout.strip()
    except Exception as e:  # noqa: BLE001
        return "? (%s)" % e


def rm(ws, *patterns):
    for p in patterns:
        for path in glob.glob(os.path.join(ws, p)):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)


def first_version(text):
    m = re.search(r"Local:\s*v?([\d.]+)", text) or re.search(r"(\d+\.\d+\.\d+)", text)
    return m.group(1) if m else text[:30]


# ---- runners: one column each. To add one (e.g. "vx-daemon"), add an entry. ----------
# cmd      argv, run in the runner's workspace copy
# env      extra environment
# cold     globs (relative to the workspace) deleted, besides packages/*/dist, for "cold"
# hits     regex with (cached, total) groups, searched in the run's stdout+stderr
# after    called after each scenario (untimed), e.g. to stop a daemon that started
# setup    called once on the fresh workspace copy
# version  string for the header
def turbo_after(ws):
    st = sh_out([TURBO_BIN, "daemon", "status"], cwd=ws)
    if "not running" not in st:
        notes.append("turbo daemon was running after a scenario; stopped it")
        sh_out([TURBO_BIN, "daemon", "stop"], cwd=ws)


def vx_daemon_after(ws, bin=None):
    """Records the daemon's RSS, then stops it (each scenario starts fresh)."""
    bin = bin or VX_BIN
    env = dict(os.environ, XDG_RUNTIME_DIR=os.path.join(os.environ["WORK"], "xdg"))
    os.makedirs(env["XDG_RUNTIME_DIR"], mode=0o700, exist_ok=True)
    st = sh_out([bin, "daemon", "status", "--json"], cwd=ws, env=env)
    try:
        info = json.loads(st)
        if info.get("running") and bin == VX_BIN:
            daemon_rss.append(info["rss_bytes"])
    except ValueError:
        pass
    sh_out([bin, "daemon", "stop"], cwd=ws, env=env)


# A baseline build of vx (VX_BASE_BIN: another commit's target/release/vx), measured
# in the same run as the current one: before/after figures side by side.
VX_BASE_BIN = os.environ.get("VX_BASE_BIN", "")


daemon_rss = []


def nx_setup(ws):
    os.symlink(os.path.join(BENCH, "tools", "node_modules"), os.path.join(ws, "node_modules"))


def nx_env(ws):
    d = os.path.join(BENCH, ".nxtmp", "vxb" + hashlib.sha1(ws.encode()).hexdigest()[:10])
    os.makedirs(d, mode=0o700, exist_ok=True)
    return {"NX_DAEMON": "false", "NX_SOCKET_DIR": d}


RUNNERS = {
    "vx": dict(
        cmd=[VX_BIN, "run", *TASKS, "--no-daemon", "--output-logs=none"],
        env={"VX_DAEMON": "0", **({"VX_TIMING": "1"} if TIMING else {})},
        cold=[".vx"],
        hits=r"Tasks:\s+(?P<total>\d+) total · (?P<cached>\d+) cached",
        available=lambda: os.access(VX_BIN, os.X_OK),
        version=lambda: sh_out([VX_BIN, "--version"]),
    ),
    "vx-daemon": dict(
        cmd=[VX_BIN, "run", *TASKS, "--output-logs=none"],
        env={"VX_DAEMON": "1", "XDG_RUNTIME_DIR": os.path.join(os.environ["WORK"], "xdg")},
        cold=[".vx"],
        hits=r"Tasks:\s+(?P<total>\d+) total · (?P<cached>\d+) cached",
        available=lambda: os.access(VX_BIN, os.X_OK),
        version=lambda: sh_out([VX_BIN, "--version"]) + " (daemon)",
        after=vx_daemon_after,
    ),
    # The daemon computing every run afresh (VX_REPLAY=0: no replay of a
    # repeat run's kept answer): the replay's before/after in one build.
    "vx-daemon-fresh": dict(
        cmd=[VX_BIN, "run", *TASKS, "--output-logs=none"],
        env={"VX_DAEMON": "1", "VX_REPLAY": "0", "XDG_RUNTIME_DIR": os.path.join(os.environ["WORK"], "xdg")},
        cold=[".vx"],
        hits=r"Tasks:\s+(?P<total>\d+) total · (?P<cached>\d+) cached",
        available=lambda: os.access(VX_BIN, os.X_OK),
        version=lambda: sh_out([VX_BIN, "--version"]) + " (daemon, VX_REPLAY=0)",
        after=vx_daemon_after,
    ),
    "vx-base": dict(
        cmd=[VX_BASE_BIN, "run", *TASKS, "--no-daemon", "--output-logs=none"],
        env={"VX_DAEMON": "0"},
        cold=[".vx"],
        hits=r"Tasks:\s+(?P<total>\d+) total · (?P<cached>\d+) cached",
        available=lambda: bool(VX_BASE_BIN) and os.access(VX_BASE_BIN, os.X_OK),
        version=lambda: sh_out([VX_BASE_BIN, "--version"]) + " (baseline)",
    ),
    "vx-base-daemon": dict(
        cmd=[VX_BASE_BIN, "run", *TASKS, "--output-logs=none"],
        env={"VX_DAEMON": "1", "XDG_RUNTIME_DIR": os.path.join(os.environ["WORK"], "xdg")},
        cold=[".vx"],
        hits=r"Tasks:\s+(?P<total>\d+) total · (?P<cached>\d+) cached",
        available=lambda: bool(VX_BASE_BIN) and os.access(VX_BASE_BIN, os.X_OK),
        version=lambda: sh_out([VX_BASE_BIN, "--version"]) + " (baseline, daemon)",
        after=lambda ws: vx_daemon_after(ws, VX_BASE_BIN),
    ),
    "turbo": dict(
        cmd=[TURBO_BIN, "run", *TASKS, "--concurrency=10", "--output-logs=none"],
        env={},
        cold=[".turbo", "packages/*/.turbo", "node_modules/.cache/turbo"],
        hits=r"Cached:\s+(?P<cached>\d+) cached, (?P<total>\d+) total",
        available=lambda: os.access(TURBO_BIN, os.X_OK),
        version=lambda: "turbo " + first_version(sh_out([TURBO_BIN, "--version"])),
        after=turbo_after,
    ),
    "nx": dict(
        cmd=[NX_BIN, "run-many", "-t", *TASKS, "--parallel=10"],
        env="nx",  # per workspace, see nx_env
        cold=[".nx"],
        hits=r"Cache:\s+(?P<cached>\d+)/(?P<total>\d+) hit",
        available=lambda: os.access(NX_BIN, os.X_OK),
        version=lambda: "nx " + first_version(sh_out([NX_BIN, "--version"], cwd=BENCH + "/tools", env=dict(os.environ, NX_DAEMON="false"))),
        setup=nx_setup,
        after=lambda ws: sh_out([NX_BIN, "daemon", "--stop"], cwd=ws, env=dict(os.environ, **nx_env(ws))),
    ),
}

runners = []
for name in WANT:
    if name not in RUNNERS:
        sys.exit("unknown runner %r (known: %s)" % (name, ", ".join(RUNNERS)))
    r = dict(RUNNERS[name], name=name)
    if not r["available"]():
        print("note: %s is not installed, skipped (bash %s/setup-peers.sh installs it)" % (name, BENCH), flush=True)
        continue
    runners.append(r)
if not runners or runners[0]["name"] != "vx":
    sys.exit("vx must be the first runner")
if "nx" not in WANT:
    notes.append("nx not measured (opt-in: --runners vx,turbo,nx; about 4 extra minutes at 1,000 packages)")

# ---- workspaces: one fresh copy per runner -------------------------------------------
print("generating %d-package workspaces in %s ..." % (PACKAGES, WORK), flush=True)
for r in runners:
    ws = os.path.join(WORK, r["name"])
    subprocess.run([sys.executable, os.path.join(BENCH, "gen-workspace.py"), ws, "--packages", str(PACKAGES), *SHAPE_ARGS],
                   check=True, stdout=subprocess.DEVNULL)
    r["ws"] = ws
    extra = nx_env(ws) if r["env"] == "nx" else r["env"]
    r["env_note"] = ["%s=%s " % kv for kv in sorted(extra.items()) if kv[0] != "NX_SOCKET_DIR"]
    env = dict(os.environ)
    env.update(extra)
    r["env"] = env
    if r.get("setup"):
        r["setup"](ws)
    r["ver"] = r["version"]()
meta = json.load(open(os.path.join(runners[0]["ws"], "bench-meta.json")))
NTASKS = meta["tasks"]
logf = os.path.join(WORK, "last-run.log")


# ---- one run -------------------------------------------------------------------------
def run(r, shim, timed=True):
    env = r["env"]
    if shim:
        env = dict(env, PATH=SHIM + os.pathsep + env["PATH"])
    reap_zombies()
    with open(logf, "wb") as out:
        t0 = time.perf_counter_ns()
        p = subprocess.Popen(r["cmd"], cwd=r["ws"], env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        _, status, ru = os.wait4(p.pid, 0)
        wall = (time.perf_counter_ns() - t0) / 1e9
        engine_cpu = reap_engines()
    text = open(logf, encoding="utf-8", errors="replace").read()
    m = re.search(r["hits"], text)
    hits = (int(m.group("cached")), int(m.group("total"))) if m else None
    stages = {}
    for name, ms in re.findall(r"vx timing: (.+?)\s+([\d.]+) ms", text):
        stages[name] = stages.get(name, 0.0) + float(ms)
    return dict(wall=wall, cpu=ru.ru_utime + ru.ru_stime + engine_cpu, peak=ru.ru_maxrss / 1024.0,
                code=os.waitstatus_to_exitcode(status), hits=hits, stages=stages, text=text)


def drop_outputs(r):
    rm(r["ws"], "packages/*/dist")


def clear_all(r):
    rm(r["ws"], "packages/*/dist", *r["cold"])


def touch_leaf(r):
    with open(os.path.join(r["ws"], meta["leaf"]["touch"]), "a") as f:
        f.write("// bench edit %d\n" % time.time_ns())


def touch_root(r):
    with open(os.path.join(r["ws"], meta["root"]["touch"]), "a") as f:
        f.write("// bench edit %d\n" % time.time_ns())


# The root-edited row re-executes most of the workspace per run: fewer runs.
ROOT_RUNS = max(1, min(RUNS, 3))


# key, label, prep before every run (untimed), warm-ups, timed runs, npm shim on PATH
SCENARIOS = [
    ("cold", "cold (1 run)", clear_all, 0, 1, True),
    ("cached", "fully cached", None, 1, RUNS, False),
    ("outputs", "outputs deleted", drop_outputs, 1, RUNS, False),
    ("leaf", "one leaf edited", touch_leaf, 1, RUNS, False),
    ("leaf-shim", "one leaf edited, npm shim", touch_leaf, 1, RUNS, True),
    ("root-shim", "root edited, npm shim", touch_root, 0, ROOT_RUNS, True),
]
# root-shim: every runner must agree with vx's count (which tasks a dependent's
# edit reaches depends on the task graph, not only on package edges).
ONLY = [k for k in os.environ.get("SCENARIOS", "").split(",") if k]
_known = [k for k, *_ in SCENARIOS] + ["git"]
for k in ONLY:
    if k not in _known:
        sys.exit("--scenarios: unknown scenario %r (known: %s)" % (k, ", ".join(_known)))
if ONLY:
    SCENARIOS = [sc for sc in SCENARIOS if sc[0] in ONLY]
WANT_GIT = not ONLY or "git" in ONLY
EXPECT_HITS = {"cold": 0, "cached": NTASKS, "outputs": NTASKS, "leaf": NTASKS - 3, "leaf-shim": NTASKS - 3,
               "root-shim": None}


def vx_json_sanity(r):
    out = subprocess.run(r["cmd"][:-1] + ["--json"], cwd=r["ws"], env=r["env"], capture_output=True, text=True).stdout
    last = out.strip().splitlines()[-1] if out.strip() else "{}"
    try:
        counts = json.loads(last)["summary"]["counts"]
    except Exception:  # noqa: BLE001
        counts = None
    ok = bool(counts) and counts.get("cached") == NTASKS and counts.get("total") == NTASKS and counts.get("executed") == 0
    return ok, counts


# ---- header ----------------------------------------------------------------------------
cpu_model = "?"
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu_model = line.split(":", 1)[1].strip()
        break
print("vx bench  %s" % time.strftime("%Y-%m-%d %H:%M:%S %Z"))
print("command   %s" % os.environ.get("BENCH_ARGV", ""))
print("machine   %s cores (nproc), %s, %s %s" % (os.cpu_count(), cpu_model, platform.system(), platform.release()))
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(VX_BIN))))
rev = sh_out(["git", "-C", root, "rev-parse", "--short", "HEAD"])
dirty = sh_out(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"])
print("runners   %s" % "; ".join("%s = %s" % (r["name"], r["ver"]) for r in runners))
print("vx tree   %s at %s%s (binary built %s)" % (root, rev, " + uncommitted changes" if dirty else "",
      time.strftime("%Y-%m-%d %H:%M", time.gmtime(os.path.getmtime(os.path.realpath(VX_BIN))))))
for r in runners:
    print("  %-6s %s%s" % (r["name"], " ".join(r["env_note"]), " ".join(r["cmd"])))
print("workspace gen-workspace.py --packages %d%s: %d packages, %d layers, %d edges, %d tasks; leaf %s; root %s (%d dependent packages)"
      % (PACKAGES, "".join(" " + a for a in SHAPE_ARGS), meta["packages"], meta["layers"], meta["edges"], NTASKS,
         meta["leaf"]["name"], meta["root"]["name"], meta["root"]["dependents"]))
print("runs      cold: 1; root edited: %d; others: 1 warm-up + %d timed, median (min-max); runners interleaved per run" % (ROOT_RUNS, RUNS))
print("load      %s (/proc/loadavg at start)" % open("/proc/loadavg").read().strip())
print(flush=True)

# ---- measure ---------------------------------------------------------------------------
results = {}  # (scenario key, runner name) -> list of run dicts
t_start = time.monotonic()
for key, label, prep, warm, n, shim in SCENARIOS:
    for i in range(warm + n):
        for r in runners:
            if prep:
                prep(r)
            res = run(r, shim)
            if i >= warm:
                results.setdefault((key, r["name"]), []).append(res)
            if res["code"] != 0:
                failures.append("%s / %s: exit code %d\n%s" % (label, r["name"], res["code"], res["text"][-2000:]))
    for r in runners:
        if r.get("after"):
            r["after"](r["ws"])
        rows = results[(key, r["name"])]
        walls = sorted(x["wall"] for x in rows)
        print("  %-26s %-6s median %7.3f s  (%.3f-%.3f)  cpu %.3f s  hits %s"
              % (label, r["name"], statistics.median(walls), walls[0], walls[-1],
                 statistics.median(x["cpu"] for x in rows),
                 "%d/%d" % rows[-1]["hits"] if rows[-1]["hits"] else "?"), flush=True)
    if key == "cached":
        ok, counts = vx_json_sanity(runners[0])
        print("  sanity: vx --json after the cached runs: counts %s -> %s"
              % (counts, "OK, all %d cached" % NTASKS if ok else "NOT all cached"), flush=True)
        if not ok:
            failures.append("vx --json after the cached runs: %s (expected %d cached, 0 executed)" % (counts, NTASKS))
    if key == "outputs":
        for r in runners:
            missing = [p for p in glob.glob(os.path.join(r["ws"], "packages", "*"))
                       if not os.path.isfile(os.path.join(p, "dist", "out.txt"))]
            if missing:
                failures.append("%s: %d packages without dist/out.txt after 'outputs deleted'" % (r["name"], len(missing)))
    for r in runners:
        for x in results[(key, r["name"])]:
            if x["hits"] is None:
                failures.append("%s / %s: no cache summary found in the output" % (label, r["name"]))
                break
            want = EXPECT_HITS[key]
            if want is None:
                vx_hits = results[(key, "vx")][-1]["hits"]
                want = vx_hits[0] if vx_hits else -1
            if x["hits"][0] != want:
                failures.append("%s / %s: %d/%d cached, expected %d" % (label, r["name"], x["hits"][0], x["hits"][1], want))
                break
elapsed = time.monotonic() - t_start

# The floor: git's own status on vx's copy (outputs in place, index warm).
git_status = []
for i in range(1 + RUNS if WANT_GIT else 0):
    t0 = time.perf_counter_ns()
    p = subprocess.Popen(["git", "status", "--porcelain"], cwd=runners[0]["ws"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    if i:
        git_status.append(dict(wall=(time.perf_counter_ns() - t0) / 1e9, cpu=ru.ru_utime + ru.ru_stime))

# ---- table -----------------------------------------------------------------------------
def med(rows, k):
    return statistics.median(x[k] for x in rows)


def cell(rows):
    return "%.3f s · cpu %.2f s" % (med(rows, "wall"), med(rows, "cpu"))


peers = [r for r in runners if r["name"] != "vx"]
head = ["scenario"] + [r["name"] + " (median wall · cpu)" for r in runners] + ["%s/vx" % r["name"] for r in peers]
table = []
for key, label, *_ in SCENARIOS:
    vxw = med(results[(key, "vx")], "wall")
    table.append([label] + [cell(results[(key, r["name"])]) for r in runners]
                 + ["%.1fx" % (med(results[(key, r["name"])], "wall") / vxw) for r in peers])
if git_status:
    table.append(["git status --porcelain (floor)", cell(git_status)] + [""] * (len(runners) - 1 + len(peers)))
widths = [max(len(row[i]) for row in [head] + table) for i in range(len(head))]
fmt = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"
print()
print(fmt(head))
print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for row in table:
    print(fmt(row))

print()
print("details (wall median / min / max, cpu median, peak RSS median, cache hits of the last run)")
for key, label, *_ in SCENARIOS:
    for r in runners:
        rows = results[(key, r["name"])]
        walls = [x["wall"] for x in rows]
        h = rows[-1]["hits"]
        print("  %-26s %-6s %7.3f  min %.3f  max %.3f  cpu %6.3f s  peak %6.1f MiB  hits %-11s runs %d"
              % (label, r["name"], statistics.median(walls), min(walls), max(walls), med(rows, "cpu"),
                 med(rows, "peak"), "%d/%d" % h if h else "?", len(rows)))

if TIMING:
    print()
    print("vx stage timings (VX_TIMING=1), median ms per scenario")
    names = []
    for key, *_ in SCENARIOS:
        for x in results[(key, "vx")]:
            names += [s for s in x["stages"] if s not in names]
    print("  %-26s" % "scenario" + "".join("%11s" % s[:10] for s in names))
    for key, label, *_ in SCENARIOS:
        rows = results[(key, "vx")]
        print("  %-26s" % label + "".join(
            "%11.1f" % statistics.median(x["stages"].get(s, 0.0) for x in rows) for s in names))

print()
if daemon_rss:
    print("vx daemon RSS after each scenario: max %.1f MiB, median %.1f MiB" % (max(daemon_rss) / 2**20, statistics.median(daemon_rss) / 2**20))
print("notes:")
print("  - cold and 'npm shim' rows: %s/npm first on PATH (turbo runs each task via `npm run`;"
      " the shim runs the script with sh -c). Other turbo rows use real npm; fully cached /"
      " outputs deleted start no task, so npm is not involved there." % SHIM)
print("  - vx: no daemon (--no-daemon, VX_DAEMON=0), default concurrency (2 x CPUs, at least 8; vx-base: its own default);"
      " turbo: --concurrency=10 as in run-peers.sh.")
for n in dict.fromkeys(notes):
    print("  - " + n)
print("  - load average at the end: %s" % open("/proc/loadavg").read().strip())
print("  - measuring took %.0f s; workspaces in %s%s" % (elapsed, WORK, "" if os.environ.get("KEEP") else " (deleted on exit)"))
if failures:
    print()
    print("SANITY FAILURES:")
    for f in failures:
        print("  - " + f)
    sys.exit(1)
print("sanity: all runs exited 0; cache hits as expected in every scenario")
PY
