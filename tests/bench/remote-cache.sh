#!/usr/bin/env bash
# Remote cache servers side by side, one run, same machine, same local-directory
# storage: vx-cache-server (release) and npm turborepo-remote-cache (tests/peers).
#   1. throughput: tests/examples/remote_load.rs, 64 keep-alive clients, PUT then GET
#      of distinct 10 KB and 10 MB artifacts (requests/s and MB/s);
#   2. end to end: a generated 1,000-package workspace (3,000 tasks), filled once,
#      then timed with the local cache and outputs wiped (a fully remote-hit run),
#      for vx and for turbo against each server.
# Needs: cargo build --release -p vx -p vxd -p vx-cache-server; tests/peers/setup.sh.
#   tests/bench/remote-cache.sh [--packages N] [--skip-e2e]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
packages=1000
e2e=1
while [ $# -gt 0 ]; do
  case "$1" in
    --packages) packages="$2"; shift 2 ;;
    --skip-e2e) e2e=0; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
rel="$root/target/release"
peers="$root/tests/peers/node_modules"
token=bench-token-0001
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
need="vx-cache-server"; [ "$e2e" = 1 ] && need="vx vxd vx-cache-server"
for b in $need; do [ -x "$rel/$b" ] || { echo "build $rel/$b first" >&2; exit 1; }; done
[ -e "$peers/turborepo-remote-cache/dist/cli.js" ] || { echo "run tests/peers/setup.sh" >&2; exit 1; }
# The load generator is std only: compiled on its own, optimised.
load="$work/remote_load"
rustc -O --edition 2024 -o "$load" "$root/tests/examples/remote_load.rs"

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

# start_server vx|node STORE_DIR -> sets $port
start_server() {
  port="$(free_port)"
  rm -rf "$2"; mkdir -p "$2"
  if [ "$1" = vx ]; then
    "$rel/vx-cache-server" --listen "127.0.0.1:$port" --store "$2" --token-rw "$token" \
      --max-artifact-size 64M >/dev/null 2>"$work/vx.log" &
  else
    HOST=127.0.0.1 PORT="$port" STORAGE_PROVIDER=local STORAGE_PATH="$2" STORAGE_PATH_USE_TMP_FOLDER=false \
      TURBO_TOKEN="$token" LOG_LEVEL=warn ENABLE_STATUS_LOG=false \
      node "$peers/turborepo-remote-cache/dist/cli.js" >"$work/node.log" 2>&1 &
  fi
  pids+=($!)
  server_pid=$!
  wait_port "$port"
}
stop_server() { kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; }

loadavg() { echo "# load average: $(cut -d' ' -f1-3 /proc/loadavg) ($1)"; }
loadavg start
echo "# throughput (64 clients, loopback; one JSON line per server and size)"
for size in 10240 10485760; do
  count=$([ "$size" -eq 10240 ] && echo 20000 || echo 640)
  for server in vx node; do
    start_server "$server" "$work/store-$server"
    "$load" "127.0.0.1:$port" "$token" "$size" "$count" 64 "$server"
    stop_server
  done
done
loadavg "after throughput"

[ "$e2e" = 1 ] || exit 0
echo "# end to end: $packages packages, 3 tasks each, fully remote hit (local cache and outputs wiped)"
ws="$work/ws"
python3 "$root/tests/bench/kit/gen-workspace.py" "$ws" --packages "$packages" >/dev/null
export TURBO_TELEMETRY_DISABLED=1 DO_NOT_TRACK=1 TURBO_NO_UPDATE_NOTIFIER=1 VX_DAEMON=0
shim="$root/tests/bench/kit/shim"
turbo="$peers/.bin/turbo"
wipe() { (cd "$ws" && rm -rf .vx .turbo node_modules/.cache && find packages -name dist -type d -prune -exec rm -rf {} + && find packages -name .turbo -type d -prune -exec rm -rf {} +); }
timed() { local t0 t1; t0=$(date +%s.%N); "$@" >"$work/out.log" 2>&1 || { tail -20 "$work/out.log"; exit 1; }; t1=$(date +%s.%N); python3 -c "print(f'{$t1-$t0:.2f}')"; }
for server in vx node; do
  start_server "$server" "$work/e2e-$server"
  url="http://127.0.0.1:$port"
  vxrun() { (cd "$ws" && VX_REMOTE_CACHE_URL="$url" VX_REMOTE_CACHE_TOKEN="$token" VX_REMOTE_CACHE_TEAM=bench "$rel/vx" run build test lint); }
  turborun() { (cd "$ws" && PATH="$shim:$PATH" "$turbo" run build test lint --api "$url" --token "$token" --team bench); }
  wipe; fill_vx=$(timed vxrun); wipe; hit_vx=$(timed vxrun)
  grep -q "3000 from the remote cache\|$((packages*3)) from the remote cache" "$work/out.log" || { echo "vx: not all remote hits:"; tail -5 "$work/out.log"; }
  wipe; fill_turbo=$(timed turborun); wipe; hit_turbo=$(timed turborun)
  grep -q "FULL TURBO" "$work/out.log" || { echo "turbo: not a full hit:"; tail -5 "$work/out.log"; }
  loadavg "after $server end to end"
  echo "{\"server\":\"$server\",\"packages\":$packages,\"vx_fill_s\":$fill_vx,\"vx_remote_hit_s\":$hit_vx,\"turbo_fill_s\":$fill_turbo,\"turbo_remote_hit_s\":$hit_turbo}"
  stop_server
done
