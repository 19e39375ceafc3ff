//! tether's host services, made safe for third-party plugins: one gate for every service,
//! and ready-made file services on it.
//!
//! Most hosts depend on the `tether` facade instead, with its `hostserve` feature: it
//! re-exports this crate as `tether::hostserve`.
//!
//! # The gate
//!
//! Every host-service call, to the file services or to a service of the host's own, goes
//! through one [`Gate`]:
//!
//! 1. it is attributed to the calling plugin by its endpoint
//!    (`tether_hostconn::PluginIdentity`), never by anything the plugin sends;
//! 2. it is decided by the [`Policy`]: the capabilities the operator granted that plugin
//!    (deny by default, denials win, grants and revocations apply to the next call, grants
//!    may expire or be good for a number of uses, [`Lifetime`]), and for what no grant
//!    covers, an optional [`DecisionHook`] (a function, or an [`ExternalHook`] process);
//! 3. it stays within the plugin's [`Limits`] (concurrent and open calls, connections);
//! 4. it leaves exactly one audit record ([`Audit`], [`AuditRecord`]): a JSON line and a
//!    `tracing` event, with the call's request id and remaining deadline when it carries
//!    them. An allowed call first reserves room for its record; when the trail cannot
//!    take it (queue full, disk full), the call is denied ([`OnFailure`]).
//!
//! A service of the host's own joins in one line, and each method says what it needs in
//! one statement (the grammar of capabilities, including the host's own kinds, is in
//! [`capability`]):
//!
//! ```no_run
//! use tether_hostserve::{
//!     Audit, CapabilityKind, Gate, HostServices, Limits, Need, Policy, Resource,
//! };
//! use tonic::{Request, Response, Status};
//!
//! struct Guestbook {
//!     gate: Gate,
//! }
//!
//! impl Guestbook {
//!     /// A method of the host's own service (in a real host, of the trait tonic generated
//!     /// from its `.proto`): signs the plugin into the book the request names.
//!     async fn sign(&self, request: Request<String>) -> Result<Response<String>, Status> {
//!         let book = request.get_ref().clone();
//!         // Identity, policy decision, limits; a denial is audited and returned.
//!         let need = Need::new("guestbook").action("sign").resource(book);
//!         let mut call = self.gate.check(&request, need).await?;
//!         let plugin = call.identity().name().to_owned();
//!         // The call's one audit record, with how it ended.
//!         call.finish(Ok(Response::new(format!("signed by {plugin}"))))
//!     }
//! }
//!
//! # async fn demo(plugin: tether_host::PluginClient) -> Result<(), Box<dyn std::error::Error>> {
//! let kind = CapabilityKind::new("guestbook").actions(["sign"]).resource(Resource::NAME);
//! let policy = Policy::with_kinds([kind])?;
//! policy.load_file("policy.toml".as_ref())?;
//! let audit = Audit::to_file("audit.jsonl", 64 << 20)?;
//! let gate = Gate::new(policy, audit, Limits::default());
//! let guestbook = Guestbook { gate: gate.clone() };
//! // With the server tonic generated for the service, it joins in one line:
//! // `.serve(GuestbookServer::new(guestbook))`.
//! # drop(guestbook);
//! let services = HostServices::from_gate(gate);
//! // The file services (and the guestbook), to this plugin, in one line:
//! let connection = services.connect(&plugin).await?.required()?;
//! # drop(connection); Ok(()) }
//! ```
//!
//! `examples/guestbook` in tether's repository is this host and its plugin, whole.
//!
//! [`HostServices::connect`] also audits every other process refused at the plugin's
//! host-service socket (operation `connect`). Denials are `PERMISSION_DENIED` statuses
//! whose message names the missing capability, which is also in the `tether-capability`
//! metadata; the SDK turns them into a typed error.
//!
//! # The file services
//!
//! `tether.hostserve.v1.Files` (`ReadDir`, `ReadFile`, `WriteFile`, `DeleteFile`,
//! `CreateDir`, `GetEnv`, `Stat`), shared by every plugin, on the same gate, where every
//! call also:
//!
//! - names a path relative to the plugin's workspace, which is checked lexically first
//!   ([`PathError`]: empty, `.`/`..`/empty components, absolute, NUL, not UTF-8, too long);
//! - runs beneath the workspace through directory handles (`cap_std`), following no
//!   symbolic link at any step, so the object reached is the one the path names;
//! - stays within the file limits (message size, per-plugin write quota, capped directory
//!   pages, streamed file contents, and a stall timeout that ends a stream the plugin
//!   stops reading or sending);
//! - writes atomically: into a temporary file with a reserved name ([`RESERVED_PREFIX`]:
//!   never listed, never nameable), renamed into place only when the plugin ends the
//!   write; an interrupted write leaves nothing, and the leftovers of a host killed
//!   mid-write are removed when the services next connect a plugin to that workspace.
//!
//! # Metrics
//!
//! The gate counts every call it records (`tether_hostservice_calls_total`, by plugin,
//! operation and decision), every denial (`tether_hostservice_denials_total`, by who
//! decided) and times each call (`tether_hostservice_call_duration_seconds`); the audit
//! trail counts the records it gives up (`tether_audit_records_dropped_total`,
//! `tether_audit_records_failed_total`). They go through the `metrics` facade: this crate
//! installs no recorder. The table is in [`metric`] (and docs/operating.md).
//!
//! What this crate does not do: confine the plugin process itself (that is the sandbox's
//! job), or follow symbolic links.

mod audit;
mod bulk;
pub mod capability;
mod confine;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod gate;
mod hook;
mod manifest;
pub mod metric;
mod path;
mod policy;
mod service;

pub use audit::{
    Audit, AuditBuilder, AuditError, AuditHealth, AuditRecord, Decider, Decision, FileOperation,
    OnFailure, Operation, Reservation,
};
pub use capability::{
    Capability, CapabilityError, CapabilityKind, KindError, Kinds, Need, Resource, Verb,
};
pub use gate::{CAPABILITY_METADATA, Call, Gate, Guarded, Limits, RequestEnd, Slot};
pub use hook::{
    Answer, DecisionHook, ExternalHook, FnHook, HookError, HookFuture, Question, Verdict,
};
pub use manifest::{Manifest, ManifestError, PublisherKey, PublisherKeyError};
pub use path::{MAX_COMPONENT, MAX_PATH, PathError, RESERVED_PREFIX};
pub use policy::{DEFAULT_HOOK_TIMEOUT, Explanation, Lifetime, Policy, PolicyError, SpentGrant};
pub use service::HostServices;
