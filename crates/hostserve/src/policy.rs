//! The operator's grants and denials per plugin, changeable at runtime, with lifetimes and
//! a decision hook for what no grant covers.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};

use crate::audit::{Decider, Operation};
use crate::capability::{
    Capability, CapabilityError, CapabilityKind, KindError, Kinds, Need, NeedError,
};
use crate::hook::{Answer, DecisionHook, Question};

/// How long a decision hook may take to answer unless said otherwise.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a grant lasts: for ever (the default), until a time, and/or for a number of
/// uses. Expiry takes effect on the next call, which is denied and audited as such.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifetime {
    expires: Option<SystemTime>,
    uses: Option<u32>,
}

impl Lifetime {
    /// Until revoked.
    pub fn forever() -> Self {
        Lifetime::default()
    }

    /// Until `time`.
    pub fn until(time: SystemTime) -> Self {
        Lifetime {
            expires: Some(time),
            uses: None,
        }
    }

    /// For `duration` from now.
    pub fn lasting(duration: Duration) -> Self {
        Lifetime::until(SystemTime::now() + duration)
    }

    /// Good for `uses` calls (1: a single-use grant).
    pub fn uses(uses: u32) -> Self {
        Lifetime {
            expires: None,
            uses: Some(uses),
        }
    }

    /// This lifetime, also limited to `uses` calls.
    pub fn and_uses(self, uses: u32) -> Self {
        Lifetime {
            uses: Some(uses),
            ..self
        }
    }

    /// When it expires, if it does.
    pub fn expires(&self) -> Option<SystemTime> {
        self.expires
    }

    /// How many uses it is good for, if it is limited to a number of uses.
    pub fn remaining_uses(&self) -> Option<u32> {
        self.uses
    }
}

/// One grant and what is left of its lifetime.
#[derive(Debug)]
struct Grant {
    capability: Capability,
    expires: Option<SystemTime>,
    /// Uses left, for grants with a number of uses.
    uses: Option<AtomicU32>,
}

/// Why a grant that covers a call did not allow it.
enum Spent {
    Expired(SystemTime),
    UsedUp,
}

impl Grant {
    fn new(capability: Capability, lifetime: Lifetime) -> Self {
        Grant {
            capability,
            expires: lifetime.expires,
            uses: lifetime.uses.map(AtomicU32::new),
        }
    }

    fn spent(&self, now: SystemTime) -> Option<Spent> {
        if let Some(expires) = self.expires
            && now >= expires
        {
            return Some(Spent::Expired(expires));
        }
        match &self.uses {
            Some(uses) if uses.load(Ordering::Relaxed) == 0 => Some(Spent::UsedUp),
            _ => None,
        }
    }

    /// Takes one use: false if none is left (or it has expired).
    fn take(&self, now: SystemTime) -> Result<(), Spent> {
        if let Some(spent) = self.spent(now) {
            return Err(spent);
        }
        match &self.uses {
            None => Ok(()),
            Some(uses) => uses
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .map(|_| ())
                .map_err(|_| Spent::UsedUp),
        }
    }

    /// Its lifetime as it is now: the uses are those left.
    fn lifetime(&self) -> Lifetime {
        Lifetime {
            expires: self.expires,
            uses: self.uses.as_ref().map(|uses| uses.load(Ordering::Relaxed)),
        }
    }

    /// Why a call this grant covers is allowed, as its audit record says: built in one
    /// string, since it is built on every allowed call.
    fn reason(&self) -> String {
        use std::fmt::Write as _;
        let mut text = String::with_capacity(64);
        // Writing into a String cannot fail.
        let _ = write!(text, "granted by `{}`", self.capability);
        if let Some(expires) = self.expires {
            let _ = write!(
                text,
                " (until {})",
                humantime::format_rfc3339_seconds(expires)
            );
        }
        if let Some(uses) = &self.uses {
            let _ = write!(text, " ({} use(s) left)", uses.load(Ordering::Relaxed));
        }
        text
    }
}

/// What the operator decided for one plugin: its workspace (for the file services), what
/// it may do, what it may never do (denials win over grants).
#[derive(Debug, Clone, Default)]
struct PluginGrants {
    workspace: Option<PathBuf>,
    sha256: Option<tether_host::Sha256>,
    publisher: Option<crate::PublisherKey>,
    grants: Vec<Arc<Grant>>,
    denies: Vec<Capability>,
}

struct HookSetting {
    hook: Arc<dyn DecisionHook>,
    timeout: Duration,
}

#[derive(Default)]
struct Inner {
    kinds: RwLock<Kinds>,
    plugins: RwLock<BTreeMap<String, PluginGrants>>,
    hook: RwLock<Option<Arc<HookSetting>>>,
}

/// The capability policy: per plugin name, a workspace directory, grants (each with a
/// [`Lifetime`]) and denials, over the built-in capability kinds and those the host
/// declared; and optionally a [`DecisionHook`] asked about what no grant covers.
///
/// Cheap to clone; clones share the policy, so a grant or revocation made through any
/// clone applies to the next call of every plugin. Deny by default: a plugin without an
/// entry, or a call no grant covers (and no hook allows), is denied. Denials win over
/// grants and over the hook.
#[derive(Clone, Default)]
pub struct Policy {
    inner: Arc<Inner>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("plugins", &*self.read())
            .field(
                "hook",
                &self.hook().map(|setting| setting.hook.name().to_owned()),
            )
            .finish()
    }
}

/// Why a policy could not be loaded or changed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file could not be read.
    #[error("could not read the policy file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The policy file is not valid TOML of the expected shape.
    #[error("the policy file {} is not valid: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// Capabilities for `plugin` are malformed, or their lifetimes are.
    #[error("plugin `{plugin}`: {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Capabilities {
        /// The plugin whose entry is bad.
        plugin: String,
        /// Every bad capability.
        errors: Vec<CapabilityError>,
    },
    /// The `sha256` pinned for `plugin` is not a SHA-256 digest.
    #[error("plugin `{plugin}`: sha256 {source}")]
    Digest {
        /// The plugin whose entry is bad.
        plugin: String,
        /// What is wrong with the digest.
        #[source]
        source: tether_host::DigestError,
    },
    /// The `publisher` key named for `plugin` is not a minisign public key.
    #[error("plugin `{plugin}`: publisher {source}")]
    Publisher {
        /// The plugin whose entry is bad.
        plugin: String,
        /// What is wrong with the key.
        #[source]
        source: crate::PublisherKeyError,
    },
    /// A capability kind could not be declared.
    #[error(transparent)]
    Kind(#[from] KindError),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    plugins: BTreeMap<String, PluginEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginEntry {
    workspace: Option<PathBuf>,
    sha256: Option<String>,
    publisher: Option<String>,
    #[serde(default)]
    grant: Vec<GrantEntry>,
    #[serde(default)]
    deny: Vec<String>,
}

/// A grant in the policy file: a capability, or a table with its lifetime.
enum GrantEntry {
    Plain(String),
    Timed(TimedGrant),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimedGrant {
    capability: String,
    expires_in: Option<String>,
    expires_at: Option<String>,
    uses: Option<u32>,
}

impl<'de> Deserialize<'de> for GrantEntry {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> Visitor<'de> for Entry {
            type Value = GrantEntry;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a capability string, or a table { capability = \"...\", expires_in = \
                     \"10m\" | expires_at = \"2027-01-01T00:00:00Z\", uses = 1 }",
                )
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<GrantEntry, E> {
                Ok(GrantEntry::Plain(text.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<GrantEntry, A::Error> {
                TimedGrant::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(GrantEntry::Timed)
            }
        }
        deserializer.deserialize_any(Entry)
    }
}

impl GrantEntry {
    fn capability(&self) -> &str {
        match self {
            GrantEntry::Plain(text) => text,
            GrantEntry::Timed(timed) => &timed.capability,
        }
    }

    fn lifetime(&self, now: SystemTime) -> Result<Lifetime, String> {
        let GrantEntry::Timed(timed) = self else {
            return Ok(Lifetime::forever());
        };
        let expires = match (&timed.expires_in, &timed.expires_at) {
            (Some(_), Some(_)) => {
                return Err("give `expires_in` or `expires_at`, not both".to_owned());
            }
            (Some(text), None) => Some(
                now + humantime::parse_duration(text).map_err(|err| {
                    format!("expires_in {text:?} is not a duration such as \"10m\" or \"2h 30m\": {err}")
                })?,
            ),
            (None, Some(text)) => Some(humantime::parse_rfc3339_weak(text).map_err(|err| {
                format!("expires_at {text:?} is not an RFC 3339 time such as \"2027-01-01T00:00:00Z\": {err}")
            })?),
            (None, None) => None,
        };
        if timed.uses == Some(0) {
            return Err("`uses = 0` would never allow anything; remove the grant".to_owned());
        }
        Ok(Lifetime {
            expires,
            uses: timed.uses,
        })
    }
}

/// Parses every capability with `kinds`, collecting all errors.
pub(crate) fn parse_all(
    kinds: &Kinds,
    list: &[String],
) -> Result<Vec<Capability>, Vec<CapabilityError>> {
    let mut errors = Vec::new();
    let mut parsed = Vec::new();
    for text in list {
        match kinds.parse(text) {
            Ok(capability) => parsed.push(capability),
            Err(err) => errors.push(err),
        }
    }
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(errors)
    }
}

/// The outcome of a policy check.
#[derive(Debug, Clone)]
pub(crate) enum Ruling {
    /// Allowed: by the grant `capability` (none when a hook allowed it once), for `reason`.
    Allow {
        capability: Option<String>,
        reason: String,
        decided_by: Decider,
        workspace: Option<PathBuf>,
    },
    /// Denied; `needed` is the capability that would allow it.
    Deny {
        reason: String,
        needed: String,
        decided_by: Decider,
    },
    /// The request names a malformed resource.
    Invalid { reason: String },
    /// The host's service asked for a kind or action never declared.
    Undeclared { reason: String },
}

/// What [`Policy::explain`] found: what the policy would decide about a request now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Explanation {
    /// Allowed by a live grant (the first, in the order made, that covers the request).
    Allowed {
        /// The grant, as written.
        grant: String,
        /// What is left of its lifetime (its uses are those left now).
        lifetime: Lifetime,
        /// The plugin's workspace, if it has one.
        workspace: Option<PathBuf>,
    },
    /// Denied by the operator's rule `by_rule` (denials win over grants and the hook).
    Denied {
        /// The denial, as written.
        by_rule: String,
    },
    /// No live grant covers it: denied, unless a decision hook allows it.
    NotCovered {
        /// Grants that would have covered it but are spent (expired, or no uses left).
        spent: Vec<SpentGrant>,
        /// The decision hook that would be asked, by its name, if one is installed.
        hook: Option<String>,
    },
    /// The request names a malformed resource.
    Invalid(String),
    /// The request names a kind or action nobody declared.
    Undeclared(String),
}

/// A grant that covers a request but can no longer allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpentGrant {
    /// The grant, as written.
    pub grant: String,
    /// When it expired; `None` if it has no uses left instead.
    pub expired: Option<SystemTime>,
}

/// The matching core of [`Policy::decide`] and [`Policy::explain`]: the first denial of
/// `entry` that covers `need`, else its grants that cover it, in the order made.
fn matching<'a>(
    entry: Option<&'a PluginGrants>,
    need: &'a Need,
) -> Result<impl Iterator<Item = &'a Arc<Grant>>, &'a Capability> {
    if let Some(deny) = entry.and_then(|e| e.denies.iter().find(|d| d.covers(need))) {
        return Err(deny);
    }
    Ok(entry
        .into_iter()
        .flat_map(|e| e.grants.iter())
        .filter(move |g| g.capability.covers(need)))
}

/// Who asks, for the decision hook.
pub(crate) struct Asker<'a> {
    pub(crate) plugin: &'a str,
    pub(crate) instance: u64,
    pub(crate) pid: u32,
    pub(crate) operation: &'a Operation,
}

impl Policy {
    /// An empty policy over the built-in kinds: everything is denied.
    pub fn new() -> Self {
        Policy::default()
    }

    /// An empty policy over the built-in kinds and `kinds`.
    pub fn with_kinds(kinds: impl IntoIterator<Item = CapabilityKind>) -> Result<Self, KindError> {
        let policy = Policy::new();
        for kind in kinds {
            policy.declare(kind)?;
        }
        Ok(policy)
    }

    /// Declares one of the host's own capability kinds, so grants, denials and the
    /// services' needs can use it.
    pub fn declare(&self, kind: CapabilityKind) -> Result<(), KindError> {
        self.inner
            .kinds
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .declare(kind)
    }

    /// The kinds this policy knows.
    pub fn kinds(&self) -> Kinds {
        self.inner
            .kinds
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Loads a policy file over the built-in kinds ([`Policy::load_file`] on a new policy).
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let policy = Policy::new();
        policy.load_file(path)?;
        Ok(policy)
    }

    /// Adds the entries of a policy file (replacing this policy's entries for the plugins it
    /// names), validated against the declared kinds:
    ///
    /// ```toml
    /// [plugins.filelister]
    /// workspace = "workspace"          # relative to the policy file's directory
    /// grant = [
    ///     "read:config/**",
    ///     { capability = "write:output/**", expires_in = "8h" },
    ///     { capability = "env:API_KEY", uses = 1 },
    /// ]
    /// deny = ["read:config/private/**"]
    /// ```
    ///
    /// Nothing is changed if any entry is invalid.
    pub fn load_file(&self, path: &Path) -> Result<(), PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        self.load_toml(&text, base).map_err(|err| match err {
            PolicyError::Parse { message, .. } => PolicyError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses a policy from TOML text over the built-in kinds; relative workspaces are
    /// resolved against `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, PolicyError> {
        let policy = Policy::new();
        policy.load_toml(text, base)?;
        Ok(policy)
    }

    /// [`Policy::load_file`] from TOML text; relative workspaces are resolved against `base`.
    pub fn load_toml(&self, text: &str, base: &Path) -> Result<(), PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|err| PolicyError::Parse {
            path: PathBuf::from("(policy text)"),
            message: err.to_string(),
        })?;
        let kinds = self.kinds();
        let now = SystemTime::now();
        let mut entries = Vec::new();
        for (plugin, entry) in file.plugins {
            let mut errors = Vec::new();
            let mut grants = Vec::new();
            for grant in &entry.grant {
                let text = grant.capability();
                match (kinds.parse(text), grant.lifetime(now)) {
                    (Ok(capability), Ok(lifetime)) => {
                        grants.push(Arc::new(Grant::new(capability, lifetime)));
                    }
                    (Err(err), _) => errors.push(err),
                    (_, Err(reason)) => errors.push(CapabilityError {
                        capability: text.to_owned(),
                        reason,
                    }),
                }
            }
            let denies = match parse_all(&kinds, &entry.deny) {
                Ok(denies) => denies,
                Err(more) => {
                    errors.extend(more);
                    Vec::new()
                }
            };
            if !errors.is_empty() {
                return Err(PolicyError::Capabilities { plugin, errors });
            }
            let sha256 = match entry.sha256.as_deref().map(str::parse) {
                None => None,
                Some(Ok(digest)) => Some(digest),
                Some(Err(source)) => return Err(PolicyError::Digest { plugin, source }),
            };
            let publisher = match entry.publisher.as_deref().map(str::parse) {
                None => None,
                Some(Ok(key)) => Some(key),
                Some(Err(source)) => return Err(PolicyError::Publisher { plugin, source }),
            };
            entries.push((
                plugin,
                PluginGrants {
                    workspace: entry.workspace.map(|workspace| base.join(workspace)),
                    sha256,
                    publisher,
                    grants,
                    denies,
                },
            ));
        }
        self.write().extend(entries);
        Ok(())
    }

    /// Assigns `plugin` its workspace for the file services (keeping its grants, if any).
    pub fn set_workspace(&self, plugin: &str, workspace: impl Into<PathBuf>) {
        self.write().entry(plugin.to_owned()).or_default().workspace = Some(workspace.into());
    }

    /// Pins the SHA-256 of `plugin`'s binary, checked at its next start by a builder that
    /// [`HostServices::configure`](crate::HostServices::configure) prepared (the policy
    /// file's `sha256`).
    pub fn pin_sha256(&self, plugin: &str, digest: tether_host::Sha256) {
        self.write().entry(plugin.to_owned()).or_default().sha256 = Some(digest);
    }

    /// The SHA-256 pinned for `plugin`'s binary, if any.
    pub fn pinned_sha256(&self, plugin: &str) -> Option<tether_host::Sha256> {
        self.read().get(plugin).and_then(|entry| entry.sha256)
    }

    /// Trusts `key` to vouch for `plugin`'s binary: from its next start by a builder that
    /// [`HostServices::configure`](crate::HostServices::configure) prepared, the plugin
    /// starts only with a manifest beside its binary signed by `key`, naming the plugin
    /// and its binary's SHA-256 (the policy file's `publisher`).
    pub fn trust_publisher(&self, plugin: &str, key: crate::PublisherKey) {
        self.write().entry(plugin.to_owned()).or_default().publisher = Some(key);
    }

    /// The publisher key trusted for `plugin`, if any.
    pub fn publisher(&self, plugin: &str) -> Option<crate::PublisherKey> {
        self.read()
            .get(plugin)
            .and_then(|entry| entry.publisher.clone())
    }

    /// The workspace of `plugin`, if it has one.
    pub fn workspace(&self, plugin: &str) -> Option<PathBuf> {
        self.read()
            .get(plugin)
            .and_then(|entry| entry.workspace.clone())
    }

    /// Grants `capability` to `plugin` until revoked, from its next call on.
    pub fn grant(&self, plugin: &str, capability: &str) -> Result<(), PolicyError> {
        self.grant_for(plugin, capability, Lifetime::forever())
    }

    /// Grants `capability` to `plugin` for `lifetime`, from its next call on. Granting a
    /// capability again replaces its lifetime.
    pub fn grant_for(
        &self,
        plugin: &str,
        capability: &str,
        lifetime: Lifetime,
    ) -> Result<(), PolicyError> {
        let parsed = self.parse(plugin, capability)?;
        if lifetime.uses == Some(0) {
            return Err(PolicyError::Capabilities {
                plugin: plugin.to_owned(),
                errors: vec![CapabilityError {
                    capability: capability.to_owned(),
                    reason: "a grant good for 0 uses would never allow anything".to_owned(),
                }],
            });
        }
        let mut plugins = self.write();
        let grants = &mut plugins.entry(plugin.to_owned()).or_default().grants;
        grants.retain(|grant| grant.capability != parsed);
        grants.push(Arc::new(Grant::new(parsed, lifetime)));
        Ok(())
    }

    /// Denies `capability` to `plugin` whatever it is granted, from its next call on.
    pub fn deny(&self, plugin: &str, capability: &str) -> Result<(), PolicyError> {
        let parsed = self.parse(plugin, capability)?;
        let mut plugins = self.write();
        let denies = &mut plugins.entry(plugin.to_owned()).or_default().denies;
        if !denies.contains(&parsed) {
            denies.push(parsed);
        }
        Ok(())
    }

    /// Revokes a grant made earlier (spelled the same); returns whether there was one. The
    /// plugin's next call is decided without it.
    pub fn revoke(&self, plugin: &str, capability: &str) -> bool {
        let mut plugins = self.write();
        let Some(entry) = plugins.get_mut(plugin) else {
            return false;
        };
        let before = entry.grants.len();
        entry
            .grants
            .retain(|grant| grant.capability.as_str() != capability);
        entry.grants.len() != before
    }

    /// The capabilities granted to `plugin` and still live (not expired, uses left), as
    /// written.
    pub fn grants(&self, plugin: &str) -> Vec<String> {
        let now = SystemTime::now();
        self.read()
            .get(plugin)
            .map(|entry| {
                entry
                    .grants
                    .iter()
                    .filter(|grant| grant.spent(now).is_none())
                    .map(|grant| grant.capability.as_str().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asks `hook` about every call no grant covers (and no denial refuses), waiting at
    /// most `timeout` for each answer: no answer in time is a denial. Its answers are
    /// audited with `decided_by` = `hook:<name>`; "allow always" grants exactly the
    /// capability asked for, until revoked.
    pub fn set_hook(&self, hook: impl DecisionHook, timeout: Duration) {
        *self
            .inner
            .hook
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(HookSetting {
            hook: Arc::new(hook),
            timeout,
        }));
    }

    /// Stops asking the decision hook: what no grant covers is denied.
    pub fn clear_hook(&self) {
        *self
            .inner
            .hook
            .write()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn hook(&self) -> Option<Arc<HookSetting>> {
        self.inner
            .hook
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn parse(&self, plugin: &str, capability: &str) -> Result<Capability, PolicyError> {
        self.inner
            .kinds
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .parse(capability)
            .map_err(|err| PolicyError::Capabilities {
                plugin: plugin.to_owned(),
                errors: vec![err],
            })
    }

    /// Whether `need` names a declared kind and action and a well-formed resource.
    fn check(&self, need: &Need) -> Result<(), NeedError> {
        self.inner
            .kinds
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .check(need)
    }

    /// Decides whether `asker` may have `need`: denials, then live grants, then the hook.
    pub(crate) async fn decide(&self, asker: &Asker<'_>, need: &Need) -> Ruling {
        match self.check(need) {
            Ok(()) => {}
            Err(NeedError::Invalid(reason)) => return Ruling::Invalid { reason },
            Err(NeedError::Undeclared(reason)) => return Ruling::Undeclared { reason },
        }
        let plugin = asker.plugin;
        let (workspace, spent) = {
            let plugins = self.read();
            let entry = plugins.get(plugin);
            let covering = match matching(entry, need) {
                Err(deny) => {
                    return Ruling::Deny {
                        reason: format!("denied by the operator's rule `{deny}`"),
                        needed: need.to_string(),
                        decided_by: Decider::Policy,
                    };
                }
                Ok(covering) => covering,
            };
            let now = SystemTime::now();
            let mut spent = None;
            for grant in covering {
                match grant.take(now) {
                    Ok(()) => {
                        return Ruling::Allow {
                            capability: Some(grant.capability.as_str().to_owned()),
                            reason: grant.reason(),
                            decided_by: Decider::Policy,
                            workspace: entry.and_then(|e| e.workspace.clone()),
                        };
                    }
                    Err(why) => spent = spent.or(Some((grant.capability.as_str().to_owned(), why))),
                }
            }
            (entry.and_then(|e| e.workspace.clone()), spent)
        };
        if spent.is_some() {
            self.prune(plugin);
        }
        let needed = need.to_string();
        let uncovered = match &spent {
            Some((grant, Spent::Expired(at))) => format!(
                "the grant `{grant}` expired at {}, and no other grant covers `{needed}`",
                humantime::format_rfc3339_seconds(*at)
            ),
            Some((grant, Spent::UsedUp)) => format!(
                "the grant `{grant}` has no uses left, and no other grant covers `{needed}`"
            ),
            None => format!("no grant covers `{needed}`"),
        };
        let Some(setting) = self.hook() else {
            return Ruling::Deny {
                reason: uncovered,
                needed,
                decided_by: Decider::Policy,
            };
        };
        self.ask(setting, asker, need, needed, uncovered, workspace)
            .await
    }

    async fn ask(
        &self,
        setting: Arc<HookSetting>,
        asker: &Asker<'_>,
        need: &Need,
        needed: String,
        uncovered: String,
        workspace: Option<PathBuf>,
    ) -> Ruling {
        let name = setting.hook.name().to_owned();
        let decided_by = Decider::Hook(name.clone());
        let question = Question {
            plugin: asker.plugin.to_owned(),
            instance: asker.instance,
            pid: asker.pid,
            operation: asker.operation.to_string(),
            resource: need.resource_name().unwrap_or_default().to_owned(),
            capability: needed.clone(),
        };
        let answer = tokio::time::timeout(setting.timeout, setting.hook.decide(question)).await;
        let verdict = match answer {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(err)) => {
                return Ruling::Deny {
                    reason: format!("{uncovered}; the decision hook failed, so denied: {err}"),
                    needed,
                    decided_by,
                };
            }
            Err(_) => {
                return Ruling::Deny {
                    reason: format!(
                        "{uncovered}; the decision hook `{name}` gave no answer within {:?}, so \
                         denied",
                        setting.timeout
                    ),
                    needed,
                    decided_by,
                };
            }
        };
        let said = verdict
            .reason
            .as_deref()
            .map(|reason| format!(": {reason}"))
            .unwrap_or_default();
        match verdict.answer {
            Answer::Deny => Ruling::Deny {
                reason: format!("{uncovered}; the decision hook `{name}` denied it{said}"),
                needed,
                decided_by,
            },
            Answer::AllowOnce => Ruling::Allow {
                capability: None,
                reason: format!("{uncovered}; the decision hook `{name}` allowed it once{said}"),
                decided_by,
                workspace,
            },
            Answer::AllowAlways => {
                // A request is a literal name, a grant a pattern: a request naming a file
                // `*` must never become the grant `read:*`. Such requests are allowed once.
                let grant = if needed.contains('*') {
                    Err(PolicyError::Capabilities {
                        plugin: asker.plugin.to_owned(),
                        errors: vec![CapabilityError {
                            capability: needed.clone(),
                            reason: "a request with `*` would be remembered as a wildcard"
                                .to_owned(),
                        }],
                    })
                } else {
                    self.grant(asker.plugin, &needed)
                };
                let (capability, remembered) = match grant {
                    Ok(()) => (
                        Some(needed.clone()),
                        format!("allowed it from now on (granted `{needed}`)"),
                    ),
                    Err(err) => {
                        tracing::warn!(target: "tether::hostserve", plugin = asker.plugin, %err,
                            "the decision hook said allow from now on, but the capability cannot be granted as written; allowed once");
                        (
                            None,
                            "allowed it from now on (not remembered: the request is not a valid \
                             grant)"
                                .to_owned(),
                        )
                    }
                };
                Ruling::Allow {
                    capability,
                    reason: format!("{uncovered}; the decision hook `{name}` {remembered}{said}"),
                    decided_by,
                    workspace,
                }
            }
        }
    }

    /// What [`Policy`] would decide about `plugin` asking for `need` now, and why, without
    /// spending a use of any grant or asking the decision hook: the same matching as the
    /// decision itself (the kind check, then denials, then live grants in the order made).
    pub fn explain(&self, plugin: &str, need: &Need) -> Explanation {
        match self.check(need) {
            Ok(()) => {}
            Err(NeedError::Invalid(reason)) => return Explanation::Invalid(reason),
            Err(NeedError::Undeclared(reason)) => return Explanation::Undeclared(reason),
        }
        let plugins = self.read();
        let entry = plugins.get(plugin);
        let covering = match matching(entry, need) {
            Err(deny) => {
                return Explanation::Denied {
                    by_rule: deny.as_str().to_owned(),
                };
            }
            Ok(covering) => covering,
        };
        let now = SystemTime::now();
        let mut spent = Vec::new();
        for grant in covering {
            match grant.spent(now) {
                None => {
                    return Explanation::Allowed {
                        grant: grant.capability.as_str().to_owned(),
                        lifetime: grant.lifetime(),
                        workspace: entry.and_then(|e| e.workspace.clone()),
                    };
                }
                Some(why) => spent.push(SpentGrant {
                    grant: grant.capability.as_str().to_owned(),
                    expired: match why {
                        Spent::Expired(at) => Some(at),
                        Spent::UsedUp => None,
                    },
                }),
            }
        }
        Explanation::NotCovered {
            spent,
            hook: self.hook().map(|setting| setting.hook.name().to_owned()),
        }
    }

    /// Forgets `plugin`'s grants that expired or have no uses left.
    fn prune(&self, plugin: &str) {
        let now = SystemTime::now();
        if let Some(entry) = self.write().get_mut(plugin) {
            entry.grants.retain(|grant| grant.spent(now).is_none());
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, PluginGrants>> {
        self.inner
            .plugins
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, PluginGrants>> {
        self.inner
            .plugins
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::capability::Verb;

    /// Decides on a current-thread runtime.
    pub(crate) fn decide(policy: &Policy, plugin: &str, need: &Need) -> Ruling {
        let asker = Asker {
            plugin,
            instance: 1,
            pid: 1,
            operation: &Operation::Connect,
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(policy.decide(&asker, need))
    }

    fn allowed(policy: &Policy, plugin: &str, verb: Verb, resource: &str) -> Option<PathBuf> {
        match decide(policy, plugin, &Need::verb(verb, resource)) {
            Ruling::Allow { workspace, .. } => Some(workspace.unwrap_or_default()),
            _ => None,
        }
    }

    fn bus() -> CapabilityKind {
        CapabilityKind::new("bus")
            .actions(["publish", "subscribe"])
            .resource(crate::Resource::PATH)
    }

    fn is_allowed(policy: &Policy, plugin: &str, need: &Need) -> bool {
        matches!(decide(policy, plugin, need), Ruling::Allow { .. })
    }

    #[test]
    fn the_hosts_own_kinds_are_validated_granted_and_denied_like_the_built_in_ones() {
        let policy =
            Policy::with_kinds([bus(), CapabilityKind::new("counter").actions(["incr"])]).unwrap();
        policy
            .load_toml(
                r#"
[plugins.a]
grant = ["bus:publish:alerts/**", "counter:incr"]
deny = ["bus:publish:alerts/secret"]
"#,
                Path::new("/"),
            )
            .unwrap();
        let publish = |topic: &str| Need::new("bus").action("publish").resource(topic);
        assert!(is_allowed(&policy, "a", &publish("alerts/disk")));
        assert!(
            !is_allowed(&policy, "a", &publish("alerts/secret")),
            "denials win"
        );
        assert!(!is_allowed(&policy, "a", &publish("news")));
        assert!(
            !is_allowed(&policy, "b", &publish("alerts/disk")),
            "each plugin its own"
        );
        assert!(is_allowed(
            &policy,
            "a",
            &Need::new("counter").action("incr")
        ));
        assert!(matches!(
            decide(&policy, "a", &publish("alerts/../x")),
            Ruling::Invalid { .. }
        ));
        assert!(matches!(
            decide(&policy, "a", &Need::new("kv").action("get")),
            Ruling::Undeclared { .. }
        ));
        // A policy that does not know the kind refuses the file, naming what it knows.
        let err = Policy::from_toml("[plugins.a]\ngrant = [\"bus:publish:x\"]\n", Path::new("/"))
            .unwrap_err();
        assert!(
            err.to_string().contains("unknown capability kind `bus`"),
            "{err}"
        );
        for bad in [
            "bus:shout:x",
            "bus:publish",
            "bus:publish:/x",
            "counter:incr:x",
            "counter",
        ] {
            let err = policy.grant("a", bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
        assert!(
            policy
                .declare(CapabilityKind::new("read").actions(["x"]))
                .is_err()
        );
        assert!(policy.declare(CapabilityKind::new("Bad")).is_err());
    }

    #[test]
    fn grants_expire_and_single_use_grants_work_once() {
        let policy = Policy::with_kinds([bus()]).unwrap();
        let need = Need::new("bus").action("publish").resource("t");
        policy
            .grant_for("a", "bus:publish:t", Lifetime::uses(1))
            .unwrap();
        assert!(is_allowed(&policy, "a", &need));
        match decide(&policy, "a", &need) {
            Ruling::Deny { reason, .. } => assert!(reason.contains("no uses left"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(policy.grants("a").is_empty());

        policy
            .grant_for(
                "a",
                "bus:publish:t",
                Lifetime::until(SystemTime::now() - Duration::from_secs(1)),
            )
            .unwrap();
        match decide(&policy, "a", &need) {
            Ruling::Deny { reason, .. } => assert!(reason.contains("expired at"), "{reason}"),
            other => panic!("{other:?}"),
        }
        policy
            .load_toml(
                "[plugins.a]\ngrant = [{ capability = \"bus:publish:t\", expires_in = \"1h\", uses = 2 }]\n",
                Path::new("/"),
            )
            .unwrap();
        assert!(is_allowed(&policy, "a", &need));
        assert!(is_allowed(&policy, "a", &need));
        assert!(!is_allowed(&policy, "a", &need));
    }

    #[test]
    fn the_decision_hook_decides_what_no_grant_covers_and_never_overrides_a_denial() {
        use crate::hook::{FnHook, Verdict};
        let policy = Policy::with_kinds([bus()]).unwrap();
        policy.deny("a", "bus:publish:never").unwrap();
        policy.set_hook(
            FnHook::new("rules", |question: &Question| Verdict {
                answer: match question.resource.as_str() {
                    "once" => Answer::AllowOnce,
                    "always" | "always/*" => Answer::AllowAlways,
                    _ => Answer::Deny,
                },
                reason: Some("by rule".to_owned()),
            }),
            DEFAULT_HOOK_TIMEOUT,
        );
        let publish = |topic: &str| Need::new("bus").action("publish").resource(topic);
        match decide(&policy, "a", &publish("once")) {
            Ruling::Allow {
                decided_by,
                capability,
                ..
            } => {
                assert_eq!(decided_by, Decider::Hook("rules".to_owned()));
                assert_eq!(capability, None);
            }
            other => panic!("{other:?}"),
        }
        assert!(policy.grants("a").is_empty(), "allow once grants nothing");
        assert!(is_allowed(&policy, "a", &publish("always")));
        assert_eq!(policy.grants("a"), ["bus:publish:always"]);
        // A topic literally named `*` is allowed, but never remembered as a wildcard.
        assert!(is_allowed(&policy, "b", &publish("always/*")));
        assert!(policy.grants("b").is_empty());
        match decide(&policy, "a", &publish("other")) {
            Ruling::Deny {
                decided_by, reason, ..
            } => {
                assert_eq!(decided_by, Decider::Hook("rules".to_owned()));
                assert!(reason.contains("by rule"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        match decide(&policy, "a", &publish("never")) {
            Ruling::Deny { decided_by, .. } => assert_eq!(decided_by, Decider::Policy),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_hook_that_does_not_answer_in_time_denies() {
        #[derive(Debug)]
        struct Silent;
        impl DecisionHook for Silent {
            fn name(&self) -> &str {
                "silent"
            }
            fn decide(&self, _: Question) -> crate::hook::HookFuture {
                Box::pin(std::future::pending())
            }
        }
        let policy = Policy::with_kinds([bus()]).unwrap();
        policy.set_hook(Silent, Duration::from_millis(50));
        match decide(
            &policy,
            "a",
            &Need::new("bus").action("publish").resource("x"),
        ) {
            Ruling::Deny {
                decided_by, reason, ..
            } => {
                assert_eq!(decided_by, Decider::Hook("silent".to_owned()));
                assert!(reason.contains("gave no answer within"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn explain_says_what_decide_would_and_spends_nothing() {
        let policy = Policy::with_kinds([bus()]).unwrap();
        policy
            .load_toml(
                r#"
[plugins.a]
workspace = "/w"
grant = [
    "bus:publish:alerts/**",
    { capability = "bus:publish:once", uses = 1 },
    { capability = "bus:publish:late", expires_at = "2020-01-01T00:00:00Z" },
]
deny = ["bus:publish:alerts/secret"]
"#,
                Path::new("/"),
            )
            .unwrap();
        let publish = |topic: &str| Need::new("bus").action("publish").resource(topic);
        assert_eq!(
            policy.explain("a", &publish("alerts/disk")),
            Explanation::Allowed {
                grant: "bus:publish:alerts/**".to_owned(),
                lifetime: Lifetime::forever(),
                workspace: Some(PathBuf::from("/w")),
            }
        );
        assert_eq!(
            policy.explain("a", &publish("alerts/secret")),
            Explanation::Denied {
                by_rule: "bus:publish:alerts/secret".to_owned()
            }
        );
        // Explaining a single-use grant leaves its use for the call.
        for _ in 0..3 {
            match policy.explain("a", &publish("once")) {
                Explanation::Allowed {
                    grant, lifetime, ..
                } => {
                    assert_eq!(grant, "bus:publish:once");
                    assert_eq!(lifetime.remaining_uses(), Some(1));
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(is_allowed(&policy, "a", &publish("once")));
        match policy.explain("a", &publish("late")) {
            Explanation::NotCovered { spent, hook } => {
                assert_eq!(spent.len(), 1);
                assert_eq!(spent[0].grant, "bus:publish:late");
                assert!(spent[0].expired.is_some());
                assert_eq!(hook, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            policy.explain("a", &publish("news")),
            Explanation::NotCovered {
                spent: Vec::new(),
                hook: None
            }
        );
        assert_eq!(
            policy.explain("stranger", &publish("alerts/disk")),
            Explanation::NotCovered {
                spent: Vec::new(),
                hook: None
            }
        );
        assert!(matches!(
            policy.explain("a", &publish("alerts/../x")),
            Explanation::Invalid(_)
        ));
        assert!(matches!(
            policy.explain("a", &Need::new("kv").action("get")),
            Explanation::Undeclared(_)
        ));
        // The used-up grant is reported as such once decide has spent it.
        match policy.explain("a", &publish("once")) {
            Explanation::NotCovered { spent, .. } => {
                assert!(spent.iter().all(|s| s.expired.is_none()), "{spent:?}");
            }
            other => panic!("{other:?}"),
        }
        policy.set_hook(
            crate::hook::FnHook::new("rules", |_: &Question| crate::hook::Verdict {
                answer: Answer::Deny,
                reason: None,
            }),
            DEFAULT_HOOK_TIMEOUT,
        );
        assert_eq!(
            policy.explain("a", &publish("news")),
            Explanation::NotCovered {
                spent: Vec::new(),
                hook: Some("rules".to_owned())
            }
        );
    }

    #[test]
    fn a_policy_file_loads_with_workspaces_relative_to_it_and_denials_winning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(
            &path,
            r#"
[plugins.filelister]
workspace = "work"
grant = ["read:config/**", "env:API_KEY"]
deny = ["read:config/private/**"]

[plugins.other]
workspace = "/abs/elsewhere"
"#,
        )
        .unwrap();
        let policy = Policy::load(&path).unwrap();
        assert_eq!(
            allowed(&policy, "filelister", Verb::Read, "config/a.toml"),
            Some(dir.path().join("work"))
        );
        assert_eq!(
            allowed(&policy, "filelister", Verb::Read, "config/private/key"),
            None
        );
        assert!(allowed(&policy, "filelister", Verb::Env, "API_KEY").is_some());
        assert!(allowed(&policy, "filelister", Verb::Write, "config/a.toml").is_none());
        // A plugin with a workspace and no grants, and a plugin the file never names.
        assert!(allowed(&policy, "other", Verb::Read, "config/a.toml").is_none());
        assert!(allowed(&policy, "stranger", Verb::Read, "config/a.toml").is_none());
        assert_eq!(
            policy.grants("filelister"),
            ["read:config/**", "env:API_KEY"]
        );
    }

    #[test]
    fn a_policy_file_pins_binaries_and_refuses_what_is_not_a_digest() {
        let digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let policy = Policy::from_toml(
            &format!("[plugins.a]\nsha256 = \"{digest}\"\n[plugins.b]\n"),
            Path::new("/"),
        )
        .expect("valid");
        assert_eq!(
            policy.pinned_sha256("a").map(|d| d.to_string()).as_deref(),
            Some(digest)
        );
        assert_eq!(policy.pinned_sha256("b"), None);
        assert_eq!(policy.pinned_sha256("stranger"), None);

        let err = Policy::from_toml("[plugins.a]\nsha256 = \"abc\"\n", Path::new("/"))
            .expect_err("not a digest");
        assert!(matches!(err, PolicyError::Digest { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("plugin `a`: sha256") && message.contains("64 hexadecimal digits"),
            "{message}"
        );
    }

    #[test]
    fn a_bad_policy_file_says_which_file_and_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let err = Policy::load(&missing).unwrap_err();
        assert!(matches!(err, PolicyError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.toml"), "{err}");

        let path = dir.path().join("policy.toml");
        for (text, expected) in [
            ("[plugins.p]\nworkspace = 3\n", "workspace"),
            (
                "[plugins.p]\ngrant = [{ capability = \"read:x\", expire_in = \"1s\" }]\n",
                "expire_in",
            ),
            ("[plugins.p]\nworkspace = \"w\"\ngrants = []\n", "grants"),
            ("[plugins.p\n", "policy.toml"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Policy::load(&path).unwrap_err();
            assert!(matches!(err, PolicyError::Parse { .. }), "{text}: {err:?}");
            let message = err.to_string();
            assert!(
                message.contains("policy.toml") && message.contains(expected),
                "{text}: {message}"
            );
        }

        std::fs::write(
            &path,
            "[plugins.p]\nworkspace = \"w\"\ngrant = [\"read:/**\", \"read:ok/**\", \"nope:x\"]\n",
        )
        .unwrap();
        let err = Policy::load(&path).unwrap_err();
        let PolicyError::Capabilities { plugin, errors } = &err else {
            panic!("expected a capabilities error, got {err:?}");
        };
        assert_eq!(plugin, "p");
        let named: Vec<&str> = errors.iter().map(|e| e.capability.as_str()).collect();
        assert_eq!(named, ["read:/**", "nope:x"]);
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;
        use crate::capability::Verb;
        use crate::manifest::tests::{list, toml_string};

        /// One plugin's entry: its workspace, grants and denials.
        type Entry = (String, Vec<String>, Vec<String>);

        fn policy_text(plugins: &BTreeMap<String, Entry>) -> String {
            let mut text = String::new();
            for (name, (workspace, grant, deny)) in plugins {
                text.push_str(&format!(
                    "[plugins.{}]\nworkspace = {}\ngrant = {}\ndeny = {}\n\n",
                    toml_string(name),
                    toml_string(workspace),
                    list(grant),
                    list(deny)
                ));
            }
            text
        }

        fn grant() -> impl Strategy<Value = String> {
            prop_oneof![
                "(read|write|delete):[a-z]{1,5}(/([a-z]{1,4}|[a-z]?\\*[a-z]?)){0,3}(/\\*\\*)?",
                "env:[A-Z_][A-Z0-9_]{0,8}",
            ]
        }

        fn bad() -> impl Strategy<Value = String> {
            prop_oneof![
                "(read|write):/[a-z]{1,5}",
                "(read|write):[a-z]{1,4}//[a-z]{1,4}",
                "(exec|READ|Read):[a-z]{1,5}",
                "env:[a-z]{1,3}\\*",
                "[a-z]{0,6}",
            ]
        }

        fn entry() -> impl Strategy<Value = Entry> {
            (
                "[^\0]{0,12}",
                proptest::collection::vec(grant(), 0..4),
                proptest::collection::vec(
                    "deny/[a-z]{1,4}(/\\*\\*)?".prop_map(|p| format!("read:{p}")),
                    0..3,
                ),
            )
                .prop_map(|(workspace, mut grant, deny)| {
                    grant.push("read:probe.txt".to_owned());
                    (workspace, grant, deny)
                })
        }

        proptest! {
            #[test]
            fn every_policy_written_out_loads_as_written(
                plugins in proptest::collection::btree_map(any::<String>(), entry(), 0..4),
            ) {
                let base = Path::new("/etc/tether");
                let policy = Policy::from_toml(&policy_text(&plugins), base).expect("valid");
                for (name, (workspace, grant, _)) in &plugins {
                    prop_assert_eq!(&policy.grants(name), grant);
                    match super::decide(&policy, name, &Need::verb(Verb::Read, "probe.txt")) {
                        Ruling::Allow { workspace: granted, capability, .. } => {
                            prop_assert_eq!(granted, Some(base.join(workspace)));
                            prop_assert_eq!(capability.as_deref(), Some("read:probe.txt"));
                        }
                        other => prop_assert!(false, "not allowed: {:?}", other),
                    }
                }
            }

            #[test]
            fn any_text_loads_or_is_refused_without_panicking(text in any::<String>()) {
                match Policy::from_toml(&text, Path::new("/")) {
                    Ok(_) => {}
                    Err(PolicyError::Parse { .. } | PolicyError::Capabilities { .. }) => {}
                    Err(other) => prop_assert!(false, "{:?}", other),
                }
            }

            #[test]
            fn every_malformed_capability_is_listed_under_its_plugin(
                name in any::<String>(),
                good in proptest::collection::vec(grant(), 0..3),
                bad in proptest::collection::vec(bad(), 1..4),
                in_deny in any::<bool>(),
            ) {
                let mut all = good.clone();
                all.extend(bad.iter().cloned());
                let (grant, deny) = if in_deny { (good, all.clone()) } else { (all.clone(), Vec::new()) };
                let plugins = BTreeMap::from([(name.clone(), ("w".to_owned(), grant, deny))]);
                let err = Policy::from_toml(&policy_text(&plugins), Path::new("/")).unwrap_err();
                let PolicyError::Capabilities { plugin, errors } = err else {
                    panic!("expected a capabilities error, got {err:?}");
                };
                prop_assert_eq!(plugin, name);
                let named: Vec<&str> = errors.iter().map(|e| e.capability.as_str()).collect();
                prop_assert_eq!(named, bad.iter().map(String::as_str).collect::<Vec<_>>());
                prop_assert_eq!(parse_all(&Kinds::builtin(), &all).map(|_| ()).unwrap_err().len(), bad.len());
            }

            #[test]
            fn a_wrong_shape_is_a_parse_error(
                key in "[a-z_]{1,10}",
                top in any::<bool>(),
            ) {
                let known = ["workspace", "grant", "deny", "plugins"];
                prop_assume!(!known.contains(&key.as_str()));
                let text = if top {
                    format!("{key} = 1\n")
                } else {
                    format!("[plugins.p]\nworkspace = \"w\"\n{key} = []\n")
                };
                let err = Policy::from_toml(&text, Path::new("/")).unwrap_err();
                prop_assert!(matches!(err, PolicyError::Parse { .. }), "{:?}", err);
            }
        }
    }
}
