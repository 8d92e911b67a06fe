//! The virtqueue targets: descriptor chains walked by `hull_devices::chain` and parsed into
//! virtio-blk requests, and hull-blk's whole queue processing over a disk.

use std::cell::RefCell;
use std::os::fd::AsRawFd;

use hull_devices::blk::request::Request;
use hull_devices::blk::{BlkDevice, SyncEngine};
use hull_devices::chain::{self, Direction};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemory, Permissions};

use crate::guest::{self, MEM_SIZE, QUEUE_SIZE};
use crate::input::Input;

/// Sectors of the fuzz disk (32 KiB): small, so that sector ranges reach its end.
pub const DISK_SECTORS: u64 = 64;

/// `virtq_chain`: every chain the guest makes available is validated in each direction and
/// with a length limit from the input, and parsed as a virtio-blk request. A chain that
/// passes must be what the validation promises: every buffer inside guest memory with the
/// right direction, adding up to the length reported, within the limit.
pub fn virtq_chain(data: &[u8]) {
    let mut input = Input::new(data);
    let max_len = usize::from(input.u16());
    let (mem, mut queues) = guest::guest(&mut input, 1);
    let Some(queue) = queues.first_mut() else {
        return;
    };
    let mut popped = 0;
    while let Some(chain) = queue.pop_descriptor_chain(&mem) {
        popped += 1;
        assert!(
            popped <= usize::from(QUEUE_SIZE) * 2,
            "the queue kept handing out chains"
        );
        for direction in [
            Direction::DeviceReadable,
            Direction::DeviceWritable,
            Direction::ReadableThenWritable,
        ] {
            let plain = chain::validate(&chain, &mem, direction, max_len);
            let with_buffers = chain::validate_buffers(&chain, &mem, direction, max_len);
            match (plain, with_buffers) {
                (Ok(valid), Ok((again, buffers))) => {
                    assert_eq!(valid, again, "two walks of one chain disagree");
                    assert!(valid.len <= max_len && valid.readable <= valid.len);
                    let total: usize = buffers.iter().map(|&(_, len)| len).sum();
                    assert_eq!(
                        total, valid.len,
                        "buffers do not add up to the chain's length"
                    );
                    for &(addr, len) in &buffers {
                        assert!(
                            mem.check_range(addr, len, Permissions::Read),
                            "a validated buffer ({addr:?}, {len}) is outside guest memory"
                        );
                        assert!(addr.0 + len as u64 <= MEM_SIZE);
                    }
                }
                (Err(a), Err(b)) => assert_eq!(a, b, "two walks of one chain disagree"),
                (a, b) => panic!("two walks of one chain disagree: {a:?} / {b:?}"),
            }
        }
        let capacity = u64::from(input.u8());
        match Request::parse(chain, &mem, capacity) {
            Ok(request) => {
                assert!(buffer_in_memory(&mem, request.status, 1));
                for buf in &request.data {
                    assert!(buffer_in_memory(&mem, buf.addr, buf.len));
                }
                assert_eq!(
                    request.data.iter().map(|b| b.len).sum::<usize>(),
                    request.data_len
                );
            }
            Err(rejected) => {
                if let Some(status) = rejected.status {
                    assert!(buffer_in_memory(&mem, status, 1));
                }
            }
        }
    }
}

fn buffer_in_memory(mem: &guest::Mem, addr: GuestAddress, len: usize) -> bool {
    len == 0 || mem.check_range(addr, len, Permissions::Read)
}

thread_local! {
    /// One device per thread over a memfd disk: opening a disk and an io_uring per input
    /// would cost more than serving it. What the disk holds does not change how a request
    /// is checked, only what a read returns.
    static BLK: RefCell<Option<(BlkDevice, std::fs::File)>> = const { RefCell::new(None) };
}

fn blk_device() -> (BlkDevice, std::fs::File) {
    let fd = nix::sys::memfd::memfd_create(
        c"hull-fuzz-disk",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .expect("memfd for the fuzz disk");
    let file = std::fs::File::from(fd);
    file.set_len(DISK_SECTORS * 512)
        .expect("sizing the fuzz disk");
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let engine =
        SyncEngine::open(std::path::Path::new(&path), false, false).expect("opening the fuzz disk");
    (BlkDevice::new(engine, false, 1), file)
}

/// `blk_request`: hull-blk serves a queue whose descriptor tables, headers, segments and
/// data come from the input, through its io_uring batch as in production: the pass ends
/// (a lying ring does not make it spin) and nothing panics.
pub fn blk_request(data: &[u8]) {
    let mut input = Input::new(data);
    let (mem, mut queues) = guest::guest(&mut input, 1);
    let Some(queue) = queues.first_mut() else {
        return;
    };
    BLK.with(|slot| {
        let mut slot = slot.borrow_mut();
        let (device, _disk) = slot.get_or_insert_with(blk_device);
        // A ring whose index lies is an error the backend reports, not a panic. The guest's
        // buffers may alias its own rings, so what the rings hold afterwards is the guest's
        // business: the promise checked is that the pass ends, and does not panic.
        let mem = std::sync::Arc::new(mem);
        let _ = device.process_queue(0, queue, &mem);
        // Whatever the pass left in flight completes, as the ring's event would have it.
        while device.in_flight(0) > 0 {
            if device.complete_queue(0, queue, &mem, true).is_err() {
                device.quiesce();
                break;
            }
        }
    });
}
