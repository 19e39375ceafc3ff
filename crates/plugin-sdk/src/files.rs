//! [`HostFiles`]: typed access to tether's ready-made host services (`tether.hostserve.v1`).

use futures_util::{Stream, StreamExt};
use std::io::Read;
use std::time::Duration;
use tether_protocol::hostserve::files_client::FilesClient;
use tether_protocol::hostserve::{
    BulkEvent, CreateDirRequest, DeleteFileRequest, DirEntry, GetEnvRequest, ReadDirRequest,
    ReadFileRequest, StatRequest, StatResponse, WriteFileBulkRequest, WriteFileChunk,
};
use tether_protocol::{CAPABILITY_METADATA, CallContext};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tonic::{Code, Request, Status};

use crate::host::HostChannel;
use tether_transport::ring::{RingError, RingOffer, RingWriter};

/// A file's contents, chunk by chunk, from [`HostFiles::read_file`].
pub type FileChunks = std::pin::Pin<Box<dyn Stream<Item = Result<Vec<u8>, HostCallError>> + Send>>;

/// Bytes per chunk `write_file` sends.
const WRITE_CHUNK: usize = 64 * 1024;

/// Bytes per read of a bulk transfer, and per chunk of a write falling back to messages.
const BULK_CHUNK: usize = 1 << 20;

/// How long a bulk call waits for its descriptors on the descriptor channel: the host
/// before naming it, so it is there unless something is badly wrong.
const DESCRIPTOR_WAIT: Duration = Duration::from_secs(30);

/// Why a host-service call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HostCallError {
    /// The plugin lacks a capability; `capability` is the one that would allow the call.
    #[error("denied: missing capability `{capability}`: {message}")]
    Denied {
        /// For example `read:config/app.toml`.
        capability: String,
        /// The host's explanation.
        message: String,
    },
    /// The host's confinement refused the call, which no capability would allow: the path
    /// is or passes through a symbolic link, which host services never follow.
    #[error("refused by the host's confinement (no capability allows this): {0}")]
    Confined(String),
    /// The path or name is malformed (absolute, `..`, NUL, not UTF-8, too long, ...).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The file or directory does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The file or directory exists already (`create_dir`).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// A limit was reached: write quota, concurrency, message size.
    #[error("limit reached: {0}")]
    Exhausted(String),
    /// `read_file_to_vec`'s cap was exceeded.
    #[error("the file is larger than the {cap}-byte cap given to read_file_to_vec")]
    TooLarge {
        /// The cap.
        cap: usize,
    },
    /// Host services are not connected (see [`crate::HostServicesError`]).
    #[error(transparent)]
    NotConnected(#[from] crate::HostServicesError),
    /// Anything else the host or the transport reported.
    #[error("host service call failed ({code:?}): {message}")]
    Other {
        /// The gRPC code.
        code: Code,
        /// The message.
        message: String,
    },
}

impl From<Status> for HostCallError {
    fn from(status: Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::PermissionDenied => match status
                .metadata()
                .get(CAPABILITY_METADATA)
                .and_then(|value| value.to_str().ok())
            {
                Some(capability) => HostCallError::Denied {
                    capability: capability.to_owned(),
                    message,
                },
                None => HostCallError::Confined(message),
            },
            Code::InvalidArgument => HostCallError::Invalid(message),
            Code::NotFound => HostCallError::NotFound(message),
            Code::AlreadyExists => HostCallError::AlreadyExists(message),
            Code::ResourceExhausted => HostCallError::Exhausted(message),
            code => HostCallError::Other { code, message },
        }
    }
}

impl From<HostCallError> for Status {
    fn from(err: HostCallError) -> Self {
        let code = match &err {
            HostCallError::Denied { .. } | HostCallError::Confined(_) => Code::PermissionDenied,
            HostCallError::Invalid(_) => Code::InvalidArgument,
            HostCallError::NotFound(_) => Code::NotFound,
            HostCallError::AlreadyExists(_) => Code::AlreadyExists,
            HostCallError::Exhausted(_) | HostCallError::TooLarge { .. } => Code::ResourceExhausted,
            HostCallError::NotConnected(_) => Code::FailedPrecondition,
            HostCallError::Other { code, .. } => *code,
        };
        let mut status = Status::new(code, err.to_string());
        // A denial passed on keeps the capability it names, so the plugin's caller gets
        // the same typed denial.
        if let HostCallError::Denied { capability, .. } = &err
            && let Ok(value) = tonic::metadata::MetadataValue::try_from(capability.as_str())
        {
            status.metadata_mut().insert(CAPABILITY_METADATA, value);
        }
        status
    }
}

/// The host's files and environment, through tether's host services: from
/// [`crate::Host::files`], or in a handler from [`crate::CallHost::files`], whose calls
/// carry the request id and deadline of the call being served. Cheap to clone. Paths are
/// relative to the workspace the host assigned to this plugin, with `/` between
/// components.
#[derive(Debug, Clone)]
pub struct HostFiles {
    client: FilesClient<HostChannel>,
    channel: HostChannel,
    max_message_size: usize,
    default_timeout: Option<Duration>,
}

/// The deadline of a host-service call that has none from its context.
pub const DEFAULT_HOST_CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl HostFiles {
    /// A client on `channel` whose messages (each way) may be up to `max_message_size`
    /// bytes.
    pub(crate) fn new(channel: HostChannel, max_message_size: usize) -> Self {
        HostFiles {
            client: FilesClient::new(channel.clone())
                .max_decoding_message_size(max_message_size)
                .max_encoding_message_size(max_message_size),
            channel,
            max_message_size,
            default_timeout: Some(DEFAULT_HOST_CALL_TIMEOUT),
        }
    }

    /// These host files with another deadline for unary calls whose context has none
    /// (`None`: no default; [`DEFAULT_HOST_CALL_TIMEOUT`] otherwise). Streams (`read_file`,
    /// `write_file*`) get no default: a large file may take longer, and the host ends a
    /// stream that stalls.
    pub fn with_default_timeout(&self, timeout: Option<Duration>) -> HostFiles {
        HostFiles {
            default_timeout: timeout,
            ..self.clone()
        }
    }

    /// A unary request, with the default deadline unless the context brings its own.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let context_deadline = self
            .channel
            .context()
            .and_then(CallContext::deadline)
            .is_some();
        if !context_deadline && let Some(timeout) = self.default_timeout {
            request.set_timeout(timeout);
        }
        request
    }

    /// These host files, with every call carrying `context` instead: its request id, and
    /// the time left before its deadline (a call made after the deadline fails at once
    /// with `DEADLINE_EXCEEDED`). In a handler, [`crate::Host::for_call`] does this for
    /// you: `self.host.for_call(&request).files()?`.
    pub fn with_context(&self, context: &CallContext) -> HostFiles {
        HostFiles {
            default_timeout: self.default_timeout,
            ..HostFiles::new(self.channel.with_context(context), self.max_message_size)
        }
    }

    /// Every entry of a directory (all pages).
    pub async fn read_dir(&self, path: impl AsRef<[u8]>) -> Result<Vec<DirEntry>, HostCallError> {
        let mut entries = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .client
                .clone()
                .read_dir(self.request(ReadDirRequest {
                    path: path.as_ref().to_vec(),
                    page_size: 0,
                    page_token,
                }))
                .await?
                .into_inner();
            entries.extend(page.entries);
            if page.next_page_token.is_empty() {
                return Ok(entries);
            }
            page_token = page.next_page_token;
        }
    }

    /// A file's contents as a stream of chunks, for files of any size.
    pub async fn read_file(&self, path: impl AsRef<[u8]>) -> Result<FileChunks, HostCallError> {
        let stream = self
            .client
            .clone()
            .read_file(Request::new(ReadFileRequest {
                path: path.as_ref().to_vec(),
            }))
            .await?
            .into_inner();
        Ok(Box::pin(stream.map(|chunk| {
            chunk.map(|c| c.data).map_err(HostCallError::from)
        })))
    }

    /// A whole file, refusing (with [`HostCallError::TooLarge`]) past `cap` bytes. Read
    /// from the open file the host hands over when it started this plugin (see
    /// [`HostFiles::open_file`]), else in [`HostFiles::read_file`]'s chunks.
    pub async fn read_file_to_vec(
        &self,
        path: impl AsRef<[u8]>,
        cap: usize,
    ) -> Result<Vec<u8>, HostCallError> {
        if let Some((size, file)) = self.open_bulk(path.as_ref()).await? {
            let reading = tokio::task::spawn_blocking(move || {
                let mut contents =
                    Vec::with_capacity(usize::try_from(size).unwrap_or(cap).min(cap));
                let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
                file.take(limit)
                    .read_to_end(&mut contents)
                    .map(|_| contents)
            });
            let contents = reading
                .await
                .map_err(|err| task_error(&err))?
                .map_err(|err| file_error("read", &err))?;
            if contents.len() > cap {
                return Err(HostCallError::TooLarge { cap });
            }
            return Ok(contents);
        }
        let mut stream = self.read_file(path).await?;
        let mut contents = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if contents.len() + chunk.len() > cap {
                return Err(HostCallError::TooLarge { cap });
            }
            contents.extend_from_slice(&chunk);
        }
        Ok(contents)
    }

    /// The file at `path`, open read-only: when the host started this plugin, it checks
    /// the capability, opens the file as `ReadFile` would (no symbolic link followed, a
    /// regular file only), audits the read, and hands over the open file on this plugin's
    /// descriptor channel (`ReadFileBulk`). Read it at the disk's speed, seek in it, map
    /// it: it is the host's file, as it was when opened. A grant revoked later does not
    /// take it back (as with any open file); the next call is checked anew.
    ///
    /// Read it into a buffer that starts on a 64-byte boundary (a page is best): the
    /// kernel copies into a misaligned one at half the speed on some CPUs (7-8 against
    /// 15-19 GB/s measured on AMD EPYC), and a large `Vec` from malloc starts 16 bytes
    /// past one. [`HostFiles::copy_file_to`] does this for you.
    ///
    /// Fails with [`HostCallError::Other`] (`FAILED_PRECONDITION`) when this plugin has no
    /// descriptor channel (a Go host, a plugin attached to or run by hand): use
    /// [`HostFiles::read_file`] or [`HostFiles::copy_file_to`], which fall back to gRPC
    /// messages.
    pub async fn open_file(&self, path: impl AsRef<[u8]>) -> Result<std::fs::File, HostCallError> {
        match self.open_bulk(path.as_ref()).await? {
            Some((_, file)) => Ok(file),
            None => Err(HostCallError::Other {
                code: Code::FailedPrecondition,
                message: "this plugin has no descriptor channel to receive an open file on \
                          (only a tether host that started it gives one, and serves \
                          ReadFileBulk); use read_file or copy_file_to"
                    .to_owned(),
            }),
        }
    }

    /// Copies a whole file into `sink`, returning its size: from the open file the host
    /// hands over when it started this plugin ([`HostFiles::open_file`]), read on a
    /// blocking thread in 1 MiB pieces while the last is written to `sink`; otherwise from
    /// [`HostFiles::read_file`]'s chunks. Either way the same capability is checked and the
    /// same audit record written.
    pub async fn copy_file_to(
        &self,
        path: impl AsRef<[u8]>,
        sink: &mut (impl AsyncWrite + Unpin + Send),
    ) -> Result<u64, HostCallError> {
        if let Some((_, file)) = self.open_bulk(path.as_ref()).await? {
            return copy_from_file(file, sink).await;
        }
        let mut stream = self.read_file(path).await?;
        let mut copied = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            sink.write_all(&chunk)
                .await
                .map_err(|err| file_error("copy", &err))?;
            copied += chunk.len() as u64;
        }
        Ok(copied)
    }

    /// A `ReadFileBulk`: the file's size and the open file. `None` when this plugin has no
    /// descriptor channel or the host does not serve bulk calls: then the caller streams.
    async fn open_bulk(&self, path: &[u8]) -> Result<Option<(u64, std::fs::File)>, HostCallError> {
        let Some(channel) = crate::descriptors::descriptor_channel() else {
            return Ok(None);
        };
        let request = Request::new(ReadFileRequest {
            path: path.to_vec(),
        });
        let mut events = match self.client.clone().read_file_bulk(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::Unimplemented => return Ok(None),
            Err(status) => return Err(status.into()),
        };
        let first = first_event(&mut events).await?;
        let fd = channel
            .take(first.token, DESCRIPTOR_WAIT)
            .await
            .map_err(|err| channel_error(&err))?;
        Ok(Some((first.size, std::fs::File::from(fd))))
    }

    /// Writes everything `source` gives to `path` with `mode`, replacing it atomically
    /// when `source` ends (readers never see half a file), and returns the bytes written.
    /// When the host started this plugin, `source` is read straight into shared memory
    /// the host hands it (`WriteFileBulk`), from which the host writes the file: one copy
    /// in each process, no gRPC message. Otherwise the bytes go as
    /// [`HostFiles::write_file_stream`]'s chunks. Either way the same capability, quota and
    /// audit apply, and a write that does not end cleanly (an error from `source`, the
    /// plugin dying) leaves the target untouched.
    pub async fn write_file_from(
        &self,
        path: impl AsRef<[u8]>,
        mode: u32,
        source: &mut (impl AsyncRead + Unpin + Send),
    ) -> Result<u64, HostCallError> {
        if let Some(written) = self.write_bulk(path.as_ref(), mode, source).await? {
            return Ok(written);
        }
        // Nothing was read from `source` yet: the bulk call was not served.
        let mut reader = BufReader::with_capacity(BULK_CHUNK, source);
        let (sender, receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let path = path.as_ref().to_vec();
        let files = self.clone();
        let writing = tokio::spawn(async move {
            files
                .write_file_stream(
                    path,
                    mode,
                    tokio_stream::wrappers::ReceiverStream::new(receiver),
                )
                .await
        });
        loop {
            let buffer = reader
                .fill_buf()
                .await
                .map_err(|err| transfer_error("read the source of", &err))?;
            if buffer.is_empty() {
                break;
            }
            let chunk = buffer[..buffer.len().min(WRITE_CHUNK)].to_vec();
            reader.consume(chunk.len());
            if sender.send(chunk).await.is_err() {
                break;
            }
        }
        drop(sender);
        writing.await.map_err(|err| HostCallError::Other {
            code: Code::Internal,
            message: format!("the write's task failed: {err}"),
        })?
    }

    /// A `WriteFileBulk` of what `source` gives. `None` when this plugin has no descriptor
    /// channel or the host does not serve bulk calls (nothing was read from `source`).
    async fn write_bulk(
        &self,
        path: &[u8],
        mode: u32,
        source: &mut (impl AsyncRead + Unpin + Send),
    ) -> Result<Option<u64>, HostCallError> {
        let Some(channel) = crate::descriptors::descriptor_channel() else {
            return Ok(None);
        };
        let (requests, outgoing) = tokio::sync::mpsc::channel(2);
        let _ = requests
            .send(WriteFileBulkRequest {
                path: path.to_vec(),
                mode,
                ..WriteFileBulkRequest::default()
            })
            .await;
        let mut client = self.client.clone();
        let call = client.write_file_bulk(tokio_stream::wrappers::ReceiverStream::new(outgoing));
        let mut events = match call.await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::Unimplemented => return Ok(None),
            Err(status) => return Err(status.into()),
        };
        let first = first_event(&mut events).await?;
        let control = channel
            .take(first.token, DESCRIPTOR_WAIT)
            .await
            .map_err(|err| channel_error(&err))?;
        let memory = channel
            .take(first.ring_token, DESCRIPTOR_WAIT)
            .await
            .map_err(|err| channel_error(&err))?;
        let mut ring = RingWriter::new(RingOffer {
            control,
            memory,
            slots: first.slots,
            slot_size: first.slot_size,
        })
        .map_err(|err| ring_error(&err))?;
        // The ring is kept open until the host has answered (see RingWriter::finish).
        let sent = ring.write_from(source).await;
        let written = match sent.and_then(|written| ring.finish().map(|()| written)) {
            Ok(written) => written,
            // The host stopped taking the data (a quota, a failure): its answer says why.
            Err(RingError::Closed) => {
                finish_bulk(events, u64::MAX).await?;
                return Err(ring_error(&RingError::Closed));
            }
            // The source failed: no end is confirmed, so the host writes nothing.
            Err(err) => return Err(ring_error(&err)),
        };
        let _ = requests
            .send(WriteFileBulkRequest {
                end: true,
                bytes: written,
                ..WriteFileBulkRequest::default()
            })
            .await;
        drop(requests);
        let finished = finish_bulk(events, written).await.map(Some);
        drop(ring);
        finished
    }

    /// Writes `contents` to `path` (mode `0o644`), replacing it atomically; through shared
    /// memory when the host started this plugin (see [`HostFiles::write_file_from`]).
    pub async fn write_file(
        &self,
        path: impl AsRef<[u8]>,
        contents: &[u8],
    ) -> Result<u64, HostCallError> {
        if let Some(written) = self
            .write_bulk(path.as_ref(), 0o644, &mut { contents })
            .await?
        {
            return Ok(written);
        }
        let chunks: Vec<Vec<u8>> = contents.chunks(WRITE_CHUNK).map(<[u8]>::to_vec).collect();
        self.write_file_stream(path, 0o644, futures_util::stream::iter(chunks))
            .await
    }

    /// Writes a stream of chunks to `path` with `mode`: the host writes a temporary file
    /// and renames it into place when the stream ends, so readers never see half a file.
    pub async fn write_file_stream(
        &self,
        path: impl AsRef<[u8]>,
        mode: u32,
        chunks: impl Stream<Item = Vec<u8>> + Send + 'static,
    ) -> Result<u64, HostCallError> {
        let first = WriteFileChunk {
            path: path.as_ref().to_vec(),
            mode,
            data: Vec::new(),
        };
        let messages =
            futures_util::stream::iter([first]).chain(chunks.map(|data| WriteFileChunk {
                path: Vec::new(),
                mode: 0,
                data,
            }));
        let response = self
            .client
            .clone()
            .write_file(Request::new(messages))
            .await?;
        Ok(response.into_inner().bytes_written)
    }

    /// Deletes a file.
    pub async fn delete_file(&self, path: impl AsRef<[u8]>) -> Result<(), HostCallError> {
        self.client
            .clone()
            .delete_file(self.request(DeleteFileRequest {
                path: path.as_ref().to_vec(),
            }))
            .await?;
        Ok(())
    }

    /// One host environment variable, by exact name (`None` if the host does not have it).
    pub async fn get_env(&self, name: &str) -> Result<Option<String>, HostCallError> {
        let reply = self
            .client
            .clone()
            .get_env(self.request(GetEnvRequest {
                name: name.to_owned(),
            }))
            .await?
            .into_inner();
        Ok(reply.present.then_some(reply.value))
    }

    /// Describes a file or directory, without following a final symlink.
    pub async fn stat(&self, path: impl AsRef<[u8]>) -> Result<StatResponse, HostCallError> {
        Ok(self
            .client
            .clone()
            .stat(self.request(StatRequest {
                path: path.as_ref().to_vec(),
            }))
            .await?
            .into_inner())
    }

    /// Creates a directory, whose parent must exist; [`HostCallError::AlreadyExists`] if
    /// something has that name already.
    pub async fn create_dir(&self, path: impl AsRef<[u8]>) -> Result<(), HostCallError> {
        self.client
            .clone()
            .create_dir(self.request(CreateDirRequest {
                path: path.as_ref().to_vec(),
            }))
            .await?;
        Ok(())
    }
}

/// A bulk call's events (see `tether.hostserve.v1.BulkEvent`).
type Events = tonic::Streaming<BulkEvent>;

/// The first event of a bulk call, which names its descriptors.
async fn first_event(events: &mut Events) -> Result<BulkEvent, HostCallError> {
    events.message().await?.ok_or_else(|| HostCallError::Other {
        code: Code::Internal,
        message: "the host ended the bulk call before naming its descriptors".to_owned(),
    })
}

/// The outcome of a bulk write once its ring is done with: the host's error if it had one,
/// else a check that both sides counted `moved` bytes.
async fn finish_bulk(mut events: Events, moved: u64) -> Result<u64, HostCallError> {
    match events.message().await? {
        Some(last) if last.done && last.bytes == moved => Ok(moved),
        Some(last) if last.done => Err(HostCallError::Other {
            code: Code::DataLoss,
            message: format!(
                "the host received {} bytes through the ring, this plugin sent {moved}",
                last.bytes
            ),
        }),
        _ => Err(HostCallError::Other {
            code: Code::Internal,
            message: "the host ended the bulk call without its outcome".to_owned(),
        }),
    }
}

/// Reads `file` on a blocking thread, 1 MiB at a time, into `sink`: the next piece is read
/// while the last is written.
async fn copy_from_file(
    file: std::fs::File,
    sink: &mut (impl AsyncWrite + Unpin + Send),
) -> Result<u64, HostCallError> {
    let (full, mut filled) = tokio::sync::mpsc::channel::<std::io::Result<PageBlock>>(1);
    let (empty, mut emptied) = tokio::sync::mpsc::channel::<PageBlock>(2);
    for _ in 0..2 {
        let _ = empty.try_send(PageBlock::new(BULK_CHUNK));
    }
    let reader = tokio::task::spawn_blocking(move || {
        let mut file = file;
        while let Some(mut block) = emptied.blocking_recv() {
            let read = loop {
                match file.read(block.whole()) {
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    other => break other,
                }
            };
            let end = matches!(read, Ok(0) | Err(_));
            let sent = read.map(|n| {
                block.filled = n;
                block
            });
            if full.blocking_send(sent).is_err() || end {
                return;
            }
        }
    });
    let mut copied = 0u64;
    while let Some(piece) = filled.recv().await {
        let block = piece.map_err(|err| file_error("read", &err))?;
        if block.filled == 0 {
            break;
        }
        sink.write_all(block.contents())
            .await
            .map_err(|err| file_error("copy", &err))?;
        copied += block.filled as u64;
        let _ = empty.send(block).await;
    }
    drop(empty);
    reader.await.map_err(|err| task_error(&err))?;
    Ok(copied)
}

/// How many bytes from `address` to the next multiple of `align` (a power of two).
fn lead_to(address: usize, align: usize) -> usize {
    address.wrapping_neg() & (align - 1)
}

/// A buffer for [`copy_from_file`]'s reads, starting on a page boundary, and how much of
/// it the last read filled. Where a read's destination starts decides how fast the kernel
/// copies a file's pages into it. Measured on an AMD EPYC VM, 1 GiB from the page cache in
/// 1 MiB reads into one reused buffer: 7-8 GB/s when it started 16 bytes past a 64-byte
/// boundary (where malloc puts a large allocation), 15-19 GB/s on a 64-byte boundary or a
/// page. Where the source starts made no difference.
struct PageBlock {
    /// A page longer than the block, which starts at `start`.
    storage: Vec<u8>,
    start: usize,
    filled: usize,
}

impl PageBlock {
    const PAGE: usize = 4096;

    fn new(len: usize) -> Self {
        let storage = vec![0; len + Self::PAGE];
        let start = lead_to(storage.as_ptr().addr(), Self::PAGE);
        Self {
            storage,
            start,
            filled: 0,
        }
    }

    /// All of it, to read into.
    fn whole(&mut self) -> &mut [u8] {
        let end = self.storage.len() - Self::PAGE + self.start;
        &mut self.storage[self.start..end]
    }

    /// What the last read filled.
    fn contents(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.filled]
    }
}

fn task_error(err: &tokio::task::JoinError) -> HostCallError {
    HostCallError::Other {
        code: Code::Internal,
        message: format!("reading the file failed: {err}"),
    }
}

fn file_error(action: &str, err: &std::io::Error) -> HostCallError {
    HostCallError::Other {
        code: Code::Unavailable,
        message: format!("could not {action} the file the host handed over: {err}"),
    }
}

fn transfer_error(action: &str, err: &std::io::Error) -> HostCallError {
    HostCallError::Other {
        code: Code::Unavailable,
        message: format!("could not {action} the transfer: {err}"),
    }
}

fn ring_error(err: &RingError) -> HostCallError {
    HostCallError::Other {
        code: Code::Unavailable,
        message: format!("the write's shared-memory ring failed: {err}"),
    }
}

fn channel_error(err: &tether_transport::DescriptorError) -> HostCallError {
    HostCallError::Other {
        code: Code::Unavailable,
        message: format!("the transfer's descriptors did not arrive: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lead_to_reaches_the_next_boundary() {
        assert_eq!(lead_to(0, 64), 0);
        assert_eq!(lead_to(16, 64), 48);
        assert_eq!(lead_to(64, 64), 0);
        assert_eq!(lead_to(65, 64), 63);
        assert_eq!(lead_to(4096 * 3 + 1, 4096), 4095);
    }

    #[test]
    fn page_blocks_start_on_a_page_and_hand_back_what_was_read() {
        for _ in 0..8 {
            let mut block = PageBlock::new(BULK_CHUNK);
            assert_eq!(block.whole().as_ptr().addr() % PageBlock::PAGE, 0);
            assert_eq!(block.whole().len(), BULK_CHUNK);
            block.whole()[..3].copy_from_slice(b"abc");
            block.filled = 3;
            assert_eq!(block.contents(), b"abc");
        }
    }

    #[test]
    fn a_denial_passed_on_as_a_status_stays_a_typed_denial() {
        let denied = HostCallError::Denied {
            capability: "bus:publish:reports".to_owned(),
            message: "no grant covers it".to_owned(),
        };
        match HostCallError::from(Status::from(denied)) {
            HostCallError::Denied { capability, .. } => {
                assert_eq!(capability, "bus:publish:reports");
            }
            other => panic!("{other:?}"),
        }
    }
}
