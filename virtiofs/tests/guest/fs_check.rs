//! /init of the guest in hull-fs's QEMU test (tests/qemu_guest.rs): mounts the virtio-fs
//! share tagged `hullfs` on /mnt, works on it as a container would, prints one line per
//! check on the console and powers the VM off. The host then checks the tree it left.
//!
//! Built by the test with plain `rustc` (std only, statically linked), not by cargo: it is a
//! guest program, not part of the workspace.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

#[path = "../../../tests/guest/vm.rs"]
mod vm;
use vm::mount_fs;

extern "C" {
    fn setxattr(path: *const i8, name: *const i8, value: *const u8, size: usize, flags: i32)
        -> i32;
    fn getxattr(path: *const i8, name: *const i8, value: *mut u8, size: usize) -> isize;
}


/// The content of big.bin: 4 MiB, no page repeating, so a misplaced chunk is caught.
fn big_content() -> Vec<u8> {
    (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

fn check(name: &str, result: Result<(), String>) -> bool {
    match result {
        Ok(()) => {
            println!("HULLFS-CHECK ok {name}");
            true
        }
        Err(err) => {
            println!("HULLFS-CHECK FAIL {name}: {err}");
            false
        }
    }
}

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn run() -> bool {
    let mut ok = check("mount proc", mount_fs("proc", "/proc", "proc"));
    if !check("mount virtiofs", mount_fs("hullfs", "/mnt", "virtiofs")) {
        return false;
    }
    let m = Path::new("/mnt");

    ok &= check(
        "read host file",
        (|| {
            let text = fs::read_to_string(m.join("from-host.txt")).map_err(s)?;
            if text == "written by the host\n" {
                Ok(())
            } else {
                Err(format!("read {text:?}"))
            }
        })(),
    );
    ok &= check("mkdir", fs::create_dir(m.join("dir")).map_err(s));
    ok &= check(
        "write and read back",
        (|| {
            fs::write(m.join("hello.txt"), b"hello from the guest\n").map_err(s)?;
            let back = fs::read(m.join("hello.txt")).map_err(s)?;
            if back == b"hello from the guest\n" {
                Ok(())
            } else {
                Err(format!("read {back:?}"))
            }
        })(),
    );
    ok &= check(
        "rename into dir",
        fs::rename(m.join("hello.txt"), m.join("dir/greeting.txt")).map_err(s),
    );
    ok &= check(
        "large file",
        (|| {
            let data = big_content();
            let mut f = fs::File::create(m.join("big.bin")).map_err(s)?;
            for chunk in data.chunks(100_003) {
                f.write_all(chunk).map_err(s)?;
            }
            f.sync_all().map_err(s)?;
            drop(f);
            let mut back = Vec::new();
            fs::File::open(m.join("big.bin"))
                .map_err(s)?
                .read_to_end(&mut back)
                .map_err(s)?;
            if back == data {
                Ok(())
            } else {
                Err(format!("read back {} bytes, differing", back.len()))
            }
        })(),
    );
    ok &= check(
        "create and remove",
        (|| {
            fs::write(m.join("scratch.txt"), b"short-lived").map_err(s)?;
            fs::remove_file(m.join("scratch.txt")).map_err(s)?;
            fs::create_dir(m.join("scratch-dir")).map_err(s)?;
            fs::remove_dir(m.join("scratch-dir")).map_err(s)?;
            match (
                m.join("scratch.txt").exists(),
                m.join("scratch-dir").exists(),
            ) {
                (false, false) => Ok(()),
                other => Err(format!("still there: {other:?}")),
            }
        })(),
    );
    ok &= check(
        "permissions",
        (|| {
            let path = m.join("dir/greeting.txt");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).map_err(s)?;
            let mode = fs::metadata(&path).map_err(s)?.permissions().mode() & 0o7777;
            if mode == 0o640 {
                Ok(())
            } else {
                Err(format!("mode {mode:o}"))
            }
        })(),
    );
    ok &= check(
        "xattr",
        (|| {
            let path = CString::new("/mnt/dir/greeting.txt").map_err(s)?;
            let name = CString::new("user.hull").map_err(s)?;
            let value = b"pod-1";
            // SAFETY: NUL-terminated path and name, `value` valid for its length.
            let rc =
                unsafe { setxattr(path.as_ptr(), name.as_ptr(), value.as_ptr(), value.len(), 0) };
            if rc != 0 {
                return Err(format!("setxattr: {}", std::io::Error::last_os_error()));
            }
            let mut back = [0u8; 64];
            // SAFETY: as above, `back` is writable for its length.
            let n =
                unsafe { getxattr(path.as_ptr(), name.as_ptr(), back.as_mut_ptr(), back.len()) };
            let n = usize::try_from(n)
                .map_err(|_| format!("getxattr: {}", std::io::Error::last_os_error()))?;
            if back.get(..n) == Some(&value[..]) {
                Ok(())
            } else {
                Err(format!("read {:?}", &back[..n.min(64)]))
            }
        })(),
    );
    ok &= check(
        "symlink",
        (|| {
            std::os::unix::fs::symlink("dir/greeting.txt", m.join("link")).map_err(s)?;
            let text = fs::read_to_string(m.join("link")).map_err(s)?;
            if text == "hello from the guest\n" {
                Ok(())
            } else {
                Err(format!("read {text:?}"))
            }
        })(),
    );
    ok &= check(
        "hard link",
        (|| {
            fs::hard_link(m.join("dir/greeting.txt"), m.join("hardlink.txt")).map_err(s)?;
            let a = fs::metadata(m.join("dir/greeting.txt")).map_err(s)?;
            let b = fs::metadata(m.join("hardlink.txt")).map_err(s)?;
            if a.ino() == b.ino() && a.nlink() == 2 {
                Ok(())
            } else {
                Err(format!(
                    "ino {} vs {}, nlink {}",
                    a.ino(),
                    b.ino(),
                    a.nlink()
                ))
            }
        })(),
    );
    // The host left `escape -> /etc/passwd` in the share. The server must hand the guest the
    // link text and let the guest resolve it in its own tree (an initrd without
    // /etc/passwd), never open the host's file.
    ok &= check(
        "absolute symlink stays in the guest",
        (|| {
            let target = fs::read_link(m.join("escape")).map_err(s)?;
            if target != Path::new("/etc/passwd") {
                return Err(format!("link reads {}", target.display()));
            }
            match fs::read(m.join("escape")) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(format!("unexpected error {e}")),
                Ok(data) => Err(format!("read {} bytes through the link", data.len())),
            }
        })(),
    );
    ok &= check(
        "listing",
        (|| {
            let mut names: Vec<String> = fs::read_dir(m)
                .map_err(s)?
                .map(|e| {
                    e.map(|e| e.file_name().to_string_lossy().into_owned())
                        .map_err(s)
                })
                .collect::<Result<_, _>>()?;
            names.sort();
            let want = [
                "big.bin",
                "dir",
                "escape",
                "from-host.txt",
                "hardlink.txt",
                "link",
            ];
            if names == want {
                Ok(())
            } else {
                Err(format!("names {names:?}"))
            }
        })(),
    );
    ok
}

fn main() {
    let ok = run();
    println!(
        "{}",
        if ok {
            "HULLFS-DONE ok"
        } else {
            "HULLFS-DONE failed"
        }
    );
    let _ = std::io::stdout().flush();
    vm::stop();
}
