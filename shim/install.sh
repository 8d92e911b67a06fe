#!/usr/bin/env bash
# `make install`: puts the shim, the hull CLI, the backends, the host agent, the guest image and
# the default configuration where containerd and hull look for them, then prints the
# containerd configuration snippet that registers the runtime.
#
# Environment (all optional):
#   DESTDIR      staging root, prefixed to every path written (packaging, tests)
#   PREFIX       /usr/local: binaries in $PREFIX/bin, guest image in $PREFIX/share/hull
#   DEFAULTSDIR  /usr/share/defaults/hull: where the default configuration.toml goes
#   BIN_SRC      target/release: where the built binaries are
#   IMAGE_SRC    $HULL_CACHE_DIR or ~/.cache/hull: where `make image` left vmlinux and initrd.img
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
DEFAULTSDIR=${DEFAULTSDIR:-/usr/share/defaults/hull}
BIN_SRC=${BIN_SRC:-$here/../target/release}
IMAGE_SRC=${IMAGE_SRC:-${HULL_CACHE_DIR:-$HOME/.cache/hull}}

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
step() { printf '==> %s\n' "$*"; }

# Every binary a pod can need: the shim finds its helpers beside itself first.
binaries=(containerd-shim-hull-v2 hull hull-agent hull-vsock hull-blk hull-net hull-fs hull-vmm)
for bin in "${binaries[@]}"; do
    [ -x "$BIN_SRC/$bin" ] || die "$BIN_SRC/$bin is missing: run 'make build' first"
done
for file in vmlinux initrd.img; do
    [ -f "$IMAGE_SRC/$file" ] || die "$IMAGE_SRC/$file is missing: run 'make image' first"
done
[[ $PREFIX == /* ]] || die "PREFIX=$PREFIX is not an absolute path"
[[ $DEFAULTSDIR == /* ]] || die "DEFAULTSDIR=$DEFAULTSDIR is not an absolute path"

bindir=$PREFIX/bin
imagedir=$PREFIX/share/hull

step "installing binaries into $DESTDIR$bindir"
install -d -m 0755 "$DESTDIR$bindir"
for bin in "${binaries[@]}"; do
    install -m 0755 "$BIN_SRC/$bin" "$DESTDIR$bindir/$bin"
done

step "installing the guest image into $DESTDIR$imagedir"
install -d -m 0755 "$DESTDIR$imagedir"
install -m 0644 "$IMAGE_SRC/vmlinux" "$DESTDIR$imagedir/vmlinux"
install -m 0644 "$IMAGE_SRC/initrd.img" "$DESTDIR$imagedir/initrd.img"

# The commented default file, with the image paths pointing at the installed image (the
# built-in default, the user's cache, is not where an installed system keeps it).
step "installing the default configuration into $DESTDIR$DEFAULTSDIR"
install -d -m 0755 "$DESTDIR$DEFAULTSDIR"
config=$DESTDIR$DEFAULTSDIR/configuration.toml
sed -e "s|^kernel = \"\"|kernel = \"$imagedir/vmlinux\"|" \
    -e "s|^initrd = \"\"|initrd = \"$imagedir/initrd.img\"|" \
    "$here/configuration.toml" > "$config.tmp"
grep -q "^kernel = \"$imagedir/vmlinux\"" "$config.tmp" && grep -q "^initrd = \"$imagedir/initrd.img\"" "$config.tmp" \
    || { rm -f "$config.tmp"; die "shim/configuration.toml has no 'kernel = \"\"' or 'initrd = \"\"' line to point at the image"; }
chmod 0644 "$config.tmp"
mv "$config.tmp" "$config"

cat <<EOF
==> installed. Register the runtime with containerd (/etc/containerd/config.toml), then
    restart containerd; $bindir must be on containerd's PATH (it is by default):

    version = 2
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hull]
      runtime_type = "io.containerd.hull.v2"

    Try it: ctr run --rm --runtime io.containerd.hull.v2 docker.io/library/busybox:latest demo echo hello
    Check the host: hull check
EOF
