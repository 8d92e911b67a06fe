//! A virtio-blk request, parsed out of a guest descriptor chain into a typed value the way
//! Firecracker's `request.rs` does: the request type becomes a [`RequestType`] (unknown types
//! are [`RequestType::Unsupported`], not an error), and every length, direction and sector
//! range the guest chose is checked against the disk before any I/O happens.
//!
//! Layout (virtio 1.2, 5.2.6): a 16-byte header (type, reserved, sector) and any driver data
//! in device-readable buffers, then any device data and a final status byte in device-writable
//! buffers. Buffers may be split anywhere (`VIRTIO_F_ANY_LAYOUT` is implied by
//! `VIRTIO_F_VERSION_1`), so the request is addressed as two byte streams, the readable part
//! and the writable part, each cut into [`GuestBuf`] pieces.

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use crate::chain::{self, ChainError, Direction};
use crate::vsock::packet::Mem;

/// Bytes in a sector, the unit of `sector` fields whatever the disk's block size.
pub const SECTOR_SIZE: u32 = 512;
/// Bytes in the request header.
pub const HEADER_SIZE: usize = 16;
/// Bytes of the device id answered to GET_ID.
pub const ID_BYTES: usize = 20;
/// Bytes in one discard / write-zeroes segment.
pub const SEGMENT_SIZE: usize = 16;
/// Most discard / write-zeroes segments one request may carry (advertised in the config).
pub const MAX_SEGMENTS: u32 = 32;
/// Most bytes one request may move. A guest honouring `seg_max` stays far below; this caps
/// what a hostile chain can make the device walk, not an allocation (data goes straight to
/// guest memory).
pub const MAX_REQUEST_BYTES: usize = 1 << 30;

/// `flags` bit of a write-zeroes segment: the device may unmap (punch) the range.
const SEGMENT_FLAG_UNMAP: u32 = 1;

/// The request types of virtio 1.2, 5.2.6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// `VIRTIO_BLK_T_IN`: read sectors into the guest.
    In,
    /// `VIRTIO_BLK_T_OUT`: write sectors from the guest.
    Out,
    /// `VIRTIO_BLK_T_FLUSH`: make earlier writes durable.
    Flush,
    /// `VIRTIO_BLK_T_GET_ID`: the device id string.
    GetId,
    /// `VIRTIO_BLK_T_DISCARD`: the guest no longer needs these sectors.
    Discard,
    /// `VIRTIO_BLK_T_WRITE_ZEROES`: these sectors read as zeroes from now on.
    WriteZeroes,
    /// Any other type, answered `VIRTIO_BLK_S_UNSUPP`.
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(value: u32) -> Self {
        match value {
            0 => Self::In,
            1 => Self::Out,
            4 => Self::Flush,
            8 => Self::GetId,
            11 => Self::Discard,
            13 => Self::WriteZeroes,
            other => Self::Unsupported(other),
        }
    }
}

/// The status byte the device writes last (virtio 1.2, 5.2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// `VIRTIO_BLK_S_OK`.
    Ok = 0,
    /// `VIRTIO_BLK_S_IOERR`.
    IoErr = 1,
    /// `VIRTIO_BLK_S_UNSUPP`.
    Unsupp = 2,
}

/// A piece of guest memory, inside a validated chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestBuf {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: usize,
}

/// A sector range of a discard or write-zeroes request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectorRange {
    /// First sector.
    pub sector: u64,
    /// Number of sectors.
    pub sectors: u32,
    /// Write-zeroes may punch the range rather than write zeroes.
    pub unmap: bool,
}

/// A request that passed every check, ready for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub kind: RequestType,
    /// First sector (IN, OUT).
    pub sector: u64,
    /// The data buffers: device-writable for IN and GET_ID, device-readable for OUT.
    pub data: Vec<GuestBuf>,
    /// Total bytes in `data`.
    pub data_len: usize,
    /// Ranges of DISCARD and WRITE_ZEROES.
    pub ranges: Vec<SectorRange>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Why a request was refused before any I/O.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The descriptor chain itself is malformed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The chain has no device-writable byte for the status.
    #[error("request {head} has no room for a status byte")]
    NoStatus {
        /// Head index of the chain.
        head: u16,
    },
    /// The device-readable part is shorter than a header.
    #[error("request {head} has a {len}-byte header (16 needed)")]
    ShortHeader {
        /// Head index of the chain.
        head: u16,
        /// Device-readable bytes.
        len: usize,
    },
    /// Data sits in buffers of the wrong direction for the request type.
    #[error("{kind:?} request carries {len} bytes in buffers of the wrong direction")]
    WrongDataDirection {
        /// The request type.
        kind: RequestType,
        /// Bytes in the wrong direction.
        len: usize,
    },
    /// The data length is not a whole number of sectors (or segments).
    #[error("{kind:?} request has {len} data bytes, not a multiple of {unit}")]
    Unaligned {
        /// The request type.
        kind: RequestType,
        /// Data bytes.
        len: usize,
        /// The unit the length must be a multiple of.
        unit: usize,
    },
    /// A sector range reaches past the end of the disk.
    #[error(
        "{kind:?} of {sectors} sectors at sector {sector} is beyond the disk's {capacity} sectors"
    )]
    OutOfRange {
        /// The request type.
        kind: RequestType,
        /// First sector.
        sector: u64,
        /// Number of sectors.
        sectors: u64,
        /// The disk's capacity in sectors.
        capacity: u64,
    },
    /// A discard or write-zeroes request has no segment or more than [`MAX_SEGMENTS`].
    #[error("{kind:?} request has {count} segments (1 to {MAX_SEGMENTS} allowed)")]
    SegmentCount {
        /// The request type.
        kind: RequestType,
        /// Segments carried.
        count: usize,
    },
    /// A segment has flags the type does not allow.
    #[error("{kind:?} segment has unsupported flags {flags:#x}")]
    SegmentFlags {
        /// The request type.
        kind: RequestType,
        /// The flags.
        flags: u32,
    },
    /// Guest memory could not be read although the chain was validated.
    #[error("reading request {head} from guest memory")]
    Memory {
        /// Head index of the chain.
        head: u16,
    },
}

/// A refused request: why, and where its status byte goes if the chain has a usable one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Why it was refused.
    pub error: RequestError,
    /// Where to write `VIRTIO_BLK_S_IOERR`, if anywhere.
    pub status: Option<GuestAddress>,
}

impl Request {
    /// Validates `chain` and parses it against a disk of `capacity` sectors.
    pub fn parse(chain: DescriptorChain<&Mem>, mem: &Mem, capacity: u64) -> Result<Self, Rejected> {
        let head = chain.head_index();
        let valid = match chain::validate(
            &chain,
            mem,
            Direction::ReadableThenWritable,
            MAX_REQUEST_BYTES,
        ) {
            Ok(valid) => valid,
            Err(error) => {
                return Err(Rejected {
                    status: status_of_malformed(&chain, mem),
                    error: error.into(),
                })
            }
        };
        // The chain ends and is in memory: its pieces are at most a queue's worth.
        let (mut readable, mut writable) = (Vec::new(), Vec::new());
        for desc in chain {
            let len = usize::try_from(desc.len()).unwrap_or(usize::MAX);
            let buf = GuestBuf {
                addr: desc.addr(),
                len,
            };
            if desc.is_write_only() {
                writable.push(buf);
            } else {
                readable.push(buf);
            }
        }
        let writable_len = valid.len - valid.readable;
        let Some(status_offset) = writable_len.checked_sub(1) else {
            return Err(Rejected {
                error: RequestError::NoStatus { head },
                status: None,
            });
        };
        let status = cut(&writable, status_offset, 1)
            .first()
            .map(|b| b.addr)
            .ok_or(Rejected {
                error: RequestError::Memory { head },
                status: None,
            })?;
        let reject = |error| Rejected {
            error,
            status: Some(status),
        };
        if valid.readable < HEADER_SIZE {
            return Err(reject(RequestError::ShortHeader {
                head,
                len: valid.readable,
            }));
        }
        let mut header = [0u8; HEADER_SIZE];
        read_bytes(mem, &cut(&readable, 0, HEADER_SIZE), &mut header)
            .map_err(|()| reject(RequestError::Memory { head }))?;
        let (kind_raw, sector_raw) = header.split_at(8);
        let kind = RequestType::from(u32::from_le_bytes(
            kind_raw[..4].try_into().unwrap_or([0xff; 4]),
        ));
        let sector = u64::from_le_bytes(sector_raw.try_into().unwrap_or([0; 8]));
        let driver_data = valid.readable - HEADER_SIZE;
        let device_data = status_offset;

        let mut request = Request {
            kind,
            sector,
            data: Vec::new(),
            data_len: 0,
            ranges: Vec::new(),
            status,
        };
        let wrong_direction = |len| reject(RequestError::WrongDataDirection { kind, len });
        match kind {
            RequestType::In | RequestType::Out => {
                let (data, wrong) = if kind == RequestType::In {
                    (cut(&writable, 0, device_data), driver_data)
                } else {
                    (cut(&readable, HEADER_SIZE, driver_data), device_data)
                };
                if wrong != 0 {
                    return Err(wrong_direction(wrong));
                }
                let len = data.iter().map(|b| b.len).sum::<usize>();
                if !len.is_multiple_of(SECTOR_SIZE as usize) {
                    return Err(reject(RequestError::Unaligned {
                        kind,
                        len,
                        unit: SECTOR_SIZE as usize,
                    }));
                }
                check_range(kind, sector, (len / SECTOR_SIZE as usize) as u64, capacity)
                    .map_err(reject)?;
                request.data = data;
                request.data_len = len;
            }
            RequestType::GetId => {
                if driver_data != 0 {
                    return Err(wrong_direction(driver_data));
                }
                request.data = cut(&writable, 0, device_data.min(ID_BYTES));
                request.data_len = device_data.min(ID_BYTES);
            }
            RequestType::Discard | RequestType::WriteZeroes => {
                if device_data != 0 {
                    return Err(wrong_direction(device_data));
                }
                if !driver_data.is_multiple_of(SEGMENT_SIZE) {
                    return Err(reject(RequestError::Unaligned {
                        kind,
                        len: driver_data,
                        unit: SEGMENT_SIZE,
                    }));
                }
                let count = driver_data / SEGMENT_SIZE;
                if count == 0 || count > MAX_SEGMENTS as usize {
                    return Err(reject(RequestError::SegmentCount { kind, count }));
                }
                let mut raw = vec![0u8; driver_data];
                read_bytes(mem, &cut(&readable, HEADER_SIZE, driver_data), &mut raw)
                    .map_err(|()| reject(RequestError::Memory { head }))?;
                for segment in raw.chunks_exact(SEGMENT_SIZE) {
                    let range = parse_segment(kind, segment).map_err(reject)?;
                    check_range(kind, range.sector, u64::from(range.sectors), capacity)
                        .map_err(reject)?;
                    request.ranges.push(range);
                }
            }
            RequestType::Flush | RequestType::Unsupported(_) => {}
        }
        Ok(request)
    }
}

/// The status byte of a chain that failed validation, if its last descriptor is a
/// device-writable buffer inside guest memory: the guest then learns of the failure.
fn status_of_malformed(chain: &DescriptorChain<&Mem>, mem: &Mem) -> Option<GuestAddress> {
    // The iterator stops after a queue's worth of descriptors, so this ends on a loop.
    let last = chain.clone().last()?;
    if last.has_next() || !last.is_write_only() || last.len() == 0 {
        return None;
    }
    let addr = last.addr().checked_add(u64::from(last.len()) - 1)?;
    mem.check_range(addr, 1, vm_memory::Permissions::Write)
        .then_some(addr)
}

fn parse_segment(kind: RequestType, raw: &[u8]) -> Result<SectorRange, RequestError> {
    let field = |at: usize, len: usize| raw.get(at..at + len).unwrap_or(&[]);
    let sector = u64::from_le_bytes(field(0, 8).try_into().unwrap_or([0; 8]));
    let sectors = u32::from_le_bytes(field(8, 4).try_into().unwrap_or([0; 4]));
    let flags = u32::from_le_bytes(field(12, 4).try_into().unwrap_or([0; 4]));
    let allowed = if kind == RequestType::WriteZeroes {
        SEGMENT_FLAG_UNMAP
    } else {
        0
    };
    if flags & !allowed != 0 {
        return Err(RequestError::SegmentFlags { kind, flags });
    }
    Ok(SectorRange {
        sector,
        sectors,
        unmap: flags & SEGMENT_FLAG_UNMAP != 0,
    })
}

fn check_range(
    kind: RequestType,
    sector: u64,
    sectors: u64,
    capacity: u64,
) -> Result<(), RequestError> {
    match sector.checked_add(sectors) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(RequestError::OutOfRange {
            kind,
            sector,
            sectors,
            capacity,
        }),
    }
}

/// The pieces of `bufs`, taken as one byte stream, covering `len` bytes from `skip`.
pub(crate) fn cut(bufs: &[GuestBuf], mut skip: usize, mut len: usize) -> Vec<GuestBuf> {
    let mut out = Vec::new();
    for buf in bufs {
        if len == 0 {
            break;
        }
        if skip >= buf.len {
            skip -= buf.len;
            continue;
        }
        let take = (buf.len - skip).min(len);
        // `skip` is within a buffer that validation found inside guest memory.
        out.push(GuestBuf {
            addr: buf.addr.unchecked_add(skip as u64),
            len: take,
        });
        len -= take;
        skip = 0;
    }
    out
}

fn read_bytes(mem: &Mem, pieces: &[GuestBuf], out: &mut [u8]) -> Result<(), ()> {
    let mut at = 0;
    for piece in pieces {
        let dst = out.get_mut(at..at + piece.len).ok_or(())?;
        mem.read_slice(dst, piece.addr).map_err(|_| ())?;
        at += piece.len;
    }
    (at == out.len()).then_some(()).ok_or(())
}
