#!/usr/bin/env bash
# Builds the hull guest initrd: a newc cpio archive whose /init is a statically linked
# hull-agent. HULL_IMAGE_DEBUG=1 adds busybox (/bin/sh and friends) for debugging;
# HULL_INITRD_PROGRAMS adds host programs with their shared libraries (see below).
# Usage: build-initrd.sh AGENT_BINARY [OUTPUT]   (OUTPUT defaults to $HULL_CACHE_DIR/initrd.img)
set -euo pipefail

cache=${HULL_CACHE_DIR:-$HOME/.cache/hull}
agent=${1:?usage: build-initrd.sh AGENT_BINARY [OUTPUT]}
out=${2:-$cache/initrd.img}
src_tar=/usr/src/linux-source-6.1.tar.xz

step() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[ -x "$agent" ] || die "agent binary $agent is missing: build it with 'make agent'"
command -v strip >/dev/null || die "'strip' is missing: apt-get install binutils"
if readelf -l "$agent" 2>/dev/null | grep -q 'program interpreter'; then
    die "$agent is dynamically linked; the initrd has no shared libraries: build it with 'make agent'"
fi

# gen_init_cpio (from the kernel tree) writes device nodes and owners without needing root.
gen=$cache/tools/gen_init_cpio
if [ ! -x "$gen" ]; then
    [ -f "$src_tar" ] || die "kernel source $src_tar is missing: apt-get install linux-source-6.1"
    mkdir -p "$cache/tools"
    step "building gen_init_cpio from $src_tar"
    src=$cache/kernel-build/linux-source-6.1/usr/gen_init_cpio.c
    if [ ! -f "$src" ]; then
        src=$cache/tools/gen_init_cpio.c
        tar -xJOf "$src_tar" linux-source-6.1/usr/gen_init_cpio.c > "$src"
    fi
    gcc -O2 -o "$gen.tmp" "$src"
    mv "$gen.tmp" "$gen"
fi

list=$(mktemp)
stripped=$(mktemp)
trap 'rm -f "$list" "$stripped" "$out.tmp"' EXIT
# Debug info is most of a release binary (29 MB of the agent's 33): drop it, keep the symbol
# names so a panic's backtrace still names functions.
strip --strip-debug -o "$stripped" "$agent"
chmod 0755 "$stripped"
cat > "$list" <<LIST
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
nod /dev/null 0666 0 0 c 1 3
dir /proc 0555 0 0
dir /sys 0555 0 0
dir /run 0755 0 0
dir /tmp 01777 0 0
dir /etc 0755 0 0
dir /mnt 0755 0 0
file /init $stripped 0755 0 0
LIST
if [ "${HULL_IMAGE_DEBUG:-0}" = 1 ]; then
    [ -x /bin/busybox ] || die "HULL_IMAGE_DEBUG=1 needs /bin/busybox: apt-get install busybox-static"
    printf 'dir /bin 0755 0 0\nfile /bin/busybox /bin/busybox 0755 0 0\nslink /bin/sh busybox 0777 0 0\n' >> "$list"
fi

# HULL_INITRD_PROGRAMS="PATH ..." adds host programs under /bin, each with the shared
# libraries ldd lists for it at their own paths (test guests use it for e2fsprogs).
add_dir() {
    [ "$1" = / ] && return
    add_dir "$(dirname "$1")"
    grep -qx "dir $1 0755 0 0" "$list" || printf 'dir %s 0755 0 0\n' "$1" >> "$list"
}
for program in ${HULL_INITRD_PROGRAMS:-}; do
    [ -x "$program" ] || die "HULL_INITRD_PROGRAMS: $program is not an executable"
    add_dir /bin
    printf 'file /bin/%s %s 0755 0 0\n' "$(basename "$program")" "$(readlink -f "$program")" >> "$list"
    for lib in $(ldd "$program" 2>/dev/null | grep -o '/[^ ]*' || true); do
        add_dir "$(dirname "$lib")"
        grep -q "^file $lib " "$list" || printf 'file %s %s 0755 0 0\n' "$lib" "$(readlink -f "$lib")" >> "$list"
    done
done

mkdir -p "$(dirname "$out")"
"$gen" "$list" > "$out.tmp"
mv "$out.tmp" "$out"
step "initrd built: $out ($(( $(stat -c %s "$out") / 1024 )) KiB, debug=${HULL_IMAGE_DEBUG:-0})"
