//! The pipe under `WriteFileBulk`: the plugin writes a file's bytes into a pipe, and the
//! host moves them into a temporary file with `splice`, so they never pass through a gRPC
//! message or the host's memory.
//!
//! The plugin gets a pipe, never the file: the host alone writes the file, so it counts
//! every byte against the write quota as it lands, and stops as soon as the call ends (the
//! plugin cancelled, went away, or wrote nothing for the stall timeout). What the plugin
//! writes is data the host copies into a temporary file; nothing of it is parsed.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::pipe::SpliceFlags;
use tether_protocol::hostserve::BulkEvent;
use tokio_stream::Stream;
use tonic::Status;

/// The events of a bulk call: the descriptor's token first, the outcome last.
pub(crate) type BulkEvents = Pin<Box<dyn Stream<Item = Result<BulkEvent, Status>> + Send>>;

/// The pipe's capacity, asked for (Linux's default is 64 KiB; an unprivileged process may
/// have up to `/proc/sys/fs/pipe-max-size`, 1 MiB by default), and the most one `splice`
/// moves.
const PIPE_SIZE: usize = 1 << 20;

/// How often a transfer waiting on the plugin looks whether its call has ended.
const TICK: Duration = Duration::from_millis(100);

/// A write's pipe: the host's end (the read end), non-blocking, and the write end the
/// plugin is sent.
pub(crate) struct Pipe {
    pub(crate) host: OwnedFd,
    pub(crate) plugin: OwnedFd,
}

impl Pipe {
    pub(crate) fn new() -> io::Result<Pipe> {
        let (host, plugin) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        // The host's end is an open file of its own: non-blocking there leaves the
        // plugin's end as the plugin wants it.
        rustix::io::ioctl_fionbio(&host, true)?;
        // Best effort: a smaller pipe only means more round trips.
        let _ = rustix::pipe::fcntl_setpipe_size(&host, PIPE_SIZE);
        Ok(Pipe { host, plugin })
    }
}

/// Why a transfer stopped before its end.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The call ended (the plugin cancelled it or went away).
    Ended,
    /// The plugin wrote nothing for this long.
    Stalled(Duration),
    /// The write quota refused more bytes.
    Quota(Status),
    /// Reading or writing the file failed.
    File(io::Error),
    /// The pipe failed.
    Pipe(io::Error),
}

impl Stop {
    /// The status the plugin is answered with, about `path` after `moved` bytes.
    pub(crate) fn status(self, path: &str, moved: u64) -> Status {
        match self {
            Stop::Ended => Status::cancelled(format!(
                "{path:?}: the call ended after {moved} bytes; the transfer stopped"
            )),
            Stop::Stalled(stall) => Status::deadline_exceeded(format!(
                "{path:?}: the plugin moved nothing through the pipe for {stall:?} (after \
                 {moved} bytes); the host ended the write and wrote nothing"
            )),
            Stop::Quota(status) => status,
            Stop::File(err) => crate::service::io_status(path, &err),
            Stop::Pipe(err) => Status::internal(format!(
                "{path:?}: the transfer's pipe failed after {moved} bytes: {err}"
            )),
        }
    }
}

/// Waits until `pipe` is ready for `flags`, for at most `stall`, looking every [`TICK`]
/// whether the call has `ended`.
fn wait(
    pipe: &OwnedFd,
    flags: PollFlags,
    stall: Duration,
    ended: &dyn Fn() -> bool,
) -> Result<(), Stop> {
    let since = Instant::now();
    loop {
        if ended() {
            return Err(Stop::Ended);
        }
        let left = stall.saturating_sub(since.elapsed());
        if left.is_zero() {
            return Err(Stop::Stalled(stall));
        }
        let slice = left.min(TICK);
        let timeout = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: i64::from(slice.subsec_nanos()),
        };
        let mut fds = [PollFd::new(pipe, flags)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) | Err(Errno::INTR) => {}
            // Ready, or its other end is closed: the next splice says which.
            Ok(_) => return Ok(()),
            Err(errno) => return Err(Stop::Pipe(errno.into())),
        }
    }
}

/// Moves what the plugin writes into the pipe whose read end is `pipe` into `file`, until
/// every write end is closed. Blocking. `room` is how many more bytes the quota allows;
/// `count` takes each piece as it lands in `file` (the file is a temporary one: bytes
/// past the quota are refused with it). Returns the bytes moved.
pub(crate) fn receive_file(
    pipe: &OwnedFd,
    file: &impl AsFd,
    stall: Duration,
    ended: &dyn Fn() -> bool,
    room: &dyn Fn() -> u64,
    count: &mut dyn FnMut(u64) -> Result<(), Status>,
) -> Result<u64, (Stop, u64)> {
    let mut moved = 0u64;
    loop {
        // One byte past the quota's room, so that a plugin over it is told.
        let most = usize::try_from(room().saturating_add(1))
            .unwrap_or(usize::MAX)
            .min(PIPE_SIZE);
        match rustix::pipe::splice(
            pipe,
            None,
            file,
            None,
            most,
            SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
        ) {
            Ok(0) => return Ok(moved),
            Ok(n) => {
                count(n as u64).map_err(|status| (Stop::Quota(status), moved))?;
                moved += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => wait(pipe, PollFlags::IN, stall, ended).map_err(|s| (s, moved))?,
            Err(errno) => return Err((Stop::File(errno.into()), moved)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_writer_past_the_quota_is_refused_and_one_that_never_ends_is_stopped() {
        let file = tempfile::tempfile().unwrap();
        let pipe = Pipe::new().unwrap();
        let writer = std::thread::spawn(move || {
            let mut end = std::fs::File::from(pipe.plugin);
            // Refused once the host stops reading: the error is the writer's to see.
            let _ = end.write_all(&vec![1u8; 3 * PIPE_SIZE]);
        });
        let quota = PIPE_SIZE as u64 + 10;
        let taken = std::cell::Cell::new(0u64);
        let stopped = receive_file(
            &pipe.host,
            &file,
            Duration::from_secs(30),
            &|| false,
            &|| quota - taken.get(),
            &mut |n| {
                if taken.get() + n > quota {
                    return Err(Status::resource_exhausted("quota"));
                }
                taken.set(taken.get() + n);
                Ok(())
            },
        );
        assert!(matches!(stopped, Err((Stop::Quota(_), _))), "{stopped:?}");
        assert!(taken.get() <= quota);
        drop(pipe.host);
        writer.join().unwrap();

        let pipe = Pipe::new().unwrap();
        let stopped = receive_file(
            &pipe.host,
            &file,
            Duration::from_millis(200),
            &|| false,
            &|| u64::MAX,
            &mut |_| Ok(()),
        );
        assert!(matches!(stopped, Err((Stop::Stalled(_), 0))), "{stopped:?}");
        drop(pipe.plugin);
    }
}
