//! hull-vmm's in-VMM vsock device end to end, on the host's real KVM: a small guest (64-bit
//! machine code in hull-vmm's tiny kernel) initializes the virtio-mmio device hull-vmm
//! placed for `--vsock-uds`, offers a receive buffer, and opens a stream to host port 1024
//! the way the guest kernel does (a REQUEST packet on the transmit queue, kicked through
//! the KVM ioeventfd). hull-vmm's main thread, under its seccomp filter, connects it to the
//! unix socket `<uds>_1024` the test listens on and answers RESPONSE in the receive buffer;
//! the guest prints the operation it got and resets. The hybrid socket exists while
//! hull-vmm runs and is gone after. Skips loudly where /dev/kvm is missing.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use hull_tests::require;

use common::asm::Asm;
use common::backend::{TempDir, BOUND};
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

/// A 64-bit guest whose driver initializes the device (VERSION_1, receive and transmit
/// queues, DRIVER_OK); ebx holds the device's base.
fn init_driver() -> Asm {
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
    asm
}

/// Writes descriptor `index` of the table at `desc`: (addr, len, flags, no next).
fn descriptor(asm: &mut Asm, desc: u32, index: u32, addr: u32, len: u32, flags: u16) {
    let entry = desc + 16 * index;
    asm.store(entry, addr)
        .store(entry + 4, 0)
        .store(entry + 8, len)
        .store(entry + 12, u32::from(flags));
}

/// Publishes `count` chains (avail ring entries 0.. must already name them) and kicks.
fn publish(asm: &mut Asm, avail: u32, count: u32, queue: u32) {
    // flags 0, idx `count`.
    asm.store(avail, count << 16).reg(QUEUE_NOTIFY, queue);
}

/// Spins until the receive queue's used index is `idx`, then prints "vsock op <op>\n" with
/// the op of the packet in `buffer`.
fn wait_and_print_op(asm: &mut Asm, idx: u8, buffer: u32) {
    // wait: pause; movzx eax, word [RX_USED + 2]; cmp ax, idx; jne wait
    let wait = asm.code.len();
    asm.code.extend_from_slice(&[0xf3, 0x90]);
    asm.load_word(RX_USED + 2);
    asm.code.extend_from_slice(&[0x66, 0x83, 0xf8, idx]);
    asm.jne(wait);
    asm.print(b"vsock op ");
    // mov al, [op]; add al, '0'; out dx, al
    asm.load_byte(buffer + 30);
    asm.code.extend_from_slice(&[0x04, b'0', 0xee]);
    asm.print(b"\n");
}

/// Writes the 44-byte `header` into guest memory at `at`, a dword at a time.
fn store_header(asm: &mut Asm, at: u32, header: &[u8]) {
    for (i, dword) in (0u32..).zip(header.chunks(4)) {
        asm.store(at + 4 * i, u32::from_le_bytes(dword.try_into().unwrap()));
    }
}

/// The guest connecting out: one receive buffer, the REQUEST, a wait for the answer,
/// "vsock op <op>\n" on the serial console, and a reset.
fn connecting_guest() -> Vec<u8> {
    let mut asm = init_driver();
    store_header(
        &mut asm,
        HEADER,
        &guest_header(OP_REQUEST, GUEST_PORT, HOST_PORT, 0),
    );
    // Avail ring entry 0 is already 0 (fresh memory).
    descriptor(&mut asm, RX_DESC, 0, RX_BUFFER, RX_BUF, DESC_WRITE);
    publish(&mut asm, RX_AVAIL, 1, 0);
    descriptor(&mut asm, TX_DESC, 0, HEADER, HDR_LEN as u32, 0);
    publish(&mut asm, TX_AVAIL, 1, 1);
    wait_and_print_op(&mut asm, 1, RX_BUFFER);
    asm.reset();
    asm.code
}

/// The guest listening: two receive buffers; once the host's REQUEST is in the first, a
/// RESPONSE to its ports (theirs swapped, copied from the request); once the host's data
/// is in the second, a reset. Prints the op of each packet it got.
fn listening_guest() -> Vec<u8> {
    let mut asm = init_driver();
    descriptor(&mut asm, RX_DESC, 0, RX_BUFFER, RX_BUF, DESC_WRITE);
    descriptor(&mut asm, RX_DESC, 1, RX_BUFFER + RX_BUF, RX_BUF, DESC_WRITE);
    // Avail ring entries 0 and 1 name descriptors 0 and 1.
    asm.store(RX_AVAIL + 4, 1 << 16);
    publish(&mut asm, RX_AVAIL, 2, 0);
    wait_and_print_op(&mut asm, 1, RX_BUFFER);
    store_header(&mut asm, HEADER, &guest_header(OP_RESPONSE, 0, 0, 0));
    // mov eax, [request.dst_port]; mov [response.src_port], eax; and the other way round.
    for (from, to) in [(RX_BUFFER + 20, HEADER + 16), (RX_BUFFER + 16, HEADER + 20)] {
        asm.code.push(0x8b);
        asm.absolute(0, from);
        asm.code.push(0x89);
        asm.absolute(0, to);
    }
    descriptor(&mut asm, TX_DESC, 0, HEADER, HDR_LEN as u32, 0);
    publish(&mut asm, TX_AVAIL, 1, 1);
    wait_and_print_op(&mut asm, 2, RX_BUFFER + RX_BUF);
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
    std::fs::write(&kernel, tiny_kernel(&connecting_guest())).unwrap();
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

#[test]
fn hull_vmm_in_vmm_vsock_connects_a_host_stream_to_a_guest_listener() {
    let test = "hull_vmm_in_vmm_vsock_connects_a_host_stream_to_a_guest_listener";
    require!(test, kvm());
    let dir = TempDir::new("vsock-guest-listen");
    let uds = dir.0.join("v.sock");
    let kernel = dir.0.join("tiny-kernel");
    std::fs::write(&kernel, tiny_kernel(&listening_guest())).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .args(["--kernel", kernel.to_str().unwrap(), "--memory", "32"])
        .args(["--vsock-uds", uds.to_str().unwrap(), "--guest-cid", "3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(Some(child));
    // The socket is there before the vCPUs start.
    let deadline = Instant::now() + BOUND;
    let mut host = loop {
        match UnixStream::connect(&uds) {
            Ok(stream) => break stream,
            Err(err) => {
                assert!(Instant::now() < deadline, "no hybrid socket: {err}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    host.set_read_timeout(Some(BOUND)).unwrap();
    host.write_all(b"CONNECT 1234\n").unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        let n = match host.read(&mut byte) {
            Ok(n) => n,
            Err(err) => {
                let output = child.0.take().unwrap().wait_with_output().unwrap();
                panic!(
                    "hull-vmm did not answer the CONNECT ({err}); it ended with {}: stdout {:?}, stderr {}",
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        };
        assert_eq!(
            n,
            1,
            "the stream closed after {:?}",
            String::from_utf8_lossy(&line)
        );
        line.push(byte[0]);
    }
    let line = String::from_utf8(line).unwrap();
    let port: u32 = line
        .strip_prefix("OK ")
        .and_then(|rest| rest.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("not OK <port>: {line:?}"));
    assert!(
        port >= 1 << 30,
        "a host-side port from the upper range: {port}"
    );
    host.write_all(b"hi").unwrap();
    let output = child.0.take().unwrap().wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}: {stderr}", output.status);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("vsock op {OP_REQUEST}\nvsock op {OP_RW}\n"),
        "the guest got the host's request, then its bytes; stderr: {stderr}"
    );
    assert!(!uds.exists(), "hull-vmm removed its hybrid socket");
}

/// Kills and reaps hull-vmm if the test fails while it runs.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
