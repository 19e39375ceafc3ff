//! [`HostServices`]: the file services (`tether.hostserve.v1.Files`) and any of the
//! host's own services, behind one [`Gate`], given to a plugin in one line.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use cap_std::fs::{FileType, Metadata, PermissionsExt};
use tether_host::{LifecycleEvent, LifecycleKind, PluginBuilder, PluginClient};
use tether_hostconn::{
    Options, Outcome, Refusal, RefusalHook, Violation, ViolationHook, establish_host_services_with,
};
use tether_protocol::hostserve::files_server::{Files as FilesRpc, FilesServer};
use tether_protocol::hostserve::{
    BulkEvent, CreateDirRequest, CreateDirResponse, DeleteFileRequest, DeleteFileResponse,
    DirEntry, EntryKind, GetEnvRequest, GetEnvResponse, ReadDirRequest, ReadDirResponse,
    ReadFileChunk, ReadFileRequest, StatRequest, StatResponse, WriteFileBulkRequest,
    WriteFileChunk, WriteFileResponse,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::Audit;
use crate::audit::{AuditRecord, Decider, Decision, Operation};
use crate::bulk::{self, BulkEvents};
use crate::capability::{Need, Verb, is_env_name};
use crate::confine::{self, Target};
use crate::gate::{Call, Gate, Limits, RequestEnd, run_blocking as blocking};
use crate::path::{self, RequestPath};
use crate::policy::Policy;
use tether_transport::{DescriptorError, DescriptorSender};

/// The digest the signed manifest beside `program` names for it, if `key` signed it and it
/// names `plugin`.
fn vouched_digest(
    plugin: &str,
    program: &Path,
    key: &crate::PublisherKey,
    kinds: &crate::capability::Kinds,
) -> Result<tether_host::Sha256, String> {
    let manifest = program
        .parent()
        .unwrap_or(Path::new("/"))
        .join("plugin.toml");
    let signed = crate::Manifest::load_signed(&manifest, key, kinds)
        .map_err(|err| format!("its publisher {key} is trusted, but {err}"))?;
    if signed.name != plugin {
        return Err(format!(
            "its signed manifest {} describes plugin `{}`, not `{plugin}`",
            manifest.display(),
            signed.name
        ));
    }
    signed.sha256.ok_or_else(|| {
        format!(
            "its signed manifest {} names no sha256, so it does not bind the binary; add \
             `sha256 = \"<digest>\"` and sign it again",
            manifest.display()
        )
    })
}

/// The audit record of a lifecycle event.
fn lifecycle_record(event: &LifecycleEvent) -> AuditRecord {
    let (decision, decided_by) = match event.kind {
        LifecycleKind::Refused => (Decision::Denied, Decider::Operator),
        LifecycleKind::Failed => (Decision::Denied, Decider::Host),
        _ => (Decision::Allowed, Decider::Host),
    };
    AuditRecord {
        time: AuditRecord::now(),
        plugin: event.plugin.clone(),
        instance: event.instance.unwrap_or(0),
        pid: event.pid,
        operation: Operation::Process(event.kind),
        resource: event.program.display().to_string(),
        decision,
        decided_by,
        capability: None,
        reason: event.detail.clone(),
        request_id: None,
        timeout_ms: None,
        trace_id: None,
    }
}

/// Bytes of `WriteFile` data handed to the disk at a time.
const WRITE_BATCH: usize = 1024 * 1024;

/// The host services given to plugins: tether's file services and any of the host's own,
/// all behind one [`Gate`] (one policy, one audit trail, one set of per-plugin limits).
///
/// ```no_run
/// # async fn demo(plugin: tether_host::PluginClient) -> Result<(), Box<dyn std::error::Error>> {
/// use tether_hostserve::{Audit, HostServices, Limits, Policy};
///
/// let policy = Policy::load("policy.toml".as_ref())?;
/// let audit = Audit::to_file("audit.jsonl", 64 << 20)?;
/// let services = HostServices::new(policy, audit, Limits::default());
/// // The host's own services join with one line each: `.serve(CounterServer::new(..))`.
/// let connection = services.connect(&plugin).await?.required()?;
/// # drop(connection); Ok(()) }
/// ```
///
/// Cheap to clone; clones share one implementation among all plugins.
#[derive(Debug, Clone)]
pub struct HostServices {
    gate: Gate,
    files: Arc<Files>,
    routes: Routes,
    lane: bool,
}

impl HostServices {
    /// The file services behind a new gate deciding with `policy`, recording to `audit`,
    /// within `limits`.
    pub fn new(policy: Policy, audit: Audit, limits: Limits) -> Self {
        HostServices::from_gate(Gate::new(policy, audit, limits))
    }

    /// The file services behind `gate` (give clones of the gate to your own services, so
    /// they check and audit their calls on it too).
    pub fn from_gate(gate: Gate) -> Self {
        let limit = gate.limits().max_message_size;
        let files = Arc::new(Files {
            gate: gate.clone(),
            written: Mutex::default(),
            swept: Mutex::default(),
        });
        let routes = Routes::new(
            gate.serve(
                FilesServer::from_arc(Arc::clone(&files))
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
            ),
        );
        HostServices {
            gate,
            files,
            routes,
            lane: false,
        }
    }

    /// Offers each plugin [`connect`](HostServices::connect)ed from now on a lane for its
    /// calls (see [`Options::lane`]): shared memory instead of its socket, for calls that
    /// follow one another closely, at the price of up to 50 us of spinning CPU on both
    /// sides after each. The gate, the audit and the plugin's identity are the same on
    /// either. Off by default.
    #[must_use]
    pub fn lane(mut self, on: bool) -> Self {
        self.lane = on;
        self
    }

    /// These services plus `service` (a generated tonic server of the host's own, whose
    /// methods consult the gate with [`Gate::check`]), behind the same gate.
    pub fn serve<S>(mut self, service: S) -> Self
    where
        S: Service<
                http::Request<Body>,
                Error = std::convert::Infallible,
                Response = http::Response<Body>,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes = self.routes.add_service(self.gate.serve(service));
        self
    }

    /// Applies the operator's policy for the plugin `builder` starts: the SHA-256 its
    /// [`Policy`] pins for it, if any ([`PluginBuilder::sha256`]; a pin already on the
    /// builder is kept unless the policy has one), and an audit record for each start,
    /// refused or failed start, and idle stop of the plugin (operation `process:started`,
    /// `process:refused`, `process:failed`, `process:idle_stopped`; a refusal or failure is
    /// `denied`, decided by the operator when the binary failed its pinned digest, else by
    /// the host; the resource is the binary).
    ///
    /// ```no_run
    /// # async fn demo(services: tether_hostserve::HostServices) -> Result<(), Box<dyn std::error::Error>> {
    /// use tether_host::PluginClient;
    /// let plugin = services
    ///     .configure(PluginClient::builder("greeter", "./greeter-plugin"))
    ///     .start()
    ///     .await?;
    /// # drop(plugin); Ok(()) }
    /// ```
    pub fn configure(&self, builder: PluginBuilder) -> PluginBuilder {
        let policy = self.gate.policy();
        let mut builder = match policy.pinned_sha256(builder.name()) {
            Some(digest) => builder.sha256(digest),
            None => builder,
        };
        if let Some(key) = policy.publisher(builder.name()) {
            let (plugin, kinds) = (builder.name().to_owned(), policy.kinds());
            builder = builder
                .sha256_from(move |program: &Path| vouched_digest(&plugin, program, &key, &kinds));
        }
        let audit = self.gate.audit().clone();
        builder.on_lifecycle(move |event: &LifecycleEvent| {
            audit.record(lifecycle_record(event));
        })
    }

    /// The gate every service here stands behind.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The routes to serve to a plugin (for example with [`tether_hostconn::in_process`]
    /// in tests); [`HostServices::connect`] serves them for you.
    pub fn routes(&self) -> Routes {
        self.routes.clone()
    }

    /// Gives `plugin` these host services: the one line of host-service setup.
    ///
    /// [`tether_hostconn::establish_host_services`] with [`HostServices::routes`], plus an
    /// audit record (operation `connect`, decision `denied`) for every process other than
    /// the plugin's that connects to its host-service socket, for every connection of the
    /// plugin's past [`Limits::max_connections`], and for every connection (socket or lane)
    /// the host closed because the plugin broke the protocol (resource: the socket, or
    /// `lane`). Keep the returned connection:
    /// dropping it disconnects the plugin. A plugin that takes no host services is
    /// [`Outcome::NotRequested`]; [`Outcome::required`] makes that an error.
    ///
    /// The first time it serves a workspace, it removes the temporary files that writes
    /// interrupted by the death of their host left there ([`crate::RESERVED_PREFIX`]),
    /// and logs how many (target `tether::hostserve`).
    ///
    /// A client attached to a plugin another host started ([`PluginClient::reattach`]) is
    /// refused with [`tether_hostconn::Error::Attached`] before anything is touched (the
    /// workspace is the starting host's to sweep).
    pub async fn connect(&self, plugin: &PluginClient) -> Result<Outcome, tether_hostconn::Error> {
        if plugin.is_attached() {
            return Err(tether_hostconn::Error::Attached {
                plugin: plugin.name().to_owned(),
            });
        }
        self.files.sweep_workspace(plugin.name()).await;
        let audit = self.gate.audit().clone();
        let (instance, pid) = (plugin.instance(), plugin.pid());
        let hook: RefusalHook = Arc::new(move |refusal: &Refusal| {
            let by = refusal.credentials.and_then(|credentials| credentials.pid);
            audit.record(AuditRecord {
                time: AuditRecord::now(),
                plugin: refusal.label.to_string(),
                instance,
                pid: by,
                operation: Operation::Connect,
                resource: refusal.socket.display().to_string(),
                decision: Decision::Denied,
                decided_by: Decider::Host,
                capability: None,
                reason: if by == Some(pid) {
                    refusal.reason.clone()
                } else {
                    format!(
                        "{} (the plugin's host-service socket; the plugin is pid {pid})",
                        refusal.reason
                    )
                },
                request_id: None,
                timeout_ms: None,
                trace_id: None,
            });
        });
        let audit = self.gate.audit().clone();
        let on_violation: ViolationHook = Arc::new(move |violation: &Violation| {
            let plugin = &violation.plugin;
            audit.record(AuditRecord {
                time: AuditRecord::now(),
                plugin: plugin.name().to_owned(),
                instance: plugin.instance(),
                pid: Some(plugin.pid()),
                operation: Operation::Connect,
                resource: violation
                    .socket
                    .as_ref()
                    .map_or_else(|| "lane".to_owned(), |socket| socket.display().to_string()),
                decision: Decision::Denied,
                decided_by: Decider::Host,
                capability: None,
                reason: format!(
                    "connection closed: the plugin broke the protocol ({})",
                    violation.reason
                ),
                request_id: None,
                timeout_ms: None,
                trace_id: None,
            });
        });
        let options = Options::default()
            .on_refused(hook)
            .on_violation(on_violation)
            .max_connections(self.gate.limits().max_connections)
            .lane(self.lane);
        establish_host_services_with(plugin, self.routes(), options).await
    }

    /// The policy (clones share it: grant and revoke through it at runtime).
    pub fn policy(&self) -> &Policy {
        self.gate.policy()
    }

    /// Bytes `plugin` has written so far through `WriteFile`.
    pub fn bytes_written(&self, plugin: &str) -> u64 {
        self.files.written_counter(plugin).load(Ordering::Relaxed)
    }

    /// See [`Gate::calls_in_flight`].
    pub fn calls_in_flight(&self, plugin: &str) -> usize {
        self.gate.calls_in_flight(plugin)
    }

    /// See [`Gate::calls_waiting`].
    pub fn calls_waiting(&self, plugin: &str) -> usize {
        self.gate.calls_waiting(plugin)
    }

    /// See [`Gate::tracked_instances`].
    pub fn tracked_instances(&self) -> usize {
        self.gate.tracked_instances()
    }
}

/// The file services: `tether.hostserve.v1.Files`, every method on the [`Gate`].
#[derive(Debug)]
struct Files {
    gate: Gate,
    written: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// Workspaces already swept of leftover temporary files.
    swept: Mutex<HashSet<PathBuf>>,
}

impl Files {
    fn limits(&self) -> &Limits {
        self.gate.limits()
    }

    fn written_counter(&self, plugin: &str) -> Arc<AtomicU64> {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(written.entry(plugin.to_owned()).or_default())
    }

    /// Removes leftover temporary files from `plugin`'s workspace, once per workspace.
    async fn sweep_workspace(&self, plugin: &str) {
        let Some(workspace) = self.gate.policy().workspace(plugin) else {
            return;
        };
        if !self
            .swept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(workspace.clone())
        {
            return;
        }
        let shown = workspace.display().to_string();
        match tokio::task::spawn_blocking(move || confine::sweep(&workspace)).await {
            Ok(Ok(swept)) if swept.removed > 0 => tracing::info!(
                target: "tether::hostserve",
                plugin,
                workspace = shown,
                removed = swept.removed,
                kept = swept.kept,
                "removed {} leftover temporary file(s) of interrupted writes",
                swept.removed
            ),
            Ok(Ok(swept)) => tracing::debug!(
                target: "tether::hostserve",
                plugin,
                workspace = shown,
                kept = swept.kept,
                "no leftover temporary files"
            ),
            Ok(Err(err)) => tracing::warn!(
                target: "tether::hostserve",
                plugin,
                workspace = shown,
                %err,
                "could not sweep the workspace for leftover temporary files"
            ),
            Err(err) => tracing::warn!(
                target: "tether::hostserve",
                plugin,
                workspace = shown,
                %err,
                "the workspace sweep failed"
            ),
        }
    }
}

/// The lexical check on a path the plugin sent; a malformed one is denied (audited).
fn checked_path(call: &mut Call, raw: &[u8]) -> Result<RequestPath, Status> {
    RequestPath::parse(raw).map_err(|err| {
        let status =
            Status::invalid_argument(format!("invalid path {:?}: {err}", path::display(raw)));
        call.deny(status, "invalid path")
    })
}

/// Decides `verb` on `path`, and returns the plugin's workspace to operate beneath.
async fn authorize_path(
    call: &mut Call,
    verb: Verb,
    path: &RequestPath,
) -> Result<PathBuf, Status> {
    call.authorize(&Need::verb(verb, path.as_str())).await?;
    match call.workspace() {
        Some(workspace) => Ok(workspace.to_owned()),
        None => {
            let status = Status::failed_precondition(format!(
                "plugin `{}` has no workspace for the file services; the operator assigns one \
                 (`workspace` in the policy file, or Policy::set_workspace)",
                call.identity().name()
            ));
            Err(call.deny(status, "no workspace"))
        }
    }
}

/// The calling plugin's descriptor channel, for a bulk call; a plugin without one (attached
/// to another host, or served in-process) is refused (audited).
fn descriptor_channel(call: &mut Call, method: &str) -> Result<Arc<DescriptorSender>, Status> {
    match call.identity().descriptors() {
        Some(channel) => Ok(Arc::clone(channel)),
        None => {
            let status = Status::failed_precondition(format!(
                "{method}: plugin `{}` has no descriptor channel to receive the file or ring on (only \
                 a plugin this host started has one); use {} instead",
                call.identity().name(),
                method.trim_end_matches("Bulk"),
            ));
            Err(call.deny(status, "no descriptor channel"))
        }
    }
}

/// Sends the plugin a copy of `fd` on `channel`, returning the token it went under.
async fn hand_over(
    channel: &DescriptorSender,
    fd: BorrowedFd<'_>,
    stall: Duration,
) -> Result<u64, Status> {
    channel.send(fd, stall).await.map_err(|err| match err {
        DescriptorError::Closed => Status::unavailable(err.to_string()),
        DescriptorError::Stalled { .. } => Status::deadline_exceeded(err.to_string()),
        _ => Status::internal(err.to_string()),
    })
}

/// Records `status` as the outcome of `call`, and returns it.
fn failed(call: &mut Call, status: Status) -> Status {
    match call.finish::<()>(Err(status)) {
        Err(status) => status,
        Ok(()) => Status::internal("a failed call finished as a success"),
    }
}

/// An OS error as a status that says what happened to which path.
pub(crate) fn io_status(path: &str, err: &io::Error) -> Status {
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

/// The plugin's next message of a write, waiting at most `stall`.
async fn next_chunk<T>(stream: &mut Streaming<T>, stall: Duration) -> Result<Option<T>, Status> {
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
impl FilesRpc for Files {
    async fn read_dir(
        &self,
        request: Request<ReadDirRequest>,
    ) -> Result<Response<ReadDirResponse>, Status> {
        let resource = path::display(&request.get_ref().path);
        let mut call = self.gate.begin_on(&request, resource).await?;
        let ReadDirRequest {
            path,
            page_size,
            page_token,
        } = request.into_inner();
        let path = checked_path(&mut call, &path)?;
        let workspace = authorize_path(&mut call, Verb::Read, &path).await?;
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
        let max = self.limits().max_page;
        let size = match usize::try_from(page_size) {
            Ok(0) | Err(_) => max,
            Ok(n) => n.min(max),
        };
        let shown = path.as_str().to_owned();
        let result = call
            .blocking(move || -> io::Result<ReadDirResponse> {
                let dir = Target::locate(&workspace, &path)?.open_dir()?;
                let mut entries = Vec::with_capacity(size);
                let mut more = false;
                // The host's unfinished writes are never shown.
                let visible = dir.entries()?.filter(|entry| {
                    entry.as_ref().map_or(true, |entry| {
                        !entry.file_name().to_str().is_some_and(path::is_reserved)
                    })
                });
                for entry in visible.skip(skip) {
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
        call.finish(result).map(Response::new)
    }

    type ReadFileStream = ChunkStream;

    async fn read_file(
        &self,
        request: Request<ReadFileRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let resource = path::display(&request.get_ref().path);
        let mut call = self.gate.begin_on(&request, resource).await?;
        let path = checked_path(&mut call, &request.get_ref().path)?;
        let workspace = authorize_path(&mut call, Verb::Read, &path).await?;
        let shown = path.as_str().to_owned();
        let hard_links = self.limits().allow_hard_links;
        let opened = call
            .blocking(move || Target::locate(&workspace, &path)?.open_file(hard_links))
            .await?
            .map_err(|err| io_status(&shown, &err));
        let file = call.finish(opened)?;
        let shown = path::display(&request.get_ref().path);
        let (sender, receiver) = mpsc::channel(4);
        let chunk = self.limits().read_chunk;
        let stall = self.limits().stall_timeout;
        let permit = call.take_slot();
        let ending = Arc::new(Mutex::new(None));
        let pump_ending = Arc::clone(&ending);
        let plugin = call.identity().name().to_owned();
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
        // The call is identified from the connection, and holds a slot from the start, even
        // while it waits for its first message, which names the file.
        let mut call = self.gate.begin(&request).await?;
        let end = RequestEnd::of(&request);
        let mut stream = request.into_inner();
        let stall = self.limits().stall_timeout;
        let first = match next_chunk(&mut stream, stall).await {
            Ok(Some(first)) => first,
            Ok(None) => {
                let status = Status::invalid_argument(
                    "WriteFile: the request stream ended before its first message, which names \
                     the file to write",
                );
                return Err(call.deny(status, "no first message"));
            }
            Err(status) => return Err(call.deny(status, "no first message")),
        };
        call.set_resource(path::display(&first.path));
        let path = checked_path(&mut call, &first.path)?;
        let workspace = authorize_path(&mut call, Verb::Write, &path).await?;
        let mode = file_mode(first.mode);
        let shown = path.as_str().to_owned();
        let written = self.written_counter(call.identity().name());
        let quota = self.limits().write_quota;
        let result = self
            .write_stream(
                workspace,
                path,
                mode,
                first.data,
                (&mut stream, end),
                written,
                quota,
            )
            .await
            .map_err(|status| match status.code() {
                Code::ResourceExhausted | Code::Cancelled | Code::Unknown => status,
                _ => Status::new(status.code(), format!("{shown:?}: {}", status.message())),
            });
        call.finish(result)
            .map(|bytes_written| Response::new(WriteFileResponse { bytes_written }))
    }

    type ReadFileBulkStream = BulkEvents;

    async fn read_file_bulk(
        &self,
        request: Request<ReadFileRequest>,
    ) -> Result<Response<BulkEvents>, Status> {
        let resource = path::display(&request.get_ref().path);
        let mut call = self.gate.begin_on(&request, resource).await?;
        let path = checked_path(&mut call, &request.get_ref().path)?;
        let channel = descriptor_channel(&mut call, "ReadFileBulk")?;
        let workspace = authorize_path(&mut call, Verb::Read, &path).await?;
        let shown = path.as_str().to_owned();
        let hard_links = self.limits().allow_hard_links;
        let stall = self.limits().stall_timeout;
        // Opened as ReadFile opens it (no link followed, a regular file only, read-only),
        // then handed over: the host keeps no copy.
        let opened = call
            .blocking(move || -> io::Result<_> {
                let file = Target::locate(&workspace, &path)?.open_file(hard_links)?;
                let size = file.metadata()?.len();
                Ok((file, size))
            })
            .await?
            .map_err(|err| io_status(&shown, &err));
        let handed = match opened {
            Ok((file, size)) => hand_over(&channel, file.as_fd(), stall)
                .await
                .map(|token| (token, size)),
            Err(status) => Err(status),
        };
        let (token, size) = call.finish(handed)?;
        let event = BulkEvent {
            token,
            size,
            done: true,
            ..BulkEvent::default()
        };
        Ok(Response::new(Box::pin(tokio_stream::iter([Ok(event)]))))
    }

    type WriteFileBulkStream = BulkEvents;

    async fn write_file_bulk(
        &self,
        request: Request<Streaming<WriteFileBulkRequest>>,
    ) -> Result<Response<BulkEvents>, Status> {
        let mut call = self.gate.begin(&request).await?;
        let mut stream = request.into_inner();
        let stall = self.limits().stall_timeout;
        let first = match next_chunk(&mut stream, stall).await {
            Ok(Some(first)) if !first.end => first,
            Ok(_) => {
                let status = Status::invalid_argument(
                    "WriteFileBulk: the first message names the file to write; the stream \
                     ended or was ended without it",
                );
                return Err(call.deny(status, "no first message"));
            }
            Err(status) => return Err(call.deny(status, "no first message")),
        };
        call.set_resource(path::display(&first.path));
        let path = checked_path(&mut call, &first.path)?;
        let channel = descriptor_channel(&mut call, "WriteFileBulk")?;
        let workspace = authorize_path(&mut call, Verb::Write, &path).await?;
        let mode = file_mode(first.mode);
        let shown = path.as_str().to_owned();
        let written = self.written_counter(call.identity().name());
        let (quota, durable) = (self.limits().write_quota, self.limits().durable_writes);
        let shown_setup = shown.clone();
        let setup = async {
            let (unfinished, file) =
                Unfinished::create(workspace, path, mode, Arc::clone(&written), &shown_setup)
                    .await?;
            let (ring, offer) = tether_transport::ring::ring(bulk::SLOTS, bulk::SLOT_SIZE)
                .map_err(|err| Status::internal(format!("the write's ring: {err}")))?;
            // The plugin gets the ring's memory and control socket; the host keeps its side.
            let token = hand_over(&channel, offer.control.as_fd(), stall).await?;
            let ring_token = hand_over(&channel, offer.memory.as_fd(), stall).await?;
            Ok::<_, Status>((unfinished, file, ring, token, ring_token))
        };
        let (mut unfinished, file, ring, token, ring_token) = match setup.await {
            Ok(ready) => ready,
            Err(status) => return Err(failed(&mut call, status)),
        };
        let (events, receiver) = mpsc::channel(2);
        let _ = events.try_send(Ok(BulkEvent {
            token,
            ring_token,
            slots: bulk::SLOTS,
            slot_size: bulk::SLOT_SIZE,
            ..BulkEvent::default()
        }));
        let permit = call.take_slot();
        tokio::spawn(async move {
            let _permit = permit;
            let watch = events.clone();
            let received = blocking(move || {
                let ended = || watch.is_closed();
                let moved = bulk::receive_file(&ring, &file, stall, &ended, &mut |n| {
                    unfinished.count(n, quota)
                });
                (file, unfinished, moved)
            })
            .await;
            let finished = async {
                let (file, unfinished, moved) = received?;
                let moved = moved.map_err(|(stop, moved)| stop.status(&shown, moved))?;
                // The ring's end is not the data's: the plugin confirms it, with its count.
                match next_chunk(&mut stream, stall).await? {
                    Some(last) if last.end && last.bytes == moved => {}
                    Some(last) if last.end => {
                        return Err(Status::data_loss(format!(
                            "{shown:?}: the plugin wrote {} bytes, the host received {moved}; \
                             nothing was written",
                            last.bytes
                        )));
                    }
                    Some(_) => {
                        return Err(Status::invalid_argument(format!(
                            "{shown:?}: after the ring is closed, the only message is the end \
                             (`end` and the byte count); nothing was written"
                        )));
                    }
                    None => {
                        return Err(Status::cancelled(format!(
                            "{shown:?}: the ring was closed without the end being confirmed \
                             (the plugin gave up or died); nothing was written"
                        )));
                    }
                }
                // The last step runs to its end: it owns the unfinished write.
                blocking(move || -> io::Result<()> {
                    if durable {
                        file.sync_all()?;
                    }
                    unfinished.commit()
                })
                .await?
                .map_err(|err| io_status(&shown, &err))?;
                Ok(moved)
            };
            let outcome = call.finish(finished.await).map(|bytes| BulkEvent {
                done: true,
                bytes,
                ..BulkEvent::default()
            });
            let _ = events.send(outcome).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn delete_file(
        &self,
        request: Request<DeleteFileRequest>,
    ) -> Result<Response<DeleteFileResponse>, Status> {
        let resource = path::display(&request.get_ref().path);
        let mut call = self.gate.begin_on(&request, resource).await?;
        let path = checked_path(&mut call, &request.get_ref().path)?;
        let workspace = authorize_path(&mut call, Verb::Delete, &path).await?;
        let shown = path.as_str().to_owned();
        let result = call
            .blocking(move || Target::locate(&workspace, &path)?.remove_file())
            .await?
            .map_err(|err| io_status(&shown, &err));
        call.finish(result)
            .map(|()| Response::new(DeleteFileResponse {}))
    }

    async fn get_env(
        &self,
        request: Request<GetEnvRequest>,
    ) -> Result<Response<GetEnvResponse>, Status> {
        let name = request.get_ref().name.clone();
        let resource = name.escape_debug().to_string();
        let mut call = self.gate.begin_on(&request, resource).await?;
        if !is_env_name(&name) {
            return Err(call.deny(
                Status::invalid_argument(format!(
                    "{:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
                    name.escape_debug().to_string()
                )),
                "invalid variable name",
            ));
        }
        call.authorize(&Need::verb(Verb::Env, name.as_str()))
            .await?;
        let value = std::env::var_os(&name);
        let response = GetEnvResponse {
            present: value.is_some(),
            value: value
                .map(|v| v.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        call.finish(Ok(response)).map(Response::new)
    }

    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let resource = path::display(&request.get_ref().path);
        let mut call = self.gate.begin_on(&request, resource).await?;
        let path = checked_path(&mut call, &request.get_ref().path)?;
        let workspace = authorize_path(&mut call, Verb::Read, &path).await?;
        let shown = path.as_str().to_owned();
        let result = call
            .blocking(move || Target::locate(&workspace, &path)?.stat())
            .await?
            .map(|metadata| stat_response(&metadata))
            .map_err(|err| io_status(&shown, &err));
        call.finish(result).map(Response::new)
    }

    async fn create_dir(
        &self,
        request: Request<CreateDirRequest>,
    ) -> Result<Response<CreateDirResponse>, Status> {
        let resource = path::display(&request.get_ref().path);
        let mut call = self.gate.begin_on(&request, resource).await?;
        let path = checked_path(&mut call, &request.get_ref().path)?;
        let workspace = authorize_path(&mut call, Verb::Write, &path).await?;
        let shown = path.as_str().to_owned();
        let result = call
            .blocking(move || Target::locate(&workspace, &path)?.create_dir())
            .await?
            .map_err(|err| io_status(&shown, &err));
        call.finish(result)
            .map(|()| Response::new(CreateDirResponse {}))
    }
}

/// The permission bits of a new file from a write's `mode`: 0 means 0o644.
fn file_mode(mode: u32) -> u32 {
    if mode == 0 { 0o644 } else { mode & 0o777 }
}

/// A write not yet renamed into place: its temporary file and the quota its bytes took.
/// Dropped unfinished (a failure, or the call cancelled because the plugin went away in
/// the middle of it), it removes the temporary file and gives the quota back, so an
/// interrupted write leaves no trace.
struct Unfinished {
    target: Arc<Target>,
    temp: String,
    written: Arc<AtomicU64>,
    counted: u64,
    done: bool,
}

impl Unfinished {
    /// A new temporary file beside `path`'s target with `mode`, its bytes to count in
    /// `written`.
    async fn create(
        workspace: PathBuf,
        path: RequestPath,
        mode: u32,
        written: Arc<AtomicU64>,
        shown: &str,
    ) -> Result<(Unfinished, cap_std::fs::File), Status> {
        let (target, temp, file) = blocking(move || -> io::Result<_> {
            let target = Target::locate(&workspace, &path)?;
            let (temp, file) = target.create_temp(mode)?;
            Ok((target, temp, file))
        })
        .await?
        .map_err(|err| io_status(shown, &err))?;
        let unfinished = Unfinished {
            target: Arc::new(target),
            temp,
            written,
            counted: 0,
            done: false,
        };
        Ok((unfinished, file))
    }

    /// Counts `len` more bytes against `quota`, or refuses them.
    fn count(&mut self, len: u64, quota: u64) -> Result<(), Status> {
        let before = self.written.fetch_add(len, Ordering::Relaxed);
        if before + len > quota {
            self.written.fetch_sub(len, Ordering::Relaxed);
            return Err(Status::resource_exhausted(format!(
                "write quota exhausted: this plugin may write {quota} bytes and has written \
                 {before}; nothing was written to the target"
            )));
        }
        self.counted += len;
        Ok(())
    }

    /// Renames the temporary file over the target.
    fn commit(mut self) -> io::Result<()> {
        self.target.commit(&self.temp)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.done {
            self.written.fetch_sub(self.counted, Ordering::Relaxed);
            self.target.discard(&self.temp);
        }
    }
}

impl Files {
    /// Streams chunks into a temporary file beside the target, then renames it into place;
    /// on any failure, or if the call is dropped half way, the temporary file is removed,
    /// the quota given back and the target left untouched.
    #[allow(clippy::too_many_arguments, reason = "one private step of write_file")]
    async fn write_stream(
        &self,
        workspace: PathBuf,
        path: RequestPath,
        mode: u32,
        first: Vec<u8>,
        (stream, ended): (&mut Streaming<WriteFileChunk>, Option<RequestEnd>),
        written: Arc<AtomicU64>,
        quota: u64,
    ) -> Result<u64, Status> {
        let stall = self.limits().stall_timeout;
        let shown = path.as_str().to_owned();
        let (mut unfinished, file) =
            Unfinished::create(workspace, path, mode, written, &shown).await?;
        let mut file = Some(file);
        let mut next = Some(first);
        // Chunks are written in batches of about WRITE_BATCH bytes: one hand-off to a
        // blocking thread per batch, not per chunk, with at most one batch in memory.
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let mut batched = 0usize;
        loop {
            let data = match next.take() {
                Some(data) => Some(data),
                None => next_chunk(stream, stall).await?.map(|chunk| chunk.data),
            };
            let end = data.is_none();
            if let Some(data) = data.filter(|data| !data.is_empty()) {
                unfinished.count(data.len() as u64, quota)?;
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
                result.map_err(|err| io_status(&shown, &err))?;
            }
            if end {
                break;
            }
        }
        if !ended.as_ref().is_none_or(RequestEnd::reached) {
            return Err(Status::cancelled(
                "the plugin cancelled the write before its end; nothing was written",
            ));
        }
        let total = unfinished.counted;
        let durable = self.limits().durable_writes;
        // The last step runs to its end even if the call is dropped meanwhile: it owns the
        // unfinished write, and either renames it into place or discards it.
        blocking(move || -> io::Result<()> {
            if let Some(file) = file
                && durable
            {
                file.sync_all()?;
            }
            unfinished.commit()
        })
        .await?
        .map_err(|err| io_status(&shown, &err))?;
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use tether_protocol::hostserve::files_client::FilesClient;
    use tonic::Code;

    use crate::{Audit, HostServices, Limits, Policy};

    /// A write whose request stream ends before its first message has no file to name: it
    /// is refused as such, not taken for a write of an empty path.
    #[tokio::test]
    async fn a_write_stream_without_a_first_message_is_refused_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy::new();
        policy.set_workspace("writer", dir.path());
        policy.grant("writer", "write:**").unwrap();
        let services = HostServices::new(policy, Audit::tracing_only(), Limits::default());
        let local = tether_hostconn::in_process("writer", services.routes())
            .await
            .unwrap();
        let status = FilesClient::new(local.channel())
            .write_file(tokio_stream::empty())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("before its first message"),
            "{status:?}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
