#!/usr/bin/env bash
# Builds the hull guest kernel from Debian's linux-source-6.1: tinyconfig + kernel.fragment.
# Output: $HULL_CACHE_DIR/kernel/<key>/{vmlinux,bzImage,config}, where <key> hashes the
# fragment, this script and the source package version; a build with the same key is reused.
# $HULL_CACHE_DIR/{vmlinux,bzImage} are links to the current build.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${HULL_CACHE_DIR:-$HOME/.cache/hull}
src_tar=/usr/src/linux-source-6.1.tar.xz
jobs=${HULL_KERNEL_JOBS:-$(( $(nproc) + 1 ))}

step() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[ -f "$src_tar" ] || die "kernel source $src_tar is missing: install it with 'apt-get install linux-source-6.1' (or run 'make deps' as root)"
for tool in gcc make flex bison bc; do
    command -v "$tool" >/dev/null || die "'$tool' is missing, needed to build the guest kernel: run 'make deps' as root"
done
[ -f /usr/include/libelf.h ] || die "libelf headers are missing: apt-get install libelf-dev"
[ -f /usr/include/openssl/ssl.h ] || die "openssl headers are missing: apt-get install libssl-dev"

src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || stat -c %Y "$src_tar")
key=$( { cat "$here/kernel.fragment" "$0"; echo "$src_version"; } | sha256sum | cut -c1-16)
out="$cache/kernel/$key"

if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
    step "guest kernel is cached: $out (key $key, linux-source-6.1 $src_version)"
else
    step "building the guest kernel (key $key) from linux-source-6.1 $src_version with $jobs jobs; this takes a few minutes once"
    work="$cache/kernel-build"
    srcdir="$work/linux-source-6.1"
    if [ ! -f "$srcdir/Makefile" ] || [ "$(cat "$work/source-version" 2>/dev/null)" != "$src_version" ]; then
        step "unpacking $src_tar"
        rm -rf "$work"
        mkdir -p "$work"
        tar -C "$work" -xf "$src_tar"
        echo "$src_version" > "$work/source-version"
    fi
    objdir="$work/obj-$key"
    rm -rf "$objdir"
    mkdir -p "$objdir"
    make -s -C "$srcdir" O="$objdir" ARCH=x86_64 tinyconfig >/dev/null
    "$srcdir/scripts/kconfig/merge_config.sh" -m -O "$objdir" "$objdir/.config" "$here/kernel.fragment" >/dev/null
    make -s -C "$srcdir" O="$objdir" ARCH=x86_64 olddefconfig >/dev/null

    # Every option of the fragment must have taken: kconfig drops silently what it cannot set.
    missing=()
    while IFS= read -r line; do
        case "$line" in ''|'#'*) continue ;; esac
        grep -qxF "$line" "$objdir/.config" || missing+=("$line")
    done < "$here/kernel.fragment"
    if [ ${#missing[@]} -gt 0 ]; then
        die "these options of agent/image/kernel.fragment did not take (check their dependencies): ${missing[*]}"
    fi

    make -s -C "$srcdir" O="$objdir" ARCH=x86_64 -j"$jobs" vmlinux bzImage
    mkdir -p "$out.tmp"
    cp "$objdir/vmlinux" "$out.tmp/vmlinux"
    cp "$objdir/arch/x86/boot/bzImage" "$out.tmp/bzImage"
    cp "$objdir/.config" "$out.tmp/config"
    rm -rf "$out"
    mv "$out.tmp" "$out"
    rm -rf "$objdir"
    step "guest kernel built: $out"
fi

ln -sfn "kernel/$key/vmlinux" "$cache/vmlinux"
ln -sfn "kernel/$key/bzImage" "$cache/bzImage"
