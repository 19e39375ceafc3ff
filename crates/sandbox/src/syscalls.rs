//! The system calls a sandboxed plugin may make, each with its reason, and the ones it is
//! refused by name. Everything else, including every system call newer than this list, is
//! refused with `ENOSYS`, so the C library and the Go runtime fall back as on an older
//! kernel. The filter itself is built in the `seccomp` module.

/// One system call of the plugin's filter: its number on this architecture, its name and
/// why it is allowed (or refused by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syscall {
    /// The number on this architecture.
    pub number: i64,
    /// The kernel's name for it.
    pub name: &'static str,
    /// Why a plugin may make it (or why it is refused with `EPERM` by name).
    pub reason: &'static str,
}

macro_rules! sys {
    ($name:ident, $reason:literal) => {
        Syscall {
            number: libc::$name,
            name: stringify!($name),
            reason: $reason,
        }
    };
}

/// Allowed only with some arguments; the conditions are built in the `seccomp` module.
pub(crate) const CONDITIONAL: &[Syscall] = &[
    sys!(
        SYS_socket,
        "Unix sockets only (AF_UNIX): the plugin's only transport"
    ),
    sys!(SYS_socketpair, "Unix sockets only (AF_UNIX)"),
    sys!(
        SYS_ioctl,
        "FIONREAD, FIONBIO, FIOCLEX, FIONCLEX only; TCGETS and TIOCGWINSZ answer ENOTTY"
    ),
    sys!(
        SYS_prctl,
        "thread names, the parent-death signal and reads of process state only"
    ),
    sys!(
        SYS_fcntl,
        "descriptor flags, status flags, duplication and locks only"
    ),
    sys!(
        SYS_clone,
        "threads only (processes with allow_processes), never new namespaces or CLONE_PARENT"
    ),
    sys!(SYS_prlimit64, "reading limits only, never setting them"),
];

/// Allowed whatever the arguments: each is confined by Landlock, by the process's own
/// resources, or touches nothing outside the process.
pub(crate) const ALWAYS: &[Syscall] = &[
    // Memory.
    sys!(SYS_brk, "the heap"),
    sys!(
        SYS_mmap,
        "memory mappings (files need an fd Landlock let it open)"
    ),
    sys!(SYS_munmap, "memory mappings"),
    sys!(SYS_mprotect, "memory protection of its own mappings"),
    sys!(SYS_mremap, "growing its own mappings"),
    sys!(SYS_madvise, "allocator hints on its own memory"),
    sys!(SYS_msync, "flushing its own mappings"),
    sys!(SYS_mincore, "residency of its own pages"),
    sys!(SYS_membarrier, "memory barriers across its own threads"),
    // Threads and its own process.
    sys!(
        SYS_execve,
        "the exec of the plugin itself; Landlock decides what may run"
    ),
    sys!(SYS_exit, "a thread ends"),
    sys!(SYS_exit_group, "the process ends"),
    sys!(SYS_gettid, "its own ids"),
    sys!(SYS_getpid, "its own ids"),
    sys!(SYS_getppid, "its own ids"),
    sys!(SYS_getuid, "its own ids"),
    sys!(SYS_geteuid, "its own ids"),
    sys!(SYS_getgid, "its own ids"),
    sys!(SYS_getegid, "its own ids"),
    sys!(SYS_getresuid, "its own ids"),
    sys!(SYS_getresgid, "its own ids"),
    sys!(SYS_getgroups, "its own ids"),
    sys!(SYS_getpgid, "its own process group"),
    sys!(SYS_getsid, "its own session"),
    sys!(
        SYS_pidfd_open,
        "watching its host end (the SDK stops when its parent dies); a pidfd only tells when a \
         process ends: pidfd_getfd is refused, pidfd_send_signal unlisted, and Landlock scopes \
         keep signals inside the sandbox"
    ),
    sys!(SYS_set_tid_address, "thread start-up (C library)"),
    sys!(SYS_set_robust_list, "thread start-up (C library)"),
    sys!(SYS_rseq, "restartable sequences (C library)"),
    sys!(SYS_sched_yield, "yielding the CPU"),
    sys!(SYS_sched_getaffinity, "how many CPUs it may use"),
    sys!(SYS_getrusage, "its own resource usage"),
    sys!(SYS_times, "its own CPU times"),
    sys!(SYS_sysinfo, "memory and uptime figures"),
    sys!(SYS_uname, "the kernel's name and version"),
    sys!(SYS_getcpu, "the CPU it runs on"),
    sys!(SYS_getrandom, "random numbers"),
    sys!(SYS_futex, "waiting and waking its own threads"),
    sys!(
        SYS_seccomp,
        "installing the sandbox's later filters; a filter only restricts further"
    ),
    // Signals (Landlock's scopes keep them inside the sandbox).
    sys!(SYS_rt_sigaction, "its own signal handlers"),
    sys!(SYS_rt_sigprocmask, "its own signal mask"),
    sys!(SYS_rt_sigreturn, "returning from a handler"),
    sys!(SYS_rt_sigpending, "its own pending signals"),
    sys!(SYS_rt_sigsuspend, "waiting for a signal"),
    sys!(SYS_rt_sigtimedwait, "waiting for a signal"),
    sys!(SYS_sigaltstack, "the signal stack (Go runtime)"),
    sys!(
        SYS_kill,
        "signals within its sandbox (Landlock scopes refuse others)"
    ),
    sys!(SYS_tgkill, "signals to its own threads (Go preemption)"),
    sys!(SYS_tkill, "signals to its own threads"),
    sys!(SYS_restart_syscall, "restarting an interrupted call"),
    // Time.
    sys!(SYS_clock_gettime, "clocks"),
    sys!(SYS_clock_getres, "clocks"),
    sys!(SYS_clock_nanosleep, "sleeping"),
    sys!(SYS_nanosleep, "sleeping"),
    sys!(SYS_gettimeofday, "clocks"),
    sys!(SYS_setitimer, "its own interval timers (Go profiling)"),
    sys!(SYS_getitimer, "its own interval timers"),
    sys!(SYS_timer_create, "its own timers (Go profiling)"),
    sys!(SYS_timer_settime, "its own timers"),
    sys!(SYS_timer_gettime, "its own timers"),
    sys!(SYS_timer_delete, "its own timers"),
    sys!(SYS_timerfd_create, "timer descriptors"),
    sys!(SYS_timerfd_settime, "timer descriptors"),
    sys!(SYS_timerfd_gettime, "timer descriptors"),
    // Files: what it may open, and where, is Landlock's to decide.
    sys!(SYS_read, "descriptors it holds"),
    sys!(SYS_write, "descriptors it holds"),
    sys!(SYS_readv, "descriptors it holds"),
    sys!(SYS_writev, "descriptors it holds"),
    sys!(SYS_pread64, "descriptors it holds"),
    sys!(SYS_pwrite64, "descriptors it holds"),
    sys!(SYS_preadv, "descriptors it holds"),
    sys!(SYS_pwritev, "descriptors it holds"),
    sys!(SYS_preadv2, "descriptors it holds"),
    sys!(SYS_pwritev2, "descriptors it holds"),
    sys!(SYS_lseek, "descriptors it holds"),
    sys!(SYS_sendfile, "copying between descriptors it holds"),
    sys!(SYS_copy_file_range, "copying between descriptors it holds"),
    sys!(SYS_close, "descriptors it holds"),
    sys!(SYS_close_range, "descriptors it holds"),
    sys!(SYS_dup, "descriptors it holds"),
    sys!(SYS_dup3, "descriptors it holds"),
    sys!(SYS_openat, "opening files (Landlock)"),
    sys!(SYS_openat2, "opening files (Landlock)"),
    sys!(
        SYS_newfstatat,
        "file status (Landlock does not hide existence)"
    ),
    sys!(SYS_fstat, "status of descriptors it holds"),
    sys!(SYS_statx, "file status"),
    sys!(SYS_statfs, "file system status"),
    sys!(SYS_fstatfs, "file system status"),
    sys!(SYS_readlinkat, "reading symbolic links"),
    sys!(SYS_getdents64, "listing directories it may read (Landlock)"),
    sys!(SYS_faccessat, "access checks"),
    sys!(SYS_faccessat2, "access checks"),
    sys!(SYS_getcwd, "its working directory"),
    sys!(SYS_chdir, "its working directory"),
    sys!(SYS_fchdir, "its working directory"),
    sys!(SYS_umask, "its own file mode mask"),
    sys!(
        SYS_mkdirat,
        "directories where Landlock allows (its data directory)"
    ),
    sys!(
        SYS_unlinkat,
        "removing its socket, and files and directories in its data directory (Landlock)"
    ),
    sys!(SYS_renameat, "renaming where Landlock allows"),
    sys!(SYS_renameat2, "renaming where Landlock allows"),
    sys!(SYS_ftruncate, "files it holds open for writing"),
    sys!(SYS_fsync, "files it holds"),
    sys!(SYS_fdatasync, "files it holds"),
    sys!(SYS_fallocate, "files it holds open for writing"),
    sys!(SYS_flock, "advisory locks on files it holds"),
    // Event loops and pipes.
    sys!(SYS_pipe2, "pipes"),
    sys!(SYS_eventfd2, "event descriptors (tokio, Go)"),
    sys!(SYS_epoll_create1, "event loops"),
    sys!(SYS_epoll_ctl, "event loops"),
    sys!(SYS_epoll_pwait, "event loops"),
    sys!(SYS_epoll_pwait2, "event loops"),
    sys!(SYS_ppoll, "waiting on descriptors"),
    sys!(SYS_pselect6, "waiting on descriptors"),
    // Sockets it made (Unix only, see `socket`) or was given.
    sys!(SYS_bind, "its socket, in its own directory (Landlock)"),
    sys!(SYS_listen, "its socket"),
    sys!(SYS_accept, "connections to its socket"),
    sys!(SYS_accept4, "connections to its socket"),
    sys!(
        SYS_connect,
        "Unix sockets (Landlock, ABI 9: its own directory only)"
    ),
    sys!(SYS_getsockname, "its sockets"),
    sys!(SYS_getpeername, "its sockets"),
    sys!(SYS_setsockopt, "its sockets"),
    sys!(SYS_getsockopt, "its sockets (peer credentials included)"),
    sys!(SYS_shutdown, "its sockets"),
    sys!(SYS_sendto, "its sockets"),
    sys!(SYS_recvfrom, "its sockets"),
    sys!(SYS_sendmsg, "its sockets"),
    sys!(SYS_recvmsg, "its sockets"),
    sys!(SYS_sendmmsg, "its sockets"),
    sys!(SYS_recvmmsg, "its sockets"),
];

/// The x86_64 forms of the calls above that other architectures do not have.
#[cfg(target_arch = "x86_64")]
pub(crate) const ALWAYS_X86_64: &[Syscall] = &[
    sys!(SYS_arch_prctl, "thread-local storage set-up"),
    sys!(SYS_getpgrp, "its own process group"),
    sys!(SYS_time, "clocks"),
    sys!(SYS_open, "opening files (Landlock)"),
    sys!(SYS_stat, "file status"),
    sys!(SYS_lstat, "file status"),
    sys!(SYS_access, "access checks"),
    sys!(SYS_readlink, "reading symbolic links"),
    sys!(SYS_getdents, "listing directories (Landlock)"),
    sys!(SYS_mkdir, "directories where Landlock allows"),
    sys!(SYS_unlink, "removing files where Landlock allows"),
    sys!(SYS_rmdir, "removing directories where Landlock allows"),
    sys!(SYS_rename, "renaming where Landlock allows"),
    sys!(SYS_dup2, "descriptors it holds"),
    sys!(SYS_pipe, "pipes"),
    sys!(SYS_eventfd, "event descriptors"),
    sys!(SYS_epoll_create, "event loops"),
    sys!(SYS_epoll_wait, "event loops"),
    sys!(SYS_poll, "waiting on descriptors"),
    sys!(SYS_select, "waiting on descriptors"),
    sys!(SYS_getrlimit, "reading its limits"),
];

/// Allowed only with `Sandbox::allow_processes(true)`.
pub(crate) const PROCESSES: &[Syscall] = &[
    sys!(SYS_wait4, "reaping its own children"),
    sys!(SYS_waitid, "reaping its own children"),
];

/// The x86_64 process calls.
#[cfg(target_arch = "x86_64")]
pub(crate) const PROCESSES_X86_64: &[Syscall] = &[
    sys!(SYS_fork, "starting a process"),
    sys!(SYS_vfork, "starting a process"),
];

/// Refused by name with `EPERM` (everything else outside the allowlist gets `ENOSYS`), so
/// that an attempt at one of these reads as "not permitted" rather than "not there".
pub(crate) const REFUSED: &[Syscall] = &[
    sys!(SYS_ptrace, "another process's memory and registers"),
    sys!(SYS_process_vm_readv, "another process's memory"),
    sys!(SYS_process_vm_writev, "another process's memory"),
    sys!(SYS_pidfd_getfd, "another process's descriptors"),
    sys!(SYS_kcmp, "probing another process's resources"),
    sys!(SYS_unshare, "new namespaces"),
    sys!(SYS_setns, "other namespaces"),
    sys!(
        SYS_setsid,
        "leaving the process group would let a process outlive the plugin"
    ),
    sys!(
        SYS_setpgid,
        "leaving the process group would let a process outlive the plugin"
    ),
    sys!(SYS_mount, "mounts"),
    sys!(SYS_umount2, "mounts"),
    sys!(SYS_pivot_root, "mounts"),
    sys!(SYS_chroot, "the root directory"),
    sys!(SYS_bpf, "kernel programs"),
    sys!(SYS_perf_event_open, "kernel tracing"),
    sys!(SYS_userfaultfd, "a kernel exploitation aid"),
    sys!(SYS_keyctl, "kernel keyrings"),
    sys!(SYS_add_key, "kernel keyrings"),
    sys!(SYS_request_key, "kernel keyrings"),
    sys!(SYS_io_uring_setup, "io_uring bypasses the filter"),
    sys!(SYS_io_uring_enter, "io_uring bypasses the filter"),
    sys!(SYS_io_uring_register, "io_uring bypasses the filter"),
    sys!(SYS_fchmod, "file modes"),
    sys!(SYS_fchmodat, "file modes"),
    sys!(SYS_fchmodat2, "file modes"),
    sys!(SYS_fchown, "file owners"),
    sys!(SYS_fchownat, "file owners"),
    sys!(
        SYS_setxattr,
        "extended attributes (file capabilities among them)"
    ),
    sys!(SYS_lsetxattr, "extended attributes"),
    sys!(SYS_fsetxattr, "extended attributes"),
    sys!(SYS_getxattr, "extended attributes"),
    sys!(SYS_lgetxattr, "extended attributes"),
    sys!(SYS_fgetxattr, "extended attributes"),
    sys!(SYS_listxattr, "extended attributes"),
    sys!(SYS_llistxattr, "extended attributes"),
    sys!(SYS_flistxattr, "extended attributes"),
    sys!(SYS_removexattr, "extended attributes"),
    sys!(SYS_lremovexattr, "extended attributes"),
    sys!(SYS_fremovexattr, "extended attributes"),
    sys!(SYS_utimensat, "file times"),
    sys!(SYS_linkat, "hard links can carry a file past its grant"),
    sys!(SYS_symlinkat, "symbolic links"),
    sys!(SYS_mknodat, "device and special files"),
    sys!(SYS_memfd_create, "anonymous executable files"),
    sys!(SYS_memfd_secret, "anonymous memory files"),
    sys!(SYS_execveat, "executing a descriptor"),
    sys!(
        SYS_open_by_handle_at,
        "opening by handle bypasses path checks"
    ),
    sys!(SYS_name_to_handle_at, "file handles"),
    sys!(SYS_fanotify_init, "file system monitoring"),
    sys!(SYS_inotify_init1, "file system monitoring"),
    sys!(SYS_quotactl, "quotas"),
    sys!(SYS_setuid, "identities"),
    sys!(SYS_setgid, "identities"),
    sys!(SYS_setreuid, "identities"),
    sys!(SYS_setregid, "identities"),
    sys!(SYS_setresuid, "identities"),
    sys!(SYS_setresgid, "identities"),
    sys!(SYS_setfsuid, "identities"),
    sys!(SYS_setfsgid, "identities"),
    sys!(SYS_setgroups, "identities"),
    sys!(SYS_capset, "capabilities"),
    sys!(SYS_setrlimit, "raising its limits"),
    sys!(SYS_kexec_load, "the kernel"),
    sys!(SYS_kexec_file_load, "the kernel"),
    sys!(SYS_init_module, "kernel modules"),
    sys!(SYS_finit_module, "kernel modules"),
    sys!(SYS_delete_module, "kernel modules"),
    sys!(SYS_reboot, "the machine"),
    sys!(SYS_swapon, "the machine"),
    sys!(SYS_swapoff, "the machine"),
    sys!(SYS_acct, "the machine"),
    sys!(SYS_settimeofday, "the clock"),
    sys!(SYS_clock_settime, "the clock"),
    sys!(SYS_clock_adjtime, "the clock"),
    sys!(SYS_adjtimex, "the clock"),
    sys!(SYS_sethostname, "the machine's name"),
    sys!(SYS_setdomainname, "the machine's name"),
];

/// The x86_64 forms of the refused calls.
#[cfg(target_arch = "x86_64")]
pub(crate) const REFUSED_X86_64: &[Syscall] = &[
    sys!(SYS_chmod, "file modes"),
    sys!(SYS_chown, "file owners"),
    sys!(SYS_lchown, "file owners"),
    sys!(SYS_utime, "file times"),
    sys!(SYS_utimes, "file times"),
    sys!(SYS_futimesat, "file times"),
    sys!(SYS_link, "hard links can carry a file past its grant"),
    sys!(SYS_symlink, "symbolic links"),
    sys!(SYS_mknod, "device and special files"),
    sys!(SYS_iopl, "hardware ports"),
    sys!(SYS_ioperm, "hardware ports"),
    sys!(SYS_inotify_init, "file system monitoring"),
];

/// What a plugin may call, whatever the arguments (`allow_processes` adds process calls).
pub fn allowed_syscalls(allow_processes: bool) -> Vec<Syscall> {
    let mut allowed = ALWAYS.to_vec();
    #[cfg(target_arch = "x86_64")]
    allowed.extend_from_slice(ALWAYS_X86_64);
    if allow_processes {
        allowed.extend_from_slice(PROCESSES);
        #[cfg(target_arch = "x86_64")]
        allowed.extend_from_slice(PROCESSES_X86_64);
    }
    allowed
}

/// What a plugin may call only with some arguments (see each reason).
pub fn conditional_syscalls() -> Vec<Syscall> {
    CONDITIONAL.to_vec()
}

/// What a plugin is refused by name with `EPERM` (`clone3` with `ENOSYS`); every other call
/// outside [`allowed_syscalls`] and [`conditional_syscalls`] is refused with `ENOSYS`.
/// Without `allow_processes`, the process calls are refused by name too.
pub fn refused_syscalls(allow_processes: bool) -> Vec<Syscall> {
    let mut refused = REFUSED.to_vec();
    #[cfg(target_arch = "x86_64")]
    refused.extend_from_slice(REFUSED_X86_64);
    if !allow_processes {
        refused.extend(PROCESSES.iter().map(|call| Syscall {
            reason: "new processes need allow_processes",
            ..*call
        }));
        #[cfg(target_arch = "x86_64")]
        refused.extend(PROCESSES_X86_64.iter().map(|call| Syscall {
            reason: "new processes need allow_processes",
            ..*call
        }));
    }
    refused
}
