//! The host's guard: a small process, forked from the host before its first plugin, that
//! outlives the host just long enough to kill every plugin process group still running.
//!
//! A plugin's leader gets SIGKILL when the host dies (its parent-death signal), but that
//! signal is not inherited: with processes allowed, a plugin's children and the orphans of
//! a double fork would live on. They cannot leave the plugin's process group (`setsid` and
//! `setpgid` are refused by the sandbox), so killing the group reaches them all.
//!
//! The host tells the guard each group it starts and each it has finished (killed and
//! reaped), as 4-byte records on a pipe whose write end only the host holds. When the host
//! ends, however it ends, the pipe reads end-of-file and the guard kills the groups still
//! registered, then exits. The guard runs no Rust runtime code after the fork: raw system
//! calls on a fixed buffer, no allocation, no lock.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::{Mutex, OnceLock, PoisonError};

/// The most groups the guard tracks at once; more are not protected (and logged).
const MAX_GROUPS: usize = 32_768;

/// The write end of the pipe to the guard, or why there is no guard.
fn pipe() -> &'static Result<Mutex<std::fs::File>, String> {
    static GUARD: OnceLock<Result<Mutex<std::fs::File>, String>> = OnceLock::new();
    GUARD.get_or_init(|| start().map(Mutex::new).map_err(|err| err.to_string()))
}

/// Starts the guard, once, before the first plugin (so no plugin runs unguarded).
pub(crate) fn ensure() {
    let _ = pipe();
}

/// Registers the process group `pgid` (a plugin just started) with the guard.
pub(crate) fn register(pgid: u32) {
    send(
        i32::try_from(pgid).expect("a pid fits in an i32 (pid_max is at most 2^22)"),
        pgid,
    );
}

/// Unregisters `pgid` (its leader reaped, the group killed): its id may be reused.
pub(crate) fn unregister(pgid: u32) {
    send(
        -i32::try_from(pgid).expect("a pid fits in an i32 (pid_max is at most 2^22)"),
        pgid,
    );
}

fn send(record: i32, pgid: u32) {
    if record == 0 {
        return;
    }
    match pipe() {
        Ok(file) => {
            let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
            // 4 bytes: below PIPE_BUF, so written whole or not at all.
            if let Err(err) = file.write_all(&record.to_ne_bytes()) {
                tracing::warn!(
                    pgid,
                    %err,
                    "the host's guard is gone: this plugin's children may outlive the host"
                );
            }
        }
        Err(reason) => tracing::warn!(
            pgid,
            reason = reason.as_str(),
            "no guard process: this plugin's children may outlive the host"
        ),
    }
}

/// Forks the guard and returns the write end of its pipe.
fn start() -> io::Result<std::fs::File> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let dev_null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    // SAFETY: after fork the child runs only `guard`, which makes raw, async-signal-safe
    // system calls on stack memory and never returns; the parent continues as usual.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // SAFETY: the child of the fork above; see `guard`.
            unsafe { guard(read.as_raw_fd(), dev_null.as_raw_fd()) }
        }
        _ => {
            drop(read);
            Ok(std::fs::File::from(write))
        }
    }
}

/// The guard's whole life, in the forked child.
///
/// # Safety
/// Only in the child of a fork: it closes every descriptor but `read` (and the standard
/// ones, pointed at /dev/null), and exits without unwinding.
unsafe fn guard(read: i32, dev_null: i32) -> ! {
    // SAFETY: raw system calls on values and stack memory of this function only.
    unsafe {
        // Its own session: signals sent to the host's process group or terminal do not
        // reach it; and no other signal that a terminal sends stops it.
        libc::setsid();
        for signal in [
            libc::SIGHUP,
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::signal(signal, libc::SIG_IGN);
        }
        // Hold nothing of the host's but the pipe: its standard streams go to /dev/null,
        // every other descriptor is closed (copies of pipes or sockets the host uses).
        for fd in 0..3 {
            libc::dup2(dev_null, fd);
        }
        libc::dup2(read, 3);
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
        let mut groups = [0i32; MAX_GROUPS];
        let mut count = 0usize;
        let mut buffer = [0u8; 4 * 256];
        let mut held = 0usize;
        loop {
            let n = libc::read(3, buffer.as_mut_ptr().add(held).cast(), buffer.len() - held);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                break;
            }
            held += n.unsigned_abs();
            let whole = held - held % 4;
            for record in buffer[..whole].chunks_exact(4) {
                let id = i32::from_ne_bytes([record[0], record[1], record[2], record[3]]);
                if id > 0 {
                    if count < MAX_GROUPS {
                        groups[count] = id;
                        count += 1;
                    }
                } else if let Some(at) = groups[..count].iter().position(|&g| g == -id) {
                    count -= 1;
                    groups[at] = groups[count];
                }
            }
            buffer.copy_within(whole..held, 0);
            held -= whole;
        }
        // The host has ended: nothing of its plugins may outlive it.
        for &group in &groups[..count] {
            libc::kill(-group, libc::SIGKILL);
        }
        libc::_exit(0)
    }
}
