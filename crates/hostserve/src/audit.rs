//! The audit trail: one JSON line per decision, to a file the host chooses, and a
//! `tracing` event (target `tether::audit`).
//!
//! Records go through a bounded queue ([`AuditBuilder::queue`]) to a writer thread, so a
//! call never writes to the disk itself. What happens when a record cannot be written (the
//! queue is full, the disk is full, a write fails) is the host's choice ([`OnFailure`]):
//! by default a call that would be allowed first reserves room for its record
//! ([`Audit::reserve`]) and is denied when it cannot get it, and a reserved record is kept
//! until it is written. The file is bounded: past its size limit it is renamed to
//! `<file>.1` (the older ones to `<file>.2` and so on, the oldest removed) and a new one is
//! started.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime};

use serde::{Serialize, Serializer};
use tether_protocol::hostserve::files_server::SERVICE_NAME as HOST_SERVICES;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Default size past which the file is rotated.
const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// Default number of rotated files kept.
const DEFAULT_GENERATIONS: usize = 5;
/// Default number of records waiting for the writer at most.
const DEFAULT_QUEUE: usize = 4096;
/// Default time a call waits for room for its record.
const DEFAULT_WAIT: Duration = Duration::from_secs(2);
/// Lines handed to the file in one `writev` at most.
const BATCH: usize = 256;
/// How often a failing writer tries again.
const RETRY: Duration = Duration::from_millis(100);
/// How long the writer waits after writing, for more records to write together: while it
/// waits, it is not blocked on the queue, so queuing a record costs no wake-up.
const GATHER: Duration = Duration::from_millis(1);
/// How long the writer waits before trying again a rotation that failed.
const ROTATION_RETRY: Duration = Duration::from_secs(10);
/// Bytes kept of a gRPC service or method name (a plugin chooses them).
const MAX_NAME: usize = 256;

/// A file operation of `tether.hostserve.v1.Files`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileOperation {
    /// `ReadDir`: lists a directory.
    ReadDir,
    /// `ReadFile`: reads a file.
    ReadFile,
    /// `WriteFile`: writes a file.
    WriteFile,
    /// `DeleteFile`: deletes a file.
    DeleteFile,
    /// `CreateDir`: creates a directory.
    CreateDir,
    /// `GetEnv`: reads an environment variable.
    GetEnv,
    /// `Stat`: reads a file's metadata.
    Stat,
}

impl FileOperation {
    /// Every file operation.
    pub const ALL: [FileOperation; 7] = [
        FileOperation::ReadDir,
        FileOperation::ReadFile,
        FileOperation::WriteFile,
        FileOperation::DeleteFile,
        FileOperation::CreateDir,
        FileOperation::GetEnv,
        FileOperation::Stat,
    ];

    /// Its name in audit records: `read_dir`, `read_file`, `write_file`, `delete_file`,
    /// `create_dir`, `get_env` or `stat`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileOperation::ReadDir => "read_dir",
            FileOperation::ReadFile => "read_file",
            FileOperation::WriteFile => "write_file",
            FileOperation::DeleteFile => "delete_file",
            FileOperation::CreateDir => "create_dir",
            FileOperation::GetEnv => "get_env",
            FileOperation::Stat => "stat",
        }
    }

    /// Its gRPC method name: `ReadDir`, `ReadFile`, `WriteFile`, `DeleteFile`,
    /// `CreateDir`, `GetEnv` or `Stat`.
    pub fn method(self) -> &'static str {
        match self {
            FileOperation::ReadDir => "ReadDir",
            FileOperation::ReadFile => "ReadFile",
            FileOperation::WriteFile => "WriteFile",
            FileOperation::DeleteFile => "DeleteFile",
            FileOperation::CreateDir => "CreateDir",
            FileOperation::GetEnv => "GetEnv",
            FileOperation::Stat => "Stat",
        }
    }

    /// The operation whose gRPC method name is `method` (`ReadDir` …), if any.
    /// `ReadFileBulk` and `WriteFileBulk` are `ReadFile` and `WriteFile`: the same access
    /// to the same file, its bytes carried through a pipe.
    pub fn from_method(method: &str) -> Option<Self> {
        match method {
            "ReadFileBulk" => Some(FileOperation::ReadFile),
            "WriteFileBulk" => Some(FileOperation::WriteFile),
            _ => FileOperation::ALL
                .into_iter()
                .find(|operation| operation.method() == method),
        }
    }
}

impl fmt::Display for FileOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FileOperation {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What a call did, typed. Serializes (and displays) as one string: a file operation by its
/// name (`read_dir`, `read_file`, `write_file`, `delete_file`, `create_dir`, `get_env`,
/// `stat`), [`Operation::Connect`] as `connect`, [`Operation::Process`] as
/// `process:<what>` (e.g. `process:started`), and any other method as
/// `<service>/<method>`, e.g. `tether.bus.v1.Bus/Publish`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Operation {
    /// A file operation of `tether.hostserve.v1.Files`.
    File(FileOperation),
    /// A refused connection to a plugin's host-service socket (from another process, or
    /// past the plugin's connection limit), or one the host closed because the plugin
    /// broke the protocol on it (the socket, or its lane).
    Connect,
    /// Something that happened to the plugin's process: a start, a start refused (its
    /// binary failed verification) or failed, an idle stop
    /// ([`HostServices::configure`](crate::HostServices::configure)).
    Process(tether_host::LifecycleKind),
    /// A call to a gRPC method other than the file operations.
    Method {
        /// The fully qualified service name, e.g. `tether.bus.v1.Bus`.
        service: String,
        /// The method name, e.g. `Publish`.
        method: String,
    },
}

impl Operation {
    /// The operation of a gRPC request path, `/<service>/<method>`: a
    /// [`FileOperation`] for a known method of `tether.hostserve.v1.Files`, else
    /// [`Operation::Method`] (with an empty service if the path has no `/` between the two).
    /// The names are kept to their first 256 bytes.
    pub fn from_grpc_path(path: &str) -> Operation {
        let path = path.strip_prefix('/').unwrap_or(path);
        let (service, method) = path.split_once('/').unwrap_or(("", path));
        if service == HOST_SERVICES
            && let Some(operation) = FileOperation::from_method(method)
        {
            return Operation::File(operation);
        }
        Operation::Method {
            service: capped(service).to_owned(),
            method: capped(method).to_owned(),
        }
    }

    /// Its name in audit records (see [`Operation`]).
    pub fn as_str(&self) -> Cow<'_, str> {
        match self {
            Operation::File(operation) => Cow::Borrowed(operation.as_str()),
            Operation::Connect => Cow::Borrowed("connect"),
            Operation::Process(kind) => Cow::Owned(format!("process:{kind}")),
            Operation::Method { service, method } => Cow::Owned(format!("{service}/{method}")),
        }
    }
}

impl From<FileOperation> for Operation {
    fn from(operation: FileOperation) -> Self {
        Operation::File(operation)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::File(operation) => f.write_str(operation.as_str()),
            Operation::Connect => f.write_str("connect"),
            Operation::Process(kind) => write!(f, "process:{kind}"),
            Operation::Method { service, method } => write!(f, "{service}/{method}"),
        }
    }
}

impl Serialize for Operation {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The first [`MAX_NAME`] bytes of `name`, cut at a character boundary.
fn capped(name: &str) -> &str {
    let mut end = name.len().min(MAX_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// What was decided. Serializes (and displays) as `allowed` or `denied`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The call was allowed (it may still have failed; the reason says).
    Allowed,
    /// The call was denied.
    Denied,
}

impl Decision {
    /// `allowed` or `denied`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Decision {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Who decided. Serializes (and displays) as `policy`, `host`, `operator`, or
/// `hook:<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Decider {
    /// The policy: the capabilities the operator granted the plugin.
    Policy,
    /// The host's own checks: malformed input, limits, confinement, cancellation, the
    /// audit trail itself.
    Host,
    /// The operator, directly.
    Operator,
    /// A hook the host installed, by its name.
    Hook(String),
}

impl Decider {
    /// Its name in audit records (see [`Decider`]).
    pub fn as_str(&self) -> Cow<'_, str> {
        match self {
            Decider::Policy => Cow::Borrowed("policy"),
            Decider::Host => Cow::Borrowed("host"),
            Decider::Operator => Cow::Borrowed("operator"),
            Decider::Hook(name) => Cow::Owned(format!("hook:{name}")),
        }
    }
}

impl fmt::Display for Decider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decider::Hook(name) => write!(f, "hook:{name}"),
            other => f.write_str(&other.as_str()),
        }
    }
}

impl Serialize for Decider {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One decision.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// When, RFC 3339 with milliseconds, UTC ([`AuditRecord::now`]).
    pub time: String,
    /// The plugin's name, as the host knows it.
    pub plugin: String,
    /// The plugin's instance number.
    pub instance: u64,
    /// The calling process (for [`Operation::Connect`], the process that was refused);
    /// `None` (`null` in JSON) when the kernel could not say which process it was (a
    /// refused peer in another pid namespace).
    pub pid: Option<u32>,
    /// What the call did.
    pub operation: Operation,
    /// The path or variable, as requested (escaped if not UTF-8, capped), or what else the
    /// operation acted on.
    pub resource: String,
    /// Allowed or denied.
    pub decision: Decision,
    /// Who decided.
    pub decided_by: Decider,
    /// The capability that allowed the call, or the one it lacked; `None` when no
    /// capability is involved (e.g. a malformed request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    /// Why: the grant that allowed it, or what denied it, and how the operation ended.
    pub reason: String,
    /// The request id the call carried (`tether-request-id`), if any: the plugin passes on
    /// the id of the host's call it is working for. A correlation aid, not an identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The time the caller had left (its `grpc-timeout`) when the call arrived, if it set one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The W3C trace id the call carried (its `traceparent`), 32 lowercase hex digits, if
    /// any: the plugin passes on the trace of the host's call it is working for. A
    /// correlation aid, not an identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl AuditRecord {
    /// The current time as [`AuditRecord::time`] has it: RFC 3339 with milliseconds, UTC.
    pub fn now() -> String {
        humantime::format_rfc3339_millis(SystemTime::now()).to_string()
    }

    /// Emits the record as a `tracing` event (target `tether::audit`): `info` if allowed,
    /// `warn` if denied.
    fn trace(&self) {
        match self.decision {
            Decision::Denied => tracing::warn!(target: "tether::audit",
                plugin = self.plugin, instance = self.instance, pid = self.pid,
                operation = %self.operation, resource = self.resource,
                decision = %self.decision, decided_by = %self.decided_by,
                capability = self.capability.as_deref(), reason = self.reason,
                request_id = self.request_id.as_deref(), timeout_ms = self.timeout_ms,
                trace_id = self.trace_id.as_deref(),
                "host service call denied"),
            Decision::Allowed => tracing::info!(target: "tether::audit",
                plugin = self.plugin, instance = self.instance, pid = self.pid,
                operation = %self.operation, resource = self.resource,
                decision = %self.decision, decided_by = %self.decided_by,
                capability = self.capability.as_deref(), reason = self.reason,
                request_id = self.request_id.as_deref(), timeout_ms = self.timeout_ms,
                trace_id = self.trace_id.as_deref(),
                "host service call allowed"),
        }
    }
}

/// What to do when a record cannot be written (writer queue full, disk full, write error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// The default (with `wait` 2 s): a call that would be allowed first reserves room
    /// for its record ([`Audit::reserve`]), waiting up to `wait` for a queue slot and for
    /// a failing writer to recover; if it cannot, the call is denied ([`AuditError`]).
    ///
    /// A reserved record is never dropped: if writing it fails, the writer keeps it (in
    /// memory, bounded by the queue size, since room is only given back once a record is
    /// written) and tries again every 100 ms or so until it is written, continuing a short
    /// write where it stopped so no line is ever torn.
    FailClosed {
        /// How long a call waits for room for its record.
        wait: Duration,
    },
    /// Never wait, never deny: a record that finds no room, or whose write fails, is
    /// counted ([`Audit::dropped`], [`Audit::failed`]) and reported with a `tracing`
    /// warning, then given up.
    Continue,
}

impl Default for OnFailure {
    fn default() -> Self {
        OnFailure::FailClosed { wait: DEFAULT_WAIT }
    }
}

/// Why a call cannot have room for its record ([`Audit::reserve`]); the host denies the
/// calls it cannot record.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The writer did not free a queue slot in time.
    #[error("the audit trail is behind; waited {wait:?}; the host denies calls it cannot record")]
    QueueFull {
        /// How long the call waited.
        wait: Duration,
    },
    /// The audit file cannot be written, and did not recover in time.
    #[error("{error}; waited {wait:?}; the host denies calls it cannot record")]
    Failing {
        /// How long the call waited.
        wait: Duration,
        /// What fails, naming the file and the OS error, e.g. `the audit file
        /// /x/audit.jsonl cannot be written (No space left on device)`.
        error: String,
    },
}

/// The state of an audit trail ([`Audit::health`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditHealth {
    /// Records queued for the file and not yet written (or given up).
    pub queued: usize,
    /// While the file cannot be written: the last write error, naming the file.
    pub failing: Option<String>,
    /// Records given up for lack of queue room.
    pub dropped: u64,
    /// Records given up because writing them failed.
    pub failed: u64,
    /// Records written to the file.
    pub written: u64,
}

/// Where audit records go. Cheap to clone; the clones share one file and one queue.
#[derive(Debug, Clone)]
pub struct Audit {
    file: Option<Sink>,
}

/// The way to the writer thread.
#[derive(Debug, Clone)]
struct Sink {
    sender: Sender<AuditRecord>,
    shared: Arc<Shared>,
}

/// What callers and the writer thread share.
#[derive(Debug)]
struct Shared {
    path: PathBuf,
    on_failure: OnFailure,
    /// Queue room: a permit per record that may wait for the writer.
    room: Arc<Semaphore>,
    /// Records sent to the writer.
    sent: AtomicU64,
    /// Records the writer is done with (written or given up).
    done: watch::Sender<u64>,
    /// While the file cannot be written: why.
    failing: watch::Sender<Option<String>>,
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    /// `dropped` and `failed` as metrics ([`crate::metric`]): registered with the recorder
    /// installed when the trail was opened, so the writer thread counts into it too.
    dropped_metric: metrics::Counter,
    failed_metric: metrics::Counter,
}

impl Shared {
    /// Counts `n` records given up for lack of queue room; returns the total.
    fn count_dropped(&self, n: u64) -> u64 {
        self.dropped_metric.increment(n);
        self.dropped.fetch_add(n, Ordering::Relaxed) + n
    }

    /// Counts `n` records given up because writing them failed; returns the total.
    fn count_failed(&self, n: u64) -> u64 {
        self.failed_metric.increment(n);
        self.failed.fetch_add(n, Ordering::Relaxed) + n
    }

    /// Done with a record that was sent: its room is free again.
    fn finish(&self) {
        self.done.send_modify(|done| *done += 1);
        self.room.add_permits(1);
    }
}

/// Options of an audit file ([`Audit::to_file_with`]).
#[derive(Debug, Clone)]
pub struct AuditBuilder {
    path: PathBuf,
    max_bytes: u64,
    generations: usize,
    queue: usize,
    on_failure: OnFailure,
}

impl AuditBuilder {
    /// Rotates the file when a record would take it past `max_bytes` (default 64 MiB).
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Keeps `generations` rotated files (default 5): `<path>.1` (the newest) to
    /// `<path>.<generations>`; the oldest is removed. With 0, a full file is removed.
    pub fn generations(mut self, generations: usize) -> Self {
        self.generations = generations;
        self
    }

    /// Lets at most `queue` records wait for the writer (default 4096; at least 1).
    pub fn queue(mut self, queue: usize) -> Self {
        self.queue = queue;
        self
    }

    /// What to do when a record cannot be written (default [`OnFailure::FailClosed`]
    /// waiting 2 s).
    pub fn on_failure(mut self, on_failure: OnFailure) -> Self {
        self.on_failure = on_failure;
        self
    }

    /// Opens (creating it if needed) the file for appending and starts its writer thread.
    ///
    /// Its counters of records given up (`tether_audit_records_dropped_total`,
    /// `tether_audit_records_failed_total`, see [`crate::metric`]) go to the `metrics`
    /// recorder installed now: install it first.
    pub fn open(self) -> io::Result<Audit> {
        let file = open(&self.path)?;
        let metadata = file.metadata()?;
        // Only a regular file is rotated (never, say, `/dev/null`).
        let rotatable = metadata.is_file();
        self.start(Box::new(file), rotatable, metadata.len())
    }

    /// Starts the writer thread writing to `out`.
    fn start(self, out: Box<dyn Write + Send>, rotatable: bool, size: u64) -> io::Result<Audit> {
        let queue = self.queue.clamp(1, Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            path: self.path,
            on_failure: self.on_failure,
            room: Arc::new(Semaphore::new(queue)),
            sent: AtomicU64::new(0),
            done: watch::Sender::new(0),
            failing: watch::Sender::new(None),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped_metric: metrics::counter!(crate::metric::AUDIT_DROPPED),
            failed_metric: metrics::counter!(crate::metric::AUDIT_FAILED),
        });
        let (sender, receiver) = mpsc::channel();
        let writer = Writer {
            shared: Arc::clone(&shared),
            receiver,
            out,
            rotatable,
            size,
            max_bytes: self.max_bytes,
            generations: self.generations,
            pending: VecDeque::new(),
            torn: false,
            failing: false,
            waited: 0,
            given_up: 0,
            rotation_retry: None,
        };
        std::thread::Builder::new()
            .name("tether-audit".into())
            .spawn(move || writer.run())?;
        Ok(Audit {
            file: Some(Sink { sender, shared }),
        })
    }
}

impl Audit {
    /// Records only as `tracing` events; [`Audit::reserve`] always succeeds.
    pub fn tracing_only() -> Self {
        Audit { file: None }
    }

    /// Appends records to `path` as JSON lines (and emits them as `tracing` events),
    /// rotating it past `max_bytes`; the other options are [`AuditBuilder`]'s defaults.
    pub fn to_file(path: impl Into<PathBuf>, max_bytes: u64) -> io::Result<Self> {
        Audit::to_file_with(path).max_bytes(max_bytes).open()
    }

    /// Options for appending records to `path`; [`AuditBuilder::open`] opens it.
    pub fn to_file_with(path: impl Into<PathBuf>) -> AuditBuilder {
        AuditBuilder {
            path: path.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            generations: DEFAULT_GENERATIONS,
            queue: DEFAULT_QUEUE,
            on_failure: OnFailure::default(),
        }
    }

    /// Reserves room for one record, to take before allowing a call (see [`OnFailure`]).
    ///
    /// With [`OnFailure::FailClosed`], waits up to its `wait` for a queue slot and, while
    /// the file cannot be written, for the writer to recover; else fails, and the host
    /// denies the call. With [`OnFailure::Continue`] (or [`Audit::tracing_only`]), never
    /// waits and never fails.
    pub async fn reserve(&self) -> Result<Reservation, AuditError> {
        let Some(sink) = &self.file else {
            return Ok(self.reservation(None));
        };
        let shared = &sink.shared;
        let wait = match shared.on_failure {
            OnFailure::FailClosed { wait } => wait,
            OnFailure::Continue => {
                let permit = Arc::clone(&shared.room).try_acquire_owned().ok();
                return Ok(self.reservation(permit));
            }
        };
        let mut failing = shared.failing.subscribe();
        let acquire = async {
            loop {
                // While the file fails, its writer holds the records already reserved: wait
                // for it to recover rather than pile up more.
                if failing.wait_for(Option::is_none).await.is_err() {
                    return None;
                }
                let permit = Arc::clone(&shared.room).acquire_owned().await.ok()?;
                if failing.borrow().is_none() {
                    return Some(permit);
                }
            }
        };
        match tokio::time::timeout(wait, acquire).await {
            Ok(Some(permit)) => Ok(self.reservation(Some(permit))),
            _ => Err(match shared.failing.borrow().clone() {
                Some(error) => AuditError::Failing { wait, error },
                None => AuditError::QueueFull { wait },
            }),
        }
    }

    fn reservation(&self, permit: Option<OwnedSemaphorePermit>) -> Reservation {
        Reservation {
            audit: self.clone(),
            permit,
        }
    }

    /// Records without a reservation (denials, refusals): never waits. A record that
    /// finds no queue room is not written to the file; it is counted ([`Audit::dropped`])
    /// and reported with a `tracing` warning. The `tracing` event fires in any case.
    pub fn record(&self, record: AuditRecord) {
        record.trace();
        if let Some(sink) = &self.file {
            sink.send_or_drop(record);
        }
    }

    /// Records given up for lack of queue room.
    pub fn dropped(&self) -> u64 {
        self.file
            .as_ref()
            .map_or(0, |sink| sink.shared.dropped.load(Ordering::Relaxed))
    }

    /// Records given up because writing them failed ([`OnFailure::Continue`]).
    pub fn failed(&self) -> u64 {
        self.file
            .as_ref()
            .map_or(0, |sink| sink.shared.failed.load(Ordering::Relaxed))
    }

    /// The state of the trail: records waiting, the file's error while it fails, records
    /// given up and written.
    pub fn health(&self) -> AuditHealth {
        let Some(sink) = &self.file else {
            return AuditHealth::default();
        };
        let shared = &sink.shared;
        let sent = shared.sent.load(Ordering::Relaxed);
        let done = *shared.done.borrow();
        AuditHealth {
            queued: usize::try_from(sent.saturating_sub(done)).unwrap_or(usize::MAX),
            failing: shared.failing.borrow().clone(),
            dropped: shared.dropped.load(Ordering::Relaxed),
            failed: shared.failed.load(Ordering::Relaxed),
            written: shared.written.load(Ordering::Relaxed),
        }
    }

    /// Waits until every record queued so far is written (or given up, with
    /// [`OnFailure::Continue`]), or `timeout` passes; returns whether it got there. For
    /// tests and orderly shutdown.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let Some(sink) = &self.file else {
            return true;
        };
        let target = sink.shared.sent.load(Ordering::SeqCst);
        let mut done = sink.shared.done.subscribe();
        let reached = async { done.wait_for(|done| *done >= target).await.is_ok() };
        tokio::time::timeout(timeout, reached)
            .await
            .unwrap_or(false)
    }
}

impl Sink {
    /// Queues `record` if there is room, else counts and reports it.
    fn send_or_drop(&self, record: AuditRecord) {
        match Arc::clone(&self.shared.room).try_acquire_owned() {
            Ok(permit) => self.send(permit, record),
            Err(_) => {
                let dropped = self.shared.count_dropped(1);
                tracing::warn!(target: "tether::audit", dropped, plugin = record.plugin,
                    operation = %record.operation, decision = %record.decision,
                    path = %self.shared.path.display(),
                    "the audit trail is behind; a record was not written to the file");
            }
        }
    }

    /// Queues `record` in the room `permit` holds; the writer gives the room back.
    fn send(&self, permit: OwnedSemaphorePermit, record: AuditRecord) {
        permit.forget();
        self.shared.sent.fetch_add(1, Ordering::SeqCst);
        if let Err(mpsc::SendError(record)) = self.sender.send(record) {
            let failed = self.shared.count_failed(1);
            self.shared.finish();
            tracing::error!(target: "tether::audit", failed, plugin = record.plugin,
                operation = %record.operation, decision = %record.decision,
                path = %self.shared.path.display(),
                "the audit writer is gone; a record was not written to the file");
        }
    }
}

/// Room for one record in the audit trail ([`Audit::reserve`]). Dropped unused, it gives
/// the room back.
#[derive(Debug)]
#[must_use = "a reservation holds room for a record: record it, or drop it to give the room back"]
pub struct Reservation {
    audit: Audit,
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// Records `record` in the room reserved for it: emits its `tracing` event and queues
    /// it for the file. Cannot fail (with [`OnFailure::Continue`], a reservation made when
    /// there was no room behaves as [`Audit::record`]).
    pub fn record(self, record: AuditRecord) {
        record.trace();
        let Some(sink) = &self.audit.file else {
            return;
        };
        match self.permit {
            Some(permit) => sink.send(permit, record),
            None => sink.send_or_drop(record),
        }
    }
}

/// A line being written, and how much of it is.
#[derive(Debug)]
struct Line {
    bytes: Vec<u8>,
    written: usize,
}

/// The writer thread.
struct Writer {
    shared: Arc<Shared>,
    receiver: Receiver<AuditRecord>,
    out: Box<dyn Write + Send>,
    /// Whether `out` is a regular file, renamed when it is full.
    rotatable: bool,
    /// Bytes in `out`.
    size: u64,
    max_bytes: u64,
    generations: usize,
    /// Lines received and not yet written, in order (a bounded number: each holds room).
    pending: VecDeque<Line>,
    /// Whether a line given up was partly written, so the file needs a newline first.
    torn: bool,
    /// Whether writing fails.
    failing: bool,
    /// Records written since writing last began to fail.
    waited: u64,
    /// Records given up since writing last began to fail.
    given_up: u64,
    /// When to try again a rotation that failed.
    rotation_retry: Option<Instant>,
}

impl Writer {
    fn run(mut self) {
        let mut open = true;
        while open {
            if self.pending.is_empty() {
                match self.receiver.recv() {
                    Ok(record) => self.push(&record),
                    Err(_) => break,
                }
            }
            while let Ok(record) = self.receiver.try_recv() {
                self.push(&record);
            }
            self.write_pending();
            if self.pending.is_empty() {
                // A busy trail's records then cost their senders no wake-up of this thread
                // each; a quiet one's last record waits no longer for this.
                std::thread::sleep(GATHER);
                continue;
            }
            // The file fails: try again in a while, taking in new records meanwhile.
            let retry_at = Instant::now() + RETRY;
            loop {
                let left = retry_at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match self.receiver.recv_timeout(left) {
                    Ok(record) => self.push(&record),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
        }
        // Every `Audit` is gone: a last try for what is left.
        self.write_pending();
        if !self.pending.is_empty() {
            let unwritten = self.pending.len();
            self.shared.count_failed(unwritten as u64);
            tracing::error!(target: "tether::audit", unwritten, path = %self.shared.path.display(),
                error = self.shared.failing.borrow().as_deref(),
                "the audit trail was closed with records that could not be written to the file");
        }
    }

    /// Takes in a record: serializes it as a line.
    fn push(&mut self, record: &AuditRecord) {
        match serde_json::to_vec(record) {
            Ok(mut bytes) => {
                bytes.push(b'\n');
                self.pending.push_back(Line { bytes, written: 0 });
            }
            Err(err) => {
                self.shared.count_failed(1);
                self.shared.finish();
                tracing::error!(target: "tether::audit", %err, "could not serialize an audit record");
            }
        }
    }

    /// Writes the pending lines in order, until done or (with [`OnFailure::FailClosed`]) a
    /// write fails.
    fn write_pending(&mut self) {
        while !self.pending.is_empty() {
            match self.write_front() {
                Ok(complete) => {
                    for _ in 0..complete {
                        self.pending.pop_front();
                        self.shared.written.fetch_add(1, Ordering::Relaxed);
                        if self.failing {
                            self.waited += 1;
                        }
                        if self.pending.is_empty() {
                            self.recovered();
                        }
                        // Last: whoever waits for this record sees the trail as it is now.
                        self.shared.finish();
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    self.fail(&err);
                    if let OnFailure::FailClosed { .. } = self.shared.on_failure {
                        // The line (and where it stopped) stays first for the next try.
                        return;
                    }
                }
            }
        }
    }

    /// Every pending line is written: if the file was failing, it is writable again.
    fn recovered(&mut self) {
        if !self.failing {
            return;
        }
        self.failing = false;
        self.shared.failing.send_replace(None);
        let path = self.shared.path.display();
        match self.shared.on_failure {
            OnFailure::FailClosed { .. } => tracing::info!(target: "tether::audit",
                path = %path, written = self.waited,
                "the audit file is writable again; {} records that waited were written",
                self.waited),
            OnFailure::Continue => tracing::info!(target: "tether::audit",
                path = %path, given_up = self.given_up,
                "the audit file is writable again; {} records were given up meanwhile",
                self.given_up),
        }
    }

    /// Writes what it can of the pending lines (or first the newline that ends a torn
    /// one), rotating the file first if the first line would take it past its limit; in one
    /// `writev`, as many lines as fit before the limit (at most [`BATCH`]). Returns how many
    /// lines are now complete.
    fn write_front(&mut self) -> io::Result<usize> {
        let Some(line) = self.pending.front() else {
            return Ok(0);
        };
        if line.written == 0 {
            let needed = line.bytes.len() as u64 + u64::from(self.torn);
            self.rotate_if_full(needed);
        }
        if self.torn {
            if self.out.write(b"\n")? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.size += 1;
            self.torn = false;
            return Ok(0);
        }
        let mut slices = Vec::with_capacity(self.pending.len().min(BATCH));
        let mut total = 0u64;
        for line in &self.pending {
            let rest = &line.bytes[line.written..];
            let past_limit = self.rotatable
                && self.size.saturating_add(total + rest.len() as u64) > self.max_bytes;
            if !slices.is_empty() && (slices.len() == BATCH || past_limit) {
                break;
            }
            total += rest.len() as u64;
            slices.push(io::IoSlice::new(rest));
        }
        let n = self.out.write_vectored(&slices)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.size += n as u64;
        // What was written completes lines in order; the last one may stay partly written.
        let (mut left, mut complete) = (n, 0);
        for line in &mut self.pending {
            let take = (line.bytes.len() - line.written).min(left);
            line.written += take;
            left -= take;
            if line.written < line.bytes.len() {
                break;
            }
            complete += 1;
            if left == 0 {
                break;
            }
        }
        Ok(complete)
    }

    /// A write of the first pending line failed with `err`: marks the file failing, and
    /// with [`OnFailure::Continue`] gives the line up.
    fn fail(&mut self, err: &io::Error) {
        let error = describe(&self.shared.path, err);
        if !self.failing {
            self.failing = true;
            self.waited = 0;
            self.given_up = 0;
            match self.shared.on_failure {
                OnFailure::FailClosed { .. } => tracing::error!(target: "tether::audit",
                    error, "the audit file cannot be written; the host denies the calls it \
                    cannot record until it can"),
                OnFailure::Continue => tracing::error!(target: "tether::audit",
                    error, "the audit file cannot be written; records are given up until it can"),
            }
        }
        if self.shared.failing.borrow().as_deref() != Some(error.as_str()) {
            self.shared.failing.send_replace(Some(error.clone()));
        }
        if let OnFailure::Continue = self.shared.on_failure
            && let Some(line) = self.pending.pop_front()
        {
            if line.written > 0 {
                self.torn = true;
            }
            self.given_up += 1;
            let failed = self.shared.count_failed(1);
            self.shared.finish();
            tracing::warn!(target: "tether::audit", failed, error,
                "an audit record could not be written to the file and was given up");
        }
    }

    /// Rotates the file if `needed` more bytes would take it past its limit.
    fn rotate_if_full(&mut self, needed: u64) {
        if !self.rotatable || self.size == 0 || self.size.saturating_add(needed) <= self.max_bytes {
            return;
        }
        if self
            .rotation_retry
            .is_some_and(|retry| Instant::now() < retry)
        {
            return;
        }
        match rotate(&self.shared.path, self.generations) {
            Ok((file, size)) => {
                self.out = Box::new(file);
                self.size = size;
                // A torn line stays at the end of the old file.
                self.torn = false;
                self.rotation_retry = None;
            }
            Err(err) => {
                self.rotation_retry = Some(Instant::now() + ROTATION_RETRY);
                tracing::warn!(target: "tether::audit", %err, path = %self.shared.path.display(),
                    "could not rotate the audit file; writing on to the full one");
            }
        }
    }
}

/// Renames `<path>.{generations-1}` to `<path>.{generations}` … `<path>` to `<path>.1` (the
/// oldest is replaced), and opens a new `<path>`; returns it and its size.
fn rotate(path: &Path, generations: usize) -> io::Result<(File, u64)> {
    let generation = |n: usize| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    if generations == 0 {
        fs::remove_file(path)?;
    } else {
        for n in (1..generations).rev() {
            match fs::rename(generation(n), generation(n + 1)) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        fs::rename(path, generation(1))?;
    }
    let file = open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

/// Opens `path` for appending, creating it if needed; unbuffered, so a record is written
/// when its bytes reach the file.
fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// `the audit file <path> cannot be written (<error>)`.
fn describe(path: &Path, err: &io::Error) -> String {
    let text = err.to_string();
    let text = match err.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .map_or(text.clone(), str::to_owned),
        None => text,
    };
    format!(
        "the audit file {} cannot be written ({text})",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::Mutex;

    use super::*;

    /// Generous: the machine running the tests may be loaded.
    const PATIENCE: Duration = Duration::from_secs(20);

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    /// Record number `n`, its resource `r<n>` zero-padded so all lines have one length.
    fn record(n: usize) -> AuditRecord {
        AuditRecord {
            time: "2025-01-01T00:00:00.000Z".to_owned(),
            plugin: "filelister".to_owned(),
            instance: 1,
            pid: Some(42),
            operation: Operation::File(FileOperation::ReadFile),
            resource: format!("r{n:04}"),
            decision: Decision::Allowed,
            decided_by: Decider::Policy,
            capability: Some("fs.read:**".to_owned()),
            reason: "granted by `fs.read:**`".to_owned(),
            request_id: None,
            timeout_ms: None,
            trace_id: None,
        }
    }

    /// The record numbers of the lines of `text`; panics on a line that is no record.
    fn numbers(text: &str) -> Vec<usize> {
        text.lines()
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                value["resource"].as_str().unwrap()[1..].parse().unwrap()
            })
            .collect()
    }

    async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn fail_closed(wait_ms: u64) -> OnFailure {
        OnFailure::FailClosed {
            wait: Duration::from_millis(wait_ms),
        }
    }

    #[test]
    fn operations_decisions_and_deciders_serialize_as_strings() {
        let json = |value: &dyn erased::Json| value.json();
        for operation in FileOperation::ALL {
            let path = format!("/tether.hostserve.v1.Files/{}", operation.method());
            let parsed = Operation::from_grpc_path(&path);
            assert_eq!(parsed, Operation::File(operation));
            assert_eq!(json(&parsed), format!("\"{}\"", operation.as_str()));
            assert_eq!(parsed.to_string(), operation.as_str());
            assert_eq!(
                FileOperation::from_method(operation.method()),
                Some(operation)
            );
        }
        assert_eq!(
            Operation::from_grpc_path("/tether.hostserve.v1.Files/ReadFileBulk"),
            Operation::File(FileOperation::ReadFile)
        );
        assert_eq!(
            Operation::from_grpc_path("/tether.hostserve.v1.Files/WriteFileBulk"),
            Operation::File(FileOperation::WriteFile)
        );
        assert_eq!(
            json(&Operation::File(FileOperation::ReadDir)),
            "\"read_dir\""
        );
        assert_eq!(json(&FileOperation::CreateDir), "\"create_dir\"");
        assert_eq!(FileOperation::GetEnv.method(), "GetEnv");
        assert_eq!(json(&Operation::Connect), "\"connect\"");

        let publish = Operation::from_grpc_path("/tether.bus.v1.Bus/Publish");
        assert_eq!(
            publish,
            Operation::Method {
                service: "tether.bus.v1.Bus".to_owned(),
                method: "Publish".to_owned()
            }
        );
        assert_eq!(json(&publish), "\"tether.bus.v1.Bus/Publish\"");
        assert_eq!(publish.as_str(), "tether.bus.v1.Bus/Publish");
        // A file method's name on another service, an unknown method of the host services.
        assert_eq!(
            json(&Operation::from_grpc_path("/other.v1.Svc/ReadDir")),
            "\"other.v1.Svc/ReadDir\""
        );
        assert_eq!(
            json(&Operation::from_grpc_path(
                "/tether.hostserve.v1.Files/Nope"
            )),
            "\"tether.hostserve.v1.Files/Nope\""
        );
        assert_eq!(json(&Operation::from_grpc_path("Odd")), "\"/Odd\"");
        let long = Operation::from_grpc_path(&format!("/{}/M", "é".repeat(1000)));
        let Operation::Method { service, method } = long else {
            panic!("{long:?}")
        };
        assert!(service.len() <= MAX_NAME && service.chars().all(|c| c == 'é'));
        assert_eq!(method, "M");

        assert_eq!(json(&Decision::Allowed), "\"allowed\"");
        assert_eq!(json(&Decision::Denied), "\"denied\"");
        assert_eq!(Decision::Denied.to_string(), "denied");
        assert_eq!(json(&Decider::Policy), "\"policy\"");
        assert_eq!(json(&Decider::Host), "\"host\"");
        assert_eq!(json(&Decider::Operator), "\"operator\"");
        assert_eq!(json(&Decider::Hook("ask".to_owned())), "\"hook:ask\"");
        assert_eq!(Decider::Hook("ask".to_owned()).to_string(), "hook:ask");
        assert_eq!(Decider::Host.as_str(), "host");

        let mut denied = record(7);
        denied.operation = Operation::Connect;
        denied.decision = Decision::Denied;
        denied.decided_by = Decider::Host;
        denied.capability = None;
        denied.request_id = Some("req-1".to_owned());
        assert_eq!(
            serde_json::to_value(&denied).unwrap(),
            serde_json::json!({
                "time": "2025-01-01T00:00:00.000Z",
                "plugin": "filelister",
                "instance": 1,
                "pid": 42,
                "operation": "connect",
                "resource": "r0007",
                "decision": "denied",
                "decided_by": "host",
                "reason": "granted by `fs.read:**`",
                "request_id": "req-1",
            })
        );
        let allowed = serde_json::to_value(record(1)).unwrap();
        assert_eq!(allowed["capability"], "fs.read:**");
        assert_eq!(allowed["operation"], "read_file");
        assert_eq!(allowed["decided_by"], "policy");
        assert!(allowed.get("timeout_ms").is_none());
        assert!(allowed.get("trace_id").is_none());
        // A refused process the kernel could not name has no pid, not pid 0.
        denied.pid = None;
        assert_eq!(
            serde_json::to_value(&denied).unwrap()["pid"],
            serde_json::Value::Null
        );
    }

    /// `serde_json::to_string` behind a trait object, to test many types in one closure.
    mod erased {
        pub(super) trait Json {
            fn json(&self) -> String;
        }

        impl<T: serde::Serialize> Json for T {
            fn json(&self) -> String {
                serde_json::to_string(self).unwrap()
            }
        }
    }

    #[test]
    fn rotation_keeps_the_newest_generations_in_order_and_loses_no_record() {
        let line = serde_json::to_vec(&record(0)).unwrap().len() as u64 + 1;
        let dir = tempfile::tempdir().unwrap();
        let generation = |path: &Path, n: usize| {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let write = |path: &Path, generations: usize| {
            // Three lines to a file.
            let audit = Audit::to_file_with(path)
                .max_bytes(3 * line)
                .generations(generations)
                .open()
                .unwrap();
            runtime().block_on(async {
                for n in 0..100 {
                    audit.reserve().await.unwrap().record(record(n));
                }
                assert!(audit.flush(PATIENCE).await);
            });
            assert_eq!(audit.health().written, 100);
        };

        // 3 generations: `.3` `.2` `.1` hold 90..=98, three each; the file holds 99.
        let path = dir.path().join("audit.jsonl");
        write(&path, 3);
        assert!(!generation(&path, 4).exists());
        let mut all = Vec::new();
        for (n, expected) in [(3, 90..93), (2, 93..96), (1, 96..99)] {
            let text = fs::read_to_string(generation(&path, n)).unwrap();
            assert_eq!(numbers(&text), expected.collect::<Vec<_>>(), "{path:?}.{n}");
            all.extend(numbers(&text));
        }
        all.extend(numbers(&fs::read_to_string(&path).unwrap()));
        assert_eq!(all, (90..100).collect::<Vec<_>>());

        // Enough generations for all: every record, in order, across the files.
        let path = dir.path().join("all.jsonl");
        write(&path, 50);
        let mut all = Vec::new();
        for n in (1..=50).rev() {
            if let Ok(text) = fs::read_to_string(generation(&path, n)) {
                let numbers = numbers(&text);
                assert!(numbers.len() <= 3);
                all.extend(numbers);
            }
        }
        all.extend(numbers(&fs::read_to_string(&path).unwrap()));
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn fail_closed_denies_reservations_while_the_file_cannot_be_written() {
        runtime().block_on(async {
            let audit = Audit::to_file_with("/dev/full")
                .queue(4)
                .on_failure(fail_closed(200))
                .open()
                .unwrap();
            // Room while the writer has not failed yet.
            audit.reserve().await.unwrap().record(record(0));
            eventually("the writer to fail", || audit.health().failing.is_some()).await;

            let started = Instant::now();
            let err = audit.reserve().await.unwrap_err();
            assert!(
                started.elapsed() >= Duration::from_millis(200),
                "it waits first"
            );
            assert!(matches!(err, AuditError::Failing { .. }), "{err:?}");
            let message = err.to_string();
            assert!(message.contains("/dev/full"), "{message}");
            assert!(message.contains("No space left on device"), "{message}");
            assert!(!message.contains("os error"), "{message}");
            assert!(
                message.ends_with("the host denies calls it cannot record"),
                "{message}"
            );
            let failing = audit.health().failing.unwrap();
            assert_eq!(
                failing,
                "the audit file /dev/full cannot be written (No space left on device)"
            );

            // The reserved record is kept; records without a reservation pile up while
            // there is room, then are dropped (counted).
            for n in 1..=3 {
                audit.record(record(n));
            }
            assert_eq!(audit.health().queued, 4);
            assert_eq!(audit.dropped(), 0);
            audit.record(record(4));
            assert_eq!(audit.dropped(), 1);
            let health = audit.health();
            assert_eq!((health.queued, health.failed, health.written), (4, 0, 0));
            assert!(!audit.flush(Duration::from_millis(300)).await);
            assert!(matches!(
                audit.reserve().await,
                Err(AuditError::Failing { .. })
            ));
        });
    }

    #[test]
    fn continue_gives_up_records_that_cannot_be_written_and_never_denies() {
        runtime().block_on(async {
            let audit = Audit::to_file_with("/dev/full")
                .queue(64)
                .on_failure(OnFailure::Continue)
                .open()
                .unwrap();
            for n in 0..20 {
                audit.reserve().await.unwrap().record(record(n));
                if n == 0 {
                    eventually("the writer to fail", || audit.health().failing.is_some()).await;
                }
            }
            assert!(audit.flush(PATIENCE).await);
            let health = audit.health();
            assert_eq!(
                (health.failed, health.dropped, health.written, health.queued),
                (20, 0, 0, 0)
            );
            assert!(
                health
                    .failing
                    .is_some_and(|error| error.contains("No space left on device"))
            );
            assert_eq!(audit.failed(), 20);
        });
    }

    #[test]
    fn records_given_up_are_counted_in_the_metrics() {
        use crate::metric::testing::Taken;
        use crate::metric::{AUDIT_DROPPED, AUDIT_FAILED};

        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let metrics = recorder.snapshotter();
        // The trails are opened with the recorder in place: their writer threads count
        // into it too.
        let _local = metrics::set_default_local_recorder(&recorder);
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            // No room: records without a reservation are dropped.
            let audit = Audit::to_file_with(dir.path().join("audit.jsonl"))
                .queue(1)
                .on_failure(fail_closed(100))
                .open()
                .unwrap();
            let held = audit.reserve().await.unwrap();
            audit.record(record(0));
            audit.record(record(1));
            assert_eq!(audit.dropped(), 2);
            assert_eq!(Taken::from(&metrics).counter(AUDIT_DROPPED, &[]), 2);
            drop(held);

            // A full disk: records whose write fails are given up.
            let disk = Disk::limited(0);
            let full = Audit::to_file_with("/x/audit.jsonl")
                .on_failure(OnFailure::Continue)
                .start(Box::new(disk.clone()), false, 0)
                .unwrap();
            for n in 0..3 {
                full.reserve().await.unwrap().record(record(n));
            }
            assert!(full.flush(PATIENCE).await);
            assert_eq!(full.failed(), 3);
            let taken = Taken::from(&metrics);
            assert_eq!(taken.counter(AUDIT_FAILED, &[]), 3);
            assert_eq!(
                taken.counter(AUDIT_DROPPED, &[]),
                0,
                "none since the last snapshot"
            );
        });
    }

    #[test]
    fn a_reservation_holds_room_until_recorded_or_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        runtime().block_on(async {
            let audit = Audit::to_file_with(&path)
                .queue(1)
                .on_failure(fail_closed(100))
                .open()
                .unwrap();
            let held = audit.reserve().await.unwrap();
            let err = audit.reserve().await.unwrap_err();
            assert!(matches!(err, AuditError::QueueFull { .. }), "{err:?}");
            assert_eq!(
                err.to_string(),
                "the audit trail is behind; waited 100ms; the host denies calls it cannot record"
            );
            // No room for a record without a reservation either: counted, not written.
            audit.record(record(0));
            assert_eq!(audit.dropped(), 1);
            // Dropped unused, a reservation gives its room back.
            drop(held);
            audit.reserve().await.unwrap().record(record(1));
            assert!(audit.flush(PATIENCE).await);
            audit.reserve().await.unwrap().record(record(2));
            assert!(audit.flush(PATIENCE).await);
        });
        assert_eq!(numbers(&fs::read_to_string(&path).unwrap()), [1, 2]);
    }

    #[test]
    fn a_writer_kept_busy_makes_reservations_wait_then_fail() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("audit.fifo");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        )
        .unwrap();
        // The reader opens the FIFO (so that the audit can open it) but reads nothing until
        // told: the writer stays blocked once the pipe is full.
        let (go, told) = mpsc::channel::<()>();
        let reader = std::thread::spawn({
            let fifo = fifo.clone();
            move || {
                let mut file = File::open(&fifo).unwrap();
                told.recv().unwrap();
                let mut text = String::new();
                file.read_to_string(&mut text).unwrap();
                text
            }
        });
        let audit = Audit::to_file_with(&fifo)
            .queue(2)
            .on_failure(fail_closed(300))
            .open()
            .unwrap();
        let recorded = runtime().block_on(async {
            let mut recorded = 0;
            let full = loop {
                assert!(recorded < 100_000, "the writer never fell behind");
                match audit.reserve().await {
                    Ok(reservation) => {
                        reservation.record(record(recorded));
                        recorded += 1;
                    }
                    Err(err) => break err,
                }
            };
            assert!(matches!(full, AuditError::QueueFull { .. }), "{full:?}");
            assert!(audit.health().queued <= 2);
            assert!(audit.health().failing.is_none());

            // Once read, the writer catches up and there is room again.
            go.send(()).unwrap();
            let deadline = Instant::now() + PATIENCE;
            let reservation = loop {
                match audit.reserve().await {
                    Ok(reservation) => break reservation,
                    Err(err) => assert!(Instant::now() < deadline, "{err}"),
                }
            };
            reservation.record(record(recorded));
            recorded += 1;
            assert!(audit.flush(PATIENCE).await);
            recorded
        });
        assert_eq!(audit.health().written, recorded as u64);
        drop(audit);
        let text = reader.join().unwrap();
        assert_eq!(numbers(&text), (0..recorded).collect::<Vec<_>>());
    }

    /// A disk with `room` bytes left (unlimited if `None`), then ENOSPC.
    #[derive(Debug, Clone, Default)]
    struct Disk(Arc<Mutex<(Vec<u8>, Option<usize>)>>);

    impl Disk {
        fn limited(room: usize) -> Self {
            Disk(Arc::new(Mutex::new((Vec::new(), Some(room)))))
        }

        fn free(&self) {
            self.0.lock().unwrap().1 = None;
        }

        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().0.clone()).unwrap()
        }
    }

    impl Write for Disk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut disk = self.0.lock().unwrap();
            let n = disk.1.map_or(buf.len(), |room| room.min(buf.len()));
            if n == 0 {
                return Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::NOSPC.raw_os_error(),
                ));
            }
            if let Some(room) = &mut disk.1 {
                *room -= n;
            }
            disk.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        /// Like `writev` on a file: as much of the slices, in order, as there is room for.
        fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
            let all: Vec<u8> = bufs.iter().flat_map(|buf| buf.iter().copied()).collect();
            self.write(&all)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_batch_cut_short_by_a_full_disk_is_finished_in_order_once_there_is_room() {
        let line = serde_json::to_vec(&record(0)).unwrap().len() + 1;
        // Room for two lines and a half: a batch of several stops inside the third.
        let disk = Disk::limited(2 * line + line / 2);
        runtime().block_on(async {
            let audit = Audit::to_file_with("/x/audit.jsonl")
                .queue(16)
                .on_failure(fail_closed(200))
                .start(Box::new(disk.clone()), false, 0)
                .unwrap();
            for n in 0..6 {
                audit.reserve().await.unwrap().record(record(n));
            }
            eventually("the writer to fail", || audit.health().failing.is_some()).await;
            disk.free();
            assert!(audit.flush(PATIENCE).await);
            assert_eq!(audit.health().written, 6);
        });
        assert_eq!(numbers(&disk.text()), [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn fail_closed_keeps_records_until_the_disk_recovers_and_never_tears_a_line() {
        let disk = Disk::limited(10);
        runtime().block_on(async {
            let audit = Audit::to_file_with("/x/audit.jsonl")
                .queue(8)
                .on_failure(fail_closed(200))
                .start(Box::new(disk.clone()), false, 0)
                .unwrap();
            // Its first 10 bytes are written, then the disk is full.
            audit.reserve().await.unwrap().record(record(0));
            eventually("the writer to fail", || audit.health().failing.is_some()).await;
            let err = audit.reserve().await.unwrap_err();
            assert_eq!(
                err.to_string(),
                "the audit file /x/audit.jsonl cannot be written (No space left on device); \
                 waited 200ms; the host denies calls it cannot record"
            );
            audit.record(record(1));
            assert_eq!(audit.health().queued, 2);

            disk.free();
            eventually("the writer to recover", || audit.health().failing.is_none()).await;
            audit.reserve().await.unwrap().record(record(2));
            assert!(audit.flush(PATIENCE).await);
            let health = audit.health();
            assert_eq!((health.written, health.failed, health.dropped), (3, 0, 0));
        });
        assert_eq!(numbers(&disk.text()), [0, 1, 2]);
    }

    #[test]
    fn continue_ends_a_torn_line_before_the_next_record() {
        let disk = Disk::limited(10);
        runtime().block_on(async {
            let audit = Audit::to_file_with("/x/audit.jsonl")
                .on_failure(OnFailure::Continue)
                .start(Box::new(disk.clone()), false, 0)
                .unwrap();
            audit.reserve().await.unwrap().record(record(0));
            assert!(audit.flush(PATIENCE).await);
            assert_eq!(audit.failed(), 1);
            disk.free();
            audit.reserve().await.unwrap().record(record(1));
            assert!(audit.flush(PATIENCE).await);
            let health = audit.health();
            assert_eq!(
                (health.written, health.failed, health.failing),
                (1, 1, None)
            );
        });
        let text = disk.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0].len(), 10);
        assert_eq!(numbers(lines[1]), [1]);
    }

    #[test]
    fn dropping_the_audit_writes_what_was_queued() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::to_file(&path, 1 << 20).unwrap();
        let clone = audit.clone();
        for n in 0..50 {
            clone.record(record(n));
        }
        drop(clone);
        drop(audit);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = fs::read_to_string(&path).unwrap();
            if text.lines().count() == 50 {
                assert_eq!(numbers(&text), (0..50).collect::<Vec<_>>());
                break;
            }
            assert!(Instant::now() < deadline, "{text}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_trail_and_its_futures_cross_threads() {
        fn send<T: Send>(_: &T) {}
        fn shared<T: Send + Sync>(_: &T) {}
        let audit = Audit::tracing_only();
        shared(&audit);
        send(&audit.reserve());
        send(&audit.flush(Duration::ZERO));
    }

    #[test]
    fn tracing_only_always_has_room() {
        runtime().block_on(async {
            let audit = Audit::tracing_only();
            for n in 0..10_000 {
                audit.reserve().await.unwrap().record(record(n));
            }
            audit.record(record(0));
            assert!(audit.flush(Duration::ZERO).await);
            assert_eq!(audit.health(), AuditHealth::default());
        });
    }
}
