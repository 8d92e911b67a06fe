//! Address ranges → devices, for the two kinds of exits a vCPU handles itself: port I/O and
//! MMIO.
//!
//! A bus is built before the vCPUs start and is then shared read-only by all vCPU threads;
//! each device sits behind its own mutex, so exits to different devices never contend. An
//! access must fall entirely inside one device's range: an access to no device, or one that
//! straddles a range's end, is "unmapped" (reads see all ones, as on a floating ISA bus;
//! writes are dropped) and counted, never a panic: the guest chooses these addresses.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::{Error, Result};

/// A device model reachable through a bus.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` from the start of the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` from the start of the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between a bus and its owner.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping address ranges, each leading to one device.
pub struct Bus {
    name: &'static str,
    ranges: BTreeMap<u64, Entry>,
    unmapped: AtomicU64,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.ranges.iter().map(|(base, e)| (*base, e.len)).collect();
        f.debug_struct("Bus")
            .field("name", &self.name)
            .field("ranges", &ranges)
            .finish()
    }
}

/// Where an access landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A device took it.
    Device,
    /// No device covers the whole access.
    Unmapped,
}

impl Bus {
    /// An empty bus; `name` ("pio", "mmio") appears in errors.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            ranges: BTreeMap::new(),
            unmapped: AtomicU64::new(0),
        }
    }

    /// Maps `[base, base + len)` to `device`. Fails if the range is empty, wraps, or overlaps
    /// a range already mapped.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<()> {
        let invalid = || Error::BusRangeInvalid {
            bus: self.name,
            base,
            len,
        };
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or_else(invalid)?;
        // The only candidates for an overlap: the last range starting before `end`.
        if let Some((&other_base, other)) = self.ranges.range(..end).next_back() {
            if other_base + other.len > base {
                return Err(Error::BusOverlap {
                    bus: self.name,
                    base,
                    len,
                    other_base,
                    other_len: other.len,
                });
            }
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// The device whose range holds all of `[addr, addr + len)`, and the offset of `addr` in it.
    fn find(&self, addr: u64, len: usize) -> Option<(&Entry, u64)> {
        let (&base, entry) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        let last = offset.checked_add(u64::try_from(len).ok()?)?;
        (len > 0 && last <= entry.len).then_some((entry, offset))
    }

    /// Dispatches a guest read of `data.len()` bytes at `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Access {
        match self.find(addr, data.len()) {
            Some((entry, offset)) => {
                lock(&entry.device).read(offset, data);
                Access::Device
            }
            None => {
                data.fill(0xff);
                self.note_unmapped(addr, data.len(), "read");
                Access::Unmapped
            }
        }
    }

    /// Dispatches a guest write of `data` at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Access {
        match self.find(addr, data.len()) {
            Some((entry, offset)) => {
                lock(&entry.device).write(offset, data);
                Access::Device
            }
            None => {
                self.note_unmapped(addr, data.len(), "write");
                Access::Unmapped
            }
        }
    }

    /// How many accesses hit no device so far.
    pub fn unmapped_accesses(&self) -> u64 {
        self.unmapped.load(Ordering::Relaxed)
    }

    fn note_unmapped(&self, addr: u64, len: usize, op: &str) {
        self.unmapped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(bus = self.name, addr, len, op, "access to no device");
    }
}

/// Locks a device; a device whose lock a panicking vCPU poisoned is still usable, as its
/// state is plain registers that each access leaves consistent.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Records every access; reads return the offset's low byte.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
        reads: Vec<(u64, usize)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            self.reads.push((offset, data.len()));
            data.fill(offset.to_le_bytes()[0]);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn recorder() -> (Arc<Mutex<Recorder>>, SharedDevice) {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let shared: SharedDevice = dev.clone();
        (dev, shared)
    }

    #[test]
    fn routes_accesses_to_the_device_with_the_offset_inside_its_range() {
        let mut bus = Bus::new("pio");
        let (serial, shared) = recorder();
        bus.insert(0x3f8, 8, shared).unwrap();
        assert_eq!(bus.write(0x3f8, b"h"), Access::Device);
        let mut data = [0u8; 1];
        assert_eq!(bus.read(0x3fd, &mut data), Access::Device);
        assert_eq!(data, [5]);
        let serial = serial.lock().unwrap();
        assert_eq!(serial.writes, vec![(0, b"h".to_vec())]);
        assert_eq!(serial.reads, vec![(5, 1)]);
    }

    #[test]
    fn rejects_overlapping_ranges_on_either_side() {
        let mut bus = Bus::new("mmio");
        bus.insert(0x1000, 0x100, recorder().1).unwrap();
        for (base, len) in [(0x1000, 1), (0xf00, 0x101), (0x10ff, 0x10), (0x0, 0x2000)] {
            let err = bus.insert(base, len, recorder().1).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::BusOverlap {
                        other_base: 0x1000,
                        other_len: 0x100,
                        ..
                    }
                ),
                "{base:#x}+{len:#x}: {err}"
            );
        }
        // Touching ranges are fine.
        bus.insert(0xf00, 0x100, recorder().1).unwrap();
        bus.insert(0x1100, 0x100, recorder().1).unwrap();
    }

    #[test]
    fn rejects_empty_and_wrapping_ranges() {
        let mut bus = Bus::new("mmio");
        assert!(matches!(
            bus.insert(0x10, 0, recorder().1),
            Err(Error::BusRangeInvalid { .. })
        ));
        assert!(matches!(
            bus.insert(u64::MAX, 2, recorder().1),
            Err(Error::BusRangeInvalid { .. })
        ));
    }

    #[test]
    fn unmapped_reads_see_all_ones_and_are_counted() {
        let mut bus = Bus::new("pio");
        let (dev, shared) = recorder();
        bus.insert(0x60, 1, shared).unwrap();
        let mut data = [0u8; 4];
        assert_eq!(bus.read(0x80, &mut data), Access::Unmapped);
        assert_eq!(data, [0xff; 4]);
        // Straddling the end of a range is not the device's business either.
        assert_eq!(bus.write(0x60, &[1, 2]), Access::Unmapped);
        assert_eq!(bus.unmapped_accesses(), 2);
        assert!(dev.lock().unwrap().writes.is_empty());
    }

    proptest! {
        #[test]
        fn dispatch_reaches_a_device_exactly_when_the_access_fits_its_range(
            ranges in proptest::collection::vec((any::<u64>(), 1u64..0x1_0000), 0..8),
            addr in any::<u64>(),
            len in 0usize..16,
        ) {
            let mut bus = Bus::new("mmio");
            let mut mapped = Vec::new();
            for (base, size) in ranges {
                let (dev, shared) = recorder();
                if bus.insert(base, size, shared).is_ok() {
                    mapped.push((base, size, dev));
                }
            }
            // The accepted ranges never overlap.
            for (i, a) in mapped.iter().enumerate() {
                for b in &mapped[i + 1..] {
                    prop_assert!(a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0);
                }
            }
            let owner = mapped.iter().find(|(base, size, _)| {
                len > 0 && addr >= *base && (addr - base).checked_add(len as u64).is_some_and(|end| end <= *size)
            });
            let mut data = vec![0u8; len];
            let access = bus.read(addr, &mut data);
            match owner {
                Some((base, _, dev)) => {
                    prop_assert_eq!(access, Access::Device);
                    prop_assert_eq!(dev.lock().unwrap().reads.clone(), vec![(addr - base, len)]);
                }
                None => {
                    prop_assert_eq!(access, Access::Unmapped);
                    prop_assert!(data.iter().all(|b| *b == 0xff));
                    prop_assert!(mapped.iter().all(|(_, _, dev)| dev.lock().unwrap().reads.is_empty()));
                }
            }
        }
    }
}
