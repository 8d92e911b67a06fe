#!/usr/bin/env bash
# `make demo` until the shim lands: boots the guest image under QEMU (KVM where hardware
# virtualization works, TCG otherwise) and shows what hull-agent reports from inside it.
set -euo pipefail

cache=${HULL_CACHE_DIR:-$HOME/.cache/hull}
kernel=$cache/vmlinux
initrd=$cache/initrd.img
step() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing: apt-get install qemu-system-x86"
[ -f "$kernel" ] || die "guest kernel $kernel is missing: run 'make image'"
[ -f "$initrd" ] || die "guest initrd $initrd is missing: run 'make image'"

accel=tcg cpu=max
if [ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
    accel=kvm cpu=host
else
    step "no hardware virtualization here (no vmx/svm): the guest runs under QEMU TCG, slower"
fi

step "booting the hull guest: QEMU microvm ($accel), kernel $kernel, hull-agent as /init"
start=$(date +%s.%N)
qemu-system-x86_64 -M microvm,acpi=off -accel "$accel" -cpu "$cpu" -m 256 -smp 2 \
    -nodefaults -no-user-config -display none -no-reboot -serial stdio \
    -kernel "$kernel" -initrd "$initrd" \
    -append "console=ttyS0 reboot=t panic=-1 agent.selftest=1 agent.hostname=hull-demo" \
    </dev/null | tee "${TMPDIR:-/tmp}/hull-demo-console.log" | sed -u 's/^/  guest | /'
end=$(date +%s.%N)
step "the guest stopped itself after $(printf '%.1f' "$(echo "$end - $start" | bc)") s"

log=${TMPDIR:-/tmp}/hull-demo-console.log
if grep -q 'hull-agent: self-test passed' "$log"; then
    step "proof from inside the guest:"
    grep -E '^hull-agent[ :]' "$log" | sed 's/^/    /'
    rm -f "$log"
else
    die "the guest did not pass the agent's self-test; console log kept in $log"
fi

# The shim's own path to the guest: hull-vsock serves the VM's vsock device, and the agent
# answers a ttrpc health check over it.
hull=${HULL_BIN_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/target/release}/hull
[ -x "$hull" ] || die "$hull is missing: run 'make build'"
step "booting a guest as a pod would (hull-vsock + QEMU) and asking its agent for a health check"
"$hull" check --boot | grep -E '^(pass|WARN|FAIL|\.\.\.\.)  (boot|hypervisor|kvm)' | sed 's/^/    /'
