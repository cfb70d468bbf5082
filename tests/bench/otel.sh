#!/usr/bin/env bash
# Telemetry's cost on a fully cached run: the same 3,000-task workspace
# (gen-workspace.py --packages 1000), run with export off, with export to a
# live OTLP receiver (tests/otel/otlp_receiver.py, HTTP/protobuf), and with
# export to a dead endpoint (nothing listens), taking turns run by run.
# Results: docs/benchmarks.md ("Telemetry").
#
#   cargo build --release -p vx -p vxd
#   tests/bench/otel.sh [-n RUNS] [--packages N] [--daemon] [--json]
#
# The runs use the default rendering (only changes reach the terminal): a
# traced run publishes every task on the event bus whatever its client asked
# for, so every task is a span, and an untraced run does not, so "off" is
# the real price of a run without telemetry. --json makes every run (off
# too) ask for every task's events.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
RUNS=5
PACKAGES=1000
DAEMON=0
JSON=
while [ $# -gt 0 ]; do
  case "$1" in
    -n) RUNS=$2; shift 2 ;;
    --packages) PACKAGES=$2; shift 2 ;;
    --daemon) DAEMON=1; shift ;;
    --json) JSON=--json; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
VX=${VX_BIN:-$REPO/target/release/vx}
PY=${PYTHON:-$REPO/tests/peers/.venv/bin/python}
[ -x "$VX" ] || { echo "build first: cargo build --release -p vx -p vxd" >&2; exit 1; }
[ -x "$PY" ] || { echo "run tests/peers/setup.sh first (the receiver needs opentelemetry-proto, grpcio)" >&2; exit 1; }
WORK=$(mktemp -d)
RX_PID=
cleanup() {
  [ -n "$RX_PID" ] && kill "$RX_PID" 2>/dev/null || true
  (cd "$WORK/ws" 2>/dev/null && VX_DAEMON=1 "$VX" daemon stop >/dev/null 2>&1) || true
  rm -rf "$WORK"
}
trap cleanup EXIT
python3 tests/bench/kit/gen-workspace.py "$WORK/ws" --packages "$PACKAGES" >/dev/null
# The receiver: its stdin is a fifo we hold open; its output is counted.
mkfifo "$WORK/rx.in"
"$PY" tests/otel/otlp_receiver.py <"$WORK/rx.in" >"$WORK/rx.out" &
RX_PID=$!
exec 3>"$WORK/rx.in"
for _ in $(seq 100); do grep -q READY "$WORK/rx.out" 2>/dev/null && break; sleep 0.1; done
HTTP_PORT=$(awk '/READY/ {print $3}' "$WORK/rx.out")
DEAD_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cd "$WORK/ws"
run() { # run LABEL [ENV...]
  local label=$1; shift
  local t0 t1
  t0=$(date +%s%N)
  env VX_DAEMON=$DAEMON "$@" "$VX" run build test lint --output-logs=none $JSON >/dev/null
  t1=$(date +%s%N)
  echo "$label $(( (t1 - t0) / 1000000 ))" >>"$WORK/times"
}
# Warm-up: fill the cache (and start the daemon, with --daemon).
run warmup
run warmup
for _ in $(seq "$RUNS"); do
  run off
  run live OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$HTTP_PORT
  run dead OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$DEAD_PORT
done
mode=$([ "$DAEMON" = 1 ] && echo daemon || echo no-daemon)
echo "fully cached run, $PACKAGES packages ($((PACKAGES * 3)) tasks), $mode${JSON:+, --json}, $RUNS runs each: median (min–max) ms"
for label in off live dead; do
  awk -v l=$label '$1 == l {print $2}' "$WORK/times" | sort -n | awk -v l=$label '
    {v[NR]=$1} END {printf "  %-5s %6d  (%d–%d)\n", l, v[int((NR+1)/2)], v[1], v[NR]}'
done
# The daemon exports in batches off the run's path: give the last batch up
# to 10 s to arrive.
count_spans() { grep -o "\"cicd.pipeline.task.name\"" "$WORK/rx.out" | wc -l || true; }
for _ in $(seq 100); do
  [ "$(count_spans)" -ge $((RUNS * PACKAGES * 3)) ] && break
  sleep 0.1
done
spans=$(count_spans)

echo "  the receiver got $spans task spans (expected $((RUNS * PACKAGES * 3)))"
