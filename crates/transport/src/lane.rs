//! The lane: a byte stream between two tether peers in shared memory, for calls with fewer
//! wake-ups than a socket.
//!
//! A call over a socket wakes the other process twice (the request, the answer); on the
//! machines tether is measured on, those wake-ups are most of a call's time. A lane is two
//! rings of bytes in one memory file both processes map, one per direction. A reader that
//! finds its ring empty keeps looking for a while ([`DEFAULT_SPIN`]) before it sleeps, so
//! calls that follow one another closely cross without any system call; only a sleeping
//! reader (or a writer waiting for room) is woken, through one of two socket pairs, the
//! lane's *doorbells* (one for data, one for room), which also tell each side when the
//! other is gone.
//!
//! [`LaneStream`] is an ordinary `AsyncRead + AsyncWrite`: [`crate::frames`] runs on it
//! unchanged, so a lane carries whole gRPC calls (metadata, deadlines, cancellation,
//! streams) and every layer of the server (identity, capability checks, audit) sees the
//! same requests as on a socket.
//!
//! The host makes a lane ([`lane`]) and hands the plugin a [`LaneOffer`] (the memory file
//! and its ends of the doorbells, on the descriptor channel); the plugin opens it with
//! [`LaneStream::open`].
//!
//! ## The memory is hostile
//!
//! Each side can write anything anywhere in the mapping at any time. So a side:
//! - keeps its own positions in the rings in its own memory, and reads only the other's
//!   from the mapping: a position that moves backwards, or claims more bytes than the
//!   ring holds, breaks the lane ([`io::ErrorKind::InvalidData`]) and ends the connection;
//! - copies bytes in and out with relaxed atomic loads and stores, never making a plain
//!   Rust reference to shared bytes, so bytes that change under it are just other bytes:
//!   [`crate::frames`] then checks them as it checks any peer's frames;
//! - never blocks on the other: waits go through a doorbell, whose end of file (the
//!   other process exited or dropped its side) ends them.
//!
//! The memory file is sealed against shrinking and growing, so neither side can take the
//! mapping's pages away from the other (no `SIGBUS`).

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering, fence};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustix::fs::SealFlags;
use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use crate::shm::Mapping;
use crate::unix::PeerCredentials;

/// How long a reader that found nothing keeps looking before it sleeps, by default. Each
/// side spends up to this much CPU after the last byte it read.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// Bytes in each direction's ring.
pub const RING_BYTES: usize = 256 * 1024;

/// What the start of the memory holds, to tell a lane from any other memory file.
const MAGIC: u64 = u64::from_le_bytes(*b"TTHLANE1");

/// Where the rings' bytes start: past the control lines, on a page of their own.
const DATA: usize = 4096;

/// The memory file's length.
const LEN: usize = DATA + 2 * RING_BYTES;

/// One counter on a cache line of its own, so the two sides' counters do not share one.
#[repr(C, align(128))]
struct Line(AtomicU64);

/// The control lines at the start of the memory. Index `0` is the host's side (it writes
/// ring `0` and reads ring `1`), `1` the plugin's.
#[repr(C)]
struct Control {
    magic: Line,
    /// Bytes ever written into each ring, by its writer.
    written: [Line; 2],
    /// Bytes ever read from each ring, by its reader.
    read: [Line; 2],
    /// Set by a side about to sleep until the other writes.
    wants_data: [Line; 2],
    /// Set by a side about to sleep until the other reads (its ring is full).
    wants_room: [Line; 2],
}

const _: () = assert!(size_of::<Control>() <= DATA);

/// Why a lane could not be made or opened.
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    /// A system call failed.
    #[error("the lane failed to {action}: {source}")]
    Io {
        /// What it was doing.
        action: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The memory handed over is not a lane's.
    #[error("the memory handed over is not a lane: {0}")]
    NotALane(String),
}

fn io_error(action: &'static str) -> impl FnOnce(Errno) -> LaneError {
    move |errno| LaneError::Io {
        action,
        source: errno.into(),
    }
}

/// What the plugin is handed: the lane's memory file and its ends of the doorbells.
#[derive(Debug)]
pub struct LaneOffer {
    /// The memory file.
    pub memory: OwnedFd,
    /// The plugin's end of the data doorbell: it waits there for data, and rings the host's
    /// reader through it.
    pub data_bell: OwnedFd,
    /// The plugin's end of the room doorbell: it waits there for room to write, and rings
    /// the host's writer through it.
    pub room_bell: OwnedFd,
}

/// A new lane: the host's side, and what to hand the plugin.
pub fn lane() -> Result<(LaneStream, LaneOffer), LaneError> {
    let memory = crate::shm::sealed_memory("tether-lane", LEN as u64)
        .map_err(|(action, source)| LaneError::Io { action, source })?;
    let mapping = Mapping::new(&memory, LEN, true).map_err(|source| LaneError::Io {
        action: "map its memory",
        source,
    })?;
    // A fresh memory file is zeroed: every counter starts at 0.
    control(&mapping).magic.0.store(MAGIC, Ordering::Release);
    let bells = || {
        rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(io_error("create its doorbells"))
    };
    let (host_data, plugin_data) = bells()?;
    let (host_room, plugin_room) = bells()?;
    let stream = LaneStream::new(mapping, host_data, host_room, 0)?;
    Ok((
        stream,
        LaneOffer {
            memory,
            data_bell: plugin_data,
            room_bell: plugin_room,
        },
    ))
}

fn control(mapping: &Mapping) -> &Control {
    // SAFETY: the mapping is at least `DATA` bytes long, page-aligned, and `Control` is
    // made of atomics only, for which every bit pattern is valid and shared writes from
    // the other process are defined.
    unsafe { &*mapping.start().as_ptr().cast::<Control>() }
}

fn ring(mapping: &Mapping, which: usize) -> &[AtomicU8] {
    // SAFETY: ring `which` (0 or 1) lies inside the mapping; `AtomicU8` has the layout of
    // `u8`, and every access to the bytes goes through atomics.
    unsafe {
        std::slice::from_raw_parts(
            mapping
                .start()
                .as_ptr()
                .add(DATA + which * RING_BYTES)
                .cast::<AtomicU8>(),
            RING_BYTES,
        )
    }
}

/// Copies shared bytes out, with relaxed atomic loads: a word at a time where aligned.
fn load(from: &[AtomicU8], to: &mut [u8]) {
    debug_assert_eq!(from.len(), to.len());
    let lead = from.as_ptr().align_offset(8).min(from.len());
    let (head, rest) = to.split_at_mut(lead);
    for (byte, cell) in head.iter_mut().zip(&from[..lead]) {
        *byte = cell.load(Ordering::Relaxed);
    }
    let words = rest.len() / 8;
    // SAFETY: `from[lead..]` starts 8-aligned and holds at least `words * 8` bytes;
    // `AtomicU64` has the layout of `u64`.
    let aligned =
        unsafe { std::slice::from_raw_parts(from.as_ptr().add(lead).cast::<AtomicU64>(), words) };
    let (body, tail) = rest.split_at_mut(words * 8);
    for (chunk, word) in body.chunks_exact_mut(8).zip(aligned) {
        chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
    }
    for (byte, cell) in tail.iter_mut().zip(&from[lead + words * 8..]) {
        *byte = cell.load(Ordering::Relaxed);
    }
}

/// Copies bytes into shared memory, with relaxed atomic stores: a word at a time where
/// aligned.
fn store(from: &[u8], to: &[AtomicU8]) {
    debug_assert_eq!(from.len(), to.len());
    let lead = to.as_ptr().align_offset(8).min(to.len());
    let (head, rest) = from.split_at(lead);
    for (byte, cell) in head.iter().zip(&to[..lead]) {
        cell.store(*byte, Ordering::Relaxed);
    }
    let words = rest.len() / 8;
    // SAFETY: as in `load`.
    let aligned =
        unsafe { std::slice::from_raw_parts(to.as_ptr().add(lead).cast::<AtomicU64>(), words) };
    let (body, tail) = rest.split_at(words * 8);
    for (chunk, word) in body.chunks_exact(8).zip(aligned) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        word.store(u64::from_ne_bytes(bytes), Ordering::Relaxed);
    }
    for (byte, cell) in tail.iter().zip(&to[lead + words * 8..]) {
        cell.store(*byte, Ordering::Relaxed);
    }
}

/// One side of a lane: a byte stream to the other.
///
/// Reading spins (yielding to the runtime's other tasks) for up to the spin time after the
/// last byte, then sleeps on a doorbell. Dropping it closes the doorbells: the other side
/// reads the end of the stream once it has read what was written before.
pub struct LaneStream {
    mapping: Mapping,
    /// 0 for the host's side, 1 for the plugin's.
    side: usize,
    /// This side's own count of bytes it wrote and read: never taken from the mapping.
    written: u64,
    read: u64,
    /// The other side's counts as last seen, to refuse one that moves backwards.
    seen_written: u64,
    seen_read: u64,
    /// Where this side's reader waits for data, and its writer rings the other's reader.
    data_bell: AsyncFd<OwnedFd>,
    /// Where this side's writer waits for room, and its reader rings the other's writer.
    room_bell: AsyncFd<OwnedFd>,
    spin: Duration,
    spinning_since: Option<Instant>,
    peer_gone: bool,
    broken: Option<String>,
}

impl std::fmt::Debug for LaneStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneStream")
            .field("side", &if self.side == 0 { "host" } else { "plugin" })
            .field("written", &self.written)
            .field("read", &self.read)
            .field("peer_gone", &self.peer_gone)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl LaneStream {
    fn new(
        mapping: Mapping,
        data_bell: OwnedFd,
        room_bell: OwnedFd,
        side: usize,
    ) -> Result<LaneStream, LaneError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(LaneError::Io {
                action: "register its doorbell",
                source: io::Error::other("not called within a tokio runtime"),
            });
        }
        let register = |fd: OwnedFd| {
            // SAFETY: the AsyncFd owns `fd` until it is dropped, and an OwnedFd always
            // returns that same open descriptor.
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|err| {
                LaneError::Io {
                    action: "register its doorbell with the runtime",
                    source: err.into(),
                }
            })
        };
        Ok(LaneStream {
            mapping,
            side,
            written: 0,
            read: 0,
            seen_written: 0,
            seen_read: 0,
            data_bell: register(data_bell)?,
            room_bell: register(room_bell)?,
            spin: DEFAULT_SPIN,
            spinning_since: None,
            peer_gone: false,
            broken: None,
        })
    }

    /// The plugin's side of a lane the host made. Checks that the memory is a lane's: its
    /// size, its seals and its first word.
    pub fn open(offer: LaneOffer) -> Result<LaneStream, LaneError> {
        let stat = rustix::fs::fstat(&offer.memory).map_err(io_error("inspect its memory"))?;
        if usize::try_from(stat.st_size).ok() != Some(LEN) {
            return Err(LaneError::NotALane(format!(
                "its memory is {} bytes, a lane's is {LEN}",
                stat.st_size
            )));
        }
        let seals =
            rustix::fs::fcntl_get_seals(&offer.memory).map_err(io_error("read its seals"))?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err(LaneError::NotALane(
                "its memory is not sealed against shrinking and growing".into(),
            ));
        }
        let mapping = Mapping::new(&offer.memory, LEN, true).map_err(|source| LaneError::Io {
            action: "map its memory",
            source,
        })?;
        if control(&mapping).magic.0.load(Ordering::Acquire) != MAGIC {
            return Err(LaneError::NotALane(
                "its memory does not start with a lane's mark".into(),
            ));
        }
        LaneStream::new(mapping, offer.data_bell, offer.room_bell, 1)
    }

    /// The kernel's word on the other side: `SO_PEERCRED` of a doorbell, which names the
    /// process that made the lane (the host) on the plugin's side. What a server on the
    /// lane puts in its requests, as a socket's server puts its peer's credentials.
    pub fn peer_credentials(&self) -> io::Result<PeerCredentials> {
        PeerCredentials::of_socket(self.data_bell.get_ref().as_fd())
    }

    /// Sets how long a reader that found nothing keeps looking before it sleeps
    /// ([`DEFAULT_SPIN`]). Zero sleeps at once: no spinning CPU, a wake-up per call.
    pub fn with_spin(mut self, spin: Duration) -> LaneStream {
        self.spin = spin;
        self
    }

    fn control(&self) -> &Control {
        control(&self.mapping)
    }

    fn peer(&self) -> usize {
        1 - self.side
    }

    fn fail(&mut self, reason: String) -> io::Error {
        tracing::warn!(target: "tether::lane", %reason, "the lane's other side broke it");
        self.broken = Some(reason.clone());
        io::Error::new(io::ErrorKind::InvalidData, reason)
    }

    fn broken_error(&self) -> Option<io::Error> {
        self.broken
            .as_ref()
            .map(|reason| io::Error::new(io::ErrorKind::InvalidData, reason.clone()))
    }

    /// Rings `bell` if the other side said (`flag`) it sleeps until this side moves.
    fn ring_if(flag: &Line, bell: &AsyncFd<OwnedFd>) {
        // Pairs with the sleeper's fence between setting its flag and looking again.
        fence(Ordering::SeqCst);
        if flag.0.load(Ordering::Relaxed) != 0 {
            // A full socket buffer means bells are already waiting; a closed one, that
            // nobody listens.
            let _ = rustix::net::send(
                bell.get_ref(),
                &[1],
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            );
        }
    }

    /// Empties the doorbell. Returns whether the other side is gone.
    fn drain_bell(bell: &AsyncFd<OwnedFd>, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            let mut guard = match bell.poll_read_ready(cx) {
                Poll::Ready(Ok(guard)) => guard,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            };
            let mut buffer = [0u8; 64];
            match rustix::net::recv(bell.get_ref().as_fd(), &mut buffer, RecvFlags::DONTWAIT) {
                Ok((0, _)) => return Poll::Ready(Ok(true)),
                Ok(_) => {
                    // Rung: empty the rest, then look at the rings again.
                    continue;
                }
                Err(Errno::AGAIN) => {
                    guard.clear_ready();
                    return Poll::Ready(Ok(false));
                }
                Err(Errno::INTR) => continue,
                Err(Errno::CONNRESET) => return Poll::Ready(Ok(true)),
                Err(errno) => return Poll::Ready(Err(errno.into())),
            }
        }
    }

    /// How many bytes wait in the ring this side reads, after checking the writer's count.
    fn available(&mut self) -> io::Result<u64> {
        let peer = self.peer();
        let written = self.control().written[peer].0.load(Ordering::Acquire);
        let waiting = written.wrapping_sub(self.read);
        if written.wrapping_sub(self.seen_written) > RING_BYTES as u64
            || waiting > RING_BYTES as u64
        {
            return Err(self.fail(format!(
                "its count of bytes written moved from {} to {written}, with {} read: not a \
                 ring of {RING_BYTES} bytes",
                self.seen_written, self.read
            )));
        }
        self.seen_written = written;
        Ok(waiting)
    }

    /// How many bytes fit in the ring this side writes, after checking the reader's count.
    fn room(&mut self) -> io::Result<u64> {
        let side = self.side;
        let read = self.control().read[side].0.load(Ordering::Acquire);
        let unread = self.written.wrapping_sub(read);
        if read.wrapping_sub(self.seen_read) > RING_BYTES as u64 || unread > RING_BYTES as u64 {
            return Err(self.fail(format!(
                "its count of bytes read moved from {} to {read}, with {} written: not a ring \
                 of {RING_BYTES} bytes",
                self.seen_read, self.written
            )));
        }
        self.seen_read = read;
        Ok(RING_BYTES as u64 - unread)
    }
}

/// Where position `at` of a ring falls, and how many bytes of `len` fit before its end.
fn split(at: u64, len: usize) -> (usize, usize) {
    // RING_BYTES is a power of two far below u64::MAX.
    let offset = (at % RING_BYTES as u64) as usize;
    (offset, len.min(RING_BYTES - offset))
}

impl AsyncRead for LaneStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let side = this.side;
        let peer = this.peer();
        loop {
            if let Some(err) = this.broken_error() {
                return Poll::Ready(Err(err));
            }
            let waiting = this.available()?;
            if waiting > 0 {
                if this.control().wants_data[side].0.load(Ordering::Relaxed) != 0 {
                    this.control().wants_data[side]
                        .0
                        .store(0, Ordering::Relaxed);
                }
                this.spinning_since = None;
                let len = usize::try_from(waiting)
                    .unwrap_or(usize::MAX)
                    .min(buf.remaining());
                if len == 0 {
                    return Poll::Ready(Ok(()));
                }
                let bytes = ring(&this.mapping, peer);
                let (offset, first) = split(this.read, len);
                let target = buf.initialize_unfilled_to(len);
                load(&bytes[offset..offset + first], &mut target[..first]);
                load(&bytes[..len - first], &mut target[first..]);
                buf.advance(len);
                this.read = this.read.wrapping_add(len as u64);
                this.control().read[peer]
                    .0
                    .store(this.read, Ordering::Release);
                LaneStream::ring_if(&this.control().wants_room[peer], &this.room_bell);
                return Poll::Ready(Ok(()));
            }
            if this.peer_gone {
                return Poll::Ready(Ok(()));
            }
            let now = Instant::now();
            let since = *this.spinning_since.get_or_insert(now);
            if now.duration_since(since) < this.spin {
                // Keep looking, letting the runtime's other tasks run in between.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            // Sleep: say so, then look once more, so that a write between the last look
            // and the flag is not missed (the writer looks at the flag after writing).
            this.control().wants_data[side]
                .0
                .store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if this.available()? > 0 {
                continue;
            }
            match LaneStream::drain_bell(&this.data_bell, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(gone)) => this.peer_gone |= gone,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
            }
        }
    }
}

impl AsyncWrite for LaneStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let side = this.side;
        let peer = this.peer();
        loop {
            if let Some(err) = this.broken_error() {
                return Poll::Ready(Err(err));
            }
            if this.peer_gone {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the lane's other side is gone",
                )));
            }
            if data.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let room = this.room()?;
            if room > 0 {
                if this.control().wants_room[side].0.load(Ordering::Relaxed) != 0 {
                    this.control().wants_room[side]
                        .0
                        .store(0, Ordering::Relaxed);
                }
                let len = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
                let bytes = ring(&this.mapping, side);
                let (offset, first) = split(this.written, len);
                store(&data[..first], &bytes[offset..offset + first]);
                store(&data[first..len], &bytes[..len - first]);
                this.written = this.written.wrapping_add(len as u64);
                this.control().written[side]
                    .0
                    .store(this.written, Ordering::Release);
                LaneStream::ring_if(&this.control().wants_data[peer], &this.data_bell);
                return Poll::Ready(Ok(len));
            }
            this.control().wants_room[side]
                .0
                .store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if this.room()? > 0 {
                continue;
            }
            match LaneStream::drain_bell(&this.room_bell, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(gone)) => this.peer_gone |= gone,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are visible to the other side at once.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The end is told by dropping the stream, which closes the doorbells.
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::sync::CancellationToken;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;
    use crate::frames::{FramedChannel, PREFACE, serve_framed};

    /// Every test ends well within this, or it has hung.
    const PATIENCE: Duration = Duration::from_secs(30);

    /// A lane's two sides, each with `spin`.
    fn pair(spin: Duration) -> (LaneStream, LaneStream, OwnedFd) {
        let (host, offer) = lane().unwrap();
        let memory = offer.memory.try_clone().unwrap();
        let plugin = LaneStream::open(offer).unwrap().with_spin(spin);
        (host.with_spin(spin), plugin, memory)
    }

    fn pattern(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| ((i + seed) % 251) as u8).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_cross_both_ways_through_many_turns_of_the_rings() {
        for spin in [DEFAULT_SPIN, Duration::ZERO] {
            let (host, plugin, memory) = pair(spin);
            let watch = scribble(&memory);
            let (mut host_reads, mut host_writes) = tokio::io::split(host);
            let (mut plugin_reads, mut plugin_writes) = tokio::io::split(plugin);
            let len = 5 * 1024 * 1024 + 13;
            let down = tokio::spawn(async move {
                for piece in pattern(len, 1).chunks(70_001) {
                    host_writes.write_all(piece).await.unwrap();
                }
                host_writes
            });
            let up = tokio::spawn(async move {
                for piece in pattern(len, 2).chunks(3_333) {
                    plugin_writes.write_all(piece).await.unwrap();
                }
                plugin_writes
            });
            let mut got_down = vec![0u8; len];
            let mut got_up = vec![0u8; len];
            tokio::time::timeout(PATIENCE, async {
                let (a, b) = tokio::join!(
                    plugin_reads.read_exact(&mut got_down),
                    host_reads.read_exact(&mut got_up)
                );
                a.unwrap();
                b.unwrap();
            })
            .await
            .unwrap_or_else(|_| {
                let c = control(&watch);
                panic!(
                    "hung: written {:?} read {:?} wants_data {:?} wants_room {:?}",
                    c.written.each_ref().map(|l| l.0.load(Ordering::SeqCst)),
                    c.read.each_ref().map(|l| l.0.load(Ordering::SeqCst)),
                    c.wants_data.each_ref().map(|l| l.0.load(Ordering::SeqCst)),
                    c.wants_room.each_ref().map(|l| l.0.load(Ordering::SeqCst)),
                )
            });
            assert!(got_down == pattern(len, 1), "host -> plugin bytes differ");
            assert!(got_up == pattern(len, 2), "plugin -> host bytes differ");
            let _ = (down.await.unwrap(), up.await.unwrap());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_generated_client_calls_a_served_service_over_a_lane() {
        for spin in [DEFAULT_SPIN, Duration::ZERO] {
            let (mut host, plugin, _memory) = pair(spin);
            let stop = CancellationToken::new();
            let stopping = stop.clone();
            let server = tokio::spawn(async move {
                let mut preface = [0u8; PREFACE.len()];
                host.read_exact(&mut preface).await.unwrap();
                assert_eq!(&preface, PREFACE);
                let (_, service) = tonic_health::server::health_reporter();
                let routes = tonic::service::Routes::new(service);
                serve_framed(host, routes, (), stopping)
                    .await
                    .expect("the client ended the connection cleanly");
            });
            let channel = FramedChannel::start(plugin, "the host").await.unwrap();
            let mut client = HealthClient::new(channel);
            for _ in 0..200 {
                let answer = tokio::time::timeout(
                    PATIENCE,
                    client.check(HealthCheckRequest {
                        service: String::new(),
                    }),
                )
                .await
                .expect("the call ended")
                .unwrap();
                assert_eq!(answer.into_inner().status, 1, "SERVING");
            }
            drop(client);
            stop.cancel();
            tokio::time::timeout(PATIENCE, server)
                .await
                .expect("the server ended")
                .unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_side_that_is_dropped_ends_the_others_reads_and_writes() {
        let (mut host, plugin, _memory) = pair(DEFAULT_SPIN);
        let (mut reads, mut writes) = {
            let mut plugin = plugin;
            plugin.write_all(b"last words").await.unwrap();
            drop(plugin);
            let mut got = Vec::new();
            let read = tokio::time::timeout(PATIENCE, host.read_to_end(&mut got))
                .await
                .expect("the end was seen");
            assert_eq!(read.unwrap(), 10);
            assert_eq!(got, b"last words", "bytes written before the drop are read");
            tokio::io::split(host)
        };
        let mut buffer = [0u8; 16];
        assert_eq!(reads.read(&mut buffer).await.unwrap(), 0, "still the end");
        let piece = vec![7u8; 64 * 1024];
        let err = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Err(err) = writes.write_all(&piece).await {
                    break err;
                }
            }
        })
        .await
        .expect("writing to a gone side fails, without a hang");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
    }

    /// The other side's mapping, written as a hostile plugin would.
    fn scribble(memory: &OwnedFd) -> Mapping {
        Mapping::new(memory, LEN, true).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_a_hostile_side_forges_break_the_lane_with_a_clear_error() {
        // A writer's count that claims more than the ring holds.
        let (mut host, _plugin, memory) = pair(DEFAULT_SPIN);
        let forged = scribble(&memory);
        control(&forged).written[1]
            .0
            .store(RING_BYTES as u64 + 1, Ordering::Release);
        let mut buffer = [0u8; 16];
        let err = host.read(&mut buffer).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("not a ring of"), "{err}");
        // Broken for good: later reads and writes fail the same way.
        assert!(host.read(&mut buffer).await.is_err());
        assert!(host.write(b"x").await.is_err());

        // A reader's count that moves backwards.
        let (mut host, _plugin, memory) = pair(DEFAULT_SPIN);
        let forged = scribble(&memory);
        host.write_all(&[1u8; 1000]).await.unwrap();
        control(&forged).read[0].0.store(600, Ordering::Release);
        host.write_all(b"more").await.unwrap();
        control(&forged).read[0].0.store(500, Ordering::Release);
        let err = host.write_all(b"more").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("count of bytes read"), "{err}");

        // Garbage bytes within a valid count reach the frames parser, which refuses them:
        // the host's server ends that connection and goes on.
        let (host, _plugin, memory) = pair(DEFAULT_SPIN);
        let forged = scribble(&memory);
        let garbage = b"NOT-TETHER-FRAMES-AT-ALL";
        store(garbage, &ring(&forged, 1)[..garbage.len()]);
        control(&forged).written[1]
            .0
            .store(garbage.len() as u64, Ordering::Release);
        let served = tokio::spawn(async move {
            let mut host = host;
            let mut preface = [0u8; PREFACE.len()];
            host.read_exact(&mut preface).await.unwrap();
            preface
        });
        let preface = tokio::time::timeout(PATIENCE, served)
            .await
            .expect("the bytes were read")
            .unwrap();
        assert_ne!(&preface, PREFACE, "a server would refuse this connection");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_served_lane_whose_counts_are_forged_ends_as_a_protocol_violation() {
        let (mut host, plugin, memory) = pair(DEFAULT_SPIN);
        let forged = scribble(&memory);
        let server = tokio::spawn(async move {
            let mut preface = [0u8; PREFACE.len()];
            host.read_exact(&mut preface).await.unwrap();
            let (_, service) = tonic_health::server::health_reporter();
            let routes = tonic::service::Routes::new(service);
            serve_framed(host, routes, (), CancellationToken::new()).await
        });
        let channel = FramedChannel::start(plugin, "the host").await.unwrap();
        let mut client = HealthClient::new(channel);
        let check = || HealthCheckRequest {
            service: String::new(),
        };
        client.check(check()).await.expect("an honest call");
        // The plugin's count of bytes read from the host's ring, forged: the host refuses
        // to write its next answer into a ring it cannot trust.
        control(&forged).read[0]
            .0
            .store(u64::MAX, Ordering::Release);
        let status = tokio::time::timeout(PATIENCE, client.check(check()))
            .await
            .expect("no hang")
            .expect_err("the call fails");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
        let outcome = tokio::time::timeout(PATIENCE, server)
            .await
            .expect("the server ended")
            .unwrap();
        assert!(
            matches!(&outcome, Err(crate::frames::Broken::Protocol(reason)) if reason.contains("count of bytes read")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn memory_that_is_not_a_lane_is_refused() {
        let (_host, offer) = lane().unwrap();
        // A memory file of another size.
        let other =
            rustix::fs::memfd_create("not-a-lane", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&other, 4096).unwrap();
        let err = LaneStream::open(LaneOffer {
            memory: other,
            data_bell: offer.data_bell.try_clone().unwrap(),
            room_bell: offer.room_bell.try_clone().unwrap(),
        })
        .unwrap_err();
        assert!(err.to_string().contains("bytes, a lane's is"), "{err}");
        // The right size, but not sealed: it could shrink under the reader.
        let unsealed =
            rustix::fs::memfd_create("not-a-lane", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&unsealed, LEN as u64).unwrap();
        let err = LaneStream::open(LaneOffer {
            memory: unsealed,
            data_bell: offer.data_bell,
            room_bell: offer.room_bell,
        })
        .unwrap_err();
        assert!(err.to_string().contains("not sealed"), "{err}");
    }
}
