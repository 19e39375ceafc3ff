//! Probing what the running kernel offers, with three harmless system calls.

use crate::KernelSupport;

/// What this kernel offers the sandbox.
pub(crate) fn probe() -> KernelSupport {
    KernelSupport {
        landlock_abi: landlock_abi(),
        seccomp: seccomp_available(),
        close_range: close_range_cloexec_available(),
    }
}

/// `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`: the kernel's
/// Landlock ABI, or 0 if it has none (or it is disabled).
fn landlock_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer and size 0, this call only reports a version.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    version.max(0)
}

/// Whether seccomp filters are available (`PR_GET_SECCOMP` answers).
fn seccomp_available() -> bool {
    // SAFETY: PR_GET_SECCOMP reads this thread's mode; it fails only without seccomp.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) >= 0 }
}

/// Whether `close_range(…, CLOSE_RANGE_CLOEXEC)` works here (Linux 5.11).
fn close_range_cloexec_available() -> bool {
    // SAFETY: the range holds only fd u32::MAX, which no process has: nothing changes, and
    // the call fails only if the kernel does not know it or its flag.
    let result = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            libc::c_uint::MAX,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    result == 0
}
