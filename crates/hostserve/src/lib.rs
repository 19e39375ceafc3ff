//! tether's ready-made host services, made safe for third-party plugins.
//!
//! The services of `tether.hostserve.v1.HostServices` (`ReadDir`, `ReadFile`, `WriteFile`,
//! `DeleteFile`, `CreateDir`, `GetEnv`, `Stat`), shared by every plugin, where every call:
//!
//! 1. is attributed to the calling plugin by its endpoint (`tether_hostconn::PluginIdentity`),
//!    never by anything the plugin sends;
//! 2. names a path relative to the plugin's workspace, which is checked lexically first
//!    ([`PathError`]: empty, `.`/`..`/empty components, absolute, NUL, not UTF-8, too long);
//! 3. is checked against the capabilities the operator granted that plugin ([`Policy`];
//!    deny by default, denials win, grant and revoke apply to the next call), with the
//!    grammar in [`capability`];
//! 4. runs beneath the workspace through directory handles (`cap_std`), following no
//!    symbolic link at any step, so the object reached is the one the path names;
//! 5. stays within [`Limits`] (message size, per-plugin concurrency, open calls and
//!    connections, per-plugin write quota, capped directory pages, streamed file contents,
//!    and a stall timeout that ends a stream the plugin stops reading or sending);
//! 6. writes atomically: into a temporary file with a reserved name ([`RESERVED_PREFIX`]:
//!    never listed, never nameable), renamed into place only when the plugin ends the
//!    write; an interrupted write leaves nothing, and the leftovers of a host killed
//!    mid-write are removed when the services next connect a plugin to that workspace;
//! 7. leaves exactly one audit record ([`Audit`]): a JSON line and a `tracing` event, with
//!    the call's request id and remaining deadline when it carries them
//!    (`tether_protocol::CallContext`).
//!
//! [`HostServices::connect`] gives a plugin these services in one line, and also audits
//! every other process refused at the plugin's host-service socket (operation `connect`).
//!
//! ```no_run
//! # async fn demo(plugin: tether_host::PluginClient) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use tether_hostserve::{Audit, HostServices, Limits, Policy};
//!
//! let policy = Policy::load("policy.toml".as_ref())?;
//! let audit = Audit::to_file("audit.jsonl", 64 << 20)?;
//! let services = Arc::new(HostServices::new(policy, audit, Limits::default()));
//! let host = services.connect(&plugin).await?;
//! # drop(host); Ok(()) }
//! ```
//!
//! Denials are `PERMISSION_DENIED` statuses whose message names the missing capability,
//! which is also in the `tether-capability` metadata; the SDK turns them into a typed error.
//! What this crate does not do: confine the plugin process itself (that is the sandbox's
//! job), or follow symbolic links.

mod audit;
pub mod capability;
mod confine;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod gate;
mod hook;
mod manifest;
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
pub use manifest::{Manifest, ManifestError};
pub use path::{MAX_COMPONENT, MAX_PATH, PathError, RESERVED_PREFIX};
pub use policy::{DEFAULT_HOOK_TIMEOUT, Lifetime, Policy, PolicyError};
pub use service::HostServices;
