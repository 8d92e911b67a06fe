//! The seed corpus of every target (`corpus/<target>/`), written by code so that each seed
//! says what it is: well-formed requests of each kind that the fuzzer mutates from. Run
//! `cargo test --manifest-path fuzz/Cargo.toml --test seed_corpus -- --ignored` to rewrite
//! them after a change of a target's input format; the smoke test checks that every target
//! has seeds.

use std::path::Path;

use hull_agent_protocol::agent::{
    CreateContainerRequest, CreateSandboxRequest, ExecProcessRequest, UpdateInterfaceRequest,
    UpdateRoutesRequest,
};
use hull_agent_protocol::protobuf::{EnumOrUnknown, Message};
use hull_agent_protocol::types::{Interface, IpAddress, Route, Routes, Storage, StorageKind};
use hull_agent_protocol::Call;
use hull_fuzz::guest::BUFFERS;

/// One descriptor in the guest format of `hull_fuzz::guest`: flags, an offset into the
/// buffer area, a length (up to 64 KiB), and the next index.
fn desc(flags: u8, offset: u16, len: u16, next: u8) -> [u8; 8] {
    // Address mode 0 (the buffer area), length mode 1 (the 16-bit length as is).
    let sel = (flags & 7) | (1 << 5);
    let [o0, o1] = offset.to_le_bytes();
    let [l0, l1] = len.to_le_bytes();
    [sel, next, o0, o1, l0, l1, 0, 0]
}

const NEXT: u8 = 1;
const WRITE: u8 = 2;
const INDIRECT: u8 = 4;

/// A queue: its descriptors, then the avail ring naming `heads`.
fn queue(descs: &[[u8; 8]], heads: &[u8], event_idx: bool) -> Vec<u8> {
    let mut out = vec![u8::try_from(descs.len()).expect("few") | if event_idx { 0x20 } else { 0 }];
    for d in descs {
        out.extend_from_slice(d);
    }
    out.push(u8::try_from(heads.len()).expect("few"));
    out.push(0);
    out.extend_from_slice(heads);
    out
}

/// The buffer area: `pieces` placed at their offsets.
fn buffers(pieces: &[(usize, &[u8])]) -> Vec<u8> {
    let end = pieces.iter().map(|(at, b)| at + b.len()).max().unwrap_or(0);
    let mut out = vec![0u8; end];
    for (at, bytes) in pieces {
        out[*at..at + bytes.len()].copy_from_slice(bytes);
    }
    out
}

fn blk_header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = kind.to_le_bytes().to_vec();
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

fn raw_desc(addr: u64, len: u32, flags: u16, next: u16) -> Vec<u8> {
    let mut d = addr.to_le_bytes().to_vec();
    d.extend_from_slice(&len.to_le_bytes());
    d.extend_from_slice(&flags.to_le_bytes());
    d.extend_from_slice(&next.to_le_bytes());
    d
}

/// virtio-blk requests (the queue and buffer area of `virtq_chain` and `blk_request`).
fn blk_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let read = [
        queue(
            &[
                desc(NEXT, 0, 16, 1),
                desc(NEXT | WRITE, 0x200, 1024, 2),
                desc(WRITE, 0x800, 1, 0),
            ],
            &[0],
            false,
        ),
        buffers(&[(0, &blk_header(0, 2))]),
    ]
    .concat();
    let write = [
        queue(
            &[
                desc(NEXT, 0, 16, 1),
                desc(NEXT, 0x200, 512, 2),
                desc(WRITE, 0x800, 1, 0),
            ],
            &[0],
            true,
        ),
        buffers(&[(0, &blk_header(1, 63)), (0x200, &[0xab; 512])]),
    ]
    .concat();
    let mut segments = Vec::new();
    for (sector, n, flags) in [(0u64, 8u32, 0u32), (16, 8, 1)] {
        segments.extend_from_slice(&sector.to_le_bytes());
        segments.extend_from_slice(&n.to_le_bytes());
        segments.extend_from_slice(&flags.to_le_bytes());
    }
    let write_zeroes = [
        queue(
            &[
                desc(NEXT, 0, 16, 1),
                desc(NEXT, 0x100, 32, 2),
                desc(WRITE, 0x800, 1, 0),
            ],
            &[0],
            false,
        ),
        buffers(&[(0, &blk_header(13, 0)), (0x100, &segments)]),
    ]
    .concat();
    let base = BUFFERS;
    let table = [
        raw_desc(base, 16, 1, 1),
        raw_desc(base + 0x200, 512, 3, 2),
        raw_desc(base + 0x800, 1, 2, 0),
    ]
    .concat();
    let indirect = [
        queue(&[desc(INDIRECT, 0x400, 48, 0)], &[0], false),
        buffers(&[(0, &blk_header(0, 0)), (0x400, &table)]),
    ]
    .concat();
    let get_id_and_flush = [
        queue(
            &[
                desc(NEXT, 0, 16, 1),
                desc(WRITE, 0x200, 21, 0),
                desc(NEXT, 0x20, 16, 3),
                desc(WRITE, 0x300, 1, 0),
            ],
            &[0, 2],
            false,
        ),
        buffers(&[(0, &blk_header(8, 0)), (0x20, &blk_header(4, 0))]),
    ]
    .concat();
    let looping = [
        queue(
            &[desc(NEXT, 0, 16, 1), desc(NEXT | WRITE, 0x200, 512, 0)],
            &[0],
            false,
        ),
        buffers(&[(0, &blk_header(0, 0))]),
    ]
    .concat();
    vec![
        ("read", read),
        ("write", write),
        ("write-zeroes", write_zeroes),
        ("indirect", indirect),
        ("get-id-and-flush", get_id_and_flush),
        ("loop", looping),
    ]
}

fn vsock_header(src: (u64, u32), dst: (u64, u32), op: u16, len: u32) -> Vec<u8> {
    let mut h = src.0.to_le_bytes().to_vec();
    h.extend_from_slice(&dst.0.to_le_bytes());
    h.extend_from_slice(&src.1.to_le_bytes());
    h.extend_from_slice(&dst.1.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes()); // stream
    h.extend_from_slice(&op.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes()); // flags
    h.extend_from_slice(&65536u32.to_le_bytes()); // buf_alloc
    h.extend_from_slice(&0u32.to_le_bytes()); // fwd_cnt
    h
}

fn vsock_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let rx = queue(
        &[
            desc(WRITE, 0x4000, 0x1000, 0),
            desc(WRITE, 0x5000, 0x1000, 0),
            desc(WRITE, 0x6000, 0x1000, 0),
            desc(WRITE, 0x7000, 0x1000, 0),
        ],
        &[0, 1, 2, 3],
        false,
    );
    // The guest connects to the host service on port 1024 and sends "hello".
    let request = vsock_header((3, 5000), (2, 1024), 1, 0);
    let rw = vsock_header((3, 5000), (2, 1024), 5, 5);
    let tx = queue(
        &[
            desc(0, 0, 44, 0),
            desc(NEXT, 0x40, 44, 2),
            desc(0, 0x80, 5, 0),
        ],
        &[0, 1],
        false,
    );
    let guest_connects = [
        vec![0x04],
        0u32.to_le_bytes().to_vec(),
        vec![6],
        b"answer".to_vec(),
        rx.clone(),
        tx,
        buffers(&[(0, &request), (0x40, &rw), (0x80, b"hello")]),
    ]
    .concat();
    // The host connects to guest port 1234; the guest answers and shuts down.
    let response = vsock_header((3, 1234), (2, 1 << 30), 2, 0);
    let shutdown = vsock_header((3, 1234), (2, 1 << 30), 4, 0);
    let tx = queue(&[desc(0, 0, 44, 0), desc(0, 0x40, 44, 0)], &[0, 1], true);
    let host_connects = [
        vec![0x0b],
        1234u32.to_le_bytes().to_vec(),
        vec![4],
        b"data".to_vec(),
        rx,
        tx,
        buffers(&[(0, &response), (0x40, &shutdown)]),
    ]
    .concat();
    vec![
        ("guest-connects", guest_connects),
        ("host-connects", host_connects),
    ]
}

fn net_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let rx = queue(
        &[
            desc(WRITE, 0x4000, 0x800, 0),
            desc(WRITE, 0x5000, 0x800, 0),
            desc(WRITE, 0x6000, 0x800, 0),
        ],
        &[0, 1, 2],
        false,
    );
    let tx = queue(&[desc(NEXT, 0, 12, 1), desc(0, 0x100, 60, 0)], &[0], false);
    let frames = [
        vec![2],
        100u16.to_le_bytes().to_vec(),
        vec![0x11],
        1600u16.to_le_bytes().to_vec(),
        vec![0x22],
    ]
    .concat();
    let mergeable = [
        vec![0b0011],
        1500u16.to_le_bytes().to_vec(),
        frames.clone(),
        rx.clone(),
        tx.clone(),
        buffers(&[(0x100, &[0x45; 60])]),
    ]
    .concat();
    let rx_big = queue(&[desc(WRITE, 0x4000, 0x8000, 0)], &[0], false);
    let tso = [
        vec![0b1101],
        9000u16.to_le_bytes().to_vec(),
        frames,
        rx_big,
        tx,
        buffers(&[(0x100, &[0x45; 60])]),
    ]
    .concat();
    vec![("mergeable", mergeable), ("tso-one-buffer", tso)]
}

/// A vhost-user message as one chunk of the `vhost_user_msg` input: `fds` 1 for an eventfd,
/// 2 for a memory file.
fn vu(request: u32, body: &[u8], fds: u8) -> Vec<u8> {
    let mut m = request.to_le_bytes().to_vec();
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&u32::try_from(body.len()).expect("small").to_le_bytes());
    m.extend_from_slice(body);
    let mut chunk = vec![
        fds,
        u8::try_from(m.len()).expect("a chunk is at most 255 bytes"),
    ];
    chunk.extend(m);
    chunk
}

fn u64s(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn vhost_user_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let features = (1u64 << 32) | (1 << 30) | (1 << 28);
    let mut vring_addr = 0u32.to_le_bytes().to_vec();
    vring_addr.extend_from_slice(&0u32.to_le_bytes());
    vring_addr.extend(u64s(&[0x1000_0000, 0x1000_0200, 0x1000_0100, 0]));
    let setup = [
        vu(1, &[], 0),                    // GET_FEATURES
        vu(3, &[], 0),                    // SET_OWNER
        vu(15, &[], 0),                   // GET_PROTOCOL_FEATURES
        vu(16, &u64s(&[0x2 | 0x200]), 0), // SET_PROTOCOL_FEATURES: MQ, CONFIG
        vu(17, &[], 0),                   // GET_QUEUE_NUM
        vu(2, &u64s(&[features]), 0),     // SET_FEATURES
        vu(
            5,
            &[
                vec![1, 0, 0, 0, 0, 0, 0, 0],
                u64s(&[0, 0x1_0000, 0x1000_0000, 0]),
            ]
            .concat(),
            2,
        ), // SET_MEM_TABLE, one region on a memory file
        vu(
            8,
            &[vec![0, 0, 0, 0], 16u32.to_le_bytes().to_vec()].concat(),
            0,
        ), // SET_VRING_NUM
        vu(9, &vring_addr, 0),            // SET_VRING_ADDR
        vu(10, &[0; 8], 0),               // SET_VRING_BASE
        vu(12, &u64s(&[0]), 1),           // SET_VRING_KICK
        vu(13, &u64s(&[0]), 1),           // SET_VRING_CALL
        vu(
            18,
            &[vec![0, 0, 0, 0], 1u32.to_le_bytes().to_vec()].concat(),
            0,
        ), // SET_VRING_ENABLE
        vu(
            24,
            &[0u32.to_le_bytes(), 60u32.to_le_bytes(), 0u32.to_le_bytes()]
                .concat()
                .into_iter()
                .chain([0u8; 60])
                .collect::<Vec<_>>(),
            0,
        ), // GET_CONFIG
        vu(11, &[0; 8], 0),               // GET_VRING_BASE
    ]
    .concat();
    vec![
        ("vsock-setup", [vec![0], setup.clone()].concat()),
        ("blk-setup", [vec![1], setup.clone()].concat()),
        ("vsock-relayed", [vec![2], setup.clone()].concat()),
        (
            "blk-relayed-early-enable",
            [
                vec![3],
                vu(1, &[], 0),
                vu(18, &[0; 8], 0),
                vu(2, &u64s(&[features]), 0),
                vu(7, &[], 0), // RESET_OWNER
            ]
            .concat(),
        ),
    ]
}

fn mmio_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let write = |offset: u16, value: u32| {
        let mut a = vec![1 | (2 << 1)];
        a.extend_from_slice(&offset.to_le_bytes());
        a.extend_from_slice(&value.to_le_bytes());
        a
    };
    let read = |offset: u16| {
        let mut a = vec![2 << 1];
        a.extend_from_slice(&offset.to_le_bytes());
        a.extend_from_slice(&0u32.to_le_bytes());
        a
    };
    let driver = [
        read(0x000),
        read(0x004),
        read(0x008),
        read(0x034),
        write(0x070, 0),
        write(0x070, 1),
        write(0x070, 3),
        write(0x014, 0),
        read(0x010),
        write(0x014, 1),
        read(0x010),
        write(0x024, 0),
        write(0x020, 2),
        write(0x024, 1),
        write(0x020, 1),
        write(0x070, 0xb),
        read(0x070),
        write(0x030, 0),
        read(0x034),
        write(0x038, 64),
        write(0x080, 0x1000),
        write(0x084, 0),
        write(0x090, 0x2000),
        write(0x094, 0),
        write(0x0a0, 0x3000),
        write(0x0a4, 0),
        write(0x044, 1),
        write(0x030, 1),
        write(0x038, 16),
        write(0x080, 0x4000),
        write(0x090, 0x5000),
        write(0x0a0, 0x6000),
        write(0x044, 1),
        write(0x070, 0xf),
        read(0x070),
        write(0x050, 0),
        read(0x060),
        write(0x064, 1),
        read(0x0fc),
        read(0x100),
        read(0x108),
        write(0x070, 0),
        read(0x070),
    ]
    .concat();
    let unaligned = [
        vec![0], // 1-byte read of the magic
        vec![0, 0, 0, 0, 0, 0, 0],
        vec![1 | (1 << 1), 0x71, 0, 1, 0, 0, 0], // 2-byte write inside status
        vec![1 | (3 << 1), 0x70, 0, 0xf, 0, 0, 0], // 8-byte write at status
        vec![2 << 1, 0xfe, 0x0f, 0, 0, 0, 0],    // read across the page's end
    ]
    .concat();
    vec![("driver-init", driver), ("odd-widths", unaligned)]
}

fn fuse_in(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let mut m = (40 + u32::try_from(body.len()).expect("small"))
        .to_le_bytes()
        .to_vec();
    m.extend_from_slice(&opcode.to_le_bytes());
    m.extend_from_slice(&unique.to_le_bytes());
    m.extend_from_slice(&nodeid.to_le_bytes());
    m.extend_from_slice(&[0; 16]); // uid, gid, pid, total_extlen, padding
    m.extend_from_slice(body);
    m
}

/// One request of the `fuse_request` input: length, reply buffer size, pieces, bytes.
fn fuse_req(message: &[u8], reply: u16, pieces: u8) -> Vec<u8> {
    let mut r = u16::try_from(message.len())
        .expect("small")
        .to_le_bytes()
        .to_vec();
    r.extend_from_slice(&reply.to_le_bytes());
    r.push(pieces);
    r.extend_from_slice(message);
    r
}

fn fuse_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let init = fuse_in(26, 1, 0, &[7, 0, 0, 0, 38, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0]);
    let init = fuse_req(&init, 4096, 0);
    let named = |opcode, unique, body: &[u8]| fuse_req(&fuse_in(opcode, unique, 1, body), 4096, 1);
    let session = [
        init.clone(),
        named(1, 2, b"file\0"), // LOOKUP
        named(3, 3, &[0; 16]),  // GETATTR
        named(
            9,
            4,
            &[&[0xed, 1, 0, 0, 0, 0, 0, 0][..], b"../escape\0"].concat(),
        ), // MKDIR
        named(12, 5, &[&1u64.to_le_bytes()[..], b"a\0b/c\0"].concat()), // RENAME
        named(15, 6, &[0u8; 40]), // READ
    ]
    .concat();
    let more = [
        init,
        named(
            35,
            7,
            &[&[0xa4, 0x81, 0, 0, 0, 0, 0, 0][..], &[0; 8], b"new\0"].concat(),
        ), // CREATE
        named(16, 8, &[&[0u8; 40][..], b"data"].concat()), // WRITE
        named(21, 9, &[0; 16]),                            // SETXATTR-ish
        named(28, 10, &[0; 40]),                           // READDIR
        fuse_req(&fuse_in(18, 11, 1, b"x\0"), 8, 3),       // UNLINK, tiny reply
    ]
    .concat();
    vec![("session", session), ("create-write", more)]
}

fn call_index(call: Call) -> u8 {
    u8::try_from(Call::ALL.iter().position(|c| *c == call).expect("a call")).expect("few calls")
}

const SPEC: &str = r#"{"ociVersion":"1.1.0","process":{"args":["sh"],"cwd":"/","terminal":false},"root":{"path":"/run/hull/shared/c1/rootfs","readonly":false},"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"pod1"},"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/var/run/netns/pod"},{"type":"ipc","path":"/proc/1/ns/ipc"}],"cgroupsPath":"/hull/c1"}}"#;

fn agent_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut storage = Storage::new();
    storage.kind = EnumOrUnknown::new(StorageKind::STORAGE_KIND_BLOCK);
    storage.source = "serial:hull-disk".into();
    storage.fstype = "ext4".into();
    storage.options = vec!["ro".into()];
    storage.mount_point = "/run/hull/storage/d1".into();
    let create = CreateContainerRequest {
        container_id: "c1".into(),
        oci_spec_json: SPEC.as_bytes().to_vec(),
        storages: vec![storage.clone()],
        ..Default::default()
    };
    let sandbox = CreateSandboxRequest {
        storages: vec![storage],
        ..Default::default()
    };
    let exec = ExecProcessRequest {
        container_id: "c1".into(),
        exec_id: "e1".into(),
        process_json: br#"{"args":["ls","-l"],"cwd":"/","env":["A=b"],"user":{"uid":0,"gid":0}}"#
            .to_vec(),
        ..Default::default()
    };
    let mut address = IpAddress::new();
    address.address = "10.0.0.2".into();
    address.prefix_len = 24;
    let interface = Interface {
        name: "eth0".into(),
        hw_addr: "02:00:00:00:00:01".into(),
        mtu: 1500,
        addresses: vec![address],
        ..Default::default()
    };
    let update = UpdateInterfaceRequest {
        interface: Some(interface).into(),
        ..Default::default()
    };
    let route = Route {
        destination: "10.1.0.0/16".into(),
        gateway: "10.0.0.1".into(),
        device: "eth0".into(),
        ..Default::default()
    };
    let routes = UpdateRoutesRequest {
        routes: Some(Routes {
            routes: vec![route],
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    fn encode(call: Call, message: &impl Message) -> Vec<u8> {
        let mut bytes = vec![call_index(call)];
        bytes.extend(message.write_to_bytes().expect("encodes"));
        bytes
    }
    vec![
        ("create-container", encode(Call::CreateContainer, &create)),
        ("create-sandbox", encode(Call::CreateSandbox, &sandbox)),
        ("exec-process", encode(Call::ExecProcess, &exec)),
        ("update-interface", encode(Call::UpdateInterface, &update)),
        ("update-routes", encode(Call::UpdateRoutes, &routes)),
    ]
}

fn oci_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let full = r#"{
  "ociVersion": "1.1.0",
  "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["sh", "-c", "echo hi"], "env": ["PATH=/bin"], "cwd": "/"},
  "root": {"path": "rootfs", "readonly": true},
  "hostname": "c1",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
    {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind", "rw"]},
    {"destination": "/etc/hosts", "type": "none", "source": "hosts", "options": ["bind", "ro"]}
  ],
  "annotations": {"io.hull.config.vm.vcpus": "2", "io.kubernetes.cri.sandbox-id": "pod1"},
  "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/pod1"}, {"type": "mount"}]}
}"#;
    vec![
        ("full", full.as_bytes().to_vec()),
        ("minimal", br#"{"process":{"args":["true"],"cwd":"/"},"root":{"path":"rootfs"}}"#.to_vec()),
        ("host-bind", br#"{"process":{},"mounts":[{"destination":"/x","type":"bind","source":"/proc/self"}]}"#.to_vec()),
    ]
}

fn config_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let shipped =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shim/configuration.toml"))
            .expect("the shipped configuration");
    let mut with_annotations = b"hypervisor = \"qemu\"\n[vm]\nvcpus = 2\nmemory_mib = 512\n[runtime]\nallowed_annotations = [\"vm.vcpus\", \"vm.memory_mib\", \"vm.kernel_params\"]\n".to_vec();
    with_annotations.push(0);
    with_annotations.extend_from_slice(
        b"vm.vcpus=4\nvm.memory_mib=1024\nvm.kernel_params=quiet\nvm.kernel=/x\n",
    );
    vec![
        ("shipped", shipped),
        ("annotations", with_annotations),
        (
            "bad-values",
            b"hypervisor = \"nope\"\n[vm]\nvcpus = 0\nmemory_mib = -1\n".to_vec(),
        ),
    ]
}

fn write(target: &str, seeds: &[(&str, Vec<u8>)]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).expect("writing a seed");
    }
}

#[test]
#[ignore = "rewrites fuzz/corpus/: run after a change of a target's input format"]
fn write_seed_corpus() {
    let blk = blk_seeds();
    // virtq_chain takes a length limit first.
    let limited: Vec<(&str, Vec<u8>)> = blk
        .iter()
        .map(|(name, bytes)| (*name, [&0x2000u16.to_le_bytes()[..], bytes].concat()))
        .collect();
    write("virtq_chain", &limited);
    write("blk_request", &blk);
    write("vsock_packet", &vsock_seeds());
    write("net_rx_tx", &net_seeds());
    write("vhost_user_msg", &vhost_user_seeds());
    write("virtio_mmio", &mmio_seeds());
    write("fuse_request", &fuse_seeds());
    write("agent_request", &agent_seeds());
    write("oci_spec", &oci_seeds());
    write("config_toml", &config_seeds());
}
