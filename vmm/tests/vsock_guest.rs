//! hull-vmm's in-VMM vsock device end to end, on the host's real KVM: a small guest (64-bit
//! machine code in hull-vmm's tiny kernel) initializes the virtio-mmio device hull-vmm
//! placed for `--vsock-uds`, offers a receive buffer, and opens a stream to host port 1024
//! the way the guest kernel does (a REQUEST packet on the transmit queue, kicked through
//! the KVM ioeventfd). hull-vmm's main thread, under its seccomp filter, connects it to the
//! unix socket `<uds>_1024` the test listens on and answers RESPONSE in the receive buffer;
//! the guest prints the operation it got and resets. The hybrid socket exists while
//! hull-vmm runs and is gone after. Skips loudly where /dev/kvm is missing.

mod common;

use std::os::unix::net::UnixListener;

use hull_tests::require;

use common::asm::Asm;
use common::backend::TempDir;
use common::driver::*;
use common::vsock::*;
use common::{kvm, tiny_kernel};

/// The receive queue: descriptors, driver area, device area; then the transmit queue.
const RX_DESC: u32 = 0x20_0000;
const RX_AVAIL: u32 = 0x20_1000;
const RX_USED: u32 = 0x20_2000;
const TX_DESC: u32 = 0x21_0000;
const TX_AVAIL: u32 = 0x21_1000;
const TX_USED: u32 = 0x21_2000;
/// The REQUEST packet and the receive buffer.
const HEADER: u32 = 0x30_0000;
const RX_BUFFER: u32 = 0x31_0000;

/// The guest port the stream comes from.
const GUEST_PORT: u32 = 5000;
/// The host port it goes to.
const HOST_PORT: u32 = 1024;

/// The guest: the virtio initialization, one receive buffer, the REQUEST, a wait for the
/// receive queue's used ring, "vsock op <op>\n" on the serial console, and a reset.
fn guest_code() -> Vec<u8> {
    let mut asm = Asm {
        long: true,
        ..Asm::default()
    };
    asm.map_mmio_window().device_base();
    asm.reg(STATUS, 0)
        .reg(STATUS, ACKNOWLEDGE)
        .reg(STATUS, ACKNOWLEDGE | DRIVER)
        .reg(DRIVER_FEATURES_SEL, 1)
        .reg(DRIVER_FEATURES, 1) // VIRTIO_F_VERSION_1
        .reg(DRIVER_FEATURES_SEL, 0)
        .reg(DRIVER_FEATURES, 0)
        .reg(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    for (queue, desc, avail, used) in [
        (0, RX_DESC, RX_AVAIL, RX_USED),
        (1, TX_DESC, TX_AVAIL, TX_USED),
    ] {
        asm.reg(QUEUE_SEL, queue)
            .reg(QUEUE_NUM, 16)
            .reg(QUEUE_DESC_LOW, desc)
            .reg(QUEUE_DESC_HIGH, 0)
            .reg(QUEUE_AVAIL_LOW, avail)
            .reg(QUEUE_AVAIL_HIGH, 0)
            .reg(QUEUE_USED_LOW, used)
            .reg(QUEUE_USED_HIGH, 0)
            .reg(QUEUE_READY, 1);
    }
    asm.reg(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    // The REQUEST header, a dword at a time.
    let header = guest_header(OP_REQUEST, GUEST_PORT, HOST_PORT, 0);
    for (i, dword) in (0u32..).zip(header.chunks(4)) {
        asm.store(
            HEADER + 4 * i,
            u32::from_le_bytes(dword.try_into().unwrap()),
        );
    }
    // Descriptor 0 of each queue (addr, len, flags | next << 16), avail ring entry 0 is
    // already 0 (fresh memory), avail idx 1 (the high half of the first dword); kick.
    for (queue, desc, avail, buffer, len, flags) in [
        (0, RX_DESC, RX_AVAIL, RX_BUFFER, RX_BUF, DESC_WRITE),
        (1, TX_DESC, TX_AVAIL, HEADER, HDR_LEN as u32, 0),
    ] {
        asm.store(desc, buffer)
            .store(desc + 4, 0)
            .store(desc + 8, len)
            .store(desc + 12, u32::from(flags))
            .store(avail, 1 << 16)
            .reg(QUEUE_NOTIFY, queue);
    }
    // wait: pause; movzx eax, word [RX_USED + 2]; cmp ax, 1; jne wait
    let wait = asm.code.len();
    asm.code.extend_from_slice(&[0xf3, 0x90]);
    asm.load_word(RX_USED + 2);
    asm.code.extend_from_slice(&[0x66, 0x83, 0xf8, 0x01]);
    asm.jne(wait);
    asm.print(b"vsock op ");
    // mov al, [op]; add al, '0'; out dx, al
    asm.load_byte(RX_BUFFER + 30);
    asm.code.extend_from_slice(&[0x04, b'0', 0xee]);
    asm.print(b"\n");
    asm.reset();
    asm.code
}

#[test]
fn hull_vmm_in_vmm_vsock_connects_a_guest_stream_to_the_host_listener() {
    let test = "hull_vmm_in_vmm_vsock_connects_a_guest_stream_to_the_host_listener";
    require!(test, kvm());
    let dir = TempDir::new("vsock-guest");
    let uds = dir.0.join("v.sock");
    let listener = UnixListener::bind(dir.0.join(format!("v.sock_{HOST_PORT}"))).unwrap();
    let kernel = dir.0.join("tiny-kernel");
    std::fs::write(&kernel, tiny_kernel(&guest_code())).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .args(["--kernel", kernel.to_str().unwrap(), "--memory", "32"])
        .args(["--vsock-uds", uds.to_str().unwrap(), "--guest-cid", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}: {stderr}", output.status);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("vsock op {OP_RESPONSE}\n"),
        "the guest's stream is accepted; stderr: {stderr}"
    );
    // The device connected the stream to the host listener (it waited in the backlog).
    let _host = accept(&listener);
    assert!(!uds.exists(), "hull-vmm removed its hybrid socket");
}
