//! hull-net as users run it: the real binary on a real tap in a network namespace the test
//! creates, driven by a fake vhost-user frontend (the `vhost` crate's frontend, guest memory in
//! a memfd, rings laid out by `virtio-queue`'s mock queue) and by QEMU TCG with a Linux guest
//! that pings the tap's address.
//!
//! Everything the tests create is removed, and they check it: the namespace (and the tap in
//! it), the backend process, its socket. They need root and `/dev/net/tun`, and skip loudly
//! without them.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hull_tests::prereq::Missing;
use hull_tests::qemu::{Guest, GuestConfig, VhostUserDevice};
use hull_tests::{artifacts, guest_program, require};
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use common::{
    assert_confined, read, start_backend, terminate, Reaped, TempDir, GUEST_BOUND, STARTUP_BOUND,
};

mod common;

type Mem = GuestMemoryMmap<()>;

/// The tap's (host's) address and the guest's, link-local.
const HOST_IP: &str = "169.254.77.1";
const GUEST_IP: &str = "169.254.77.2";
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x77, 0x00, 0x02];
/// An EtherType for local experiments (IEEE 802), so the host's stack ignores the frames.
const ETHERTYPE: u16 = 0x88b5;
const HDR: usize = 12;
const MEM_SIZE: u64 = 16 << 20;
const QUEUE: u16 = 256;

/// Root and `/dev/net/tun` and `ip`, or what is missing.
fn net_admin() -> Result<PathBuf, Missing> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Missing::hardware(
            "root (creating network namespaces and taps)",
            "run the tests as root",
        ));
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err(Missing::hardware(
            "/dev/net/tun",
            "modprobe tun, or run where the tun device is available",
        ));
    }
    hull_tests::prereq::find_program("ip", "iproute2")
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A network namespace with a tap in it, both removed on drop.
struct NetNs {
    name: String,
    tap: String,
}

impl NetNs {
    /// Creates `hull-<tag>-<pid>` with a tap (vnet_hdr, multi_queue if `multi_queue`) named
    /// `tap`, up, holding [`HOST_IP`]/24.
    fn new(tag: &str, tap: &str, multi_queue: bool) -> Self {
        let ns = Self {
            name: format!("hull-{tag}-{}", std::process::id()),
            tap: tap.into(),
        };
        let _ = Command::new("ip")
            .args(["netns", "delete", &ns.name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &ns.name]);
        let mut tuntap = vec![
            "-n", &ns.name, "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr",
        ];
        if multi_queue {
            tuntap.push("multi_queue");
        }
        ip(&tuntap);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{HOST_IP}/24"),
            "dev",
            tap,
        ]);
        ip(&["-n", &ns.name, "link", "set", tap, "up"]);
        ns
    }

    /// Whether the namespace still exists.
    fn exists(name: &str) -> bool {
        Path::new("/run/netns").join(name).exists()
    }

    /// Runs `f` on a thread inside the namespace (sockets it opens stay there).
    fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = Path::new("/run/netns").join(&self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let ns = std::fs::File::open(&path).expect("opening the namespace");
                    // SAFETY: setns on this thread only, with a namespace descriptor we own.
                    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .expect("namespace thread")
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", &self.name, "link", "delete", &self.tap])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A raw packet socket on the tap, for frames of [`ETHERTYPE`].
struct PacketSocket(OwnedFd);

impl PacketSocket {
    fn open(ns: &NetNs) -> Self {
        let tap = ns.tap.clone();
        ns.within(move || {
            let proto = ETHERTYPE.to_be();
            // SAFETY: plain syscall; the result is checked before use.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    i32::from(proto),
                )
            };
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: socket returned a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let name = std::ffi::CString::new(tap).expect("name");
            // SAFETY: a NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert_ne!(index, 0, "the tap exists in the namespace");
            // SAFETY: sockaddr_ll is plain old data; all zeroes is valid.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = proto;
            addr.sll_ifindex = i32::try_from(index).expect("index fits");
            // SAFETY: `addr` is a sockaddr_ll and the length is its size.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let timeout = libc::timeval {
                tv_sec: 10,
                tv_usec: 0,
            };
            // SAFETY: SO_RCVTIMEO reads a timeval of the given size.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&timeout as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            Self(fd)
        })
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame that came in from hull-net (not one this socket sent), or `None`
    /// after the receive timeout.
    fn recv_incoming(&self) -> Option<Vec<u8>> {
        loop {
            let mut buf = vec![0u8; 70_000];
            // SAFETY: sockaddr_ll is plain old data; all zeroes is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: the buffers are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            let n = usize::try_from(n).ok()?;
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            buf.truncate(n);
            return Some(buf);
        }
    }
}

/// An IPv4/UDP frame from the tap's address to the guest's, from `src_port` to port 9.
fn udp_frame(src_port: u16) -> Vec<u8> {
    let payload = format!("datagram from port {src_port} through the tap");
    let udp_len = u16::try_from(8 + payload.len()).expect("small");
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
    ip.extend_from_slice(&[169, 254, 77, 1, 169, 254, 77, 2]);
    let sum = !fold(
        ip.chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum(),
    );
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut f = GUEST_MAC.to_vec();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&src_port.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    f.extend_from_slice(payload.as_bytes());
    f
}

/// Folds a 32-bit one's-complement sum into 16 bits.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    u16::try_from(sum).expect("folded")
}

fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A fake guest behind a vhost-user frontend: memfd memory, an rx queue at 0 and a tx queue
/// at 0x8000, as a driver lays them out.
struct FakeGuest {
    mem: Mem,
    _file: std::fs::File,
    /// Kept open: dropping it is the frontend leaving.
    _frontend: Frontend,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    rings: [(GuestAddress, GuestAddress, GuestAddress); 2],
    /// The device's config space as the frontend read it.
    config: Vec<u8>,
    next_desc: [u16; 2],
    next_buf: u64,
    used_seen: [u16; 2],
    features: u64,
}

impl FakeGuest {
    fn connect(socket: &Path) -> Self {
        let fd = nix::sys::memfd::memfd_create(
            c"hull-net-test-guest",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )
        .expect("memfd");
        let file = std::fs::File::from(fd);
        file.set_len(MEM_SIZE).expect("sizing the memfd");
        let offset = FileOffset::new(file.try_clone().expect("dup"), 0);
        let mem =
            Mem::from_ranges_with_files(&[(GuestAddress(0), MEM_SIZE as usize, Some(offset))])
                .expect("guest memory");

        let mut frontend = Frontend::connect(socket, 2).expect("frontend connects");
        frontend.set_owner().expect("owner");
        let offered = frontend.get_features().expect("features");
        // Everything but EVENT_IDX (bit 29), so that every used buffer is signalled.
        let features = offered & !(1 << 29);
        assert_ne!(offered & (1 << 30), 0, "protocol features offered");
        // The `vhost` crate's frontend sends SET_FEATURES before SET_VRING_ENABLE (QEMU's
        // order, the other way round, is covered by the QEMU test).
        frontend.set_features(features).expect("set features");
        let protocol = frontend.get_protocol_features().expect("protocol features");
        frontend
            .set_protocol_features(protocol)
            .expect("set protocol features");
        let region = mem.find_region(GuestAddress(0)).expect("region");
        let region = VhostUserMemoryRegionInfo::from_guest_region(region).expect("region info");
        frontend.set_mem_table(&[region]).expect("mem table");
        let (_, config) = frontend
            .get_config(0, 12, VhostUserConfigFlags::empty(), &[0; 12])
            .expect("config space");
        let host_base = mem.get_host_address(GuestAddress(0)).expect("mapped") as u64;
        let new_fd = || EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let kicks = vec![new_fd(), new_fd()];
        let calls = vec![new_fd(), new_fd()];
        let mut rings = [(GuestAddress(0), GuestAddress(0), GuestAddress(0)); 2];
        for index in 0..2 {
            let q = MockSplitQueue::create(&mem, GuestAddress(0x8000 * index as u64), QUEUE);
            rings[index] = (q.desc_table_addr(), q.avail_addr(), q.used_addr());
            frontend.set_vring_num(index, QUEUE).expect("vring num");
            let ring = VringConfigData {
                queue_max_size: QUEUE,
                queue_size: QUEUE,
                flags: 0,
                desc_table_addr: host_base + q.desc_table_addr().0,
                used_ring_addr: host_base + q.used_addr().0,
                avail_ring_addr: host_base + q.avail_addr().0,
                log_addr: None,
            };
            frontend.set_vring_addr(index, &ring).expect("vring addr");
            frontend.set_vring_base(index, 0).expect("vring base");
            frontend.set_vring_call(index, &calls[index]).expect("call");
            frontend.set_vring_kick(index, &kicks[index]).expect("kick");
            frontend.set_vring_enable(index, true).expect("enable");
        }
        Self {
            mem,
            _file: file,
            _frontend: frontend,
            kicks,
            calls,
            rings,
            config,
            next_desc: [0, 0],
            next_buf: 0x10_0000,
            used_seen: [0, 0],
            features,
        }
    }

    /// Queue `index`'s descriptor table, avail ring and used ring addresses (laid out once
    /// by the mock queue, whose constructor also zeroes the rings).
    fn rings(&self, index: usize) -> (GuestAddress, GuestAddress, GuestAddress) {
        self.rings[index]
    }

    fn alloc(&mut self, len: usize) -> u64 {
        let addr = self.next_buf;
        self.next_buf += (len as u64).next_multiple_of(64);
        addr
    }

    /// Makes one chain of (address, length, flags) available on queue `index`.
    fn add_chain(&mut self, index: usize, descs: &[(u64, u32, u16)]) {
        let base = self.next_desc[index];
        let count = descs.len() as u16;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let next = if i + 1 < descs.len() { 1 } else { 0 };
                RawDescriptor::from(SplitDescriptor::new(
                    addr,
                    len,
                    flags | next,
                    base + i as u16 + 1,
                ))
            })
            .collect();
        let (table, avail, _) = self.rings(index);
        for (i, desc) in raw.iter().enumerate() {
            let at = table.unchecked_add(16 * u64::from(base + i as u16));
            self.mem.write_obj(*desc, at).expect("descriptor");
        }
        let idx: u16 = self
            .mem
            .read_obj(avail.unchecked_add(2))
            .expect("avail idx");
        let slot = avail.unchecked_add(4 + 2 * u64::from(idx % QUEUE));
        self.mem.write_obj(base, slot).expect("avail entry");
        self.mem
            .write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
            .expect("avail idx");
        self.next_desc[index] = base + count;
    }

    /// Offers `count` rx buffers of `len` bytes; returns their addresses.
    fn offer_rx(&mut self, count: usize, len: u32) -> Vec<u64> {
        let addrs: Vec<u64> = (0..count).map(|_| self.alloc(len as usize)).collect();
        for &addr in &addrs {
            self.add_chain(0, &[(addr, len, 2)]);
        }
        self.kicks[0].write(1).expect("kick rx");
        addrs
    }

    /// Sends `frame` behind a zero header, split in two descriptors.
    fn send(&mut self, frame: &[u8]) {
        let hdr = self.alloc(HDR);
        let data = self.alloc(frame.len());
        self.mem
            .write_slice(&[0u8; HDR], GuestAddress(hdr))
            .expect("header");
        self.mem
            .write_slice(frame, GuestAddress(data))
            .expect("frame");
        self.add_chain(1, &[(hdr, HDR as u32, 0), (data, frame.len() as u32, 0)]);
        self.kicks[1].write(1).expect("kick tx");
    }

    /// Waits for the device to signal queue `index`, then returns the new used entries.
    fn used(&mut self, index: usize) -> Vec<(u32, u32)> {
        let mut entries = Vec::new();
        for _ in 0..100 {
            let (_, _, used) = self.rings(index);
            let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).expect("used idx");
            for i in self.used_seen[index]..idx {
                let at = used.unchecked_add(4 + 8 * u64::from(i % QUEUE));
                let id: u32 = self.mem.read_obj(at).expect("id");
                let len: u32 = self.mem.read_obj(at.unchecked_add(4)).expect("len");
                entries.push((id, len));
            }
            self.used_seen[index] = idx;
            if !entries.is_empty() {
                return entries;
            }
            // A failure detector, not a timing expectation.
            let fd = self.calls[index].as_raw_fd();
            wait_readable(fd, Duration::from_millis(100));
            let _ = self.calls[index].read();
        }
        entries
    }

    fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem
            .read_slice(&mut out, GuestAddress(addr))
            .expect("reading");
        out
    }
}

fn wait_readable(fd: RawFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

/// A frame from the fake guest comes out of the tap, and a frame sent into the tap reaches
/// the guest's rx buffer behind a header with num_buffers 1; then the frontend leaves and
/// hull-net exits 0 saying so.
fn frames_both_ways(
    test: &str,
    ns: &NetNs,
    pairs: u16,
    backend: &mut Reaped,
    socket: &Path,
    log: &Path,
) {
    let packets = PacketSocket::open(ns);
    let mut guest = FakeGuest::connect(socket);
    assert_ne!(guest.features & (1 << 15), 0, "{test}: MRG_RXBUF offered");
    assert_eq!(guest.config[..6], GUEST_MAC, "{test}: the MAC from --mac");
    assert_eq!(guest.config[6..8], [1, 0], "{test}: link up");
    assert_eq!(
        guest.config[8..10],
        pairs.to_le_bytes(),
        "{test}: queue pairs"
    );
    assert_eq!(
        guest.config[10..12],
        1500u16.to_le_bytes(),
        "{test}: the tap's MTU"
    );

    let out = frame([0xff; 6], GUEST_MAC, b"from the guest through hull-net");
    guest.send(&out);
    assert_eq!(
        guest.used(1).len(),
        1,
        "{test}: the tx chain comes back; log:\n{}",
        read(log)
    );
    let got = packets.recv_incoming();
    assert_eq!(
        got.as_deref(),
        Some(&out[..]),
        "{test}: the frame leaves the tap; log:\n{}",
        read(log)
    );

    // UDP datagrams of sixteen flows (source ports): every one reaches the pair the guest
    // drives (on a multi-queue tap hull-net detaches the queues of pairs the guest has not
    // started, so that no flow can be steered to a queue no one reads).
    let bufs = guest.offer_rx(32, 2048);
    let sent: Vec<Vec<u8>> = (0..16u16).map(|i| udp_frame(40_000 + i)).collect();
    for f in &sent {
        packets.send(f);
    }
    // Other frames (IPv6 router solicitations of the fresh tap) may come too.
    let mut delivered: Vec<Vec<u8>> = Vec::new();
    for _ in 0..20 {
        for (id, len) in guest.used(0) {
            let bytes = guest.bytes(bufs[id as usize], len as usize);
            assert_eq!(
                u16::from_le_bytes([bytes[10], bytes[11]]),
                1,
                "{test}: num_buffers"
            );
            if sent.iter().any(|f| bytes[HDR..] == f[..]) {
                delivered.push(bytes[HDR..].to_vec());
            }
        }
        if delivered.len() == sent.len() {
            break;
        }
    }
    assert_eq!(
        delivered,
        sent,
        "{test}: every frame reached the guest in order; log:\n{}",
        read(log)
    );

    // The counters a metrics reader sees (when the test asked hull-net for them).
    let metrics = socket.with_file_name("metrics.sock");
    if metrics.exists() {
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::os::unix::net::UnixStream::connect(&metrics).expect("metrics socket"),
            &mut text,
        )
        .expect("reading the metrics");
        let value = |series: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{test}: no {series} in:\n{text}"))
        };
        assert!(value("hull_net_tx_frames_total ") >= 1, "{text}");
        assert!(
            value("hull_net_rx_frames_total ") >= sent.len() as u64,
            "{text}"
        );
        assert!(
            text.contains("# TYPE hull_net_rx_bytes_total counter"),
            "{text}"
        );
        assert_eq!(value("hull_net_malformed_chains_total "), 0, "{text}");
        // The guest kicked its tx queue to send, and was notified of the frames on rx.
        assert!(
            value("hull_net_queue_kicks_total{queue=\"tx0\"} ") >= 1,
            "{text}"
        );
        // The notification follows the used ring the guest reads the frames from: wait for it.
        let interrupts = |text: &str| -> u64 {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix("hull_net_queue_interrupts_total{queue=\"rx0\"} ")?
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or(0)
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while interrupts(&text) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            text.clear();
            std::io::Read::read_to_string(
                &mut std::os::unix::net::UnixStream::connect(&metrics).expect("metrics socket"),
                &mut text,
            )
            .expect("reading the metrics");
        }
        assert!(interrupts(&text) >= 1, "{text}");
    }

    let pid = backend.0.id();
    // Nothing of the relay is on disk while hull-net serves, so a hull-net killed now (a shim
    // tearing a pod down SIGKILLs it) leaves nothing in the temporary directory either.
    assert_eq!(
        relay_dirs(pid),
        Vec::<String>::new(),
        "{test}: relay socket on disk while serving"
    );
    drop(guest);
    common::expect_exit_after_frontend(backend, log, "hull-net");
    assert!(!socket.exists(), "{test}: hull-net removed its socket");
    assert_eq!(
        relay_dirs(pid),
        Vec::<String>::new(),
        "{test}: relay sockets left"
    );
}

/// hull-net's private relay directories (`hull-net-<pid>-<n>`) in the temporary directory.
fn relay_dirs(pid: u32) -> Vec<String> {
    std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&format!("hull-net-{pid}-")))
        .collect()
}

fn start_in_ns(ns: &NetNs, dir: &Path, extra: &[&str]) -> (Reaped, PathBuf, PathBuf) {
    let socket = dir.join("vhost-user.sock");
    let log = dir.join("hull-net.log");
    let mut args: Vec<&OsStr> = vec![
        "netns".as_ref(),
        "exec".as_ref(),
        ns.name.as_ref(),
        env!("CARGO_BIN_EXE_hull-net").as_ref(),
        "--socket".as_ref(),
        socket.as_os_str(),
        "--tap".as_ref(),
        ns.tap.as_ref(),
        "--mac".as_ref(),
        "52:54:00:77:00:02".as_ref(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let backend = start_backend("ip", &args, &socket, &log);
    (backend, socket, log)
}

/// The namespace `name` (and with it its tap) is gone, no tap `tap` appeared in the host's
/// namespace, and no process (hull-net, QEMU) still names the test's directory `dir`.
fn assert_gone(name: &str, tap: &str, dir: &Path) {
    assert!(!NetNs::exists(name), "namespace {name} removed");
    let shown = Command::new("ip")
        .args(["link", "show", tap])
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("ip runs");
    assert!(!shown.success(), "no tap {tap} in the host's namespace");
    let dir = dir.to_string_lossy();
    for needle in [name, dir.as_ref()] {
        let leftovers = hull_tests::leftovers::processes_with(&[needle]);
        assert!(leftovers.is_empty(), "processes left: {leftovers:?}");
    }
}

#[test]
fn frames_cross_a_real_tap_both_ways_and_nothing_is_left_behind() {
    let test = "frames_cross_a_real_tap_both_ways_and_nothing_is_left_behind";
    require!(test, net_admin());
    let dir = TempDir::new("net-tap");
    let name;
    {
        let ns = NetNs::new("net-tap", "hnt0", false);
        name = ns.name.clone();
        let metrics = dir.0.join("metrics.sock");
        let metrics_arg = metrics.to_str().expect("UTF-8 temp path");
        let (mut backend, socket, log) =
            start_in_ns(&ns, &dir.0, &["--metrics-socket", metrics_arg]);
        frames_both_ways(test, &ns, 1, &mut backend, &socket, &log);
        assert!(!metrics.exists(), "hull-net removed its metrics socket");
        assert!(
            read(&log).contains("offloads"),
            "the log names the tap's offloads"
        );
    }
    assert_gone(&name, "hnt0", &dir.0);
}

#[test]
fn two_queue_pairs_on_a_multi_queue_tap_carry_frames() {
    let test = "two_queue_pairs_on_a_multi_queue_tap_carry_frames";
    require!(test, net_admin());
    let dir = TempDir::new("net-mq");
    let name;
    {
        let ns = NetNs::new("net-mq", "hnm0", true);
        name = ns.name.clone();
        let (mut backend, socket, log) = start_in_ns(&ns, &dir.0, &["--queues", "2"]);
        // The fake guest drives the first pair; the second has its own worker and tap queue.
        frames_both_ways(test, &ns, 2, &mut backend, &socket, &log);
        assert!(read(&log).contains("queue_pairs=2"), "log:\n{}", read(&log));
    }
    assert_gone(&name, "hnm0", &dir.0);
}

#[test]
fn a_tap_descriptor_passed_in_is_served() {
    let test = "a_tap_descriptor_passed_in_is_served";
    require!(test, net_admin());
    let dir = TempDir::new("net-fd");
    let name;
    {
        let ns = NetNs::new("net-fd", "hnf0", false);
        name = ns.name.clone();
        // Open the tap inside the namespace, as the shim does for a pod, and hand the
        // descriptor to hull-net running outside it.
        let tap = ns.tap.clone();
        let tap =
            ns.within(move || hull_devices::net::Tap::open(&tap, 1).expect("opening the tap"));
        let fd = tap.queues()[0].as_raw_fd();
        let socket = dir.0.join("vhost-user.sock");
        let log = dir.0.join("hull-net.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_hull-net"));
        command
            .arg("--socket")
            .arg(&socket)
            .args(["--tap-fd", &fd.to_string(), "--mac", "52:54:00:77:00:02"])
            .env("HULL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"));
        // SAFETY: between fork and exec only fcntl runs, which is async-signal-safe; it
        // clears close-on-exec so that hull-net inherits the tap.
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut backend = Reaped(command.spawn().expect("hull-net starts"));
        drop(tap);
        let deadline = std::time::Instant::now() + STARTUP_BOUND;
        while !socket.exists() {
            assert!(
                backend.0.try_wait().expect("try_wait").is_none(),
                "{}",
                read(&log)
            );
            assert!(
                std::time::Instant::now() < deadline,
                "no socket: {}",
                read(&log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        frames_both_ways(test, &ns, 1, &mut backend, &socket, &log);
    }
    assert_gone(&name, "hnf0", &dir.0);
}

#[test]
fn keep_listening_serves_frontends_until_sigterm_and_cleans_up() {
    let test = "keep_listening_serves_frontends_until_sigterm_and_cleans_up";
    require!(test, net_admin());
    let dir = TempDir::new("net-sigterm");
    let name;
    {
        let ns = NetNs::new("net-sigterm", "hns0", false);
        name = ns.name.clone();
        let (mut backend, socket, log) = start_in_ns(&ns, &dir.0, &["--keep-listening"]);
        assert_confined(
            &backend,
            hull_devices::privileges::mask(&[caps::Capability::CAP_NET_ADMIN]),
        );
        for _ in 0..2 {
            common::brief_frontend(&socket);
        }
        assert!(
            backend.0.try_wait().expect("try_wait").is_none(),
            "still serving: {}",
            read(&log)
        );
        terminate(&mut backend, &log);
        assert!(!socket.exists(), "socket removed");
    }
    assert_gone(&name, "hns0", &dir.0);
}

#[test]
fn bad_arguments_are_refused_with_messages_naming_them() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--tap", "a-name-of-16byte"],
            "tap name \"a-name-of-16byte\" is invalid",
        ),
        (&["--tap", "hnx0", "--queues", "0"], "0 queues requested"),
        (&["--tap-fd", "99"], "--tap-fd 99 is not an open descriptor"),
        (
            &["--tap", "hnx0", "--mac", "01:00:5e:00:00:01"],
            "multicast",
        ),
    ];
    let dir = TempDir::new("net-args");
    for (args, message) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_hull-net"))
            .arg("--socket")
            .arg(dir.0.join("vu.sock"))
            .args(args)
            .output()
            .expect("hull-net runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    let help = Command::new(env!("CARGO_BIN_EXE_hull-net"))
        .arg("--help")
        .output()
        .expect("hull-net runs");
    let text = String::from_utf8_lossy(&help.stdout);
    for option in [
        "--socket",
        "--tap",
        "--tap-fd",
        "--queues",
        "--mac",
        "--keep-listening",
    ] {
        assert!(text.contains(option), "--help names {option}: {text}");
    }
}

/// Accepts `connections` connections one after the other (waiting at most [`GUEST_BOUND`]
/// in all) and echoes each until EOF; returns the bytes echoed.
fn tcp_echo(listener: std::net::TcpListener, connections: usize) -> usize {
    use std::io::{Read, Write};
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = std::time::Instant::now() + GUEST_BOUND;
    let mut total = 0;
    for _ in 0..connections {
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(_) => return total,
            }
        };
        stream.set_nonblocking(false).expect("blocking");
        stream.set_read_timeout(Some(GUEST_BOUND)).expect("timeout");
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 || stream.write_all(&buf[..n]).is_err() {
                break;
            }
            total += n;
        }
    }
    total
}

#[test]
fn a_linux_guest_pings_the_host_tap_through_hull_net_under_qemu() {
    guest_pings_and_echoes(
        "a_linux_guest_pings_the_host_tap_through_hull_net_under_qemu",
        1,
    );
}

/// The guest drives both queue pairs (one TCP echo from each of its two CPUs), and each
/// pair carries frames both ways.
#[test]
fn a_linux_guest_uses_two_queue_pairs_of_hull_net_under_qemu() {
    guest_pings_and_echoes(
        "a_linux_guest_uses_two_queue_pairs_of_hull_net_under_qemu",
        2,
    );
}

/// Boots a guest with `pairs` vCPUs on hull-net with `pairs` queue pairs; it pings the tap and
/// echoes 1 MiB over TCP from each vCPU. Checks the counters and that nothing is left.
fn guest_pings_and_echoes(test: &str, pairs: u16) {
    require!(test, net_admin());
    let kernel = require!(test, artifacts::vmlinux());
    let dir = TempDir::new(&format!("net-qemu{pairs}"));
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/net_ping.rs");
    let initrd =
        require!(test, guest_program::build_initrd(&source, &dir.0)).expect("the guest builds");
    let name;
    {
        let ns = NetNs::new(
            &format!("net-qemu{pairs}"),
            &format!("hnq{pairs}"),
            pairs > 1,
        );
        name = ns.name.clone();
        let queues = pairs.to_string();
        let (mut backend, socket, log) = start_in_ns(&ns, &dir.0, &["--queues", &queues]);
        // The host end of the guest's TCP echoes, listening on the tap's address.
        let listener = ns.within(|| {
            std::net::TcpListener::bind((HOST_IP, 7777)).expect("binding the echo port")
        });
        let echo = std::thread::spawn(move || tcp_echo(listener, usize::from(pairs)));
        let mq = if pairs > 1 {
            format!(",mq=on,queues={pairs}")
        } else {
            String::new()
        };
        let config = GuestConfig {
            kernel,
            initrd,
            extra_cmdline: format!(
                "HULL_NET_GUEST_IP={GUEST_IP} HULL_NET_HOST_IP={HOST_IP} HULL_NET_PAIRS={pairs}"
            ),
            memory_mib: 256,
            vcpus: u32::from(pairs),
            devices: vec![VhostUserDevice {
                socket: socket.clone(),
                model: format!("virtio-net-device,mac=52:54:00:77:00:02{mq}"),
            }],
        };
        let guest = require!(test, Guest::start(&config)).expect("QEMU starts");
        let finished = guest.wait(GUEST_BOUND).expect("the guest stops by itself");
        let console = finished.console;
        assert!(
            console.contains("net-ping-guest: PASS"),
            "guest verdict; console:\n{console}\nhull-net log:\n{}",
            read(&log)
        );
        assert_eq!(
            echo.join().expect("echo thread"),
            usize::from(pairs) << 20,
            "bytes echoed"
        );
        let log_text = common::expect_exit_after_frontend(&mut backend, &log, "hull-net");
        // The echoes went out and came back through hull-net, and nothing was malformed.
        let line = log_text
            .lines()
            .find(|l| l.contains("device counters"))
            .unwrap_or_else(|| panic!("no counters; log:\n{log_text}"));
        let counter = |name: &str| -> u64 {
            line.split(&format!("{name}: "))
                .nth(1)
                .and_then(|rest| rest.split([',', ' ']).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line}"))
        };
        let per_pair = |name: &str| -> Vec<u64> {
            line.split(&format!("{name}: ["))
                .nth(1)
                .and_then(|rest| rest.split(']').next())
                .map(|list| list.split(", ").filter_map(|n| n.parse().ok()).collect())
                .unwrap_or_else(|| panic!("no {name} in {line}"))
        };
        let bytes = u64::from(pairs) << 20;
        assert!(counter("tx_bytes") >= bytes, "{line}");
        assert!(counter("rx_bytes") >= bytes, "{line}");
        assert_eq!(counter("malformed"), 0, "{line}");
        for list in ["tx_frames_per_pair", "rx_frames_per_pair"] {
            let frames = per_pair(list);
            assert_eq!(frames.len(), usize::from(pairs), "{line}");
            assert!(
                frames.iter().all(|&n| n > 0),
                "every pair carried frames: {line}"
            );
        }
        eprintln!("{test}: hull-net {line}");
        assert!(!socket.exists(), "hull-net removed its socket");
    }
    assert_gone(&name, &format!("hnq{pairs}"), &dir.0);
}
