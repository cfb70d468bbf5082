#!/usr/bin/env bash
# Builds a Debian package of vx with plain `dpkg-deb --build` (no cargo-deb: installing it
# costs CI minutes): /usr/bin/vx and /usr/bin/vxd, the bash/zsh/fish completions, the man
# pages (gzipped) and a copyright file.
#
#   packaging/deb.sh [--profile release|debug] [--bin-dir DIR] [--out DIR]
#
#   --profile P      build with this cargo profile first (default: release). CI passes
#                    `--profile debug` to package the debug binaries its test step built
#                    (a release build takes 10+ minutes there); release packages use release.
#   --bin-dir DIR    package the prebuilt vx and vxd from DIR instead of building
#   --out DIR        where to write vx_<version>_<arch>.deb (default: target/deb)
#   --compress C     xz (default: smallest), gzip or none (fastest: tests of the
#                    180 MB debug binaries spend a minute and a half in xz otherwise)
#
# Version: [workspace.package] version in Cargo.toml (checked against `vx --version`).
# Architecture: `dpkg --print-architecture`. Maintainer: $DEBFULLNAME <$DEBEMAIL> when set.
# Prints the path of the .deb on its last line.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
profile=release
bin_dir=
out=
compress=xz

die() { echo "deb.sh: error: $*" >&2; exit 1; }
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --profile) [ $# -ge 2 ] || die "--profile needs release or debug"; profile="$2"; shift 2 ;;
    --profile=*) profile="${1#*=}"; shift ;;
    --bin-dir) [ $# -ge 2 ] || die "--bin-dir needs a directory"; bin_dir="$2"; shift 2 ;;
    --bin-dir=*) bin_dir="${1#*=}"; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out="$2"; shift 2 ;;
    --out=*) out="${1#*=}"; shift ;;
    --compress) [ $# -ge 2 ] || die "--compress needs xz, gzip or none"; compress="$2"; shift 2 ;;
    --compress=*) compress="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

case "$compress" in
  xz|gzip|none) ;;
  *) die "--compress must be xz, gzip or none, not $compress" ;;
esac
command -v dpkg-deb >/dev/null || die "dpkg-deb is not on PATH (this script builds Debian packages on Debian/Ubuntu)"
target="${CARGO_TARGET_DIR:-$root/target}"
out="${out:-$target/deb}"

if [ -z "$bin_dir" ]; then
  case "$profile" in
    release) flag=--release; sub=release ;;
    debug|dev) flag=; sub=debug ;;
    *) die "--profile must be release or debug, not $profile" ;;
  esac
  command -v cargo >/dev/null || die "cargo is not on PATH (or pass --bin-dir DIR)"
  echo "building vx and vxd ($profile profile)" >&2
  cargo build $flag --locked --manifest-path "$root/Cargo.toml" -p vx -p vxd -p vx-cache-server >&2
  bin_dir="$target/$sub"
fi
for b in vx vxd; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing or not executable"
done

# The version of [workspace.package] in Cargo.toml.
version="$(awk '
  /^\[/ { in_ws = ($0 == "[workspace.package]") }
  in_ws && $1 == "version" { gsub(/[" ]/, "", $3); print $3; exit }
' "$root/Cargo.toml")"
[ -n "$version" ] || die "no version in [workspace.package] of $root/Cargo.toml"
have="$("$bin_dir/vx" --version)"
[ "$have" = "vx $version" ] || die "$bin_dir/vx says \"$have\", Cargo.toml says $version: stale binaries?"
arch="$(dpkg --print-architecture)"
maintainer="${DEBFULLNAME:-vx developers} <${DEBEMAIL:-vx@localhost}>"

# libc6 (>= the newest GLIBC_ symbol version the binaries need) when objdump can tell.
libc_dep=libc6
if command -v objdump >/dev/null; then
  glibc="$(objdump -T "$bin_dir/vx" "$bin_dir/vxd" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)"
  [ -n "$glibc" ] && libc_dep="libc6 (>= $glibc)"
fi
depends="$libc_dep"
# Rust's std links libgcc_s for unwinding (on glibc targets).
if command -v readelf >/dev/null && readelf -d "$bin_dir/vx" "$bin_dir/vxd" | grep -q 'libgcc_s\.so'; then
  depends="$depends, libgcc-s1"
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
pkg="$stage/vx_${version}_${arch}"
install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/usr/share/bash-completion/completions" \
  "$pkg/usr/share/zsh/vendor-completions" "$pkg/usr/share/fish/vendor_completions.d" \
  "$pkg/usr/share/man/man1" "$pkg/usr/share/doc/vx"
install -m 0755 "$bin_dir/vx" "$bin_dir/vxd" "$pkg/usr/bin/"
# The remote cache server `vx cache serve` runs, when it was built.
if [ -x "$bin_dir/vx-cache-server" ]; then install -m 0755 "$bin_dir/vx-cache-server" "$pkg/usr/bin/"; fi
"$bin_dir/vx" completions bash >"$pkg/usr/share/bash-completion/completions/vx"
"$bin_dir/vx" completions zsh >"$pkg/usr/share/zsh/vendor-completions/_vx"
"$bin_dir/vx" completions fish >"$pkg/usr/share/fish/vendor_completions.d/vx.fish"
"$bin_dir/vx" __man "$pkg/usr/share/man/man1" >/dev/null
gzip -9n "$pkg"/usr/share/man/man1/*.1
cat >"$pkg/usr/share/doc/vx/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: vx

Files: *
License: MIT OR Apache-2.0
EOF
chmod -R u=rwX,go=rX "$pkg/usr"
installed_kb="$(du -sk "$pkg/usr" | cut -f1)"

cat >"$pkg/DEBIAN/control" <<EOF
Package: vx
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_kb
Depends: $depends
Recommends: git
Section: devel
Priority: optional
Description: fast monorepo task runner with a trustworthy cache
 vx runs a monorepo's tasks (build, test, lint, ...) in dependency order and in
 parallel, and restores unchanged tasks from a content-addressed cache. The vx
 client talks to vxd, a per-workspace daemon that keeps the task graph and file
 hashes warm between runs.
EOF

mkdir -p "$out"
deb="$out/vx_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"$compress" --build "$pkg" "$deb" >&2
echo "built $deb ($depends; $installed_kb KiB installed)" >&2
echo "$deb"
