//! A ring of shared-memory slots, to carry bulk data from a plugin to its host with one copy
//! on each side and no lock between them.
//!
//! The host makes the ring ([`ring`]): a memory file (`memfd`) of `slots` slots of
//! `slot_size` bytes, sealed so that it can neither shrink nor grow, mapped read-only in
//! the host; and a connected pair of `SOCK_SEQPACKET` sockets to say which slot holds data.
//! It hands the plugin the memory file and one socket ([`RingOffer`], on the descriptor
//! channel). The plugin ([`RingWriter`]) fills a free slot and sends `[slot, len]` (two
//! little-endian `u32`); the host ([`RingReceiver`]) writes those bytes where they go and
//! sends `[slot]` back to free it. The plugin closing its socket ends the data.
//!
//! The memory is the plugin's to change at any time, so the host treats it as hostile: it
//! never reads it into a value, never makes a Rust reference to it (the kernel copies it
//! straight from the mapping into the destination file), and checks every record's slot
//! and length against the ring's geometry before using it. The seals mean the mapping can
//! never lose its pages under the host (no `SIGBUS`), and the file has no execute bits.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::SealFlags;
use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, Interest};

use crate::shm::Mapping;

/// How often a host waiting on the plugin looks whether its call has ended.
const TICK: Duration = Duration::from_millis(100);

/// Why a ring transfer stopped.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The call the transfer belongs to ended (the plugin cancelled it or went away).
    #[error("the call ended")]
    Ended,
    /// The other side sent nothing for this long.
    #[error("the other side moved nothing for {0:?}")]
    Stalled(Duration),
    /// A record that does not fit the ring: a hostile or broken peer.
    #[error("a malformed record: {0}")]
    Malformed(String),
    /// The other side is gone.
    #[error("the other side closed the ring")]
    Closed,
    /// A system call failed.
    #[error("the ring failed to {action}: {source}")]
    Io {
        /// What it was doing.
        action: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_error(action: &'static str) -> impl FnOnce(Errno) -> RingError {
    move |errno| RingError::Io {
        action,
        source: errno.into(),
    }
}

/// What the plugin is handed: the ring's memory, its end of the control sockets, and the
/// geometry.
#[derive(Debug)]
pub struct RingOffer {
    /// The plugin's control socket.
    pub control: OwnedFd,
    /// The memory file.
    pub memory: OwnedFd,
    /// How many slots.
    pub slots: u32,
    /// Bytes per slot.
    pub slot_size: u32,
}

/// A new ring of `slots` slots of `slot_size` bytes: the host's side, and what to hand
/// the plugin.
pub fn ring(slots: u32, slot_size: u32) -> Result<(RingReceiver, RingOffer), RingError> {
    let len = (slots as usize)
        .checked_mul(slot_size as usize)
        .filter(|len| *len > 0)
        .ok_or_else(|| RingError::Malformed(format!("{slots} slots of {slot_size} bytes")))?;
    let memory = crate::shm::sealed_memory("tether-bulk", len as u64)
        .map_err(|(action, source)| RingError::Io { action, source })?;
    let mapping = Mapping::new(&memory, len, false).map_err(|source| RingError::Io {
        action: "map its memory",
        source,
    })?;
    let (host, plugin) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(io_error("create its sockets"))?;
    rustix::io::ioctl_fionbio(&plugin, false)
        .map_err(io_error("make the plugin's end blocking"))?;
    let memory_for_plugin = memory.try_clone().map_err(|source| RingError::Io {
        action: "copy its memory's descriptor",
        source,
    })?;
    Ok((
        RingReceiver {
            control: host,
            mapping,
            slots,
            slot_size,
            _memory: memory,
        },
        RingOffer {
            control: plugin,
            memory: memory_for_plugin,
            slots,
            slot_size,
        },
    ))
}

/// A slot the plugin filled: which, and how many bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filled {
    slot: u32,
    len: u32,
}

impl Filled {
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        u64::from(self.len)
    }

    /// Whether it holds nothing (never: a record of no bytes is malformed).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The host's side of a ring. Its methods block: run them on a blocking thread.
#[derive(Debug)]
pub struct RingReceiver {
    control: OwnedFd,
    mapping: Mapping,
    slots: u32,
    slot_size: u32,
    _memory: OwnedFd,
}

impl RingReceiver {
    /// The next slot the plugin filled, waiting at most `stall` for it and looking every
    /// 100 ms whether the call has `ended`; `None` once the plugin has ended its data
    /// ([`RingWriter::finish`]) and every record before that was read.
    pub fn next(
        &self,
        stall: Duration,
        ended: &dyn Fn() -> bool,
    ) -> Result<Option<Filled>, RingError> {
        let since = Instant::now();
        loop {
            let mut record = [0u8; 9];
            match rustix::net::recv(&self.control, &mut record, RecvFlags::DONTWAIT) {
                // The plugin ended its data (`RingWriter::finish`), and every record
                // before that was read.
                Ok((0, _)) => return Ok(None),
                // Closed with slots given back it never read: the plugin went away (Linux
                // may then drop records still queued, so this is never an end).
                Err(Errno::CONNRESET) => return Err(RingError::Closed),
                Ok((8, _)) => {
                    let slot = u32::from_le_bytes([record[0], record[1], record[2], record[3]]);
                    let len = u32::from_le_bytes([record[4], record[5], record[6], record[7]]);
                    if slot >= self.slots || len == 0 || len > self.slot_size {
                        return Err(RingError::Malformed(format!(
                            "slot {slot} with {len} bytes, in a ring of {} slots of {} bytes",
                            self.slots, self.slot_size
                        )));
                    }
                    return Ok(Some(Filled { slot, len }));
                }
                Ok((n, _)) => {
                    return Err(RingError::Malformed(format!(
                        "a record of {n} bytes, not 8"
                    )));
                }
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => wait(&self.control, PollFlags::IN, since, stall, ended)?,
                Err(errno) => return Err(io_error("receive a record")(errno)),
            }
        }
    }

    /// Writes the bytes of `filled` to `file`, straight from the shared memory (the plugin
    /// may be changing them: nothing in the host reads them, the kernel copies them).
    pub fn write_to(&self, filled: Filled, file: BorrowedFd<'_>) -> io::Result<()> {
        let offset = filled.slot as usize * self.slot_size as usize;
        let mut done = 0usize;
        let len = filled.len as usize;
        while done < len {
            // SAFETY: `offset + len` lies within the mapping (`next` checked the slot and
            // the length against the ring's geometry), which stays mapped while `self`
            // lives and cannot lose its pages (sealed against shrinking). The kernel reads
            // the bytes; no Rust reference to them is made.
            let written = unsafe {
                libc_write(
                    file,
                    self.mapping.start().as_ptr().add(offset + done),
                    len - done,
                )
            };
            match written {
                Ok(n) => done += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Gives `filled`'s slot back to the plugin. A plugin that has closed its socket
    /// (it sent its last record) needs no slot back: that is not an error.
    pub fn release(
        &self,
        filled: Filled,
        stall: Duration,
        ended: &dyn Fn() -> bool,
    ) -> Result<(), RingError> {
        let since = Instant::now();
        let record = filled.slot.to_le_bytes();
        loop {
            match rustix::net::send(
                &self.control,
                &record,
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            ) {
                Ok(_) | Err(Errno::PIPE | Errno::CONNRESET) => return Ok(()),
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => wait(&self.control, PollFlags::OUT, since, stall, ended)?,
                Err(errno) => return Err(io_error("free a slot")(errno)),
            }
        }
    }
}

/// `write(2)` from a raw address: the kernel copies the bytes, and no Rust reference to
/// memory another process may change at any moment is ever made.
///
/// # Safety
/// `data .. data + len` must be mapped and readable for the duration of the call.
unsafe fn libc_write(file: BorrowedFd<'_>, data: *const u8, len: usize) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: the caller's promise; the kernel reads the range as it is, or fails with
    // EFAULT.
    let written = unsafe { libc::write(file.as_raw_fd(), data.cast(), len) };
    usize::try_from(written).map_err(|_| io::Error::last_os_error())
}

/// Waits until `socket` is ready for `flags`, for at most `stall` from `since`, looking
/// every [`TICK`] whether the call has `ended`.
fn wait(
    socket: &OwnedFd,
    flags: PollFlags,
    since: Instant,
    stall: Duration,
    ended: &dyn Fn() -> bool,
) -> Result<(), RingError> {
    loop {
        if ended() {
            return Err(RingError::Ended);
        }
        let left = stall.saturating_sub(since.elapsed());
        if left.is_zero() {
            return Err(RingError::Stalled(stall));
        }
        let slice = left.min(TICK);
        let timeout = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: i64::from(slice.subsec_nanos()),
        };
        let mut fds = [PollFd::new(socket, flags)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) | Err(Errno::INTR) => {}
            Ok(_) => return Ok(()),
            Err(errno) => return Err(io_error("wait on the plugin")(errno)),
        }
    }
}

/// The plugin's side of a ring: fills slots and says so. [`RingWriter::finish`] ends the
/// data; keep the writer until the host has answered (dropping it with slots given back
/// unread resets the connection, which the host takes for a plugin gone).
#[derive(Debug)]
pub struct RingWriter {
    control: AsyncFd<OwnedFd>,
    mapping: Mapping,
    slot_size: u32,
    slots: u32,
    free: Vec<u32>,
    _memory: OwnedFd,
}

impl RingWriter {
    /// The writer over what the host handed over, checked: the memory file must hold the
    /// whole ring and be sealed against shrinking, the control a `SOCK_SEQPACKET` socket.
    /// Registers with the current tokio runtime.
    pub fn new(offer: RingOffer) -> Result<RingWriter, RingError> {
        let RingOffer {
            control,
            memory,
            slots,
            slot_size,
        } = offer;
        let len = (slots as usize)
            .checked_mul(slot_size as usize)
            .filter(|len| *len > 0)
            .ok_or_else(|| RingError::Malformed(format!("{slots} slots of {slot_size} bytes")))?;
        let size = rustix::fs::fstat(&memory)
            .map_err(io_error("read its memory's size"))?
            .st_size;
        let seals = rustix::fs::fcntl_get_seals(&memory).map_err(io_error("read its seals"))?;
        if u64::try_from(size).unwrap_or(0) < len as u64 || !seals.contains(SealFlags::SHRINK) {
            return Err(RingError::Malformed(format!(
                "its memory holds {size} bytes for {len} (sealed: {seals:?})"
            )));
        }
        if rustix::net::sockopt::socket_type(&control) != Ok(SocketType::SEQPACKET) {
            return Err(RingError::Malformed(
                "its control is not a SEQPACKET socket".to_owned(),
            ));
        }
        rustix::io::ioctl_fionbio(&control, true).map_err(io_error("make it non-blocking"))?;
        let mapping = Mapping::new(&memory, len, true).map_err(|source| RingError::Io {
            action: "map its memory",
            source,
        })?;
        // SAFETY: the AsyncFd owns `control` until it is dropped, and an OwnedFd always
        // returns that same open descriptor.
        let control = unsafe {
            AsyncFd::register_with_interest(control, Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(|err| RingError::Io {
            action: "register it with the runtime",
            source: err.into(),
        })?;
        Ok(RingWriter {
            control,
            mapping,
            slot_size,
            slots,
            free: (0..slots).rev().collect(),
            _memory: memory,
        })
    }

    /// Moves everything `source` gives through the ring, and returns how many bytes.
    pub async fn write_from(
        &mut self,
        source: &mut (impl AsyncRead + Unpin),
    ) -> Result<u64, RingError> {
        let mut total = 0u64;
        loop {
            let slot = self.free_slot().await?;
            let size = self.slot_size as usize;
            // SAFETY: the slot lies within the mapping; it is this writer's until it is
            // sent (the host only reads a slot it was sent, and never writes any).
            let buffer = unsafe {
                std::slice::from_raw_parts_mut(
                    self.mapping.start().as_ptr().add(slot as usize * size),
                    size,
                )
            };
            let mut filled = 0;
            let mut ended = false;
            while filled < size {
                let n =
                    source
                        .read(&mut buffer[filled..])
                        .await
                        .map_err(|source| RingError::Io {
                            action: "read its source",
                            source,
                        })?;
                if n == 0 {
                    ended = true;
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                self.free.push(slot);
                return Ok(total);
            }
            self.send(slot, filled as u32).await?;
            total += filled as u64;
            if ended {
                return Ok(total);
            }
        }
    }

    /// Ends the data: the host reads every record sent so far, then sees the end. Slots the
    /// host gives back after this are left unread.
    pub fn finish(&self) -> Result<(), RingError> {
        rustix::net::shutdown(self.control.get_ref(), rustix::net::Shutdown::Write)
            .map_err(io_error("end the data"))
    }

    /// A free slot: one never sent, or one the host gave back.
    async fn free_slot(&mut self) -> Result<u32, RingError> {
        if let Some(slot) = self.free.pop() {
            return Ok(slot);
        }
        loop {
            let mut guard = self
                .control
                .readable()
                .await
                .map_err(|source| RingError::Io {
                    action: "wait for a free slot",
                    source,
                })?;
            let received = guard.try_io(|socket| {
                let mut record = [0u8; 5];
                rustix::net::recv(socket.get_ref(), &mut record, RecvFlags::DONTWAIT)
                    .map(|(n, _)| (n, record))
                    .map_err(Into::into)
            });
            match received {
                Ok(Ok((0, _))) => return Err(RingError::Closed),
                Ok(Ok((4, record))) => {
                    let slot = u32::from_le_bytes([record[0], record[1], record[2], record[3]]);
                    if slot >= self.slots {
                        return Err(RingError::Malformed(format!("slot {slot} given back")));
                    }
                    return Ok(slot);
                }
                Ok(Ok((n, _))) => {
                    return Err(RingError::Malformed(format!(
                        "a record of {n} bytes, not 4"
                    )));
                }
                Ok(Err(source)) => {
                    return Err(RingError::Io {
                        action: "receive a free slot",
                        source,
                    });
                }
                Err(_would_block) => {}
            }
        }
    }

    /// Says `slot` holds `len` bytes.
    async fn send(&self, slot: u32, len: u32) -> Result<(), RingError> {
        let mut record = [0u8; 8];
        record[..4].copy_from_slice(&slot.to_le_bytes());
        record[4..].copy_from_slice(&len.to_le_bytes());
        loop {
            let mut guard = self
                .control
                .writable()
                .await
                .map_err(|source| RingError::Io {
                    action: "wait to send a record",
                    source,
                })?;
            match guard.try_io(|socket| {
                rustix::net::send(
                    socket.get_ref(),
                    &record,
                    SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
                )
                .map_err(Into::into)
            }) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(err)) if err.raw_os_error() == Some(Errno::PIPE.raw_os_error()) => {
                    return Err(RingError::Closed);
                }
                Ok(Err(source)) => {
                    return Err(RingError::Io {
                        action: "send a record",
                        source,
                    });
                }
                Err(_would_block) => {}
            }
        }
    }
}

impl AsFd for RingWriter {
    /// The control socket (to send a record by hand, as a test of the host does).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.control.get_ref().as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek};

    fn host_side(
        receiver: RingReceiver,
        file: std::fs::File,
    ) -> std::thread::JoinHandle<Result<u64, RingError>> {
        std::thread::spawn(move || {
            let mut total = 0;
            while let Some(filled) = receiver.next(Duration::from_secs(30), &|| false)? {
                receiver
                    .write_to(filled, file.as_fd())
                    .map_err(|source| RingError::Io {
                        action: "write",
                        source,
                    })?;
                total += filled.len();
                receiver.release(filled, Duration::from_secs(30), &|| false)?;
            }
            Ok(total)
        })
    }

    #[tokio::test]
    async fn bytes_go_through_the_ring_whole_and_in_order() {
        let (receiver, offer) = ring(3, 4096).unwrap();
        let mut file = tempfile::tempfile().unwrap();
        let host = host_side(receiver, file.try_clone().unwrap());
        let contents: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut writer = RingWriter::new(offer).unwrap();
        let sent = writer.write_from(&mut contents.as_slice()).await.unwrap();
        writer.finish().unwrap();
        assert_eq!(sent, contents.len() as u64);
        assert_eq!(host.join().unwrap().unwrap(), contents.len() as u64);
        file.rewind().unwrap();
        let mut got = Vec::new();
        file.read_to_end(&mut got).unwrap();
        assert!(got == contents);
    }

    #[test]
    fn the_memory_cannot_shrink_grow_or_be_executed_and_bad_records_are_refused() {
        let (receiver, offer) = ring(2, 4096).unwrap();
        assert_eq!(
            rustix::fs::ftruncate(&offer.memory, 0),
            Err(Errno::PERM),
            "shrinking would pull pages from under the host"
        );
        assert_eq!(
            rustix::fs::ftruncate(&offer.memory, 1 << 20),
            Err(Errno::PERM)
        );
        let mode = rustix::fs::fstat(&offer.memory).unwrap().st_mode;
        assert_eq!(mode & 0o111, 0, "no execute bits");
        for (record, what) in [
            (vec![2, 0, 0, 0, 1, 0, 0, 0], "slot 2"),
            (vec![0, 0, 0, 0, 1, 16, 0, 0], "4097 bytes"),
            (vec![0, 0, 0, 0, 0, 0, 0, 0], "no bytes"),
            (vec![0, 0, 0], "3 bytes"),
        ] {
            rustix::net::send(&offer.control, &record, SendFlags::empty()).unwrap();
            let refused = receiver.next(Duration::from_secs(30), &|| false);
            assert!(
                matches!(refused, Err(RingError::Malformed(_))),
                "{what}: {refused:?}"
            );
        }
        // A plugin that sends nothing is waited on for the stall timeout, no longer.
        let stalled = receiver.next(Duration::from_millis(100), &|| false);
        assert!(matches!(stalled, Err(RingError::Stalled(_))), "{stalled:?}");
        rustix::net::shutdown(&offer.control, rustix::net::Shutdown::Write).unwrap();
        assert!(matches!(
            receiver.next(Duration::from_secs(30), &|| false),
            Ok(None)
        ));
    }
}
