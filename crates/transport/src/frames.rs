//! Frames: gRPC calls between two tether peers without HTTP/2.
//!
//! A tonic call over HTTP/2 costs some 50 us of CPU on the machines tether is measured on,
//! five times a socket's round trip: HTTP/2's framing, header compression, flow control and
//! the wake-ups between hyper's tasks. Two tether peers need none of it. This module
//! carries the same calls (a path, metadata, a body of gRPC-framed messages, trailers with
//! the status, deadlines, cancellation, streams in both directions) in a few plain frames
//! on the same socket:
//!
//! - [`FramedChannel`] is the client: a tower `Service` that tonic's generated clients run
//!   on unchanged (`MyClient::new(channel)`).
//! - [`serve_framed`] serves one connection with any tower `Service` of HTTP requests, a
//!   generated server or tonic's `Routes`, unchanged.
//! - [`accept`] sorts a server's incoming connections: those that start with [`PREFACE`]
//!   are served here, the others (HTTP/2, a go-plugin peer) go on to tonic's server.
//!
//! A connection starts with the client's [`PREFACE`]; then each frame is a 9-byte header
//! (`u32` payload length, `u32` stream id, both little-endian, and a `u8` kind) and its
//! payload. Kinds: `OPEN` (client: path and metadata), `DATA` (either way: request or
//! response body), `END` (client: no more request body), `RESPONSE` (server: response
//! metadata), `TRAILERS` (server: the status; ends the stream), `CANCEL` (either way: the
//! stream is abandoned, with a gRPC code and message) and `WINDOW` (either way: credit for
//! more body bytes).
//!
//! Flow control is per stream: a side may send at most [`WINDOW`] body bytes the other has
//! not yet consumed; a consumer returns credit as it reads. A peer that sends more, or
//! breaks the framing in any other way (an oversized frame, an unknown kind, metadata that
//! is not valid HTTP), loses the connection: its streams end with `UNAVAILABLE` and the
//! reason is logged. A connection carries at most [`MAX_STREAMS`] streams at once; a client
//! waits for a free one.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{FutureExt, Stream};
use http_body::{Body as HttpBody, Frame};
use tether_protocol::{GRPC_TIMEOUT_METADATA, parse_grpc_timeout};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderMap, HeaderName, HeaderValue};
use tonic::transport::server::Connected;
use tonic::{Code, Status};

/// What a client writes first on a framed connection. An HTTP/2 client starts with
/// `PRI * HTTP/2.0`, so a server tells the two apart from the first 16 bytes.
pub const PREFACE: &[u8; 16] = b"TETHER-FRAMES/1\n";

/// Body bytes one side may send on a stream before the other returns credit.
pub const WINDOW: usize = 1 << 20;

/// Streams (calls) open at once on one connection.
pub const MAX_STREAMS: usize = 100;

/// The largest frame payload accepted; a body is sent in pieces no larger.
const MAX_PAYLOAD: usize = 256 * 1024;

/// The most bytes waiting to be written on one connection. Body bytes are bounded by the
/// windows (at most `MAX_STREAMS * WINDOW`); what goes beyond means a peer that keeps
/// sending calls but stopped reading their answers, and loses the connection.
/// (Tests reach a smaller one quickly.)
const MAX_QUEUED: usize = if cfg!(test) {
    2 * WINDOW + MAX_PAYLOAD
} else {
    MAX_STREAMS * WINDOW + 16 * 1024 * 1024
};

const HEADER_LEN: usize = 9;

const OPEN: u8 = 0;
const DATA: u8 = 1;
const END: u8 = 2;
const RESPONSE: u8 = 3;
const TRAILERS: u8 = 4;
const CANCEL: u8 = 5;
const CREDIT: u8 = 6;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn put_frame(out: &mut Vec<u8>, stream: u32, kind: u8, payload: &[u8]) {
    // Callers never build a payload over MAX_PAYLOAD, far below u32::MAX.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&stream.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

/// Encodes a metadata block: `u16` count, then each name and value as `u16` length and
/// bytes; `path` first, as the entry `:path`, when given.
fn put_headers(
    out: &mut Vec<u8>,
    stream: u32,
    kind: u8,
    path: Option<&str>,
    headers: &HeaderMap,
) -> Result<(), Status> {
    let mut block = Vec::with_capacity(64 + headers.len() * 32);
    let count = headers.len() + usize::from(path.is_some());
    let too_large = || Status::resource_exhausted("the call's metadata is too large to send");
    let count = u16::try_from(count).map_err(|_| too_large())?;
    block.extend_from_slice(&count.to_le_bytes());
    let mut entry = |name: &[u8], value: &[u8]| -> Result<(), Status> {
        let name_len = u16::try_from(name.len()).map_err(|_| too_large())?;
        let value_len = u16::try_from(value.len()).map_err(|_| too_large())?;
        block.extend_from_slice(&name_len.to_le_bytes());
        block.extend_from_slice(name);
        block.extend_from_slice(&value_len.to_le_bytes());
        block.extend_from_slice(value);
        Ok(())
    };
    if let Some(path) = path {
        entry(b":path", path.as_bytes())?;
    }
    for (name, value) in headers {
        entry(name.as_str().as_bytes(), value.as_bytes())?;
    }
    if block.len() > MAX_PAYLOAD {
        return Err(too_large());
    }
    put_frame(out, stream, kind, &block);
    Ok(())
}

/// Decodes a metadata block; `:path` is returned apart and allowed only first.
fn read_headers(mut block: Bytes) -> Result<(Option<String>, HeaderMap), String> {
    fn take_u16(block: &mut Bytes) -> Result<usize, String> {
        if block.remaining() < 2 {
            return Err("a metadata block ends early".into());
        }
        Ok(usize::from(block.get_u16_le()))
    }
    fn take(block: &mut Bytes) -> Result<Bytes, String> {
        let len = take_u16(block)?;
        if block.remaining() < len {
            return Err("a metadata block ends early".into());
        }
        Ok(block.split_to(len))
    }
    let count = take_u16(&mut block)?;
    let mut headers = HeaderMap::with_capacity(count);
    let mut path = None;
    for index in 0..count {
        let name = take(&mut block)?;
        let value = take(&mut block)?;
        if index == 0 && &name[..] == b":path" {
            let text = String::from_utf8(value.to_vec())
                .map_err(|_| "the call's path is not UTF-8".to_owned())?;
            path = Some(text);
            continue;
        }
        let name = HeaderName::from_bytes(&name).map_err(|_| {
            format!(
                "{:?} is not a metadata name",
                String::from_utf8_lossy(&name)
            )
        })?;
        let value = HeaderValue::from_maybe_shared(value)
            .map_err(|_| format!("the value of {name} is not a metadata value"))?;
        headers.append(name, value);
    }
    if block.has_remaining() {
        return Err("a metadata block has bytes after its last entry".into());
    }
    Ok((path, headers))
}

fn cancel_payload(status: &Status) -> Vec<u8> {
    let mut payload = Vec::with_capacity(1 + status.message().len());
    // gRPC codes are 0..=16.
    payload.push(u8::try_from(i32::from(status.code())).unwrap_or(2));
    payload.extend_from_slice(status.message().as_bytes());
    payload
}

fn status_of_cancel(payload: &[u8]) -> Status {
    match payload.split_first() {
        Some((code, message)) => Status::new(
            Code::from(i32::from(*code)),
            String::from_utf8_lossy(message).into_owned(),
        ),
        None => Status::cancelled("the peer cancelled the call"),
    }
}

/// One frame read whole: `None` when the peer closed the connection between frames.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut BytesMut,
) -> Result<Option<(u32, u8, Bytes)>, Broken> {
    let mut header = [0u8; HEADER_LEN];
    match reader.read(&mut header[..1]).await {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(err) => return Err(Broken::io("reading failed", &err)),
    }
    reader
        .read_exact(&mut header[1..])
        .await
        .map_err(|err| Broken::io("reading a frame failed", &err))?;
    let [l0, l1, l2, l3, s0, s1, s2, s3, kind] = header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    let stream = u32::from_le_bytes([s0, s1, s2, s3]);
    if len > MAX_PAYLOAD {
        return Err(Broken::Protocol(format!(
            "a frame of {len} bytes is larger than the {MAX_PAYLOAD} allowed"
        )));
    }
    buffer.clear();
    buffer.resize(len, 0);
    reader
        .read_exact(&mut buffer[..])
        .await
        .map_err(|err| Broken::io("reading a frame failed", &err))?;
    Ok(Some((stream, kind, buffer.split().freeze())))
}

/// Why [`serve_framed`] closed a connection its client had not ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    /// The client broke the protocol: a frame too large, or of a kind a client may not
    /// send, a stream id even or in use, more body than a stream's window, metadata that is
    /// not valid HTTP, or bytes that are not data at all (a lane whose shared counts were
    /// forged, say: [`io::ErrorKind::InvalidData`]). A faulty or hostile client: hosts audit
    /// it ([`ViolationHook`]). A client that keeps calling without reading the answers,
    /// until more than the bound waits to be sent, ends here too.
    #[error("the client broke the frame protocol: {0}")]
    Protocol(String),
    /// Reading from or writing to the connection failed (reset, say).
    #[error("the connection failed: {0}")]
    Failed(String),
}

impl Broken {
    /// What happened, in words.
    pub fn reason(&self) -> &str {
        match self {
            Broken::Protocol(reason) | Broken::Failed(reason) => reason,
        }
    }

    /// An I/O error while `action`: bytes that are not valid data (`InvalidData`) are the
    /// peer's doing, anything else the connection's.
    fn io(action: &str, err: &io::Error) -> Broken {
        let reason = format!("{action}: {err}");
        match err.kind() {
            io::ErrorKind::InvalidData => Broken::Protocol(reason),
            _ => Broken::Failed(reason),
        }
    }
}

/// Called by [`accept`] with a connection's [`Connected::connect_info`] and what its client
/// did, for each connection closed because its client broke the protocol
/// ([`Broken::Protocol`]), on the task that served it: keep it quick.
pub type ViolationHook<I> = Arc<dyn Fn(&I, &Broken) + Send + Sync>;

fn credit_of(payload: &[u8]) -> Result<usize, String> {
    let bytes: [u8; 4] = payload
        .try_into()
        .map_err(|_| "a WINDOW frame is not 4 bytes".to_owned())?;
    Ok(u32::from_le_bytes(bytes) as usize)
}

/// The writing end of a connection, shared by its streams. A frame is written at once by
/// whoever sends it when the socket has room (no hop to another task); when it has not, a
/// task takes the socket and writes what queues up until the queue is empty. Frames are
/// never cut: a sender's whole buffer is queued before anything of it is written.
#[derive(Clone)]
struct Out(Arc<OutShared>);

struct OutShared {
    state: Mutex<OutState>,
    closed: CancellationToken,
}

struct OutState {
    /// `None` while the flushing task has it.
    io: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    queue: Vec<u8>,
    /// Why writing failed, the first time it did: nothing more is sent after it.
    failed: Option<Broken>,
}

/// The connection failed: nothing more can be sent.
#[derive(Debug)]
struct Closed;

impl Out {
    fn new<W: AsyncWrite + Send + 'static>(writer: W, closed: CancellationToken) -> Out {
        Out(Arc::new(OutShared {
            state: Mutex::new(OutState {
                io: Some(Box::pin(writer)),
                queue: Vec::new(),
                failed: None,
            }),
            closed,
        }))
    }

    fn send(&self, frames: Vec<u8>) -> Result<(), Closed> {
        self.send_with(frames, false)
    }

    /// Queues `frames` and writes them. Alone on the connection, they are written at once;
    /// `in_company` (other calls are waiting for their answers), the write waits for the
    /// other tasks ready on this runtime, so that the frames they send go out in the same
    /// write: under concurrent calls, one system call and one wake-up of the peer for
    /// many frames, for one yield's delay.
    fn send_with(&self, frames: Vec<u8>, in_company: bool) -> Result<(), Closed> {
        let mut state = lock(&self.0.state);
        if state.failed.is_some() {
            return Err(Closed);
        }
        if state.queue.len() + frames.len() > MAX_QUEUED {
            // The peer keeps calling without reading the answers: its doing, not the
            // connection's.
            let stalled = Broken::Protocol(format!(
                "the peer stopped reading: more than {MAX_QUEUED} bytes wait to be sent"
            ));
            tracing::warn!(target: "tether::frames", err = %stalled, "closing a framed connection");
            return Err(self.fail(&mut state, stalled));
        }
        if state.queue.is_empty() {
            state.queue = frames;
        } else {
            state.queue.extend_from_slice(&frames);
        }
        let Some(mut io) = state.io.take() else {
            return Ok(());
        };
        if in_company {
            drop(state);
            tokio::spawn(self.clone().flush(io, true));
            return Ok(());
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            if state.queue.is_empty() {
                match io.as_mut().poll_flush(&mut cx) {
                    Poll::Ready(Ok(())) => {
                        state.io = Some(io);
                        return Ok(());
                    }
                    Poll::Ready(Err(err)) => return Err(self.fail_io(&mut state, &err)),
                    Poll::Pending => break,
                }
            }
            match io.as_mut().poll_write(&mut cx, &state.queue) {
                Poll::Ready(Ok(0)) => {
                    return Err(self.fail_io(&mut state, &io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    state.queue.drain(..n);
                }
                Poll::Ready(Err(err)) => return Err(self.fail_io(&mut state, &err)),
                Poll::Pending => break,
            }
        }
        drop(state);
        tokio::spawn(self.clone().flush(io, false));
        Ok(())
    }

    fn fail_io(&self, state: &mut OutState, err: &io::Error) -> Closed {
        tracing::debug!(target: "tether::frames", %err, "writing to a framed connection failed");
        self.fail(state, Broken::io("writing failed", err))
    }

    /// Nothing more is sent, for `why` (the first reason is kept).
    fn fail(&self, state: &mut OutState, why: Broken) -> Closed {
        state.failed.get_or_insert(why);
        state.queue = Vec::new();
        self.0.closed.cancel();
        Closed
    }

    /// Why writing failed, if it did.
    fn failure(&self) -> Option<Broken> {
        lock(&self.0.state).failed.clone()
    }

    /// Writes the queue until it is empty, then gives the socket back; after the other
    /// ready tasks have run, when `gather`.
    async fn flush(self, mut io: Pin<Box<dyn AsyncWrite + Send>>, gather: bool) {
        if gather {
            tokio::task::yield_now().await;
        }
        loop {
            let chunk = std::mem::take(&mut lock(&self.0.state).queue);
            let write = async {
                match chunk.is_empty() {
                    true => io.flush().await,
                    false => io.write_all(&chunk).await,
                }
            };
            // A connection that ended lets go of its socket even if the peer stopped
            // reading.
            let written = tokio::select! {
                written = write => written,
                () = self.0.closed.cancelled() => return,
            };
            let mut state = lock(&self.0.state);
            if let Err(err) = written {
                self.fail_io(&mut state, &err);
                return;
            }
            if chunk.is_empty() && state.queue.is_empty() {
                state.io = Some(io);
                return;
            }
        }
    }
}

/// The body's next frame; an error as the status it means.
fn next_frame<B>(
    mut body: Pin<&mut B>,
) -> impl Future<Output = Option<Result<Frame<B::Data>, Status>>> + '_
where
    B: HttpBody,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    std::future::poll_fn(move |cx| {
        body.as_mut()
            .poll_frame(cx)
            .map(|frame| frame.map(|frame| frame.map_err(|err| Status::from_error(err.into()))))
    })
}

/// Sends a body's frames, taking credit for each piece. Returns `false` when the stream
/// ended (its credit was closed) before everything was sent.
async fn send_data(out: &Out, stream: u32, credit: &Semaphore, mut data: Bytes) -> bool {
    while !data.is_empty() {
        let piece = data.len().min(MAX_PAYLOAD);
        // `piece` <= MAX_PAYLOAD fits in u32.
        match credit.acquire_many(piece as u32).await {
            Ok(permit) => permit.forget(),
            Err(_) => return false,
        }
        let mut frame = Vec::with_capacity(HEADER_LEN + piece);
        put_frame(&mut frame, stream, DATA, &data.split_to(piece));
        if out.send(frame).is_err() {
            return false;
        }
    }
    true
}

/// Appends as much of `data` as there is credit for; returns what is left.
fn take_data(frames: &mut Vec<u8>, stream: u32, credit: &Semaphore, mut data: Bytes) -> Bytes {
    while !data.is_empty() {
        let piece = data.len().min(MAX_PAYLOAD);
        match credit.try_acquire_many(piece as u32) {
            Ok(permit) => permit.forget(),
            Err(_) => return data,
        }
        put_frame(frames, stream, DATA, &data.split_to(piece));
    }
    data
}

/// Counts body bytes received on a stream against its window, and returns credit as they
/// are consumed.
#[derive(Debug)]
struct Inflow {
    buffered: Arc<AtomicUsize>,
    consumed: usize,
}

impl Inflow {
    fn new() -> (Inflow, Arc<AtomicUsize>) {
        let buffered = Arc::new(AtomicUsize::new(0));
        (
            Inflow {
                buffered: buffered.clone(),
                consumed: 0,
            },
            buffered,
        )
    }

    /// Hands `data` to the body's reader, returning credit for it when due.
    fn hand_over(&mut self, stream: u32, out: &Out, data: Bytes) -> Frame<Bytes> {
        if let Some(credit) = self.consumed(stream, data.len()) {
            // A connection that failed has no use for the credit.
            let _ = out.send(credit);
        }
        Frame::data(data)
    }

    /// After `len` bytes were handed to the reader: a WINDOW frame to send, when due.
    fn consumed(&mut self, stream: u32, len: usize) -> Option<Vec<u8>> {
        self.buffered.fetch_sub(len, Ordering::AcqRel);
        self.consumed += len;
        if self.consumed < WINDOW / 2 {
            return None;
        }
        let mut frame = Vec::with_capacity(HEADER_LEN + 4);
        // consumed <= WINDOW fits in u32.
        put_frame(
            &mut frame,
            stream,
            CREDIT,
            &(self.consumed as u32).to_le_bytes(),
        );
        self.consumed = 0;
        Some(frame)
    }
}

/// Records `len` more buffered bytes on a stream; an error when that overruns its window.
fn receive(buffered: &AtomicUsize, stream: u32, len: usize) -> Result<(), String> {
    let now = buffered.fetch_add(len, Ordering::AcqRel) + len;
    if now > WINDOW {
        return Err(format!(
            "stream {stream} sent {now} body bytes, more than its window of {WINDOW}"
        ));
    }
    Ok(())
}

fn add_credit(credit: &Semaphore, payload: &[u8]) -> Result<(), String> {
    let more = credit_of(payload)?;
    if credit.available_permits() + more > WINDOW {
        return Err(format!(
            "a WINDOW frame grants {more} bytes, beyond the window of {WINDOW}"
        ));
    }
    credit.add_permits(more);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The client.

enum Event {
    Data(Bytes),
    Trailers(HeaderMap),
    Failed(Status),
}

struct ClientStream {
    response: Option<oneshot::Sender<Result<HeaderMap, Status>>>,
    events: mpsc::UnboundedSender<Event>,
    buffered: Arc<AtomicUsize>,
    credit: Arc<Semaphore>,
    ended: CancellationToken,
    _slot: OwnedSemaphorePermit,
}

impl ClientStream {
    /// The stream is over: its request pump stops.
    fn end(&self) {
        self.credit.close();
        self.ended.cancel();
    }

    fn fail(mut self, status: Status) {
        self.end();
        match self.response.take() {
            Some(response) => {
                let _ = response.send(Err(status));
            }
            None => {
                let _ = self.events.send(Event::Failed(status));
            }
        }
    }
}

struct Connection {
    label: Arc<str>,
    out: Out,
    streams: Mutex<HashMap<u32, ClientStream>>,
    next: AtomicU32,
    slots: Arc<Semaphore>,
    closed: CancellationToken,
    failure: Mutex<Option<String>>,
}

impl Connection {
    fn unavailable(&self) -> Status {
        // Why reading ended, else why writing failed (a lane whose counts the server
        // forged, say), else this side closed it.
        let reason = lock(&self.failure)
            .clone()
            .or_else(|| self.out.failure().map(|broken| broken.reason().to_owned()));
        Status::unavailable(format!(
            "the framed connection to {} is closed: {}",
            self.label,
            reason.as_deref().unwrap_or("closed by this side")
        ))
    }

    /// Ends the connection: every open stream fails with UNAVAILABLE.
    fn fail(&self, reason: String) {
        {
            let mut failure = lock(&self.failure);
            if failure.is_none() {
                *failure = Some(reason);
            }
        }
        self.closed.cancel();
        self.slots.close();
        let streams: Vec<ClientStream> = lock(&self.streams).drain().map(|(_, s)| s).collect();
        for stream in streams {
            stream.fail(self.unavailable());
        }
    }

    /// Abandons a stream this side no longer wants: the server is told to stop.
    fn cancel(&self, stream: u32) {
        let removed = lock(&self.streams).remove(&stream);
        if let Some(removed) = removed {
            removed.end();
            let mut frame = Vec::new();
            put_frame(
                &mut frame,
                stream,
                CANCEL,
                &cancel_payload(&Status::cancelled("the client cancelled the call")),
            );
            let _ = self.out.send(frame);
        }
    }

    fn dispatch(&self, stream: u32, kind: u8, payload: Bytes) -> Result<(), String> {
        let mut streams = lock(&self.streams);
        match kind {
            RESPONSE => {
                let (_, headers) = read_headers(payload)?;
                let Some(entry) = streams.get_mut(&stream) else {
                    return Ok(());
                };
                match entry.response.take() {
                    Some(response) => {
                        let _ = response.send(Ok(headers));
                    }
                    None => return Err(format!("stream {stream} got a second RESPONSE")),
                }
            }
            DATA => {
                let Some(entry) = streams.get(&stream) else {
                    return Ok(());
                };
                if entry.response.is_some() {
                    return Err(format!("stream {stream} got DATA before its RESPONSE"));
                }
                receive(&entry.buffered, stream, payload.len())?;
                let _ = entry.events.send(Event::Data(payload));
            }
            TRAILERS => {
                let (_, trailers) = read_headers(payload)?;
                let Some(mut entry) = streams.remove(&stream) else {
                    return Ok(());
                };
                entry.end();
                match entry.response.take() {
                    // Trailers only: the status travels as the response's headers.
                    Some(response) => {
                        let _ = response.send(Ok(trailers));
                    }
                    None => {
                        let _ = entry.events.send(Event::Trailers(trailers));
                    }
                }
            }
            CANCEL => {
                if let Some(entry) = streams.remove(&stream) {
                    drop(streams);
                    entry.fail(status_of_cancel(&payload));
                }
            }
            CREDIT => {
                if let Some(entry) = streams.get(&stream) {
                    add_credit(&entry.credit, &payload)?;
                }
            }
            other => return Err(format!("a server may not send frames of kind {other}")),
        }
        Ok(())
    }

    async fn call(
        self: Arc<Self>,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, Status> {
        if self.closed.is_cancelled() {
            return Err(self.unavailable());
        }
        let slot = tokio::select! {
            slot = self.slots.clone().acquire_owned() => slot.map_err(|_| self.unavailable())?,
            () = self.closed.cancelled() => return Err(self.unavailable()),
        };
        let stream = self.next.fetch_add(2, Ordering::Relaxed);
        if stream > i32::MAX as u32 {
            return Err(Status::unavailable(format!(
                "the framed connection to {} has used all its stream ids",
                self.label
            )));
        }
        let (parts, mut body) = request.into_parts();
        let mut frames = Vec::with_capacity(256);
        put_headers(
            &mut frames,
            stream,
            OPEN,
            Some(parts.uri.path()),
            &parts.headers,
        )?;

        let (response, answered) = oneshot::channel();
        let (events, received) = mpsc::unbounded_channel();
        let (inflow, buffered) = Inflow::new();
        let credit = Arc::new(Semaphore::new(WINDOW));
        let over = CancellationToken::new();
        lock(&self.streams).insert(
            stream,
            ClientStream {
                response: Some(response),
                events,
                buffered,
                credit: credit.clone(),
                ended: over.clone(),
                _slot: slot,
            },
        );
        let guard = CancelOnDrop {
            connection: self.clone(),
            stream,
            armed: true,
        };

        // Send what of the request body is ready now in the same write as its OPEN (all
        // of a unary request); a pump task sends the rest as it comes.
        let mut rest = None;
        let mut ended = false;
        loop {
            match next_frame(Pin::new(&mut body)).now_or_never() {
                Some(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        let left = take_data(&mut frames, stream, &credit, data);
                        if !left.is_empty() {
                            rest = Some(left);
                            break;
                        }
                    }
                }
                Some(Some(Err(status))) => return Err(status),
                Some(None) => {
                    put_frame(&mut frames, stream, END, &[]);
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        // Other calls waiting for their answers: this request may wait for theirs, to
        // share a write (a stream already answered, a log or a watch, does not count).
        let in_company = lock(&self.streams)
            .values()
            .filter(|entry| entry.response.is_some())
            .nth(1)
            .is_some();
        if self.out.send_with(frames, in_company).is_err() {
            return Err(self.unavailable());
        }
        if !ended {
            tokio::spawn(pump(self.clone(), stream, credit, over, rest, body));
        }

        let headers = match answered.await {
            Ok(Ok(headers)) => headers,
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(self.unavailable()),
        };
        let mut response = http::Response::new(Body::new(ResponseBody {
            guard,
            received,
            inflow,
            done: false,
        }));
        *response.headers_mut() = headers;
        Ok(response)
    }
}

/// Sends the rest of a streaming request's body.
async fn pump(
    connection: Arc<Connection>,
    stream: u32,
    credit: Arc<Semaphore>,
    ended: CancellationToken,
    first: Option<Bytes>,
    mut body: Body,
) {
    if let Some(first) = first
        && !send_data(&connection.out, stream, &credit, first).await
    {
        return;
    }
    loop {
        let frame = tokio::select! {
            frame = next_frame(Pin::new(&mut body)) => frame,
            () = ended.cancelled() => return,
        };
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data()
                    && !send_data(&connection.out, stream, &credit, data).await
                {
                    return;
                }
            }
            Some(Err(err)) => {
                tracing::debug!(target: "tether::frames", %err, stream, "a request body failed; cancelling the call");
                connection.cancel(stream);
                return;
            }
            None => {
                let mut frame = Vec::with_capacity(HEADER_LEN);
                put_frame(&mut frame, stream, END, &[]);
                let _ = connection.out.send(frame);
                return;
            }
        }
    }
}

/// Cancels its stream when dropped before the response ended.
struct CancelOnDrop {
    connection: Arc<Connection>,
    stream: u32,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.connection.cancel(self.stream);
        }
    }
}

struct ResponseBody {
    guard: CancelOnDrop,
    received: mpsc::UnboundedReceiver<Event>,
    inflow: Inflow,
    done: bool,
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        match this.received.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Event::Data(data))) => Poll::Ready(Some(Ok(this.inflow.hand_over(
                this.guard.stream,
                &this.guard.connection.out,
                data,
            )))),
            Poll::Ready(Some(Event::Trailers(trailers))) => {
                this.done = true;
                this.guard.armed = false;
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Poll::Ready(Some(Event::Failed(status))) => {
                this.done = true;
                this.guard.armed = false;
                Poll::Ready(Some(Err(status)))
            }
            Poll::Ready(None) => {
                this.done = true;
                this.guard.armed = false;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// The client end of a framed connection: a tower `Service` that tonic's generated
/// clients take as their channel. Cheap to clone; every clone shares the connection.
///
/// Each call is a stream on the one connection. A call whose stream cannot open (the
/// connection closed, or failed) ends with `UNAVAILABLE` and says why; there is no
/// reconnection: make a new channel.
#[derive(Clone)]
pub struct FramedChannel {
    connection: Arc<Connection>,
}

impl std::fmt::Debug for FramedChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramedChannel")
            .field("peer", &self.connection.label)
            .field("closed", &self.connection.closed.is_cancelled())
            .finish()
    }
}

impl FramedChannel {
    /// Starts a framed connection on `io` (a connected socket, checked by the caller):
    /// writes the [`PREFACE`] and starts the tasks that read and write frames. `peer` names
    /// the other side in errors and logs.
    pub async fn start<IO>(io: IO, peer: impl Into<Arc<str>>) -> io::Result<FramedChannel>
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut reader, mut writer) = tokio::io::split(io);
        writer.write_all(PREFACE).await?;
        let closed = CancellationToken::new();
        let out = Out::new(writer, closed.clone());
        let connection = Arc::new(Connection {
            label: peer.into(),
            out,
            streams: Mutex::new(HashMap::new()),
            next: AtomicU32::new(1),
            slots: Arc::new(Semaphore::new(MAX_STREAMS)),
            closed: closed.clone(),
            failure: Mutex::new(None),
        });
        let weak = Arc::downgrade(&connection);
        tokio::spawn(async move {
            let mut buffer = BytesMut::with_capacity(64 * 1024);
            let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, &mut reader);
            let reason = loop {
                let frame = tokio::select! {
                    frame = read_frame(&mut reader, &mut buffer) => frame,
                    () = closed.cancelled() => {
                        let Some(connection) = weak.upgrade() else { return };
                        match connection.out.failure() {
                            Some(Broken::Protocol(reason)) => {
                                tracing::warn!(target: "tether::frames", peer = %connection.label, %reason, "closing a framed connection: the server broke the protocol");
                                break reason;
                            }
                            Some(Broken::Failed(reason)) => break reason,
                            None => break "the connection was closed".to_owned(),
                        }
                    }
                };
                let Some(connection) = weak.upgrade() else {
                    return;
                };
                match frame {
                    Ok(Some((stream, kind, payload))) => {
                        if let Err(reason) = connection.dispatch(stream, kind, payload) {
                            tracing::warn!(target: "tether::frames", peer = %connection.label, %reason, "closing a framed connection: the server broke the protocol");
                            break reason;
                        }
                    }
                    Ok(None) => break "the server closed the connection".to_owned(),
                    Err(broken) => break broken.reason().to_owned(),
                }
            };
            if let Some(connection) = weak.upgrade() {
                connection.fail(reason);
            }
        });
        Ok(FramedChannel { connection })
    }

    /// Whether the connection has closed: every call now fails.
    pub fn is_closed(&self) -> bool {
        self.connection.closed.is_cancelled()
    }

    /// Calls under way on the connection.
    pub fn open_streams(&self) -> usize {
        lock(&self.connection.streams).len()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

impl tower::Service<http::Request<Body>> for FramedChannel {
    type Response = http::Response<Body>;
    type Error = Status;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Body>, Status>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The deadline covers the call until its response starts, as tonic's channel's
        // does; the server is told (`grpc-timeout`) and gives up too.
        let deadline = grpc_timeout(request.headers());
        let call = self.connection.clone().call(request);
        match deadline {
            None => Box::pin(call),
            Some(deadline) => Box::pin(async move {
                tokio::time::timeout(deadline, call)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Status::deadline_exceeded(format!(
                            "no response within the call's deadline of {deadline:?}"
                        )))
                    })
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The server.

enum RequestEvent {
    Data(Bytes),
    End,
}

struct ServerStream {
    events: mpsc::UnboundedSender<RequestEvent>,
    buffered: Arc<AtomicUsize>,
    credit: Arc<Semaphore>,
    /// `None` until the call is moved to a task of its own.
    task: Option<tokio::task::AbortHandle>,
    /// Its response's headers are on their way: a stream (a log, a watch) that stays open
    /// after them is no reason to hold another call's answer back.
    answered: bool,
}

struct Served {
    out: Out,
    streams: Mutex<HashMap<u32, ServerStream>>,
    finished: tokio::sync::Notify,
}

impl Served {
    /// Whether calls other than `stream` are open and not yet answered on this connection:
    /// their answers are likely to be ready within the same turn of the runtime.
    fn in_company(&self, stream: u32) -> bool {
        lock(&self.streams)
            .iter()
            .any(|(&other, entry)| other != stream && !entry.answered)
    }

    /// `stream`'s response headers are on their way.
    fn answered(&self, stream: u32) {
        if let Some(entry) = lock(&self.streams).get_mut(&stream) {
            entry.answered = true;
        }
    }

    fn finish(&self, stream: u32) {
        if let Some(entry) = lock(&self.streams).remove(&stream) {
            entry.credit.close();
        }
        self.finished.notify_one();
    }
}

struct RequestBody {
    served: Arc<Served>,
    stream: u32,
    received: mpsc::UnboundedReceiver<RequestEvent>,
    inflow: Inflow,
    done: bool,
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        match this.received.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(RequestEvent::Data(data))) => Poll::Ready(Some(Ok(this
                .inflow
                .hand_over(this.stream, &this.served.out, data)))),
            Poll::Ready(Some(RequestEvent::End)) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(Some(Err(Status::cancelled("the client went away"))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// A call's deadline, from its `grpc-timeout` metadata.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(GRPC_TIMEOUT_METADATA)?.to_str().ok()?;
    parse_grpc_timeout(value)
}

fn trailers_of(status: &Status) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if status.add_header(&mut headers).is_err() {
        headers.insert("grpc-status", HeaderValue::from_static("13"));
    }
    headers
}

/// Serves one framed connection (its [`PREFACE`] already read) with `service`, until the
/// client closes it, breaks the protocol, or `stop` is cancelled and the calls under way
/// have ended. Every request carries `info` in its extensions, as tonic's server puts a
/// connection's [`Connected::connect_info`] there.
///
/// `Ok` when the client ended the connection or `stop` did; otherwise why the server
/// closed it (logged here too, target `tether::frames`: a warning for a breach, debug for
/// a failure). Either way, every call still under way on it has ended.
pub async fn serve_framed<IO, S, B, I>(
    io: IO,
    service: S,
    info: I,
    stop: CancellationToken,
) -> Result<(), Broken>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
    S: tower::Service<http::Request<Body>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: Clone + Send + Sync + 'static,
{
    let (mut reader, writer) = tokio::io::split(io);
    let closed = CancellationToken::new();
    let served = Arc::new(Served {
        out: Out::new(writer, closed.clone()),
        streams: Mutex::new(HashMap::new()),
        finished: tokio::sync::Notify::new(),
    });
    let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, &mut reader);
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    let mut stopping = false;
    // Calls opened and not yet polled: a call is first polled once the frames that came
    // with its OPEN (a unary request's DATA and END) are handed to it too.
    let mut fresh: Vec<(u32, Call)> = Vec::new();
    let outcome: Result<(), Broken> = loop {
        if !fresh.is_empty() && !frame_buffered(reader.buffer()) {
            for (stream, call) in fresh.drain(..) {
                start(&served, stream, call);
            }
        }
        if stopping && lock(&served.streams).is_empty() {
            break Ok(());
        }
        let frame = tokio::select! {
            frame = read_frame(&mut reader, &mut buffer) => frame,
            () = stop.cancelled(), if !stopping => { stopping = true; continue; }
            () = served.finished.notified(), if stopping => continue,
            () = closed.cancelled() => break Err(served.out.failure().unwrap_or_else(|| {
                Broken::Failed("writing to the client failed".into())
            })),
        };
        let (stream, kind, payload) = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break Ok(()),
            Err(reason) => break Err(reason),
        };
        let result = match kind {
            // Calls race to the writer, so ids arrive in any order; each must be odd and
            // not open already.
            OPEN => {
                if stream % 2 == 0 || lock(&served.streams).contains_key(&stream) {
                    Err(format!("stream id {stream} is even or already open"))
                } else {
                    open(&served, stream, payload, &service, &info, stopping)
                        .map(|call| fresh.extend(call.map(|call| (stream, call))))
                }
            }
            DATA => {
                let streams = lock(&served.streams);
                match streams.get(&stream) {
                    Some(entry) => receive(&entry.buffered, stream, payload.len()).map(|()| {
                        let _ = entry.events.send(RequestEvent::Data(payload));
                    }),
                    None => Ok(()),
                }
            }
            END => {
                if let Some(entry) = lock(&served.streams).get(&stream) {
                    let _ = entry.events.send(RequestEvent::End);
                }
                Ok(())
            }
            CANCEL => {
                let removed = lock(&served.streams).remove(&stream);
                if let Some(entry) = removed {
                    entry.credit.close();
                    if let Some(task) = &entry.task {
                        task.abort();
                    }
                }
                Ok(())
            }
            CREDIT => match lock(&served.streams).get(&stream) {
                Some(entry) => add_credit(&entry.credit, &payload),
                None => Ok(()),
            },
            other => Err(format!("a client may not send frames of kind {other}")),
        };
        if let Err(reason) = result {
            break Err(Broken::Protocol(reason));
        }
    };
    if let Err(broken) = &outcome {
        // A breach is the client's doing and worth a warning; a connection that failed
        // (a client that went away, a TLS peer that did not say goodbye) is not.
        match broken {
            Broken::Protocol(_) => {
                tracing::warn!(target: "tether::frames", reason = %broken, "closing a framed connection");
            }
            Broken::Failed(_) => {
                tracing::debug!(target: "tether::frames", reason = %broken, "closing a framed connection");
            }
        }
        // Stops a write waiting on a client that does not read. After a clean end the
        // last answers are still written.
        closed.cancel();
    }
    let streams: Vec<ServerStream> = lock(&served.streams).drain().map(|(_, s)| s).collect();
    for entry in streams {
        entry.credit.close();
        if let Some(task) = &entry.task {
            task.abort();
        }
    }
    outcome
}

/// Serves a connection whose client must open with [`PREFACE`] (a lane, where nothing else
/// can come): waits up to `within` for it, then [`serve_framed`]. `Ok` also when `stop`
/// came first or the client closed before writing anything; a connection that opens with
/// anything else is a [`Broken::Protocol`] (logged as a warning, as `serve_framed` logs its
/// own), one that says nothing for `within` is [`Broken::Failed`].
pub async fn serve_framed_after_preface<IO, S, B, I>(
    mut io: IO,
    service: S,
    info: I,
    stop: CancellationToken,
    within: Duration,
) -> Result<(), Broken>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<http::Request<Body>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: Clone + Send + Sync + 'static,
{
    let mut preface = [0u8; PREFACE.len()];
    let started = tokio::select! {
        read = tokio::time::timeout(within, io.read_exact(&mut preface)) => read,
        () = stop.cancelled() => return Ok(()),
    };
    let broken = match started {
        Ok(Ok(_)) if &preface == PREFACE => return serve_framed(io, service, info, stop).await,
        Ok(Ok(_)) => Broken::Protocol(format!(
            "the connection did not open with tether's frames ({:?})",
            String::from_utf8_lossy(&preface)
        )),
        Ok(Err(err)) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
        Ok(Err(err)) => Broken::io("reading the preface failed", &err),
        Err(_) => Broken::Failed(format!("the client did not open frames within {within:?}")),
    };
    match &broken {
        Broken::Protocol(_) => {
            tracing::warn!(target: "tether::frames", reason = %broken, "closing a framed connection");
        }
        Broken::Failed(_) => {
            tracing::debug!(target: "tether::frames", reason = %broken, "closing a framed connection");
        }
    }
    Err(broken)
}

/// A call's future, from its request to its last frame sent.
type Call = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Whether `buffered` holds a whole frame.
fn frame_buffered(buffered: &[u8]) -> bool {
    match buffered.first_chunk::<HEADER_LEN>() {
        Some([l0, l1, l2, l3, ..]) => {
            let len = u32::from_le_bytes([*l0, *l1, *l2, *l3]) as usize;
            buffered.len() - HEADER_LEN >= len
        }
        None => false,
    }
}

/// Polls a new call once, here: a call that completes at once (most unary calls) is
/// answered without a hop to another task. One that does not continues in a task of its
/// own, which a CANCEL aborts.
fn start(served: &Served, stream: u32, mut call: Call) {
    if !lock(&served.streams).contains_key(&stream) {
        // Cancelled by the client before it started.
        return;
    }
    let mut cx = Context::from_waker(std::task::Waker::noop());
    if call.as_mut().poll(&mut cx).is_pending() {
        let task = tokio::spawn(call);
        if let Some(entry) = lock(&served.streams).get_mut(&stream) {
            entry.task = Some(task.abort_handle());
        }
    }
}

/// Registers the call a client opened, and returns it to be started ([`start`]); a call
/// refused at once is answered here, and `None` returned.
fn open<S, B, I>(
    served: &Arc<Served>,
    stream: u32,
    payload: Bytes,
    service: &S,
    info: &I,
    stopping: bool,
) -> Result<Option<Call>, String>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: Clone + Send + Sync + 'static,
{
    let (path, headers) = read_headers(payload)?;
    let path = path.ok_or_else(|| format!("stream {stream} opened without a path"))?;
    let refuse = |status: Status| {
        let mut frame = Vec::new();
        put_frame(&mut frame, stream, CANCEL, &cancel_payload(&status));
        let _ = served.out.send(frame);
        Ok::<Option<Call>, String>(None)
    };
    if stopping {
        return refuse(Status::unavailable("the server is stopping"));
    }
    if lock(&served.streams).len() >= MAX_STREAMS {
        return refuse(Status::resource_exhausted(format!(
            "more than {MAX_STREAMS} calls at once on one connection"
        )));
    }
    let uri = match http::Uri::builder().path_and_query(path.as_str()).build() {
        Ok(uri) if path.starts_with('/') => uri,
        _ => {
            return refuse(Status::invalid_argument(format!(
                "{path:?} is not a call's path"
            )));
        }
    };
    let (events, received) = mpsc::unbounded_channel();
    let (inflow, buffered) = Inflow::new();
    let credit = Arc::new(Semaphore::new(WINDOW));
    let deadline = grpc_timeout(&headers);
    let mut request = http::Request::new(Body::new(RequestBody {
        served: served.clone(),
        stream,
        received,
        inflow,
        done: false,
    }));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri;
    *request.version_mut() = http::Version::HTTP_2;
    *request.headers_mut() = headers;
    request.extensions_mut().insert(info.clone());

    // The call is registered (it removes itself when it is done), so that the frames
    // after its OPEN reach it, and started by the caller.
    lock(&served.streams).insert(
        stream,
        ServerStream {
            events,
            buffered,
            credit: credit.clone(),
            task: None,
            answered: false,
        },
    );
    Ok(Some(Box::pin(respond(
        served.clone(),
        stream,
        credit,
        deadline,
        service.clone(),
        request,
    ))))
}

async fn respond<S, B>(
    served: Arc<Served>,
    stream: u32,
    credit: Arc<Semaphore>,
    deadline: Option<Duration>,
    mut service: S,
    request: http::Request<Body>,
) where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>> + Send,
    S::Future: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: HttpBody<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let call = async {
        std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
        service.call(request).await
    };
    let result = match deadline {
        Some(deadline) => match tokio::time::timeout(deadline, call).await {
            Ok(result) => result.map_err(|err| Status::from_error(err.into())),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "the call's deadline of {deadline:?} passed"
            ))),
        },
        None => call.await.map_err(|err| Status::from_error(err.into())),
    };
    let mut frames = Vec::with_capacity(256);
    let response = match result {
        Ok(response) => response,
        Err(status) => {
            let _ = put_headers(&mut frames, stream, TRAILERS, None, &trailers_of(&status));
            let _ = served.out.send_with(frames, served.in_company(stream));
            served.finish(stream);
            return;
        }
    };
    let (parts, body) = response.into_parts();
    if let Err(status) = put_headers(&mut frames, stream, RESPONSE, None, &parts.headers) {
        frames.clear();
        let _ = put_headers(&mut frames, stream, TRAILERS, None, &trailers_of(&status));
        let _ = served.out.send_with(frames, served.in_company(stream));
        served.finish(stream);
        return;
    }
    served.answered(stream);
    let mut body = std::pin::pin!(body);
    // Frames that are ready go out together: a unary response is one write.
    loop {
        let next = match next_frame(body.as_mut()).now_or_never() {
            Some(next) => next,
            None => {
                if !frames.is_empty() && served.out.send(std::mem::take(&mut frames)).is_err() {
                    break;
                }
                next_frame(body.as_mut()).await
            }
        };
        match next {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let left = take_data(&mut frames, stream, &credit, data);
                    // Out of credit: what is ready goes now, the rest as credit comes.
                    if !left.is_empty()
                        && (served.out.send(std::mem::take(&mut frames)).is_err()
                            || !send_data(&served.out, stream, &credit, left).await)
                    {
                        break;
                    }
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().unwrap_or_default();
                    let _ = put_headers(&mut frames, stream, TRAILERS, None, &trailers);
                    let _ = served
                        .out
                        .send_with(std::mem::take(&mut frames), served.in_company(stream));
                    break;
                }
            },
            Some(Err(status)) => {
                let _ = put_headers(&mut frames, stream, TRAILERS, None, &trailers_of(&status));
                let _ = served
                    .out
                    .send_with(std::mem::take(&mut frames), served.in_company(stream));
                break;
            }
            None => {
                // A body without trailers: the status was in the response's headers.
                let _ = put_headers(&mut frames, stream, TRAILERS, None, &HeaderMap::new());
                let _ = served
                    .out
                    .send_with(std::mem::take(&mut frames), served.in_company(stream));
                break;
            }
        }
    }
    served.finish(stream);
}

// ---------------------------------------------------------------------------------------
// Telling framed connections from HTTP/2 ones.

/// A connection whose first bytes were read to tell its protocol, and are read again.
///
/// It is an HTTP/2 connection: what the server writes on it is watched for a `GOAWAY` that
/// blames the client (a protocol error, a flood), which [`accept`] reports as a violation
/// when the connection is dropped.
pub struct Rewound<IO> {
    prefix: Bytes,
    inner: IO,
    watch: GoawayWatch,
    on_breach: Option<BreachHook>,
}

/// Told of a connection's breach: a [`ViolationHook`] with the connection's info bound.
type BreachHook = Box<dyn Fn(&Broken) + Send + Sync>;

impl<IO: std::fmt::Debug> std::fmt::Debug for Rewound<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewound")
            .field("prefix", &self.prefix)
            .field("inner", &self.inner)
            .field("blamed", &self.watch.blamed)
            .finish_non_exhaustive()
    }
}

impl<IO> Drop for Rewound<IO> {
    fn drop(&mut self) {
        if let (Some(code), Some(hook)) = (self.watch.blamed, &self.on_breach) {
            let broken = Broken::Protocol(format!(
                "the HTTP/2 server ended the connection with GOAWAY {}: the client broke \
                 HTTP/2's rules",
                h2_error_name(code)
            ));
            tracing::warn!(target: "tether::frames", reason = %broken, "an HTTP/2 client broke the protocol");
            hook(&broken);
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewound<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewound<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            this.watch.observe(&buf[..n]);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written {
            let mut left = n;
            for buf in bufs {
                if left == 0 {
                    break;
                }
                let part = left.min(buf.len());
                this.watch.observe(&buf[..part]);
                left -= part;
            }
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<IO: Connected> Connected for Rewound<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// What an HTTP/2 client writes first (RFC 9113, section 3.4).
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Follows the frames an HTTP/2 server writes, only their 9-byte headers and the error
/// code of a `GOAWAY`, to learn whether the server ended the connection blaming its client.
#[derive(Debug, Default)]
struct GoawayWatch {
    /// The header being read, and how much of it.
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    remaining: usize,
    /// The first 8 payload bytes of a `GOAWAY` being read (last stream id, error code).
    goaway: Option<([u8; 8], usize)>,
    /// The error code of the first `GOAWAY` that blames the client.
    blamed: Option<u32>,
}

impl GoawayWatch {
    const GOAWAY: u8 = 0x7;

    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.remaining == 0 {
                let n = (self.header.len() - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                self.header_len += n;
                bytes = &bytes[n..];
                if self.header_len == self.header.len() {
                    let [l0, l1, l2, kind, ..] = self.header;
                    self.remaining = u32::from_be_bytes([0, l0, l1, l2]) as usize;
                    self.header_len = 0;
                    self.goaway = (kind == Self::GOAWAY).then_some(([0; 8], 0));
                }
                continue;
            }
            let n = self.remaining.min(bytes.len());
            if let Some((payload, have)) = &mut self.goaway {
                let take = (payload.len() - *have).min(n);
                payload[*have..*have + take].copy_from_slice(&bytes[..take]);
                *have += take;
                if *have == payload.len() {
                    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    if h2_blames_client(code) {
                        self.blamed.get_or_insert(code);
                    }
                    self.goaway = None;
                }
            }
            self.remaining -= n;
            bytes = &bytes[n..];
        }
    }
}

/// Whether an HTTP/2 error code ends a connection for what the peer did: not `NO_ERROR`
/// (a graceful end), `INTERNAL_ERROR` (the server's own) nor the codes a server uses for
/// its own refusals.
fn h2_blames_client(code: u32) -> bool {
    matches!(code, 0x1 | 0x3 | 0x4 | 0x5 | 0x6 | 0x9 | 0xb)
}

fn h2_error_name(code: u32) -> String {
    let name = match code {
        0x1 => "PROTOCOL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x9 => "COMPRESSION_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        other => return format!("error {other:#x}"),
    };
    name.to_owned()
}

/// The framed connections [`accept`] serves: wait for them after the HTTP/2 server stopped.
#[derive(Debug, Clone)]
pub struct FramedConnections {
    tasks: TaskTracker,
}

impl FramedConnections {
    /// Waits until every framed connection has ended (after `stop` was cancelled, each ends
    /// once its calls under way have).
    pub async fn drained(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Framed connections being served now.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no framed connection is being served.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

/// Sorts `incoming` connections: each is read until it shows its protocol (in its own task,
/// so a silent one holds up no other); those that begin with [`PREFACE`] are served with
/// `service` by [`serve_framed`], those that begin with HTTP/2's preface are returned,
/// their first bytes intact, for tonic's server, and any other is closed. `stop` ends the
/// framed connections gracefully and the sorting.
///
/// `on_violation`, if given, is called for each connection closed because its client broke
/// the protocol ([`Broken::Protocol`]): a framed one ([`serve_framed`]'s reasons), one that
/// began with neither preface, and an HTTP/2 one that tonic's server ended with a `GOAWAY`
/// blaming the client (`PROTOCOL_ERROR`, `FRAME_SIZE_ERROR`, `ENHANCE_YOUR_CALM`, ...),
/// reported when the server drops it.
pub fn accept<St, IO, E, S, B>(
    incoming: St,
    service: S,
    stop: CancellationToken,
    on_violation: Option<ViolationHook<IO::ConnectInfo>>,
) -> (
    impl Stream<Item = Result<Rewound<IO>, E>> + Send + 'static,
    FramedConnections,
)
where
    St: Stream<Item = Result<IO, E>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    E: Send + 'static,
    S: tower::Service<http::Request<Body>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tasks = TaskTracker::new();
    let (sorted, others) = mpsc::unbounded_channel();
    let framed = tasks.clone();
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let next = tokio::select! {
                next = futures_util::StreamExt::next(&mut incoming) => next,
                () = stop.cancelled() => return,
            };
            let conn = match next {
                Some(Ok(conn)) => conn,
                Some(Err(err)) => {
                    if sorted.send(Err(err)).is_err() {
                        return;
                    }
                    continue;
                }
                None => return,
            };
            let sorted = sorted.clone();
            let service = service.clone();
            let stop = stop.clone();
            let on_violation = on_violation.clone();
            framed.spawn(async move {
                let mut conn = conn;
                let info = conn.connect_info();
                // The two prefaces differ in their first byte: read no further than the
                // one the connection starts with, so nothing after it is taken.
                let mut prefix = [0u8; HTTP2_PREFACE.len()];
                let mut read = 0;
                let opened = loop {
                    let want = match prefix.first() {
                        _ if read == 0 => PREFACE.len(),
                        Some(b'P') => HTTP2_PREFACE.len(),
                        _ => PREFACE.len(),
                    };
                    let got = &prefix[..read];
                    if !PREFACE.starts_with(got) && !HTTP2_PREFACE.starts_with(got) {
                        break Opened::Neither;
                    }
                    if read == want {
                        break if got == PREFACE {
                            Opened::Frames
                        } else {
                            Opened::Http2
                        };
                    }
                    let n = tokio::select! {
                        n = conn.read(&mut prefix[read..want]) => n,
                        () = stop.cancelled() => return,
                    };
                    match n {
                        // Closed or failed before it said anything: nothing to serve.
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                };
                match opened {
                    Opened::Frames => {
                        let outcome = serve_framed(conn, service, info.clone(), stop).await;
                        if let (Err(broken @ Broken::Protocol(_)), Some(hook)) =
                            (outcome, on_violation)
                        {
                            hook(&info, &broken);
                        }
                    }
                    Opened::Http2 => {
                        let on_breach = on_violation.map(|hook| {
                            Box::new(move |broken: &Broken| hook(&info, broken)) as BreachHook
                        });
                        let _ = sorted.send(Ok(Rewound {
                            prefix: Bytes::copy_from_slice(&prefix[..read]),
                            inner: conn,
                            watch: GoawayWatch::default(),
                            on_breach,
                        }));
                    }
                    Opened::Neither => {
                        let broken = Broken::Protocol(format!(
                            "the connection started with neither tether's frames nor HTTP/2 \
                             ({:?})",
                            String::from_utf8_lossy(&prefix[..read])
                        ));
                        tracing::warn!(target: "tether::frames", reason = %broken, "closing a connection");
                        if let Some(hook) = on_violation {
                            hook(&info, &broken);
                        }
                    }
                }
            });
        }
    });
    (UnboundedStream(others), FramedConnections { tasks })
}

/// How a connection opened.
enum Opened {
    Frames,
    Http2,
    Neither,
}

struct UnboundedStream<T>(mpsc::UnboundedReceiver<T>);

impl<T> Stream for UnboundedStream<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::AtomicBool;

    use tokio::net::UnixStream;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    /// Every test ends well within this, or it has hung.
    const PATIENCE: Duration = Duration::from_secs(30);

    fn health() -> tonic::service::Routes {
        let (_, service) = tonic_health::server::health_reporter();
        tonic::service::Routes::new(service)
    }

    /// A framed connection served by `service`: the client, the server's task and its stop.
    async fn framed<S, B>(
        service: S,
    ) -> (
        FramedChannel,
        tokio::task::JoinHandle<()>,
        CancellationToken,
    )
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (client, mut server) = UnixStream::pair().unwrap();
        let stop = CancellationToken::new();
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let mut preface = [0u8; PREFACE.len()];
            server.read_exact(&mut preface).await.unwrap();
            assert_eq!(&preface, PREFACE);
            let _ = serve_framed(server, service, (), stopping).await;
        });
        let channel = FramedChannel::start(client, "test server").await.unwrap();
        (channel, task, stop)
    }

    /// A service whose calls never answer, and that records when a call is dropped.
    fn never(
        dropped: Arc<AtomicBool>,
    ) -> impl tower::Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(move |_request: http::Request<Body>| {
            let dropped = dropped.clone();
            async move {
                struct Flag(Arc<AtomicBool>);
                impl Drop for Flag {
                    fn drop(&mut self) {
                        self.0.store(true, Ordering::SeqCst);
                    }
                }
                let _flag = Flag(dropped);
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(http::Response::new(Body::empty()))
            }
        })
    }

    /// A service that answers with the request's own body, as it arrives.
    fn echo() -> impl tower::Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(|request: http::Request<Body>| async move {
            Ok::<_, Infallible>(http::Response::new(request.into_body()))
        })
    }

    /// A body of `chunks` pieces of `size` bytes, byte `i` of the whole being `i % 251`.
    struct Counting {
        sent: usize,
        total: usize,
        size: usize,
    }

    impl HttpBody for Counting {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            if self.sent == self.total {
                return Poll::Ready(None);
            }
            let len = self.size.min(self.total - self.sent);
            let piece: Vec<u8> = (self.sent..self.sent + len)
                .map(|i| (i % 251) as u8)
                .collect();
            self.sent += len;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(piece)))))
        }
    }

    #[tokio::test]
    async fn a_generated_client_calls_over_frames() {
        let (channel, _server, _stop) = framed(health()).await;
        let mut client = HealthClient::new(channel.clone());
        for _ in 0..3 {
            let answer = client
                .check(HealthCheckRequest::default())
                .await
                .expect("the health check answers");
            assert_eq!(answer.into_inner().status, 1, "SERVING");
        }
        let missing = client
            .check(HealthCheckRequest {
                service: "nobody".into(),
            })
            .await
            .expect_err("an unknown service");
        assert_eq!(missing.code(), Code::NotFound, "{missing}");
        assert_eq!(
            channel.open_streams(),
            0,
            "every finished call released its stream"
        );
    }

    /// A socket that counts the writes that reached it.
    struct CountedWrites {
        inner: UnixStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for CountedWrites {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountedWrites {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let written = Pin::new(&mut self.inner).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = written
                && n > 0
            {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
            written
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn a_lone_call_is_written_at_once_and_concurrent_calls_share_writes() {
        let (client, server) = UnixStream::pair().unwrap();
        let (client_writes, server_writes) = (Arc::default(), Arc::default());
        let mut server = CountedWrites {
            inner: server,
            writes: Arc::clone(&server_writes),
        };
        let _server = tokio::spawn(async move {
            let mut preface = [0u8; PREFACE.len()];
            server.read_exact(&mut preface).await.unwrap();
            let _ = serve_framed(server, health(), (), CancellationToken::new()).await;
        });
        let client = CountedWrites {
            inner: client,
            writes: Arc::clone(&client_writes),
        };
        let channel = FramedChannel::start(client, "test server").await.unwrap();
        let writes = || {
            (
                client_writes.load(Ordering::SeqCst),
                server_writes.load(Ordering::SeqCst),
            )
        };

        // Alone, a request is one write and its answer one, each made at once.
        let mut lone = HealthClient::new(channel.clone());
        for _ in 0..3 {
            let before = writes();
            lone.check(HealthCheckRequest::default()).await.unwrap();
            let after = writes();
            assert_eq!(
                (after.0 - before.0, after.1 - before.1),
                (1, 1),
                "a lone call and its answer"
            );
        }

        // Together, calls share the writes of both sides.
        let before = writes();
        let calls = 32;
        let answers = tokio::time::timeout(
            PATIENCE,
            futures_util::future::join_all((0..calls).map(|_| {
                let mut client = HealthClient::new(channel.clone());
                async move { client.check(HealthCheckRequest::default()).await }
            })),
        )
        .await
        .expect("the calls end");
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        let after = writes();
        let (requests, responses) = (after.0 - before.0, after.1 - before.1);
        assert!(
            requests <= calls / 4 && responses <= calls / 4,
            "{calls} concurrent calls took {requests} writes of requests and {responses} of \
             answers"
        );
        assert_eq!(channel.open_streams(), 0);
    }

    #[tokio::test]
    async fn frames_sent_alone_are_written_at_once_and_in_company_after_a_yield() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let writes = Arc::new(AtomicUsize::new(0));
        let out = Out::new(
            CountedWrites {
                inner: ours,
                writes: Arc::clone(&writes),
            },
            CancellationToken::new(),
        );
        out.send_with(frame(1, DATA, b"alone"), false).unwrap();
        assert_eq!(
            writes.load(Ordering::SeqCst),
            1,
            "written before send returned"
        );

        out.send_with(frame(3, DATA, b"first"), true).unwrap();
        out.send_with(frame(5, DATA, b"second"), false).unwrap();
        assert_eq!(
            writes.load(Ordering::SeqCst),
            1,
            "in company, nothing is written before the other tasks have run"
        );
        let expected = [
            frame(1, DATA, b"alone"),
            frame(3, DATA, b"first"),
            frame(5, DATA, b"second"),
        ]
        .concat();
        let mut received = vec![0; expected.len()];
        tokio::time::timeout(PATIENCE, theirs.read_exact(&mut received))
            .await
            .expect("the frames arrive")
            .unwrap();
        assert_eq!(received, expected, "in order");
        assert_eq!(writes.load(Ordering::SeqCst), 2, "the two in one write");
    }

    #[tokio::test]
    async fn only_calls_not_yet_answered_keep_company() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let served = Served {
            out: Out::new(ours, CancellationToken::new()),
            streams: Mutex::new(HashMap::new()),
            finished: tokio::sync::Notify::new(),
        };
        let entry = || ServerStream {
            events: mpsc::unbounded_channel().0,
            buffered: Arc::default(),
            credit: Arc::new(Semaphore::new(WINDOW)),
            task: None,
            answered: false,
        };
        lock(&served.streams).insert(1, entry());
        assert!(!served.in_company(1), "alone");
        lock(&served.streams).insert(3, entry());
        assert!(served.in_company(1) && served.in_company(3));
        // Stream 3 is a log that stays open after its headers: no company.
        served.answered(3);
        assert!(!served.in_company(1), "an answered stream does not count");
        assert!(served.in_company(3), "stream 1 still waits for its answer");
    }

    #[tokio::test]
    async fn bodies_larger_than_the_window_stream_both_ways_intact() {
        let (mut channel, _server, _stop) = framed(echo()).await;
        // Many windows' worth, sent while the echo comes back.
        let total = 5 * WINDOW + 12_345;
        let mut request = http::Request::new(Body::new(Counting {
            sent: 0,
            total,
            size: 100_000,
        }));
        *request.uri_mut() = http::Uri::from_static("/echo");
        let response = tokio::time::timeout(PATIENCE, tower::Service::call(&mut channel, request))
            .await
            .expect("no hang")
            .expect("the echo answers");
        let mut body = response.into_body();
        let mut received = 0usize;
        while let Some(frame) = tokio::time::timeout(PATIENCE, next_frame(Pin::new(&mut body)))
            .await
            .expect("no hang")
        {
            if let Ok(data) = frame.expect("no error").into_data() {
                for (offset, byte) in data.iter().enumerate() {
                    assert_eq!(
                        *byte,
                        ((received + offset) % 251) as u8,
                        "at {}",
                        received + offset
                    );
                }
                received += data.len();
            }
        }
        assert_eq!(received, total);
    }

    #[tokio::test]
    async fn more_calls_than_streams_wait_for_a_free_one() {
        let (channel, _server, _stop) = framed(health()).await;
        let calls = (0..MAX_STREAMS * 2).map(|_| {
            let mut client = HealthClient::new(channel.clone());
            async move { client.check(HealthCheckRequest::default()).await }
        });
        let answers = tokio::time::timeout(PATIENCE, futures_util::future::join_all(calls))
            .await
            .expect("no hang");
        assert!(answers.iter().all(Result::is_ok), "every call answered");
    }

    #[tokio::test]
    async fn a_deadline_ends_the_call_on_both_sides() {
        let dropped = Arc::new(AtomicBool::new(false));
        let (channel, _server, _stop) = framed(never(dropped.clone())).await;
        let mut request = tonic::Request::new(HealthCheckRequest::default());
        request.set_timeout(Duration::from_millis(200));
        let status =
            tokio::time::timeout(PATIENCE, HealthClient::new(channel.clone()).check(request))
                .await
                .expect("no hang")
                .expect_err("the deadline passes");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
        // The server gave up the call too.
        tokio::time::timeout(PATIENCE, async {
            while !dropped.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the server dropped the call");
        assert_eq!(channel.open_streams(), 0);
    }

    #[tokio::test]
    async fn a_call_the_client_drops_is_cancelled_on_the_server() {
        let dropped = Arc::new(AtomicBool::new(false));
        let (channel, _server, _stop) = framed(never(dropped.clone())).await;
        let mut client = HealthClient::new(channel.clone());
        let abandoned = tokio::time::timeout(
            Duration::from_millis(100),
            client.check(HealthCheckRequest::default()),
        )
        .await;
        assert!(abandoned.is_err(), "the call never answers");
        tokio::time::timeout(PATIENCE, async {
            while !dropped.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the server dropped the cancelled call");
        assert_eq!(channel.open_streams(), 0);
    }

    #[tokio::test]
    async fn stopping_ends_an_idle_connection_and_later_calls_fail_unavailable() {
        let (channel, server, stop) = framed(health()).await;
        let mut client = HealthClient::new(channel.clone());
        client
            .check(HealthCheckRequest::default())
            .await
            .expect("before the stop");
        stop.cancel();
        tokio::time::timeout(PATIENCE, server)
            .await
            .expect("an idle connection ends once stopped")
            .expect("no panic");
        let after = client
            .check(HealthCheckRequest::default())
            .await
            .expect_err("the connection is gone");
        assert_eq!(after.code(), Code::Unavailable, "{after}");
        assert!(after.message().contains("test server"), "{after}");
    }

    fn frame(stream: u32, kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_frame(&mut out, stream, kind, payload);
        out
    }

    fn open_frame(stream: u32, path: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        put_headers(&mut out, stream, OPEN, Some(path), &headers).unwrap();
        out
    }

    /// Sends `bytes` after the preface, as a hostile client would, and checks that the
    /// server ends the connection, and that it still serves a well-behaved one after.
    async fn the_server_closes_on(what: &str, bytes: Vec<u8>) {
        let dropped = Arc::new(AtomicBool::new(false));
        let service = never(dropped);
        let (mut client, server) = UnixStream::pair().unwrap();
        let stop = CancellationToken::new();
        let serving = tokio::spawn(serve_framed(server, service.clone(), (), stop.clone()));
        client.write_all(&bytes).await.unwrap();
        let outcome = tokio::time::timeout(PATIENCE, serving)
            .await
            .unwrap_or_else(|_| panic!("{what}: the server kept the connection"))
            .expect("no panic");
        assert!(
            matches!(outcome, Err(Broken::Protocol(_))),
            "{what}: a protocol violation, not {outcome:?}"
        );
        let mut rest = Vec::new();
        // EOF or a reset: either way the server let go of the socket.
        let _closed = tokio::time::timeout(PATIENCE, client.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("{what}: the socket stayed open"));
        let (channel, _server, _stop) = framed(health()).await;
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .unwrap_or_else(|err| panic!("{what}: a later connection is served: {err}"));
    }

    #[tokio::test]
    async fn a_client_that_breaks_the_framing_loses_its_connection_only() {
        let oversized = {
            let mut header = Vec::new();
            header.extend_from_slice(&((MAX_PAYLOAD as u32) + 1).to_le_bytes());
            header.extend_from_slice(&1u32.to_le_bytes());
            header.push(DATA);
            header
        };
        let mut overrun = open_frame(1, "/grpc.health.v1.Health/Check");
        for _ in 0..=(WINDOW / MAX_PAYLOAD) {
            overrun.extend(frame(1, DATA, &vec![0; MAX_PAYLOAD]));
        }
        let mut twice = open_frame(1, "/a/b");
        twice.extend(open_frame(1, "/a/b"));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("a frame larger than allowed", oversized),
            ("an unknown kind", frame(1, 42, b"")),
            ("a kind only servers send", frame(1, TRAILERS, &[0, 0])),
            (
                "a metadata block that ends early",
                frame(1, OPEN, &[5, 0, 1]),
            ),
            (
                "a metadata name that is not one",
                frame(1, OPEN, &[1, 0, 3, 0, b'a', b' ', b'b', 1, 0, b'x']),
            ),
            ("bytes after the last entry", frame(1, OPEN, &[0, 0, 9])),
            ("an even stream id", open_frame(2, "/a/b")),
            ("a stream opened twice", twice),
            ("more body than the window", overrun),
            ("a WINDOW frame of the wrong size", {
                let mut bytes = open_frame(1, "/a/b");
                bytes.extend(frame(1, CREDIT, &[1, 2]));
                bytes
            }),
        ];
        for (what, bytes) in cases {
            the_server_closes_on(what, bytes).await;
        }
    }

    #[tokio::test]
    async fn a_client_that_calls_without_reading_the_answers_is_cut_off() {
        let (client, server) = UnixStream::pair().unwrap();
        let serving = tokio::spawn(serve_framed(server, health(), (), CancellationToken::new()));
        let (reader, mut writer) = tokio::io::split(client);
        // Health checks, each answered at once, whose answers are never read.
        let sending = tokio::spawn(async move {
            let empty_request = [0u8, 0, 0, 0, 0];
            for call in 0..200_000u32 {
                let stream = 2 * call + 1;
                let mut bytes = open_frame(stream, "/grpc.health.v1.Health/Check");
                bytes.extend(frame(stream, DATA, &empty_request));
                bytes.extend(frame(stream, END, b""));
                if writer.write_all(&bytes).await.is_err() {
                    return call;
                }
            }
            200_000
        });
        let outcome = tokio::time::timeout(PATIENCE, serving)
            .await
            .expect("the server cut the connection off")
            .expect("no panic");
        // A client that calls on without reading the answers is cut off, its doing.
        assert!(
            matches!(&outcome, Err(Broken::Protocol(reason)) if reason.contains("stopped reading")),
            "{outcome:?}"
        );
        let sent = tokio::time::timeout(PATIENCE, sending)
            .await
            .expect("no hang")
            .unwrap();
        assert!(
            sent < 200_000,
            "the client's writes failed once it was cut off"
        );
        drop(reader);
    }

    #[tokio::test]
    async fn a_path_that_is_not_one_is_refused_and_the_connection_kept() {
        let (client, server) = UnixStream::pair().unwrap();
        let serving = tokio::spawn(serve_framed(server, health(), (), CancellationToken::new()));
        let (mut reader, mut writer) = tokio::io::split(client);
        writer.write_all(&open_frame(1, "no-slash")).await.unwrap();
        let mut buffer = BytesMut::new();
        let (stream, kind, payload) =
            tokio::time::timeout(PATIENCE, read_frame(&mut reader, &mut buffer))
                .await
                .expect("an answer")
                .expect("a frame")
                .expect("not closed");
        assert_eq!((stream, kind), (1, CANCEL));
        assert_eq!(status_of_cancel(&payload).code(), Code::InvalidArgument);
        assert!(!serving.is_finished(), "the connection is still served");
    }

    #[tokio::test]
    async fn a_server_that_breaks_the_framing_fails_the_calls_without_a_hang() {
        let (client, mut server) = UnixStream::pair().unwrap();
        let channel = FramedChannel::start(client, "hostile server")
            .await
            .unwrap();
        let hostile = tokio::spawn(async move {
            let mut preface = [0u8; PREFACE.len()];
            server.read_exact(&mut preface).await.unwrap();
            // Body bytes for the first call, before any response metadata.
            server
                .write_all(&frame(1, DATA, b"surprise"))
                .await
                .unwrap();
            server
        });
        let status = tokio::time::timeout(
            PATIENCE,
            HealthClient::new(channel.clone()).check(HealthCheckRequest::default()),
        )
        .await
        .expect("no hang")
        .expect_err("the call fails");
        assert_eq!(status.code(), Code::Unavailable, "{status}");
        assert!(status.message().contains("before its RESPONSE"), "{status}");
        assert!(channel.is_closed());
        drop(hostile.await);
    }

    #[test]
    fn grpc_timeouts_are_read_as_grpc_spells_them() {
        let of = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", HeaderValue::from_static(value));
            grpc_timeout(&headers)
        };
        assert_eq!(of("3S"), Some(Duration::from_secs(3)));
        assert_eq!(of("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            of("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        assert_eq!(of("7u"), Some(Duration::from_micros(7)));
        assert_eq!(of("123456789S"), None, "at most 8 digits");
        assert_eq!(of("S"), None);
        assert_eq!(of("5x"), None);
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    /// An HTTP/2 frame: 24-bit length, type, flags, stream id, payload.
    fn h2_frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], kind, 0];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn goaway(code: u32) -> Vec<u8> {
        let mut payload = 0u32.to_be_bytes().to_vec();
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(b"debug data");
        h2_frame(0x7, 0, &payload)
    }

    #[test]
    fn the_goaway_watch_finds_a_goaway_that_blames_the_client_however_it_is_written() {
        let settings = h2_frame(0x4, 0, &[0, 3, 0, 0, 0, 100]);
        let data = h2_frame(0x0, 1, &[7; 300]);
        for (code, blamed) in [(0x1, Some(0x1)), (0xb, Some(0xb)), (0x0, None), (0x2, None)] {
            let written: Vec<u8> = [settings.clone(), data.clone(), goaway(code)].concat();
            // Whole, byte by byte, and in uneven pieces.
            for piece in [written.len(), 1, 7] {
                let mut watch = GoawayWatch::default();
                for chunk in written.chunks(piece) {
                    watch.observe(chunk);
                }
                assert_eq!(watch.blamed, blamed, "code {code:#x}, pieces of {piece}");
            }
        }
        // A GOAWAY's bytes inside another frame's payload are not one.
        let mut watch = GoawayWatch::default();
        watch.observe(&h2_frame(0x0, 1, &goaway(0x1)));
        assert_eq!(watch.blamed, None);
    }

    /// tonic's server behind `accept` on a socket in `dir`: its path, what the violation
    /// hook was told, and its stop.
    fn h2_server(
        dir: &std::path::Path,
    ) -> (
        std::path::PathBuf,
        Arc<Mutex<Vec<Broken>>>,
        CancellationToken,
    ) {
        let path = dir.join("server.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let record = seen.clone();
        let hook: ViolationHook<tonic::transport::server::UdsConnectInfo> =
            Arc::new(move |_info, broken| lock(&record).push(broken.clone()));
        let (sorted, _framed) = accept(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            health(),
            stop.clone(),
            Some(hook),
        );
        let stopping = stop.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(health())
                .serve_with_incoming_shutdown(sorted, stopping.cancelled_owned()),
        );
        (path, seen, stop)
    }

    /// Writes `bytes` on a new connection to the server, then reads until it closes.
    async fn send_raw(path: &std::path::Path, bytes: &[u8]) {
        let mut client = UnixStream::connect(path).await.unwrap();
        // The server may close before it read everything (a reset, then): closed either way.
        let _ = client.write_all(bytes).await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, client.read_to_end(&mut rest))
            .await
            .expect("the server closes a connection that broke the protocol");
    }

    async fn reported(seen: &Mutex<Vec<Broken>>, count: usize) -> Vec<Broken> {
        let began = std::time::Instant::now();
        while lock(seen).len() < count && began.elapsed() < PATIENCE {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        lock(seen).clone()
    }

    #[tokio::test]
    async fn connections_that_break_http2_or_speak_neither_protocol_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (path, seen, stop) = h2_server(dir.path());

        // An honest HTTP/2 client is served, and reported for nothing.
        let channel = crate::connect_with(&path, crate::Peer::Process(std::process::id()), None)
            .await
            .unwrap();
        let mut health_client = HealthClient::new(channel);
        health_client
            .check(HealthCheckRequest::default())
            .await
            .expect("an HTTP/2 call is served");
        drop(health_client);

        // Neither preface: closed at once.
        send_raw(&path, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        // HTTP/2's preface, then DATA on stream 0, which HTTP/2 forbids.
        let broken = [
            &HTTP2_PREFACE[..],
            &h2_frame(0x4, 0, &[]),
            &h2_frame(0x0, 0, b"x"),
        ]
        .concat();
        send_raw(&path, &broken).await;

        let reports = reported(&seen, 2).await;
        assert_eq!(reports.len(), 2, "{reports:?}");
        assert!(
            matches!(&reports[0], Broken::Protocol(reason) if reason.contains("neither") && reason.contains("GET /")),
            "{reports:?}"
        );
        assert!(
            matches!(&reports[1], Broken::Protocol(reason) if reason.contains("GOAWAY PROTOCOL_ERROR")),
            "{reports:?}"
        );
        // A graceful end (GOAWAY NO_ERROR) is no violation.
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(lock(&seen).len(), 2, "{:?}", lock(&seen));
    }

    #[tokio::test]
    async fn a_connection_that_must_open_with_frames_is_served_refused_or_let_go() {
        let serve = |server: UnixStream, within: Duration| {
            serve_framed_after_preface(server, health(), (), CancellationToken::new(), within)
        };
        // The preface, then calls.
        let (client, server) = UnixStream::pair().unwrap();
        let served = tokio::spawn(serve(server, PATIENCE));
        let channel = FramedChannel::start(client, "test server").await.unwrap();
        HealthClient::new(channel.clone())
            .check(HealthCheckRequest::default())
            .await
            .expect("served after the preface");
        drop(channel);
        assert_eq!(served.await.unwrap(), Ok(()));

        // Anything else: a breach, naming what came.
        let (mut client, server) = UnixStream::pair().unwrap();
        client.write_all(b"PRI * HTTP/2.0\r\n\r\n").await.unwrap();
        let outcome = serve(server, PATIENCE).await;
        assert!(
            matches!(&outcome, Err(Broken::Protocol(reason)) if reason.contains("PRI *")),
            "{outcome:?}"
        );
        // Closed before a word: nothing to report.
        let (client, server) = UnixStream::pair().unwrap();
        drop(client);
        assert_eq!(serve(server, PATIENCE).await, Ok(()));
        // Silent: let go after `within`, as a failure, not a breach.
        let (_client, server) = UnixStream::pair().unwrap();
        let outcome = serve(server, Duration::from_millis(50)).await;
        assert!(matches!(outcome, Err(Broken::Failed(_))), "{outcome:?}");
    }
}
