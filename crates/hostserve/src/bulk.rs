//! The host's side of `WriteFileBulk`: the plugin fills slots of a shared-memory ring
//! ([`tether_transport::ring`]), and the host writes each slot into a temporary file, so
//! the bytes pass through no gRPC message, and are copied once in each process.
//!
//! The plugin gets the ring, never the file: the host alone writes the file, so it counts
//! every slot against the write quota before writing it, and stops as soon as the call
//! ends (the plugin cancelled, went away, or sent nothing for the stall timeout). The
//! ring's memory is the plugin's to change at any time: the host checks each record
//! against the ring's geometry, never reads the bytes itself, and the kernel copies them
//! straight into the file.

use std::os::fd::AsFd;
use std::pin::Pin;
use std::time::Duration;

use tether_protocol::hostserve::BulkEvent;
use tether_transport::ring::{RingError, RingReceiver};
use tokio_stream::Stream;
use tonic::Status;

/// The events of a bulk call: the descriptor's token first, the outcome last.
pub(crate) type BulkEvents = Pin<Box<dyn Stream<Item = Result<BulkEvent, Status>> + Send>>;

/// Slots in a write's ring, and bytes per slot: 8 MiB of shared memory per write under
/// way, so the plugin fills slots while the host writes others. Measured on 1 GiB: 4 slots
/// of 1 MiB reached 0.71-0.79x of the disk floor without fsync, 8 reach 0.82-0.84x.
pub(crate) const SLOTS: u32 = 8;
pub(crate) const SLOT_SIZE: u32 = 1 << 20;

/// Why a write stopped before its end.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The ring failed: the call ended, the plugin stalled, or sent a malformed record.
    Ring(RingError),
    /// The write quota refused more bytes.
    Quota(Status),
    /// Writing the file failed.
    File(std::io::Error),
}

impl Stop {
    /// The status the plugin is answered with, about `path` after `moved` bytes.
    pub(crate) fn status(self, path: &str, moved: u64) -> Status {
        match self {
            Stop::Ring(RingError::Ended) => Status::cancelled(format!(
                "{path:?}: the call ended after {moved} bytes; nothing was written"
            )),
            Stop::Ring(RingError::Stalled(stall)) => Status::deadline_exceeded(format!(
                "{path:?}: the plugin moved nothing through the ring for {stall:?} (after \
                 {moved} bytes); the host ended the write and wrote nothing"
            )),
            Stop::Ring(RingError::Malformed(what)) => Status::invalid_argument(format!(
                "{path:?}: the plugin sent {what} through the ring; the host ended the write \
                 and wrote nothing"
            )),
            Stop::Ring(RingError::Closed) => Status::cancelled(format!(
                "{path:?}: the plugin closed the ring without ending its data, after {moved} \
                 bytes (it went away?); nothing was written"
            )),
            Stop::Ring(err) => Status::internal(format!(
                "{path:?}: the write's ring failed after {moved} bytes: {err}"
            )),
            Stop::Quota(status) => status,
            Stop::File(err) => crate::service::io_status(path, &err),
        }
    }
}

/// Writes what the plugin sends through `ring` into `file`, until the plugin closes its
/// control socket. Blocking. `count` takes each slot's bytes before they are written (the
/// file is a temporary one: past the quota, nothing more is written to it). Returns the
/// bytes moved, or why it stopped and after how many.
pub(crate) fn receive_file(
    ring: &RingReceiver,
    file: &impl AsFd,
    stall: Duration,
    ended: &dyn Fn() -> bool,
    count: &mut dyn FnMut(u64) -> Result<(), Status>,
) -> Result<u64, (Stop, u64)> {
    let mut moved = 0u64;
    loop {
        let filled = match ring.next(stall, ended) {
            Ok(Some(filled)) => filled,
            Ok(None) => return Ok(moved),
            Err(err) => return Err((Stop::Ring(err), moved)),
        };
        count(filled.len()).map_err(|status| (Stop::Quota(status), moved))?;
        ring.write_to(filled, file.as_fd())
            .map_err(|err| (Stop::File(err), moved))?;
        moved += filled.len();
        ring.release(filled, stall, ended)
            .map_err(|err| (Stop::Ring(err), moved))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_transport::ring::{RingWriter, ring};

    #[tokio::test]
    async fn a_writer_past_the_quota_is_refused_before_its_bytes_are_written() {
        let (receiver, offer) = ring(2, 4096).unwrap();
        let file = tempfile::tempfile().unwrap();
        let probe = file.try_clone().unwrap();
        let host = std::thread::spawn(move || {
            let mut taken = 0u64;
            let quota = 10_000u64;
            receive_file(
                &receiver,
                &file,
                Duration::from_secs(30),
                &|| false,
                &mut |n| {
                    if taken + n > quota {
                        return Err(Status::resource_exhausted("quota"));
                    }
                    taken += n;
                    Ok(())
                },
            )
        });
        let mut writer = RingWriter::new(offer).unwrap();
        // Refused part way: what the writer sees is the host going away.
        let _ = writer.write_from(&mut &[7u8; 50_000][..]).await;
        drop(writer);
        let stopped = host.join().unwrap();
        assert!(
            matches!(stopped, Err((Stop::Quota(_), 8192))),
            "{stopped:?}"
        );
        assert_eq!(
            probe.metadata().unwrap().len(),
            8192,
            "nothing past the quota"
        );
    }

    #[test]
    fn a_writer_that_never_sends_is_stopped_and_a_call_that_ends_stops_it() {
        let (receiver, offer) = ring(2, 4096).unwrap();
        let file = tempfile::tempfile().unwrap();
        let stalled = receive_file(
            &receiver,
            &file,
            Duration::from_millis(200),
            &|| false,
            &mut |_| Ok(()),
        );
        assert!(
            matches!(stalled, Err((Stop::Ring(RingError::Stalled(_)), 0))),
            "{stalled:?}"
        );
        let ended = receive_file(
            &receiver,
            &file,
            Duration::from_secs(30),
            &|| true,
            &mut |_| Ok(()),
        );
        assert!(
            matches!(ended, Err((Stop::Ring(RingError::Ended), 0))),
            "{ended:?}"
        );
        drop(offer);
    }
}
