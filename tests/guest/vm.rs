//! What every test or benchmark guest's `/init` needs from the VM: mounting a file system and
//! ending the VM. Shared by the std-only guest programs built with one `rustc` call
//! (`hull_tests::guest_program`), each of which includes this file with
//! `#[path = ".../tests/guest/vm.rs"] mod vm;`.

// A program uses what it needs of this module.
#![allow(dead_code)]

use std::ffi::CString;

/// Mounts `source` of `fstype` on `target`, without flags or data.
pub fn mount_fs(source: &str, target: &str, fstype: &str) -> Result<(), String> {
    let c = |s: &str| CString::new(s).map_err(|e| e.to_string());
    let (source, target, fstype) = (c(source)?, c(target)?, c(fstype)?);
    // SAFETY: all three are NUL-terminated strings that outlive the call; no data.
    let rc = unsafe {
        mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

/// Unmounts the file system on `target`.
pub fn unmount(target: &str) -> Result<(), String> {
    let target = CString::new(target).map_err(|e| e.to_string())?;
    // SAFETY: `target` is a NUL-terminated string that outlives the call.
    if unsafe { umount2(target.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

/// Ends the VM: with `reboot=t` a restart is a triple fault, which QEMU under `-no-reboot`
/// treats as the end, which is how the host sees the guest finish.
pub fn stop() -> ! {
    if std::process::id() != 1 {
        // Run by mistake outside a test VM: never restart a real machine.
        std::process::exit(2);
    }
    // SAFETY: we are PID 1 of a throwaway test VM; restarting it is the point. Neither call
    // takes a pointer.
    unsafe {
        sync();
        reboot(RB_AUTOBOOT);
    }
    loop {
        std::thread::park();
    }
}

const RB_AUTOBOOT: i32 = 0x0123_4567;

extern "C" {
    // Declared as the guest programs that call mount(2) themselves declare it.
    fn mount(
        source: *const std::ffi::c_char,
        target: *const std::ffi::c_char,
        fstype: *const std::ffi::c_char,
        flags: u64,
        data: *const std::ffi::c_void,
    ) -> i32;
    fn umount2(target: *const std::ffi::c_char, flags: i32) -> i32;
    fn sync();
    fn reboot(cmd: i32) -> i32;
}
