#!/usr/bin/env bash
# Installs vx: the `vx` client and the `vxd` engine side by side (the client finds the
# engine next to itself), the bash/zsh/fish completions and the man pages, into a prefix.
#
#   packaging/install.sh [--prefix DIR] [--profile release|debug] [--bin-dir DIR]
#
#   --prefix DIR     where to install (default: ~/.local). Files go to DIR/bin,
#                    DIR/share/bash-completion/completions/vx, DIR/share/zsh/site-functions/_vx,
#                    DIR/share/fish/vendor_completions.d/vx.fish, DIR/share/man/man1/vx*.1
#   --profile P      build with this cargo profile first (default: release)
#   --bin-dir DIR    install the prebuilt vx and vxd from DIR instead of building
#
# A bare first argument is taken as the prefix (the old `install.sh PREFIX`). Running it
# again replaces the installed files (idempotent); it removes nothing else.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="${HOME:-}/.local"
profile=release
bin_dir=

die() { echo "install.sh: error: $*" >&2; exit 1; }
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix="$2"; shift 2 ;;
    --prefix=*) prefix="${1#*=}"; shift ;;
    --profile) [ $# -ge 2 ] || die "--profile needs release or debug"; profile="$2"; shift 2 ;;
    --profile=*) profile="${1#*=}"; shift ;;
    --bin-dir) [ $# -ge 2 ] || die "--bin-dir needs a directory"; bin_dir="$2"; shift 2 ;;
    --bin-dir=*) bin_dir="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) prefix="$1"; shift ;;
  esac
done
[ -n "$prefix" ] || die "no prefix (HOME is not set: pass --prefix DIR)"

if [ -z "$bin_dir" ]; then
  case "$profile" in
    release) flag=--release; sub=release ;;
    debug|dev) flag=; sub=debug ;;
    *) die "--profile must be release or debug, not $profile" ;;
  esac
  command -v cargo >/dev/null || die "cargo is not on PATH (install Rust, or pass --bin-dir DIR with prebuilt binaries)"
  echo "building vx and vxd ($profile profile; a first release build takes several minutes)"
  cargo build $flag --locked --manifest-path "$root/Cargo.toml" -p vx -p vxd -p vx-cache-server
  bin_dir="${CARGO_TARGET_DIR:-$root/target}/$sub"
fi
for b in vx vxd; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing or not executable"
done

gen="$(mktemp -d)"
trap 'rm -rf "$gen"' EXIT
# Completions and man pages come from the binary being installed (one clap definition).
"$bin_dir/vx" completions bash >"$gen/vx.bash"
"$bin_dir/vx" completions zsh >"$gen/_vx"
"$bin_dir/vx" completions fish >"$gen/vx.fish"
"$bin_dir/vx" __man "$gen/man" >/dev/null

install -d "$prefix/bin" "$prefix/share/bash-completion/completions" \
  "$prefix/share/zsh/site-functions" "$prefix/share/fish/vendor_completions.d" \
  "$prefix/share/man/man1"
install -m 0755 "$bin_dir/vx" "$bin_dir/vxd" "$prefix/bin/"
# The remote cache server `vx cache serve` runs, when it was built.
if [ -x "$bin_dir/vx-cache-server" ]; then install -m 0755 "$bin_dir/vx-cache-server" "$prefix/bin/"; fi
install -m 0644 "$gen/vx.bash" "$prefix/share/bash-completion/completions/vx"
install -m 0644 "$gen/_vx" "$prefix/share/zsh/site-functions/_vx"
install -m 0644 "$gen/vx.fish" "$prefix/share/fish/vendor_completions.d/vx.fish"
install -m 0644 "$gen"/man/*.1 "$prefix/share/man/man1/"
pages=$(ls "$gen/man" | wc -l)

echo "installed into $prefix:"
echo "  bin/vx, bin/vxd                         $("$prefix/bin/vx" --version)"
echo "  share/bash-completion/completions/vx    bash completion"
echo "  share/zsh/site-functions/_vx            zsh completion"
echo "  share/fish/vendor_completions.d/vx.fish fish completion"
echo "  share/man/man1/                         $pages man pages (man vx, man vx-run, ...)"
case ":${PATH:-}:" in
  *":$prefix/bin:"*) ;;
  *) echo "note: $prefix/bin is not on PATH; add it: export PATH=\"$prefix/bin:\$PATH\"" ;;
esac
case "$prefix" in
  /usr|/usr/local) ;;
  *) echo "note: zsh reads $prefix/share/zsh/site-functions only if it is on fpath (fpath+=($prefix/share/zsh/site-functions) before compinit)" ;;
esac
