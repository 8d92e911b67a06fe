//! Ending a test VM from its `/init`, shared by the guest programs of the integration tests
//! (each includes this file with `#[path = "vm.rs"] mod vm;`).

/// Ends the VM: with `reboot=t` a restart is a triple fault, which QEMU under `-no-reboot`
/// treats as the end.
pub fn stop() -> ! {
    if std::process::id() != 1 {
        // Run by mistake outside a test VM: never restart a real machine.
        std::process::exit(2);
    }
    // SAFETY: we are PID 1 of a throwaway test VM; restarting it is the point.
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
    fn sync();
    fn reboot(cmd: i32) -> i32;
}
