//! What happens to a plugin's process, for an audit trail: each start, each refused or
//! failed start, each idle stop. A host installs a hook with
//! [`PluginBuilder::on_lifecycle`](crate::PluginBuilder::on_lifecycle) (`tether-hostserve`'s
//! `HostServices::configure` installs one that writes audit records).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// One thing that happened to a plugin's process.
#[derive(Debug, Clone)]
pub struct LifecycleEvent {
    /// The plugin's name.
    pub plugin: String,
    /// Its process, once there is one.
    pub pid: Option<u32>,
    /// Its instance number ([`PluginClient::instance`](crate::PluginClient::instance)),
    /// once there is one.
    pub instance: Option<u64>,
    /// The binary it runs (or was to run).
    pub program: PathBuf,
    /// What happened.
    pub kind: LifecycleKind,
    /// The details, in words: the binary's verified digest, why a start failed, how long it
    /// had been idle.
    pub detail: String,
}

/// What happened to a plugin's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LifecycleKind {
    /// It started (its handshake and health check passed).
    Started,
    /// The host refused to start it: its binary failed verification
    /// ([`Error::Binary`](crate::Error::Binary)).
    Refused,
    /// It failed to start for another reason (the detail says which).
    Failed,
    /// Its supervisor stopped it after its idle timeout; the next call starts it again.
    IdleStopped,
}

impl LifecycleKind {
    /// `started`, `refused`, `failed`, `idle_stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleKind::Started => "started",
            LifecycleKind::Refused => "refused",
            LifecycleKind::Failed => "failed",
            LifecycleKind::IdleStopped => "idle_stopped",
        }
    }
}

impl fmt::Display for LifecycleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lifecycle hook: called on the task that starts or stops the plugin, so it must not
/// block for long.
pub type LifecycleHook = Arc<dyn Fn(&LifecycleEvent) + Send + Sync>;
