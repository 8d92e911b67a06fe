//! System calls a seccomp filter must refuse, made raw (no libc wrapper on the way), for the
//! tests that check a filtered process dies of them.

/// execve("/bin/true"): what an attacker would run next.
pub fn execve_bin_true() -> libc::c_long {
    let path = c"/bin/true";
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    // SAFETY: valid NUL-terminated path and NULL-terminated argv/envp arrays; a process that
    // survives the call becomes /bin/true, which only the filtered test children make.
    unsafe {
        libc::syscall(
            libc::SYS_execve,
            path.as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
        )
    }
}
