//! [`Gate`]: the one path every host-service call takes, whichever service it is for:
//! identity from the connection, one policy decision, one audit record, per-plugin limits.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tether_hostconn::PluginIdentity;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::NamedService;
use tonic::{Request, Status};

use crate::audit::{Audit, AuditRecord, Decider, Decision, Operation, Reservation};
use crate::capability::Need;
use crate::policy::{Asker, Policy, Ruling};

/// The metadata key of a denial's missing capability (defined in `tether-protocol`).
pub use tether_protocol::CAPABILITY_METADATA;

/// Bounds on what one plugin can make the host do.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Calls (including open streams) one plugin instance may have in flight, across every
    /// service behind the gate.
    pub max_concurrent_calls: usize,
    /// How long a call waits for a free slot before `RESOURCE_EXHAUSTED`.
    pub queue_wait: Duration,
    /// Bytes one plugin (by name) may write through `WriteFile` over the life of the file
    /// services.
    pub write_quota: u64,
    /// Largest gRPC message the file services decode or encode (a host's own services set
    /// theirs on their generated server).
    pub max_message_size: usize,
    /// Bytes per `ReadFile` chunk.
    pub read_chunk: usize,
    /// Most entries in one `ReadDir` page.
    pub max_page: usize,
    /// How long a file stream waits on the plugin (to take the next `ReadFile` chunk, or
    /// to send the next `WriteFile` chunk) before the host ends it with
    /// `DEADLINE_EXCEEDED` and frees its slot: a plugin that stops reading cannot hold
    /// host resources.
    pub stall_timeout: Duration,
    /// Whether `WriteFile` flushes the new file to disk (`fsync`) before renaming it into
    /// place, so that a crash never leaves an empty or partial file at the target. On by
    /// default; it bounds write throughput by the disk's (see docs/benchmarks.md).
    pub durable_writes: bool,
    /// Connections one plugin instance may hold open to its host-service socket at once;
    /// more are closed at once and audited (operation `connect`). The SDK uses one.
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

/// What the gate holds for one running plugin instance, while any of its calls is open:
/// its concurrency slots and its count of open calls. Kept through `Weak` references, so
/// an instance that has no call open (an exited one, above all) holds nothing.
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
pub struct Slot {
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

#[derive(Debug)]
struct GateInner {
    policy: Policy,
    audit: Audit,
    limits: Limits,
    plugins: Mutex<HashMap<(String, u64), Weak<Instance>>>,
}

/// The gate that host services stand behind: one for all services and all plugins.
///
/// - [`Gate::serve`] puts a tonic service behind it (one line per service): each request
///   must carry the [`PluginIdentity`] of the endpoint it arrived on (never anything the
///   plugin sends), is counted against the plugin's [`Limits::max_open_calls`], and must
///   consult the gate before it answers: a method that answers without doing so has its
///   answer withheld and the lapse audited.
/// - [`Gate::check`] is the one statement per method: it identifies the caller, takes one
///   of its concurrency slots, decides the [`Need`] with the [`Policy`] (denials, grants
///   with lifetimes, the decision hook), and returns the [`Call`], which writes the call's
///   one audit record when it [finishes](Call::finish) (or is dropped).
///
/// ```no_run
/// # use tether_hostserve::{Gate, Need};
/// # use tonic::{Request, Response, Status};
/// # struct Counter { gate: Gate }
/// # struct IncrRequest; struct IncrResponse;
/// # impl Counter {
/// async fn incr(&self, request: Request<IncrRequest>) -> Result<Response<IncrResponse>, Status> {
///     let mut call = self.gate.check(&request, Need::new("counter").action("incr")).await?;
///     call.finish(Ok(Response::new(IncrResponse)))
/// }
/// # }
/// ```
///
/// Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct Gate {
    inner: Arc<GateInner>,
}

impl Gate {
    /// A gate deciding with `policy`, recording to `audit`, within `limits`.
    pub fn new(policy: Policy, audit: Audit, limits: Limits) -> Self {
        Gate {
            inner: Arc::new(GateInner {
                policy,
                audit,
                limits,
                plugins: Mutex::default(),
            }),
        }
    }

    /// The policy (clones share it: grant and revoke through it at runtime).
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// The audit trail.
    pub fn audit(&self) -> &Audit {
        &self.inner.audit
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Puts `service` (a generated tonic server, e.g. `CounterServer::new(counter)`) behind
    /// the gate; add the result to the routes served to plugins.
    pub fn serve<S>(&self, service: S) -> Guarded<S> {
        Guarded {
            gate: self.clone(),
            inner: service,
        }
    }

    /// Starts a call and decides `need`: [`Gate::begin`], then [`Call::authorize`]. A
    /// denial is audited and returned as the status to answer with.
    pub async fn check<T>(&self, request: &Request<T>, need: Need) -> Result<Call, Status> {
        let resource = need.resource_name().map(capped).unwrap_or_default();
        let mut call = self.begin_on(request, resource).await?;
        call.authorize(&need).await?;
        Ok(call)
    }

    /// Starts a call: who is calling (from the connection), what it is (the gRPC method),
    /// and one of the caller's concurrency slots. For methods that must check the request
    /// before they can say what it needs; others use [`Gate::check`].
    pub async fn begin<T>(&self, request: &Request<T>) -> Result<Call, Status> {
        self.begin_on(request, String::new()).await
    }

    /// [`Gate::begin`] for a call on `resource` (as shown in its audit record, also when
    /// it is refused before any decision, such as past the concurrency limit).
    pub async fn begin_on<T>(
        &self,
        request: &Request<T>,
        resource: String,
    ) -> Result<Call, Status> {
        let mark = request
            .extensions()
            .get::<GateMark>()
            .cloned()
            .ok_or_else(|| {
                Status::failed_precondition(
                    "this service is not behind the gate: serve it with Gate::serve (or \
                 HostServices::serve)",
                )
            })?;
        mark.checked.store(true, Ordering::Relaxed);
        let started = Instant::now();
        let identity = PluginIdentity::of(request)?.clone();
        let context = Correlation::from_metadata(request.metadata());
        // The instance the call was admitted for (looked up once, on arrival).
        let instance = mark.instance;
        let mut call = Call {
            gate: self.clone(),
            identity,
            context,
            operation: mark.operation,
            resource,
            permit: None,
            allowed: None,
            reservation: None,
            workspace: None,
            recorded: false,
            started,
        };
        if let Some(bad) = &call.context.invalid_request_id {
            let status = Status::invalid_argument(format!(
                "invalid request id {bad}: use 1 to 64 characters of A-Z a-z 0-9 . _ : -"
            ));
            return Err(call.deny(status, "invalid request id"));
        }
        if let Some(bad) = &call.context.invalid_traceparent {
            let status = Status::invalid_argument(bad.clone());
            return Err(call.deny(status, "invalid traceparent"));
        }
        let slots = Arc::clone(&instance.slots);
        let waiting = Waiting::new(&instance);
        let limits = &self.inner.limits;
        let acquired = tokio::time::timeout(limits.queue_wait, slots.acquire_owned()).await;
        drop(waiting);
        match acquired {
            Ok(Ok(permit)) => {
                call.permit = Some(Slot {
                    _permit: permit,
                    _instance: instance,
                });
                Ok(call)
            }
            _ => {
                let status = Status::resource_exhausted(format!(
                    "too many host-service calls in flight for this plugin (limit {}); wait \
                     for some to finish",
                    limits.max_concurrent_calls
                ));
                Err(call.deny(status, "concurrency limit reached"))
            }
        }
    }

    /// Concurrency slots held right now by the instances of `plugin` (calls in progress,
    /// streams being sent). A slot is given back as soon as its call ends, including when
    /// the plugin goes away in the middle of it.
    pub fn calls_in_flight(&self, plugin: &str) -> usize {
        let slots = self.inner.limits.max_concurrent_calls;
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

    /// Plugin instances the gate holds state for: those with a call open. An instance that
    /// has ended holds none, however many have come and gone.
    pub fn tracked_instances(&self) -> usize {
        self.live_instances().len()
    }

    fn live_instances(&self) -> Vec<((String, u64), Arc<Instance>)> {
        let plugins = self
            .inner
            .plugins
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        plugins
            .iter()
            .filter_map(|(key, weak)| weak.upgrade().map(|instance| (key.clone(), instance)))
            .collect()
    }

    /// The state of the calling instance, made if it has no call open.
    fn instance(&self, identity: &PluginIdentity) -> Arc<Instance> {
        let mut plugins = self
            .inner
            .plugins
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = (identity.name().to_owned(), identity.instance());
        if let Some(instance) = plugins.get(&key).and_then(Weak::upgrade) {
            return instance;
        }
        // Forget the instances that have no call open any more (ended ones above all).
        plugins.retain(|_, weak| weak.strong_count() > 0);
        let instance = Arc::new(Instance {
            slots: Arc::new(Semaphore::new(self.inner.limits.max_concurrent_calls)),
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
        operation: &Operation,
        headers: &http::HeaderMap,
    ) -> Result<OpenCall, Status> {
        let instance = self.instance(identity);
        let limit = self.inner.limits.max_open_calls;
        if instance.open.fetch_add(1, Ordering::Relaxed) >= limit {
            instance.open.fetch_sub(1, Ordering::Relaxed);
            let context = Correlation::from_headers(headers);
            let status = Status::resource_exhausted(format!(
                "too many host-service calls open for this plugin (limit {limit}, counting \
                 calls waiting for a slot and requests not yet complete); finish some first"
            ));
            self.record_unchecked(
                identity,
                operation.clone(),
                &context,
                format!("open-call limit reached: {}", status.message()),
            );
            return Err(status);
        }
        Ok(OpenCall(instance))
    }

    /// Audits a call denied before it became a [`Call`].
    fn record_unchecked(
        &self,
        identity: &PluginIdentity,
        operation: Operation,
        context: &Correlation,
        reason: String,
    ) {
        crate::metric::call(
            identity.shared_name().into(),
            &operation,
            false,
            Decision::Denied,
            &Decider::Host,
            None,
        );
        self.inner.audit.record(AuditRecord {
            time: AuditRecord::now(),
            plugin: identity.name().to_owned(),
            instance: identity.instance(),
            pid: Some(identity.pid()),
            operation,
            resource: String::new(),
            decision: Decision::Denied,
            decided_by: Decider::Host,
            capability: None,
            reason,
            request_id: context.request_id.clone(),
            timeout_ms: context.timeout_ms,
            trace_id: context.trace_id.clone(),
        });
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
    /// The trace id of a well-formed `traceparent`.
    trace_id: Option<String>,
    /// Why a `traceparent` is not well formed.
    invalid_traceparent: Option<String>,
}

/// The metadata a call is correlated by, as header names parsed once (looking a header up
/// by `&str` parses the name on every call).
static REQUEST_ID: http::HeaderName =
    http::HeaderName::from_static(tether_protocol::REQUEST_ID_METADATA);
static GRPC_TIMEOUT: http::HeaderName =
    http::HeaderName::from_static(tether_protocol::GRPC_TIMEOUT_METADATA);
static TRACEPARENT: http::HeaderName =
    http::HeaderName::from_static(tether_protocol::TRACEPARENT_METADATA);

impl Correlation {
    fn from_metadata(metadata: &MetadataMap) -> Self {
        Correlation::from_headers(metadata.as_ref())
    }

    fn from_headers(headers: &http::HeaderMap) -> Self {
        Correlation::from_values(
            headers.get(&REQUEST_ID),
            headers.get(&GRPC_TIMEOUT),
            headers.get(&TRACEPARENT),
        )
    }

    fn from_values(
        request_id: Option<&http::HeaderValue>,
        timeout: Option<&http::HeaderValue>,
        traceparent: Option<&http::HeaderValue>,
    ) -> Self {
        let mut correlation = Correlation {
            timeout_ms: timeout
                .and_then(|value| value.to_str().ok())
                .and_then(tether_protocol::parse_grpc_timeout)
                .map(|timeout| u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
            ..Correlation::default()
        };
        if let Some(value) = request_id {
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
        if let Some(value) = traceparent {
            let capped = String::from_utf8_lossy(value.as_bytes())
                .chars()
                .take(80)
                .collect::<String>();
            match capped.parse::<tether_protocol::TraceContext>() {
                // At most 80 characters, a well-formed value (55) is never cut.
                Ok(trace) => correlation.trace_id = Some(trace.trace_id()),
                Err(err) => correlation.invalid_traceparent = Some(err.to_string()),
            }
        }
        correlation
    }
}

/// What allowed a call.
#[derive(Debug)]
struct Allowed {
    capability: Option<String>,
    reason: String,
    decided_by: Decider,
}

/// One call in progress: who makes it, what it asks, its concurrency slot, and what
/// allowed it. It writes the call's one audit record: when it is denied, when it
/// [finishes](Call::finish), or, if dropped before either (the plugin gave up or went
/// away), as cancelled.
#[derive(Debug)]
pub struct Call {
    gate: Gate,
    identity: PluginIdentity,
    context: Correlation,
    operation: Operation,
    resource: String,
    permit: Option<Slot>,
    allowed: Option<Allowed>,
    /// The room reserved for the call's record (see [`crate::OnFailure`]).
    reservation: Option<Reservation>,
    workspace: Option<PathBuf>,
    recorded: bool,
    /// When [`Gate::begin`] began it: its duration, in the metrics, ends at its record.
    started: Instant,
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        const CANCELLED: &str = "cancelled: the plugin went away or gave up before the call \
                                 finished (an unfinished write leaves nothing)";
        let reason = match &self.allowed {
            Some(allowed) => format!("{}; {CANCELLED}", allowed.reason),
            None => CANCELLED.to_owned(),
        };
        let decision = if self.allowed.is_some() {
            Decision::Allowed
        } else {
            Decision::Denied
        };
        self.record(decision, reason);
    }
}

impl Call {
    /// Who is calling.
    pub fn identity(&self) -> &PluginIdentity {
        &self.identity
    }

    /// The request id the call carried, if any.
    pub fn request_id(&self) -> Option<&str> {
        self.context.request_id.as_deref()
    }

    /// The W3C trace id the call carried (its `traceparent`), if any: to put the service's
    /// own events in the caller's trace.
    pub fn trace_id(&self) -> Option<&str> {
        self.context.trace_id.as_deref()
    }

    /// Sets the resource shown in the call's audit record (by default, the resource of the
    /// need it was authorized for).
    pub fn set_resource(&mut self, resource: impl Into<String>) {
        self.resource = resource.into();
    }

    /// The plugin's workspace, once a file capability allowed the call.
    pub fn workspace(&self) -> Option<&Path> {
        self.workspace.as_deref()
    }

    /// Decides `need` with the policy. Allowed: the call goes on (its record is written
    /// when it finishes). Denied: audited, and the status to answer with is returned:
    /// `PERMISSION_DENIED` naming the missing capability (also in the
    /// [`CAPABILITY_METADATA`] metadata); `INVALID_ARGUMENT` for a malformed resource;
    /// `UNAVAILABLE` when the audit trail cannot record the call (the host denies what it
    /// cannot record, see [`crate::OnFailure`]).
    pub async fn authorize(&mut self, need: &Need) -> Result<(), Status> {
        if self.resource.is_empty()
            && let Some(resource) = need.resource_name()
        {
            self.resource = capped(resource);
        }
        let asker = Asker {
            plugin: self.identity.name(),
            instance: self.identity.instance(),
            pid: self.identity.pid(),
            operation: &self.operation,
        };
        // Room for the record first: a call the host cannot record is denied before the
        // policy spends a use of a grant or remembers a hook's answer on it.
        match self.gate.inner.audit.reserve().await {
            Ok(reservation) => self.reservation = Some(reservation),
            Err(err) => {
                let status = Status::unavailable(format!(
                    "the host cannot record this call, so it is denied: {err}"
                ));
                return Err(self.deny_by(status, "not recordable", Decider::Host, None));
            }
        }
        let ruling = self.gate.inner.policy.decide(&asker, need).await;
        match ruling {
            Ruling::Allow {
                capability,
                reason,
                decided_by,
                workspace,
            } => {
                self.workspace = workspace;
                self.allowed = Some(Allowed {
                    capability,
                    reason,
                    decided_by,
                });
                Ok(())
            }
            Ruling::Deny {
                reason,
                needed,
                decided_by,
            } => {
                let mut status = Status::permission_denied(format!(
                    "plugin `{}` lacks the capability `{needed}` ({reason}); the operator can \
                     grant it",
                    self.identity.name()
                ));
                // Metadata is visible ASCII: anything else travels escaped.
                let shown = if needed.chars().all(|c| c.is_ascii_graphic()) {
                    needed.clone()
                } else {
                    needed.escape_default().to_string()
                };
                if let Ok(value) = MetadataValue::try_from(shown.as_str()) {
                    status.metadata_mut().insert(CAPABILITY_METADATA, value);
                }
                self.record_as(Decision::Denied, decided_by, Some(needed), reason);
                Err(status)
            }
            Ruling::Invalid { reason } => {
                let status = Status::invalid_argument(format!("invalid request: {reason}"));
                Err(self.deny(status, "invalid resource"))
            }
            Ruling::Undeclared { reason } => {
                tracing::error!(target: "tether::hostserve", %reason, "a host service asked for an undeclared capability");
                let status = Status::internal(reason);
                Err(self.deny(status, "undeclared capability"))
            }
        }
    }

    /// Audits a denial by the host's own checks (malformed input, limits) and returns
    /// `status`, to answer with.
    pub fn deny(&mut self, status: Status, reason: &str) -> Status {
        self.deny_by(status, reason, Decider::Host, None)
    }

    fn deny_by(
        &mut self,
        status: Status,
        reason: &str,
        decided_by: Decider,
        capability: Option<String>,
    ) -> Status {
        self.allowed = None;
        self.record_as(
            Decision::Denied,
            decided_by,
            capability,
            format!("{reason}: {}", status.message()),
        );
        status
    }

    /// Runs `f` on the blocking pool holding this call's slot: if the call is dropped
    /// while `f` runs (the plugin gave up), the slot stays taken until `f` ends, so a
    /// plugin's blocked work can never take more host threads than it has slots, and
    /// other plugins keep theirs.
    pub async fn blocking<T: Send + 'static>(
        &mut self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        let slot = self.permit.take();
        let (slot, result) = run_blocking(move || {
            let result = f();
            (slot, result)
        })
        .await?;
        self.permit = slot;
        Ok(result)
    }

    /// Takes the call's concurrency slot, to hold it for as long as a response stream
    /// runs (drop it when the stream ends).
    pub fn take_slot(&mut self) -> Option<Slot> {
        self.permit.take()
    }

    /// Writes the call's audit record from how it ended, and returns `result`. A call that
    /// was never allowed answers with a denial instead (this guards against a method that
    /// forgot to authorize).
    pub fn finish<T>(&mut self, result: Result<T, Status>) -> Result<T, Status> {
        let Some(allowed) = &mut self.allowed else {
            let status = Status::internal(
                "the host service finished a call it never authorized; its answer was withheld",
            );
            return Err(self.deny(status, "not authorized"));
        };
        // Recorded once: the record takes the reason rather than a copy of it.
        let reason = std::mem::take(&mut allowed.reason);
        match &result {
            Ok(_) => self.record(Decision::Allowed, reason),
            // Confinement refused it (a symlink on the way): that is a denial too.
            Err(status) if status.code() == tonic::Code::PermissionDenied => {
                let capability = allowed.capability.take();
                self.record_as(
                    Decision::Denied,
                    Decider::Host,
                    capability,
                    format!("{reason} but refused: {}", status.message()),
                );
            }
            Err(status) => self.record(
                Decision::Allowed,
                format!("{reason}; failed: {}", status.message()),
            ),
        }
        result
    }

    fn record(&mut self, decision: Decision, reason: String) {
        let (decided_by, capability) = match &mut self.allowed {
            Some(allowed) => (allowed.decided_by.clone(), allowed.capability.take()),
            None => (Decider::Host, None),
        };
        self.record_as(decision, decided_by, capability, reason);
    }

    fn record_as(
        &mut self,
        decision: Decision,
        decided_by: Decider,
        capability: Option<String>,
        reason: String,
    ) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        crate::metric::call(
            self.identity.shared_name().into(),
            &self.operation,
            true,
            decision,
            &decided_by,
            Some(self.started.elapsed()),
        );
        let record = AuditRecord {
            time: AuditRecord::now(),
            plugin: self.identity.name().to_owned(),
            instance: self.identity.instance(),
            pid: Some(self.identity.pid()),
            operation: self.operation.clone(),
            resource: self.resource.clone(),
            decision,
            decided_by,
            capability,
            reason,
            request_id: self.context.request_id.clone(),
            timeout_ms: self.context.timeout_ms,
            trace_id: self.context.trace_id.clone(),
        };
        match self.reservation.take() {
            Some(reservation) => reservation.record(record),
            None => self.gate.inner.audit.record(record),
        }
    }
}

/// A resource as shown in an audit record: escaped, capped.
fn capped(resource: &str) -> String {
    const CAP: usize = 1024;
    let shown = resource.escape_debug().to_string();
    if shown.len() <= CAP {
        return shown;
    }
    let mut end = CAP;
    while !shown.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &shown[..end])
}

pub(crate) async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| Status::internal(format!("a host-service worker failed: {err}")))
}

/// Put in each request's extensions by [`Guarded`]: the gRPC method, and whether the
/// service consulted the gate.
#[derive(Debug, Clone)]
struct GateMark {
    operation: Operation,
    checked: Arc<AtomicBool>,
    instance: Arc<Instance>,
}

/// Whether a request's body reached its end (`END_STREAM`), as opposed to being cut off:
/// tonic reports a request stream the client cancelled (`RST_STREAM`) as a clean end of
/// stream. Services behind the gate can tell the two apart with [`RequestEnd::of`].
#[derive(Debug, Clone, Default)]
pub struct RequestEnd(Arc<AtomicBool>);

impl RequestEnd {
    /// The request's end marker, for a request that came through [`Guarded`].
    pub fn of<T>(request: &Request<T>) -> Option<Self> {
        request.extensions().get::<RequestEnd>().cloned()
    }

    /// Whether the plugin finished sending the request (it did not cancel it).
    pub fn reached(&self) -> bool {
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
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
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

type ServerFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

/// A tonic service behind the [`Gate`] (made by [`Gate::serve`]): every request is
/// identified, counted against its plugin's open-call limit (refused at once past it,
/// audited), and marked so that its method can consult the gate; a method that answers
/// without consulting it has its answer withheld (`INTERNAL`) and the lapse audited.
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    gate: Gate,
    inner: S,
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Guarded<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = ServerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> ServerFuture {
        let (mut parts, body) = request.into_parts();
        let Some(identity) = parts.extensions.get::<PluginIdentity>().cloned() else {
            tracing::warn!(target: "tether::hostserve", path = parts.uri.path(),
                "a host-service call without a plugin identity was refused: serve host services through tether_hostconn");
            let status = Status::failed_precondition(
                "this call carries no plugin identity: host services must be served through \
                 tether_hostconn::establish_host_services",
            );
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        let operation = Operation::from_grpc_path(parts.uri.path());
        let admitted = match self.gate.admit(&identity, &operation, &parts.headers) {
            Ok(open) => open,
            Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
        };
        let end = RequestEnd::default();
        let checked = Arc::new(AtomicBool::new(false));
        parts.extensions.insert(end.clone());
        parts.extensions.insert(GateMark {
            operation: operation.clone(),
            checked: Arc::clone(&checked),
            instance: Arc::clone(&admitted.0),
        });
        // Read only if the method never consults the gate: the three values, not the map.
        let correlation = (
            parts.headers.get(&REQUEST_ID).cloned(),
            parts.headers.get(&GRPC_TIMEOUT).cloned(),
            parts.headers.get(&TRACEPARENT).cloned(),
        );
        let request = http::Request::from_parts(parts, Body::new(Watched { inner: body, end }));
        let call = self.inner.call(request);
        let gate = self.gate.clone();
        Box::pin(async move {
            let response = call.await;
            drop(admitted);
            if checked.load(Ordering::Relaxed) {
                return response;
            }
            let Ok(response) = response;
            // The method never consulted the gate. An error it answered with before doing
            // so (a method that does not exist, a request that does not decode) is passed
            // on; an answer with data is withheld.
            let context = Correlation::from_values(
                correlation.0.as_ref(),
                correlation.1.as_ref(),
                correlation.2.as_ref(),
            );
            if let Some(status) = Status::from_header_map(response.headers()) {
                gate.record_unchecked(
                    &identity,
                    operation,
                    &context,
                    format!("refused before reaching the gate: {status}"),
                );
                return Ok(response);
            }
            gate.record_unchecked(
                &identity,
                operation,
                &context,
                "the service answered without consulting the gate (a bug in the host's \
                 service: every method must call Gate::check or Gate::begin); its answer was \
                 withheld"
                    .to_owned(),
            );
            Ok(Status::internal(
                "the host's service answered without checking this call's capabilities; the \
                 answer was withheld",
            )
            .into_http())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tether_test_contract::testing::host_testing_client::HostTestingClient;
    use tether_test_contract::testing::host_testing_server::{HostTesting, HostTestingServer};
    use tether_test_contract::testing::{WhoAmIRequest, WhoAmIResponse};
    use tonic::{Code, Request, Response, Status};

    use crate::{Audit, HostServices, Limits, Policy};

    /// A host service whose method forgets to consult the gate.
    struct Careless;

    #[tonic::async_trait]
    impl HostTesting for Careless {
        async fn who_am_i(
            &self,
            _request: Request<WhoAmIRequest>,
        ) -> Result<Response<WhoAmIResponse>, Status> {
            Ok(Response::new(WhoAmIResponse {
                plugin: "a secret the caller was never checked for".to_owned(),
                pid: 0,
            }))
        }
    }

    /// A host service whose method asks for `whoami:ask`.
    struct Checked {
        gate: crate::Gate,
    }

    #[tonic::async_trait]
    impl HostTesting for Checked {
        async fn who_am_i(
            &self,
            request: Request<WhoAmIRequest>,
        ) -> Result<Response<WhoAmIResponse>, Status> {
            let need = crate::Need::new("whoami").action("ask");
            let mut call = self.gate.check(&request, need).await?;
            let plugin = call.identity().name().to_owned();
            call.finish(Ok(Response::new(WhoAmIResponse { plugin, pid: 0 })))
        }
    }

    // A current-thread runtime: the services run on the test's thread, where its local
    // recorder is.
    #[tokio::test(flavor = "current_thread")]
    async fn calls_denials_and_durations_are_counted_per_plugin() {
        use crate::metric::testing::Taken;
        use crate::metric::{CALL_DURATION, CALLS, DENIALS};

        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let metrics = recorder.snapshotter();
        let _local = metrics::set_default_local_recorder(&recorder);

        let kind = crate::CapabilityKind::new("whoami").actions(["ask"]);
        let policy = Policy::with_kinds([kind]).unwrap();
        policy.grant("trusted", "whoami:ask").unwrap();
        let gate = crate::Gate::new(policy, Audit::tracing_only(), Limits::default());
        let services =
            HostServices::from_gate(gate.clone()).serve(HostTestingServer::new(Checked { gate }));
        let trusted = tether_hostconn::in_process("trusted", services.routes())
            .await
            .unwrap();
        let stranger = tether_hostconn::in_process("stranger", services.routes())
            .await
            .unwrap();
        let answer = HostTestingClient::new(trusted.channel())
            .who_am_i(WhoAmIRequest::default())
            .await
            .unwrap();
        assert_eq!(answer.into_inner().plugin, "trusted");
        let status = HostTestingClient::new(stranger.channel())
            .who_am_i(WhoAmIRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status}");

        let taken = Taken::from(&metrics);
        let operation = "tether.testing.v1.HostTesting/WhoAmI";
        let calls = |plugin: &str, decision: &str| {
            let labels = [
                ("plugin", plugin),
                ("operation", operation),
                ("decision", decision),
            ];
            taken.counter(CALLS, &labels)
        };
        assert_eq!(calls("trusted", "allowed"), 1);
        assert_eq!(calls("trusted", "denied"), 0);
        assert_eq!(calls("stranger", "denied"), 1);
        assert_eq!(calls("stranger", "allowed"), 0);
        assert_eq!(taken.counter(DENIALS, &[("plugin", "trusted")]), 0);
        let denied_by_policy = [
            ("plugin", "stranger"),
            ("operation", operation),
            ("decided_by", "policy"),
        ];
        assert_eq!(taken.counter(DENIALS, &denied_by_policy), 1);
        for plugin in ["trusted", "stranger"] {
            let labels = [("plugin", plugin), ("operation", operation)];
            let durations = taken.histogram(CALL_DURATION, &labels);
            assert_eq!(durations.len(), 1, "{plugin}: {durations:?}");
            assert!(durations[0] >= 0.0, "{plugin}: {durations:?}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_method_name_a_plugin_makes_up_is_no_label_value() {
        use crate::metric::CALLS;
        use crate::metric::testing::Taken;

        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let metrics = recorder.snapshotter();
        let _local = metrics::set_default_local_recorder(&recorder);
        let services = HostServices::new(Policy::new(), Audit::tracing_only(), Limits::default())
            .serve(HostTestingServer::new(Careless));
        let local = tether_hostconn::in_process("inventive", services.routes())
            .await
            .unwrap();
        // A method the service does not have: refused before it reaches the gate.
        let mut grpc = tonic::client::Grpc::new(local.channel());
        grpc.ready().await.unwrap();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/tether.testing.v1.HostTesting/MadeUp12345",
        );
        let codec = tonic_prost::ProstCodec::<WhoAmIRequest, WhoAmIResponse>::default();
        let status = grpc
            .unary(Request::new(WhoAmIRequest::default()), path, codec)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{status}");

        let taken = Taken::from(&metrics);
        let made_up = [("operation", "tether.testing.v1.HostTesting/MadeUp12345")];
        assert_eq!(taken.counter(CALLS, &made_up), 0);
        let labels = [
            ("plugin", "inventive"),
            ("operation", "other"),
            ("decision", "denied"),
        ];
        assert_eq!(taken.counter(CALLS, &labels), 1);
    }

    #[tokio::test]
    async fn a_method_that_never_consults_the_gate_has_its_answer_withheld_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::to_file(&path, 1 << 20).unwrap();
        let services = HostServices::new(Policy::new(), audit.clone(), Limits::default())
            .serve(HostTestingServer::new(Careless));
        let local = tether_hostconn::in_process("careless", services.routes())
            .await
            .unwrap();
        let status = HostTestingClient::new(local.channel())
            .who_am_i(WhoAmIRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{status}");
        assert!(!status.message().contains("secret"), "{status}");

        assert!(audit.flush(Duration::from_secs(60)).await);
        let text = std::fs::read_to_string(&path).unwrap();
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(records.len(), 1, "{text}");
        assert_eq!(
            records[0]["operation"],
            "tether.testing.v1.HostTesting/WhoAmI"
        );
        assert_eq!(records[0]["plugin"], "careless");
        assert_eq!(records[0]["decision"], "denied");
        assert!(
            records[0]["reason"]
                .as_str()
                .unwrap()
                .contains("without consulting the gate"),
            "{text}"
        );
    }
}
