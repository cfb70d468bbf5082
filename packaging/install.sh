#!/usr/bin/env bash
# Builds vx and installs `vx` and `vxd` side by side (the client finds the engine next
# to itself).   packaging/install.sh [PREFIX]   (default: ~/.local; binaries in PREFIX/bin)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="${1:-$HOME/.local}"
target="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release --locked --manifest-path "$root/Cargo.toml" -p vx -p vxd
install -d "$prefix/bin"
install -m 0755 "$target/release/vx" "$target/release/vxd" "$prefix/bin/"
echo "installed vx and vxd into $prefix/bin"
"$prefix/bin/vx" --version
case ":$PATH:" in *":$prefix/bin:"*) ;; *) echo "note: $prefix/bin is not on PATH" ;; esac
