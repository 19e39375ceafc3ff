//! [`HostServices`]: the `tether.hostserve.v1.HostServices` implementation.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use cap_std::fs::{FileType, Metadata, PermissionsExt};
use tether_host::PluginClient;
use tether_hostconn::{
    Options, Outcome, PluginIdentity, Refusal, RefusalHook, establish_host_services_with,
};
use tether_protocol::hostserve::host_services_server::{
    HostServices as HostServicesRpc, HostServicesServer,
};
use tether_protocol::hostserve::{
    CreateDirRequest, CreateDirResponse, DeleteFileRequest, DeleteFileResponse, DirEntry,
    EntryKind, GetEnvRequest, GetEnvResponse, ReadDirRequest, ReadDirResponse, ReadFileChunk,
    ReadFileRequest, StatRequest, StatResponse, WriteFileChunk, WriteFileResponse,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::Stream;
use tonic::metadata::MetadataValue;
use tonic::service::Routes;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::audit::{Audit, AuditRecord};
use crate::capability::{Verb, is_env_name};
use crate::confine::Target;
use crate::path::{self, RequestPath};
use crate::policy::{Decision, Policy};

/// Bytes of `WriteFile` data handed to the disk at a time.
const WRITE_BATCH: usize = 1024 * 1024;

/// The metadata key of a denial's missing capability.
pub const CAPABILITY_METADATA: &str = "tether-capability";

/// Bounds on what one plugin can make the host do.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Calls (including open streams) one plugin instance may have in flight.
    pub max_concurrent_calls: usize,
    /// How long a call waits for a free slot before `RESOURCE_EXHAUSTED`.
    pub queue_wait: Duration,
    /// Bytes one plugin (by name) may write through `WriteFile` over the life of this
    /// `HostServices`.
    pub write_quota: u64,
    /// Largest gRPC message decoded or encoded.
    pub max_message_size: usize,
    /// Bytes per `ReadFile` chunk.
    pub read_chunk: usize,
    /// Most entries in one `ReadDir` page.
    pub max_page: usize,
    /// How long a streaming call waits on the plugin (to take the next `ReadFile` chunk,
    /// or to send the next `WriteFile` chunk) before the host ends it with
    /// `DEADLINE_EXCEEDED` and frees its slot: a plugin that stops reading cannot hold
    /// host resources.
    pub stall_timeout: Duration,
    /// Whether `WriteFile` flushes the new file to disk (`fsync`) before renaming it into
    /// place, so that a crash never leaves an empty or partial file at the target. On by
    /// default; it bounds write throughput by the disk's (see docs/benchmarks.md).
    pub durable_writes: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent_calls: 16,
            queue_wait: Duration::from_secs(2),
            write_quota: 256 * 1024 * 1024,
            max_message_size: tether_protocol::DEFAULT_MAX_MESSAGE_SIZE,
            read_chunk: 64 * 1024,
            max_page: 1000,
            stall_timeout: Duration::from_secs(30),
            durable_writes: true,
        }
    }
}

/// tether's host services, shared by every plugin: each call is checked against the
/// calling plugin's capabilities (from its [`PluginIdentity`], never its own claims),
/// confined beneath its workspace, bounded by [`Limits`], and audited.
#[derive(Debug)]
pub struct HostServices {
    policy: Policy,
    audit: Audit,
    limits: Limits,
    plugins: Mutex<HashMap<(String, u64), Arc<Semaphore>>>,
    written: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl HostServices {
    /// Host services deciding with `policy` and recording to `audit`.
    pub fn new(policy: Policy, audit: Audit, limits: Limits) -> Self {
        HostServices {
            policy,
            audit,
            limits,
            plugins: Mutex::default(),
            written: Mutex::default(),
        }
    }

    /// The routes to hand to `establish_host_services`; clones of the `Arc` share one
    /// implementation among all plugins.
    pub fn routes(self: &Arc<Self>) -> Routes {
        let limit = self.limits.max_message_size;
        Routes::new(
            HostServicesServer::from_arc(Arc::clone(self))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
    }

    /// Gives `plugin` these host services: the one line of host-service setup.
    ///
    /// [`tether_hostconn::establish_host_services`] with [`HostServices::routes`], plus an
    /// audit record (operation `connect`, decision `denied`) for every process other than
    /// the plugin's that connects to its host-service socket. Keep the returned connection:
    /// dropping it disconnects the plugin.
    pub async fn connect(
        self: &Arc<Self>,
        plugin: &PluginClient,
    ) -> Result<Outcome, tether_hostconn::Error> {
        let audit = self.audit.clone();
        let (instance, pid) = (plugin.instance(), plugin.pid());
        let hook: RefusalHook = Arc::new(move |refusal: &Refusal| {
            audit.record(AuditRecord {
                time: AuditRecord::now(),
                plugin: refusal.label.to_string(),
                instance,
                pid: refusal
                    .credentials
                    .and_then(|credentials| credentials.pid)
                    .unwrap_or_default(),
                operation: "connect",
                resource: refusal.socket.display().to_string(),
                decision: "denied",
                reason: format!(
                    "{} (the plugin's host-service socket; the plugin is pid {pid})",
                    refusal.reason
                ),
                request_id: None,
                timeout_ms: None,
            });
        });
        establish_host_services_with(plugin, self.routes(), Options::default().on_refused(hook))
            .await
    }

    /// The policy (clones share it: grant and revoke through it at runtime).
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Bytes `plugin` has written so far.
    pub fn bytes_written(&self, plugin: &str) -> u64 {
        self.written_counter(plugin).load(Ordering::Relaxed)
    }

    fn written_counter(&self, plugin: &str) -> Arc<AtomicU64> {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(written.entry(plugin.to_owned()).or_default())
    }

    /// Starts a call: who is calling, and a slot under the plugin's concurrency limit.
    async fn begin<T>(
        &self,
        request: &Request<T>,
        operation: &'static str,
        resource: &str,
    ) -> Result<Call<'_>, Status> {
        let identity = PluginIdentity::of(request)?.clone();
        let context = Correlation::of(request);
        self.begin_as(identity, context, operation, resource).await
    }

    /// [`HostServices::begin`] for a caller already identified.
    async fn begin_as(
        &self,
        identity: PluginIdentity,
        context: Correlation,
        operation: &'static str,
        resource: &str,
    ) -> Result<Call<'_>, Status> {
        let semaphore = {
            let mut plugins = self.plugins.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(
                plugins
                    .entry((identity.name().to_owned(), identity.instance()))
                    .or_insert_with(|| Arc::new(Semaphore::new(self.limits.max_concurrent_calls))),
            )
        };
        let call = Call {
            host: self,
            identity,
            context,
            operation,
            resource: resource.to_owned(),
            permit: None,
        };
        if let Some(bad) = &call.context.invalid_request_id {
            return Err(call.deny(
                Status::invalid_argument(format!(
                    "invalid request id {bad}: use 1 to 64 characters of A-Z a-z 0-9 . _ : -"
                )),
                "invalid request id",
            ));
        }
        match tokio::time::timeout(self.limits.queue_wait, semaphore.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Call {
                permit: Some(permit),
                ..call
            }),
            _ => Err(call.deny(
                Status::resource_exhausted(format!(
                    "too many host-service calls in flight for this plugin (limit {}); \
                     wait for some to finish",
                    self.limits.max_concurrent_calls
                )),
                "concurrency limit reached",
            )),
        }
    }
}

/// What a call carries to correlate it with the work it is part of (see
/// [`tether_protocol::CallContext`]): recorded in its audit record, never trusted.
#[derive(Debug, Default)]
struct Correlation {
    request_id: Option<String>,
    /// A `tether-request-id` that is not well formed, escaped and capped for the message.
    invalid_request_id: Option<String>,
    timeout_ms: Option<u64>,
}

impl Correlation {
    fn of<T>(request: &Request<T>) -> Self {
        let metadata = request.metadata();
        let mut correlation = Correlation {
            timeout_ms: metadata
                .get("grpc-timeout")
                .and_then(|value| value.to_str().ok())
                .and_then(tether_protocol::parse_grpc_timeout)
                .map(|timeout| u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
            ..Correlation::default()
        };
        if let Some(value) = metadata.get(tether_protocol::REQUEST_ID_METADATA) {
            match value.to_str() {
                Ok(id) if tether_protocol::valid_request_id(id) => {
                    correlation.request_id = Some(id.to_owned());
                }
                Ok(id) => {
                    correlation.invalid_request_id =
                        Some(format!("{:?}", id.chars().take(80).collect::<String>()));
                }
                Err(_) => {
                    correlation.invalid_request_id = Some("(not visible ASCII)".to_owned());
                }
            }
        }
        correlation
    }
}

/// One call in progress: identity, what it asks, and its concurrency slot.
struct Call<'a> {
    host: &'a HostServices,
    identity: PluginIdentity,
    context: Correlation,
    operation: &'static str,
    resource: String,
    permit: Option<OwnedSemaphorePermit>,
}

impl Call<'_> {
    fn audit(&self, decision: &'static str, reason: String) {
        self.host.audit.record(AuditRecord {
            time: AuditRecord::now(),
            plugin: self.identity.name().to_owned(),
            instance: self.identity.instance(),
            pid: self.identity.pid(),
            operation: self.operation,
            resource: self.resource.clone(),
            decision,
            reason,
            request_id: self.context.request_id.clone(),
            timeout_ms: self.context.timeout_ms,
        });
    }

    /// Audits a denial and returns `status`.
    fn deny(&self, status: Status, reason: &str) -> Status {
        self.audit("denied", format!("{reason}: {}", status.message()));
        status
    }

    /// The lexical check.
    fn path(&self, raw: &[u8]) -> Result<RequestPath, Status> {
        RequestPath::parse(raw).map_err(|err| {
            self.deny(
                Status::invalid_argument(format!("invalid path {:?}: {err}", self.resource)),
                "invalid path",
            )
        })
    }

    /// The policy check; returns the workspace and the grant that allowed it.
    fn authorize(
        &self,
        verb: Verb,
        resource: &str,
    ) -> Result<(std::path::PathBuf, String), Status> {
        match self
            .host
            .policy
            .decide(self.identity.name(), verb, resource)
        {
            Decision::Allow { workspace, grant } => Ok((workspace, grant)),
            Decision::Deny { reason, needed } => {
                let mut status = Status::permission_denied(format!(
                    "plugin `{}` lacks the capability `{needed}` ({reason}); the operator can \
                     grant it",
                    self.identity.name()
                ));
                if let Ok(value) = MetadataValue::try_from(needed.as_str()) {
                    status.metadata_mut().insert(CAPABILITY_METADATA, value);
                }
                self.audit("denied", reason);
                Err(status)
            }
        }
    }

    /// Audits the end of an allowed operation: done, or failed with `status`.
    fn finish<T>(&self, grant: &str, result: Result<T, Status>) -> Result<T, Status> {
        match &result {
            Ok(_) => self.audit("allowed", format!("granted by `{grant}`")),
            // Confinement refused it (a symlink on the way): that is a denial too.
            Err(status) if status.code() == Code::PermissionDenied => self.audit(
                "denied",
                format!("granted by `{grant}` but refused: {}", status.message()),
            ),
            Err(status) => self.audit(
                "allowed",
                format!("granted by `{grant}`; failed: {}", status.message()),
            ),
        }
        result
    }
}

/// An OS error as a status that says what happened to which path.
fn io_status(path: &str, err: &io::Error) -> Status {
    let message = format!("{path:?}: {err}");
    match (err.kind(), err.raw_os_error()) {
        (_, Some(code)) if code == rustix::io::Errno::LOOP.raw_os_error() => {
            Status::permission_denied(format!(
                "{path:?} is or passes through a symbolic link; host services never follow links"
            ))
        }
        (io::ErrorKind::NotFound, _) => Status::not_found(message),
        (io::ErrorKind::AlreadyExists, _) => Status::already_exists(message),
        (io::ErrorKind::PermissionDenied, _) => Status::permission_denied(message),
        (
            io::ErrorKind::InvalidInput
            | io::ErrorKind::NotADirectory
            | io::ErrorKind::IsADirectory,
            _,
        ) => Status::failed_precondition(message),
        (_, Some(code)) if code == rustix::io::Errno::NOTDIR.raw_os_error() => {
            Status::failed_precondition(message)
        }
        _ => Status::internal(message),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| Status::internal(format!("a host-service worker failed: {err}")))
}

fn kind(file_type: FileType) -> EntryKind {
    if file_type.is_symlink() {
        EntryKind::Symlink
    } else if file_type.is_dir() {
        EntryKind::Dir
    } else if file_type.is_file() {
        EntryKind::File
    } else {
        EntryKind::Other
    }
}

fn stat_response(metadata: &Metadata) -> StatResponse {
    let modified = metadata
        .modified()
        .ok()
        .and_then(|time| time.into_std().duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        });
    StatResponse {
        kind: kind(metadata.file_type()).into(),
        size: if metadata.is_file() {
            metadata.len()
        } else {
            0
        },
        mode: metadata.permissions().mode() & 0o7777,
        modified_unix_ms: modified,
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<ReadFileChunk, Status>> + Send>>;

/// Sends `file` in chunks of `chunk` bytes; fails if the plugin takes none for `stall`.
async fn pump_file(
    file: cap_std::fs::File,
    chunk: usize,
    stall: Duration,
    sender: &mpsc::Sender<ReadFileChunk>,
    shown: &str,
) -> Result<(), Status> {
    let mut file = Some(file);
    loop {
        let mut taken = file
            .take()
            .ok_or_else(|| Status::internal("the file being read was lost"))?;
        let (back, read) = blocking(move || {
            let mut buffer = vec![0; chunk];
            let read = loop {
                match taken.read(&mut buffer) {
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    other => break other,
                }
            };
            (
                taken,
                read.map(|n| {
                    buffer.truncate(n);
                    buffer
                }),
            )
        })
        .await?;
        file = Some(back);
        let data = read.map_err(|err| io_status(shown, &err))?;
        if data.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(stall, sender.send(ReadFileChunk { data })).await {
            Ok(Ok(())) => {}
            // The plugin cancelled the call or went away: nobody to tell.
            Ok(Err(_)) => return Ok(()),
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "{shown:?}: the plugin took no data for {stall:?}; the host ended the \
                     read (the file was not sent completely)"
                )));
            }
        }
    }
}

/// The plugin's next `WriteFile` message, waiting at most `stall`.
async fn next_chunk(
    stream: &mut Streaming<WriteFileChunk>,
    stall: Duration,
) -> Result<Option<WriteFileChunk>, Status> {
    tokio::time::timeout(stall, stream.message())
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "the plugin sent nothing for {stall:?} in the middle of a write; the host \
                 ended it and wrote nothing"
            ))
        })?
}

/// The `ReadFile` response: the chunks, then the error that ended the read early, if any,
/// so a stalled or failed read never looks like a complete file.
struct Chunks {
    receiver: mpsc::Receiver<ReadFileChunk>,
    ending: Arc<Mutex<Option<Status>>>,
    done: bool,
}

impl Stream for Chunks {
    type Item = Result<ReadFileChunk, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.done {
            return std::task::Poll::Ready(None);
        }
        match self.receiver.poll_recv(cx) {
            std::task::Poll::Ready(Some(chunk)) => std::task::Poll::Ready(Some(Ok(chunk))),
            std::task::Poll::Ready(None) => {
                self.done = true;
                let ending = self
                    .ending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                std::task::Poll::Ready(ending.map(Err))
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

#[tonic::async_trait]
impl HostServicesRpc for HostServices {
    async fn read_dir(
        &self,
        request: Request<ReadDirRequest>,
    ) -> Result<Response<ReadDirResponse>, Status> {
        let resource = path::display(&request.get_ref().path);
        let call = self.begin(&request, "read_dir", &resource).await?;
        let ReadDirRequest {
            path,
            page_size,
            page_token,
        } = request.into_inner();
        let path = call.path(&path)?;
        let (workspace, grant) = call.authorize(Verb::Read, path.as_str())?;
        let skip: usize = if page_token.is_empty() {
            0
        } else {
            page_token.parse().map_err(|_| {
                call.deny(
                    Status::invalid_argument(format!("invalid page token {page_token:?}")),
                    "invalid page token",
                )
            })?
        };
        let max = self.limits.max_page;
        let size = match usize::try_from(page_size) {
            Ok(0) | Err(_) => max,
            Ok(n) => n.min(max),
        };
        let shown = path.as_str().to_owned();
        let result = blocking(move || -> io::Result<ReadDirResponse> {
            let dir = Target::locate(&workspace, &path)?.open_dir()?;
            let mut entries = Vec::with_capacity(size);
            let mut more = false;
            for entry in dir.entries()?.skip(skip) {
                let entry = entry?;
                if entries.len() == size {
                    more = true;
                    break;
                }
                let file_type = entry.file_type()?;
                let size = if file_type.is_file() {
                    entry.metadata()?.len()
                } else {
                    0
                };
                entries.push(DirEntry {
                    name: entry.file_name().to_string_lossy().into_owned(),
                    kind: kind(file_type).into(),
                    size,
                });
            }
            let next_page_token = if more {
                (skip + entries.len()).to_string()
            } else {
                String::new()
            };
            Ok(ReadDirResponse {
                entries,
                next_page_token,
            })
        })
        .await?
        .map_err(|err| io_status(&shown, &err));
        call.finish(&grant, result).map(Response::new)
    }

    type ReadFileStream = ChunkStream;

    async fn read_file(
        &self,
        request: Request<ReadFileRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let resource = path::display(&request.get_ref().path);
        let mut call = self.begin(&request, "read_file", &resource).await?;
        let path = call.path(&request.get_ref().path)?;
        let (workspace, grant) = call.authorize(Verb::Read, path.as_str())?;
        let shown = path.as_str().to_owned();
        let opened = blocking(move || Target::locate(&workspace, &path)?.open_file())
            .await?
            .map_err(|err| io_status(&shown, &err));
        let file = call.finish(&grant, opened)?;
        let shown = path::display(&request.get_ref().path);
        let (sender, receiver) = mpsc::channel(4);
        let chunk = self.limits.read_chunk;
        let stall = self.limits.stall_timeout;
        let permit = call.permit.take();
        let ending = Arc::new(Mutex::new(None));
        let pump_ending = Arc::clone(&ending);
        let plugin = call.identity.name().to_owned();
        tokio::spawn(async move {
            // The slot is held until the file is sent or the plugin stops taking it.
            let _permit = permit;
            let ended = pump_file(file, chunk, stall, &sender, &shown).await;
            if let Err(status) = ended {
                tracing::warn!(
                    target: "tether::hostserve",
                    plugin,
                    path = shown,
                    %status,
                    "ReadFile ended early"
                );
                *pump_ending.lock().unwrap_or_else(PoisonError::into_inner) = Some(status);
            }
        });
        Ok(Response::new(Box::pin(Chunks {
            receiver,
            ending,
            done: false,
        })))
    }

    async fn write_file(
        &self,
        request: Request<Streaming<WriteFileChunk>>,
    ) -> Result<Response<WriteFileResponse>, Status> {
        let identity = PluginIdentity::of(&request)?.clone();
        let context = Correlation::of(&request);
        let mut stream = request.into_inner();
        let stall = self.limits.stall_timeout;
        let first = match next_chunk(&mut stream, stall).await {
            Ok(first) => first.unwrap_or_default(),
            Err(status) => {
                let call = self.begin_as(identity, context, "write_file", "").await?;
                return Err(call.deny(status, "no first message"));
            }
        };
        // The call is identified from the connection; the first message names the file.
        let resource = path::display(&first.path);
        let call = self
            .begin_as(identity.clone(), context, "write_file", &resource)
            .await?;
        let path = call.path(&first.path)?;
        let (workspace, grant) = call.authorize(Verb::Write, path.as_str())?;
        let mode = if first.mode == 0 {
            0o644
        } else {
            first.mode & 0o777
        };
        let shown = path.as_str().to_owned();
        let written = self.written_counter(identity.name());
        let quota = self.limits.write_quota;
        let result = self
            .write_stream(
                workspace,
                path,
                mode,
                first.data,
                &mut stream,
                &written,
                quota,
            )
            .await
            .map_err(|status| match status.code() {
                Code::ResourceExhausted | Code::Cancelled | Code::Unknown => status,
                _ => Status::new(status.code(), format!("{shown:?}: {}", status.message())),
            });
        call.finish(&grant, result)
            .map(|bytes_written| Response::new(WriteFileResponse { bytes_written }))
    }

    async fn delete_file(
        &self,
        request: Request<DeleteFileRequest>,
    ) -> Result<Response<DeleteFileResponse>, Status> {
        let resource = path::display(&request.get_ref().path);
        let call = self.begin(&request, "delete_file", &resource).await?;
        let path = call.path(&request.get_ref().path)?;
        let (workspace, grant) = call.authorize(Verb::Delete, path.as_str())?;
        let shown = path.as_str().to_owned();
        let result = blocking(move || Target::locate(&workspace, &path)?.remove_file())
            .await?
            .map_err(|err| io_status(&shown, &err));
        call.finish(&grant, result)
            .map(|()| Response::new(DeleteFileResponse {}))
    }

    async fn get_env(
        &self,
        request: Request<GetEnvRequest>,
    ) -> Result<Response<GetEnvResponse>, Status> {
        let name = request.get_ref().name.clone();
        let call = self
            .begin(&request, "get_env", &name.escape_debug().to_string())
            .await?;
        if !is_env_name(&name) {
            return Err(call.deny(
                Status::invalid_argument(format!(
                    "{:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
                    name.escape_debug().to_string()
                )),
                "invalid variable name",
            ));
        }
        let (_, grant) = call.authorize(Verb::Env, &name)?;
        let value = std::env::var_os(&name);
        let response = GetEnvResponse {
            present: value.is_some(),
            value: value
                .map(|v| v.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        call.finish(&grant, Ok(response)).map(Response::new)
    }

    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let resource = path::display(&request.get_ref().path);
        let call = self.begin(&request, "stat", &resource).await?;
        let path = call.path(&request.get_ref().path)?;
        let (workspace, grant) = call.authorize(Verb::Read, path.as_str())?;
        let shown = path.as_str().to_owned();
        let result = blocking(move || Target::locate(&workspace, &path)?.stat())
            .await?
            .map(|metadata| stat_response(&metadata))
            .map_err(|err| io_status(&shown, &err));
        call.finish(&grant, result).map(Response::new)
    }

    async fn create_dir(
        &self,
        request: Request<CreateDirRequest>,
    ) -> Result<Response<CreateDirResponse>, Status> {
        let resource = path::display(&request.get_ref().path);
        let call = self.begin(&request, "create_dir", &resource).await?;
        let path = call.path(&request.get_ref().path)?;
        let (workspace, grant) = call.authorize(Verb::Write, path.as_str())?;
        let shown = path.as_str().to_owned();
        let result = blocking(move || Target::locate(&workspace, &path)?.create_dir())
            .await?
            .map_err(|err| io_status(&shown, &err));
        call.finish(&grant, result)
            .map(|()| Response::new(CreateDirResponse {}))
    }
}

impl HostServices {
    /// Streams chunks into a temporary file beside the target, then renames it into place;
    /// on any failure the temporary file is removed and the target left untouched.
    #[allow(clippy::too_many_arguments, reason = "one private step of write_file")]
    async fn write_stream(
        &self,
        workspace: std::path::PathBuf,
        path: RequestPath,
        mode: u32,
        first: Vec<u8>,
        stream: &mut Streaming<WriteFileChunk>,
        written: &AtomicU64,
        quota: u64,
    ) -> Result<u64, Status> {
        let stall = self.limits.stall_timeout;
        let (target, temp, file) = blocking(move || -> io::Result<_> {
            let target = Target::locate(&workspace, &path)?;
            let (temp, file) = target.create_temp(mode)?;
            Ok((target, temp, file))
        })
        .await?
        .map_err(|err| io_status("", &err))?;
        let target = Arc::new(target);
        let mut file = Some(file);
        let mut total = 0u64;
        let mut next = Some(first);
        // Chunks are written in batches of about WRITE_BATCH bytes: one hand-off to a
        // blocking thread per batch, not per chunk, with at most one batch in memory.
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let mut batched = 0usize;
        let outcome: Result<(), Status> = async {
            loop {
                let data = match next.take() {
                    Some(data) => Some(data),
                    None => next_chunk(stream, stall).await?.map(|chunk| chunk.data),
                };
                let end = data.is_none();
                if let Some(data) = data.filter(|data| !data.is_empty()) {
                    let len = data.len() as u64;
                    let before = written.fetch_add(len, Ordering::Relaxed);
                    if before + len > quota {
                        written.fetch_sub(len, Ordering::Relaxed);
                        return Err(Status::resource_exhausted(format!(
                            "write quota exhausted: this plugin may write {quota} bytes and \
                             has written {before}; nothing was written to the target"
                        )));
                    }
                    total += len;
                    batched += data.len();
                    batch.push(data);
                }
                if batched >= WRITE_BATCH || (end && batched > 0) {
                    let chunks = std::mem::take(&mut batch);
                    batched = 0;
                    let mut taken = file
                        .take()
                        .ok_or_else(|| Status::internal("the temporary file was lost"))?;
                    let (back, result) = blocking(move || {
                        let result = chunks.iter().try_for_each(|chunk| taken.write_all(chunk));
                        (taken, result)
                    })
                    .await?;
                    file = Some(back);
                    result.map_err(|err| io_status("", &err))?;
                }
                if end {
                    return Ok(());
                }
            }
        }
        .await;
        let finished = match outcome {
            Ok(()) => {
                let target = Arc::clone(&target);
                let temp = temp.clone();
                let durable = self.limits.durable_writes;
                blocking(move || -> io::Result<()> {
                    if let Some(file) = file
                        && durable
                    {
                        file.sync_all()?;
                    }
                    target.commit(&temp)
                })
                .await?
                .map_err(|err| io_status("", &err))
            }
            Err(status) => Err(status),
        };
        if finished.is_err() {
            // Nothing reached the target: give the quota back.
            written.fetch_sub(total, Ordering::Relaxed);
            let target = Arc::clone(&target);
            let _ = blocking(move || target.discard(&temp)).await;
        }
        finished.map(|()| total)
    }
}
