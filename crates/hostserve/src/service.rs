//! [`HostServices`]: the `tether.hostserve.v1.HostServices` implementation.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
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
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::audit::{Audit, AuditRecord};
use crate::capability::{Verb, is_env_name};
use crate::confine::{self, Target};
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
    /// Connections one plugin instance may hold open to its host-service socket at once
    /// (see [`HostServices::connect`]); more are closed at once and audited (operation
    /// `connect`). The SDK uses one.
    pub max_connections: usize,
    /// Calls one plugin instance may have open at once, counted from the moment a request
    /// arrives until its response starts: waiting for a slot, or for a request the plugin
    /// never finishes sending. More are refused at once with `RESOURCE_EXHAUSTED` and
    /// audited, before anything is read. Calls streaming a response hold a slot instead
    /// (`max_concurrent_calls`).
    pub max_open_calls: usize,
    /// Whether `ReadFile` reads a regular file that has more than one hard link. Off by
    /// default: a hard link is another name for the same file, possibly outside every
    /// grant (a link under `config/` to a file under `secrets/` reads the secret), and the
    /// host cannot tell the other names. Writes and deletes are safe either way (a write
    /// renames a new file into place; a delete removes only the name).
    pub allow_hard_links: bool,
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
            max_connections: tether_hostconn::DEFAULT_MAX_CONNECTIONS,
            max_open_calls: 64,
            allow_hard_links: false,
        }
    }
}

/// What the host services hold for one running plugin instance, while any of its calls is
/// open: its concurrency slots and its count of open calls. Kept through `Weak` references,
/// so an instance that has no call open (an exited one, above all) holds nothing.
#[derive(Debug)]
struct Instance {
    slots: Arc<Semaphore>,
    open: AtomicUsize,
    waiting: AtomicUsize,
}

/// A call waiting for a slot, counted in [`Instance::waiting`] until dropped.
struct Waiting<'a>(&'a Instance);

impl<'a> Waiting<'a> {
    fn new(instance: &'a Instance) -> Self {
        instance.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(instance)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A concurrency slot, held for the life of a call or of the stream it answers with.
#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
    _instance: Arc<Instance>,
}

/// An open call, counted against [`Limits::max_open_calls`] until dropped.
struct OpenCall(Arc<Instance>);

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
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
    plugins: Mutex<HashMap<(String, u64), Weak<Instance>>>,
    written: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// Workspaces already swept of leftover temporary files.
    swept: Mutex<HashSet<PathBuf>>,
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
            swept: Mutex::default(),
        }
    }

    /// The routes to hand to `establish_host_services`; clones of the `Arc` share one
    /// implementation among all plugins.
    pub fn routes(self: &Arc<Self>) -> Routes {
        let limit = self.limits.max_message_size;
        Routes::new(Admission {
            host: Arc::clone(self),
            inner: HostServicesServer::from_arc(Arc::clone(self))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        })
    }

    /// Gives `plugin` these host services: the one line of host-service setup.
    ///
    /// [`tether_hostconn::establish_host_services`] with [`HostServices::routes`], plus an
    /// audit record (operation `connect`, decision `denied`) for every process other than
    /// the plugin's that connects to its host-service socket, and for every connection of
    /// the plugin's past [`Limits::max_connections`]. Keep the returned connection:
    /// dropping it disconnects the plugin.
    ///
    /// The first time it serves a workspace, it removes the temporary files that writes
    /// interrupted by the death of their host left there ([`crate::RESERVED_PREFIX`]),
    /// and logs how many (target `tether::hostserve`).
    pub async fn connect(
        self: &Arc<Self>,
        plugin: &PluginClient,
    ) -> Result<Outcome, tether_hostconn::Error> {
        self.sweep_workspace(plugin.name()).await;
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
                reason: if refusal.credentials.and_then(|c| c.pid) == Some(pid) {
                    refusal.reason.clone()
                } else {
                    format!(
                        "{} (the plugin's host-service socket; the plugin is pid {pid})",
                        refusal.reason
                    )
                },
                request_id: None,
                timeout_ms: None,
            });
        });
        let options = Options::default()
            .on_refused(hook)
            .max_connections(self.limits.max_connections);
        establish_host_services_with(plugin, self.routes(), options).await
    }

    /// Removes leftover temporary files from `plugin`'s workspace, once per workspace.
    async fn sweep_workspace(&self, plugin: &str) {
        let Some(workspace) = self.policy.workspace(plugin) else {
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

    /// Concurrency slots held right now by the instances of `plugin` (calls in progress,
    /// streams being sent). A slot is given back as soon as its call ends, including when
    /// the plugin goes away in the middle of it.
    pub fn calls_in_flight(&self, plugin: &str) -> usize {
        let slots = self.limits.max_concurrent_calls;
        self.live_instances()
            .iter()
            .filter(|((name, _), _)| name == plugin)
            .map(|(_, instance)| slots.saturating_sub(instance.slots.available_permits()))
            .sum()
    }

    /// Calls of the instances of `plugin` waiting for a concurrency slot right now.
    pub fn calls_waiting(&self, plugin: &str) -> usize {
        self.live_instances()
            .iter()
            .filter(|((name, _), _)| name == plugin)
            .map(|(_, instance)| instance.waiting.load(Ordering::Relaxed))
            .sum()
    }

    /// Plugin instances the host services hold state for: those with a call open. An
    /// instance that has ended holds none, however many have come and gone.
    pub fn tracked_instances(&self) -> usize {
        self.live_instances().len()
    }

    fn live_instances(&self) -> Vec<((String, u64), Arc<Instance>)> {
        let plugins = self.plugins.lock().unwrap_or_else(PoisonError::into_inner);
        plugins
            .iter()
            .filter_map(|(key, weak)| weak.upgrade().map(|instance| (key.clone(), instance)))
            .collect()
    }

    /// The state of the calling instance, made if it has no call open.
    fn instance(&self, identity: &PluginIdentity) -> Arc<Instance> {
        let mut plugins = self.plugins.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (identity.name().to_owned(), identity.instance());
        if let Some(instance) = plugins.get(&key).and_then(Weak::upgrade) {
            return instance;
        }
        // Forget the instances that have no call open any more (ended ones above all).
        plugins.retain(|_, weak| weak.strong_count() > 0);
        let instance = Arc::new(Instance {
            slots: Arc::new(Semaphore::new(self.limits.max_concurrent_calls)),
            open: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
        });
        plugins.insert(key, Arc::downgrade(&instance));
        instance
    }

    /// Admits a call that just arrived, or refuses it (audited) when the instance has
    /// [`Limits::max_open_calls`] open already.
    fn admit(
        &self,
        identity: &PluginIdentity,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<OpenCall, Status> {
        let instance = self.instance(identity);
        let limit = self.limits.max_open_calls;
        if instance.open.fetch_add(1, Ordering::Relaxed) >= limit {
            instance.open.fetch_sub(1, Ordering::Relaxed);
            let context = Correlation::from_metadata(&MetadataMap::from_headers(headers.clone()));
            let status = Status::resource_exhausted(format!(
                "too many host-service calls open for this plugin (limit {limit}, counting \
                 calls waiting for a slot and requests not yet complete); finish some first"
            ));
            self.audit.record(AuditRecord {
                time: AuditRecord::now(),
                plugin: identity.name().to_owned(),
                instance: identity.instance(),
                pid: identity.pid(),
                operation: operation_of(path),
                resource: String::new(),
                decision: "denied",
                reason: format!("open-call limit reached: {}", status.message()),
                request_id: context.request_id,
                timeout_ms: context.timeout_ms,
            });
            return Err(status);
        }
        Ok(OpenCall(instance))
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
        let instance = self.instance(&identity);
        let mut call = Call {
            host: self,
            identity,
            context,
            operation,
            resource: resource.to_owned(),
            permit: None,
            granted: std::sync::OnceLock::new(),
            recorded: AtomicBool::new(false),
        };
        if let Some(bad) = &call.context.invalid_request_id {
            return Err(call.deny(
                Status::invalid_argument(format!(
                    "invalid request id {bad}: use 1 to 64 characters of A-Z a-z 0-9 . _ : -"
                )),
                "invalid request id",
            ));
        }
        let slots = Arc::clone(&instance.slots);
        let waiting = Waiting::new(&instance);
        let acquired = tokio::time::timeout(self.limits.queue_wait, slots.acquire_owned()).await;
        drop(waiting);
        match acquired {
            Ok(Ok(permit)) => {
                call.permit = Some(Slot {
                    _permit: permit,
                    _instance: instance,
                });
                Ok(call)
            }
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
        Correlation::from_metadata(request.metadata())
    }

    fn from_metadata(metadata: &MetadataMap) -> Self {
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
    permit: Option<Slot>,
    /// The grant that allowed it, once the policy did.
    granted: std::sync::OnceLock<String>,
    /// Whether its one audit record was written.
    recorded: AtomicBool,
}

impl Drop for Call<'_> {
    /// A call dropped before its record was written was cancelled: the plugin gave up on
    /// it or went away in the middle of it. It still leaves its one record.
    fn drop(&mut self) {
        if self.recorded.load(Ordering::Relaxed) {
            return;
        }
        const CANCELLED: &str = "cancelled: the plugin went away or gave up before the call \
                                 finished (an unfinished write leaves nothing)";
        match self.granted.get() {
            Some(grant) => self.audit("allowed", format!("granted by `{grant}`; {CANCELLED}")),
            None => self.audit("denied", CANCELLED.to_owned()),
        }
    }
}

impl Call<'_> {
    fn audit(&self, decision: &'static str, reason: String) {
        self.recorded.store(true, Ordering::Relaxed);
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
    fn authorize(&self, verb: Verb, resource: &str) -> Result<(PathBuf, String), Status> {
        match self
            .host
            .policy
            .decide(self.identity.name(), verb, resource)
        {
            Decision::Allow { workspace, grant } => {
                let _ = self.granted.set(grant.clone());
                Ok((workspace, grant))
            }
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

    /// Runs `f` on the blocking pool holding this call's slot: if the call is dropped
    /// while `f` runs (the plugin gave up), the slot stays taken until `f` ends, so a
    /// plugin's blocked work can never take more host threads than it has slots, and
    /// other plugins keep theirs.
    async fn blocking<T: Send + 'static>(
        &mut self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        let slot = self.permit.take();
        let (slot, result) = blocking(move || {
            let result = f();
            (slot, result)
        })
        .await?;
        self.permit = slot;
        Ok(result)
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
        let mut call = self.begin(&request, "read_dir", &resource).await?;
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
        let hard_links = self.limits.allow_hard_links;
        let opened = call
            .blocking(move || Target::locate(&workspace, &path)?.open_file(hard_links))
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
        let end = RequestEnd::of(&request);
        let mut stream = request.into_inner();
        let stall = self.limits.stall_timeout;
        // The call is identified from the connection, and holds a slot from the start, even
        // while it waits for its first message, which names the file.
        let mut call = self
            .begin_as(identity.clone(), context, "write_file", "")
            .await?;
        let first = match next_chunk(&mut stream, stall).await {
            Ok(first) => first.unwrap_or_default(),
            Err(status) => return Err(call.deny(status, "no first message")),
        };
        call.resource = path::display(&first.path);
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
                (&mut stream, end),
                written,
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
        let mut call = self.begin(&request, "delete_file", &resource).await?;
        let path = call.path(&request.get_ref().path)?;
        let (workspace, grant) = call.authorize(Verb::Delete, path.as_str())?;
        let shown = path.as_str().to_owned();
        let result = call
            .blocking(move || Target::locate(&workspace, &path)?.remove_file())
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
        let mut call = self.begin(&request, "stat", &resource).await?;
        let path = call.path(&request.get_ref().path)?;
        let (workspace, grant) = call.authorize(Verb::Read, path.as_str())?;
        let shown = path.as_str().to_owned();
        let result = call
            .blocking(move || Target::locate(&workspace, &path)?.stat())
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
        let mut call = self.begin(&request, "create_dir", &resource).await?;
        let path = call.path(&request.get_ref().path)?;
        let (workspace, grant) = call.authorize(Verb::Write, path.as_str())?;
        let shown = path.as_str().to_owned();
        let result = call
            .blocking(move || Target::locate(&workspace, &path)?.create_dir())
            .await?
            .map_err(|err| io_status(&shown, &err));
        call.finish(&grant, result)
            .map(|()| Response::new(CreateDirResponse {}))
    }
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

impl HostServices {
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
        let stall = self.limits.stall_timeout;
        let shown = path.as_str().to_owned();
        let (target, temp, file) = blocking(move || -> io::Result<_> {
            let target = Target::locate(&workspace, &path)?;
            let (temp, file) = target.create_temp(mode)?;
            Ok((target, temp, file))
        })
        .await?
        .map_err(|err| io_status(&shown, &err))?;
        let mut unfinished = Unfinished {
            target: Arc::new(target),
            temp,
            written,
            counted: 0,
            done: false,
        };
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
        let durable = self.limits.durable_writes;
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

/// The audit operation of a `HostServices` method path (`/…HostServices/ReadDir`).
fn operation_of(path: &str) -> &'static str {
    match path.rsplit('/').next().unwrap_or_default() {
        "ReadDir" => "read_dir",
        "ReadFile" => "read_file",
        "WriteFile" => "write_file",
        "DeleteFile" => "delete_file",
        "CreateDir" => "create_dir",
        "GetEnv" => "get_env",
        "Stat" => "stat",
        _ => "unknown",
    }
}

type ServerFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

/// Whether a request's body reached its end (`END_STREAM`), as opposed to being cut off.
#[derive(Debug, Clone, Default)]
struct RequestEnd(Arc<AtomicBool>);

impl RequestEnd {
    /// Whether the plugin finished sending the request (it did not cancel it). Requests
    /// that did not come through [`Admission`] count as finished.
    fn of<T>(request: &Request<T>) -> Option<Self> {
        request.extensions().get::<RequestEnd>().cloned()
    }

    fn reached(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A request body that records in its [`RequestEnd`] when it ends normally.
struct Watched {
    inner: Body,
    end: RequestEnd,
}

impl http_body::Body for Watched {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(None) = polled {
            self.end.0.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let ended = self.inner.is_end_stream();
        if ended {
            self.end.0.store(true, Ordering::Relaxed);
        }
        ended
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The host services behind their admission check: every request that arrives is counted
/// against its plugin instance's [`Limits::max_open_calls`] before anything of it is read,
/// and refused at once (audited) past the limit.
#[derive(Clone)]
struct Admission {
    host: Arc<HostServices>,
    inner: HostServicesServer<HostServices>,
}

impl NamedService for Admission {
    const NAME: &'static str = <HostServicesServer<HostServices> as NamedService>::NAME;
}

impl Service<http::Request<Body>> for Admission {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = ServerFuture;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        Service::<http::Request<Body>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> ServerFuture {
        // tonic reports a request stream the client cancelled (`RST_STREAM`) as a clean end
        // of stream: record which it was, so a cancelled write is never taken as complete.
        let request = if request.uri().path().ends_with("/WriteFile") {
            let (mut parts, body) = request.into_parts();
            let end = RequestEnd::default();
            let body = Body::new(Watched {
                inner: body,
                end: end.clone(),
            });
            parts.extensions.insert(end);
            http::Request::from_parts(parts, body)
        } else {
            request
        };
        // Calls that carry no identity are refused by the services themselves.
        let admitted = match request.extensions().get::<PluginIdentity>() {
            Some(identity) => {
                match self
                    .host
                    .admit(identity, request.uri().path(), request.headers())
                {
                    Ok(open) => Some(open),
                    Err(status) => {
                        return Box::pin(std::future::ready(Ok(status.into_http())));
                    }
                }
            }
            None => None,
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            drop(admitted);
            response
        })
    }
}
