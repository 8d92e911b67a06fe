//! A fake virtio-fs frontend: builds FUSE requests, places them in guest memory as a
//! virtqueue descriptor chain (virtio-queue's mock queue), runs them through upstream
//! virtiofsd's `Server` exactly as the vhost-user worker does, and decodes the reply. Lets
//! tests speak to the file server the way a (hostile) guest kernel would, without a VM.

use std::mem::size_of;

use vhost_user_backend::bitmap::BitmapMmapRegion;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtiofsd::descriptor_utils::{Reader, Writer};
use virtiofsd::filesystem::FileSystem;
use virtiofsd::fuse::{self, InHeader, OutHeader};
use virtiofsd::server::Server;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

const VRING_DESC_F_WRITE: u16 = 2;
/// Guest memory: the queue at 0, the request at `REQUEST_ADDR`, the reply at `REPLY_ADDR`.
const MEMORY_SIZE: usize = 4 << 20;
const REQUEST_ADDR: u64 = 0x10_0000;
const REPLY_ADDR: u64 = 0x20_0000;
/// Largest request or reply this frontend places.
pub const MAX_MESSAGE: usize = 1 << 20;

/// The decoded reply to one request.
#[derive(Debug)]
pub struct Reply {
    /// Negative errno, or 0.
    pub error: i32,
    /// The bytes after the out header.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as a FUSE structure, if it is long enough.
    pub fn parse<T: ByteValued>(&self) -> Option<T> {
        let bytes = self.body.get(..size_of::<T>())?;
        T::from_slice(bytes).copied()
    }

    /// The errno the server answered, or 0.
    pub fn errno(&self) -> i32 {
        -self.error
    }
}

/// A FUSE session with a `Server` over file system `F`.
pub struct Frontend<F: FileSystem + Sync> {
    server: Server<F>,
    mem: GuestMemoryMmap<BitmapMmapRegion>,
    unique: u64,
}

impl<F: FileSystem + Sync> Frontend<F> {
    /// A session over `fs`; call [`Frontend::init`] before anything else.
    pub fn new(fs: F) -> Self {
        let mem =
            GuestMemoryMmap::<BitmapMmapRegion>::from_ranges(&[(GuestAddress(0), MEMORY_SIZE)])
                .expect("guest memory");
        Self {
            server: Server::new(fs),
            mem,
            unique: 0,
        }
    }

    /// Places `request` (a whole FUSE message, header included) and a `reply_len`-byte reply
    /// buffer in guest memory and lets the server handle them. Returns what the server
    /// returned and the reply buffer.
    pub fn raw(
        &self,
        request: &[u8],
        reply_len: u32,
    ) -> (Result<usize, virtiofsd::Error>, Vec<u8>) {
        assert!(request.len() <= MAX_MESSAGE && reply_len as usize <= MAX_MESSAGE);
        self.mem
            .write_slice(request, GuestAddress(REQUEST_ADDR))
            .expect("request fits");
        self.mem
            .write_slice(&vec![0; reply_len as usize], GuestAddress(REPLY_ADDR))
            .expect("reply fits");
        let queue = MockSplitQueue::new(&self.mem, 16);
        let request_len = u32::try_from(request.len()).expect("bounded above");
        let mut descs = Vec::new();
        // A chain has at least one descriptor: an empty request is a zero-length one.
        if request_len > 0 || reply_len == 0 {
            descs.push(RawDescriptor::from(SplitDescriptor::new(
                REQUEST_ADDR,
                request_len,
                0,
                0,
            )));
        }
        if reply_len > 0 {
            descs.push(RawDescriptor::from(SplitDescriptor::new(
                REPLY_ADDR,
                reply_len,
                VRING_DESC_F_WRITE,
                0,
            )));
        }
        let chain = queue.build_desc_chain(&descs).expect("descriptor chain");
        let reader = Reader::new(&self.mem, chain.clone()).expect("reader over the chain");
        let writer = Writer::new(&self.mem, chain).expect("writer over the chain");
        let result = self.server.handle_message(reader, writer, None::<&mut ()>);
        let mut reply = vec![0; reply_len as usize];
        self.mem
            .read_slice(&mut reply, GuestAddress(REPLY_ADDR))
            .expect("reply readable");
        (result, reply)
    }
}

/// A FUSE session, whatever carries its messages: the requests a guest kernel sends, built
/// on [`FuseSession::request`].
pub trait FuseSession {
    /// Sends one well-formed request and decodes the reply; panics if the server fails to
    /// answer at all.
    fn request(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Reply;

    /// FUSE_INIT at protocol 7.38.
    fn init(&mut self) {
        let init = fuse::InitInCompat {
            major: fuse::KERNEL_VERSION,
            minor: fuse::KERNEL_MINOR_VERSION,
            max_readahead: 0,
            flags: 0,
        };
        let reply = self.request(fuse::Opcode::Init as u32, 0, init.as_slice());
        assert_eq!(reply.error, 0, "INIT refused");
    }

    /// LOOKUP of `name` (raw bytes, any content) in `parent`.
    fn lookup(&mut self, parent: u64, name: &[u8]) -> Reply {
        self.request(fuse::Opcode::Lookup as u32, parent, &nul_terminated(name))
    }

    /// OPEN of `nodeid` read-only; the file handle, or the errno.
    fn open(&mut self, nodeid: u64) -> Result<u64, i32> {
        self.open_with(nodeid, libc::O_RDONLY)
    }

    /// OPEN of `nodeid` with open(2) `flags`; the file handle, or the errno.
    fn open_with(&mut self, nodeid: u64, flags: i32) -> Result<u64, i32> {
        let open = fuse::OpenIn {
            flags: flags as u32,
            open_flags: 0,
        };
        let reply = self.request(fuse::Opcode::Open as u32, nodeid, open.as_slice());
        match reply.parse::<fuse::OpenOut>() {
            Some(out) if reply.error == 0 => Ok(out.fh),
            _ => Err(reply.errno()),
        }
    }

    /// READ of up to `size` bytes at 0.
    fn read(&mut self, nodeid: u64, fh: u64, size: u32) -> Result<Vec<u8>, i32> {
        let read = fuse::ReadIn {
            fh,
            offset: 0,
            size,
            ..Default::default()
        };
        let reply = self.request(fuse::Opcode::Read as u32, nodeid, read.as_slice());
        if reply.error == 0 {
            Ok(reply.body)
        } else {
            Err(reply.errno())
        }
    }

    /// WRITE of `data` at 0; the bytes the server says it wrote, or the errno.
    fn write(&mut self, nodeid: u64, fh: u64, data: &[u8]) -> Result<u32, i32> {
        let write = fuse::WriteIn {
            fh,
            offset: 0,
            size: u32::try_from(data.len()).expect("small write"),
            ..Default::default()
        };
        let mut body = write.as_slice().to_vec();
        body.extend_from_slice(data);
        let reply = self.request(fuse::Opcode::Write as u32, nodeid, &body);
        match reply.parse::<fuse::WriteOut>() {
            Some(out) if reply.error == 0 => Ok(out.size),
            _ => Err(reply.errno()),
        }
    }

    /// RELEASE of an open file.
    fn release(&mut self, nodeid: u64, fh: u64) {
        let release = fuse::ReleaseIn {
            fh,
            ..Default::default()
        };
        let reply = self.request(fuse::Opcode::Release as u32, nodeid, release.as_slice());
        assert_eq!(reply.error, 0, "RELEASE failed");
    }

    /// READLINK of `nodeid`.
    fn readlink(&mut self, nodeid: u64) -> Result<Vec<u8>, i32> {
        let reply = self.request(fuse::Opcode::Readlink as u32, nodeid, &[]);
        if reply.error == 0 {
            Ok(reply.body)
        } else {
            Err(reply.errno())
        }
    }

    /// SYMLINK `name` -> `target` in `parent`.
    fn symlink(&mut self, parent: u64, name: &[u8], target: &[u8]) -> Reply {
        let mut body = nul_terminated(name);
        body.extend(nul_terminated(target));
        self.request(fuse::Opcode::Symlink as u32, parent, &body)
    }

    /// LINK of inode `oldnodeid` as `name` in `parent`.
    fn link(&mut self, oldnodeid: u64, parent: u64, name: &[u8]) -> Reply {
        let mut body = fuse::LinkIn { oldnodeid }.as_slice().to_vec();
        body.extend(nul_terminated(name));
        self.request(fuse::Opcode::Link as u32, parent, &body)
    }

    /// RENAME of `oldname` in `olddir` to `newname` in `newdir`.
    fn rename(&mut self, olddir: u64, oldname: &[u8], newdir: u64, newname: &[u8]) -> Reply {
        let mut body = fuse::RenameIn { newdir }.as_slice().to_vec();
        body.extend(nul_terminated(oldname));
        body.extend(nul_terminated(newname));
        self.request(fuse::Opcode::Rename as u32, olddir, &body)
    }

    /// MKDIR `name` in `parent`, mode 0755.
    fn mkdir(&mut self, parent: u64, name: &[u8]) -> Reply {
        let mut body = fuse::MkdirIn {
            mode: 0o755,
            umask: 0,
        }
        .as_slice()
        .to_vec();
        body.extend(nul_terminated(name));
        self.request(fuse::Opcode::Mkdir as u32, parent, &body)
    }

    /// UNLINK `name` in `parent`.
    fn unlink(&mut self, parent: u64, name: &[u8]) -> Reply {
        self.request(fuse::Opcode::Unlink as u32, parent, &nul_terminated(name))
    }

    /// GETATTR of `nodeid`.
    fn getattr(&mut self, nodeid: u64) -> Reply {
        let getattr = fuse::GetattrIn::default();
        self.request(fuse::Opcode::Getattr as u32, nodeid, getattr.as_slice())
    }
}

impl<F: FileSystem + Sync> FuseSession for Frontend<F> {
    fn request(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Reply {
        self.unique += 1;
        let message = request_message(self.unique, opcode, nodeid, body);
        let (result, reply) = self.raw(&message, 64 * 1024);
        let written = result.unwrap_or_else(|e| panic!("opcode {opcode}: server error {e}"));
        let out = OutHeader::from_slice(&reply[..size_of::<OutHeader>()])
            .copied()
            .expect("out header");
        assert_eq!(out.unique, self.unique, "reply to another request");
        Reply {
            error: out.error,
            body: reply[size_of::<OutHeader>()..written].to_vec(),
        }
    }
}

/// A FUSE request: its in-header (length, opcode, unique id, node) and `body`.
pub fn request_message(unique: u64, opcode: u32, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let header = InHeader {
        len: u32::try_from(size_of::<InHeader>() + body.len()).expect("small request"),
        opcode,
        unique,
        nodeid,
        ..Default::default()
    };
    let mut message = header.as_slice().to_vec();
    message.extend_from_slice(body);
    message
}

/// The entry a successful LOOKUP, SYMLINK or LINK returned.
pub fn entry(reply: &Reply) -> Option<fuse::EntryOut> {
    if reply.error == 0 {
        reply.parse()
    } else {
        None
    }
}

/// `bytes` with a NUL after them, as FUSE carries names.
pub fn nul_terminated(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.push(0);
    v
}
