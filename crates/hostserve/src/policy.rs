//! The operator's grants and denials per plugin, changeable at runtime.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use serde::Deserialize;

use crate::capability::{Capability, CapabilityError, Verb};

/// What the operator decided for one plugin: its workspace, what it may do, what it may
/// never do (denials win over grants).
#[derive(Debug, Clone)]
struct PluginGrants {
    workspace: PathBuf,
    grants: Vec<Capability>,
    denies: Vec<Capability>,
}

/// The capability policy: per plugin name, a workspace directory, grants and denials.
///
/// Cheap to clone; clones share the policy, so a grant or revocation made through any
/// clone applies to the next call of every plugin. Deny by default: a plugin without an
/// entry, or a call no grant covers, is denied.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    plugins: Arc<RwLock<BTreeMap<String, PluginGrants>>>,
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
    /// Capabilities for `plugin` are malformed.
    #[error("plugin `{plugin}`: {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Capabilities {
        /// The plugin whose entry is bad.
        plugin: String,
        /// Every bad capability.
        errors: Vec<CapabilityError>,
    },
    /// A grant was made for a plugin that has no workspace yet.
    #[error("plugin `{plugin}` has no workspace; call Policy::set_workspace first")]
    NoWorkspace {
        /// The plugin.
        plugin: String,
    },
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
    workspace: PathBuf,
    #[serde(default)]
    grant: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

/// Parses every capability, collecting all errors.
pub(crate) fn parse_all(list: &[String]) -> Result<Vec<Capability>, Vec<CapabilityError>> {
    let mut errors = Vec::new();
    let mut parsed = Vec::new();
    for text in list {
        match text.parse() {
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
pub(crate) enum Decision {
    /// Allowed by `grant`; operate beneath `workspace`.
    Allow { workspace: PathBuf, grant: String },
    /// Denied; `needed` is the capability that would allow it.
    Deny { reason: String, needed: String },
}

impl Policy {
    /// An empty policy: everything is denied.
    pub fn new() -> Self {
        Policy::default()
    }

    /// Loads a policy file:
    ///
    /// ```toml
    /// [plugins.filelister]
    /// workspace = "workspace"          # relative to the policy file's directory
    /// grant = ["read:config/**", "write:output/**"]
    /// deny = ["read:config/private/**"]
    /// ```
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Policy::from_toml(&text, base).map_err(|err| match err {
            PolicyError::Parse { message, .. } => PolicyError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses a policy from TOML text; relative workspaces are resolved against `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|err| PolicyError::Parse {
            path: PathBuf::new(),
            message: err.to_string(),
        })?;
        let policy = Policy::new();
        for (plugin, entry) in file.plugins {
            let bad = |errors| PolicyError::Capabilities {
                plugin: plugin.clone(),
                errors,
            };
            let grants = parse_all(&entry.grant).map_err(bad)?;
            let denies = parse_all(&entry.deny).map_err(bad)?;
            policy.write().insert(
                plugin,
                PluginGrants {
                    workspace: base.join(entry.workspace),
                    grants,
                    denies,
                },
            );
        }
        Ok(policy)
    }

    /// Assigns `plugin` its workspace (keeping its grants, if any).
    pub fn set_workspace(&self, plugin: &str, workspace: impl Into<PathBuf>) {
        let workspace = workspace.into();
        self.write()
            .entry(plugin.to_owned())
            .and_modify(|entry| entry.workspace.clone_from(&workspace))
            .or_insert_with(|| PluginGrants {
                workspace,
                grants: Vec::new(),
                denies: Vec::new(),
            });
    }

    /// The workspace of `plugin`, if it has one.
    pub(crate) fn workspace(&self, plugin: &str) -> Option<PathBuf> {
        self.read().get(plugin).map(|entry| entry.workspace.clone())
    }

    /// Grants `capability` to `plugin`, from its next call on.
    pub fn grant(&self, plugin: &str, capability: &str) -> Result<(), PolicyError> {
        self.add(plugin, capability, false)
    }

    /// Denies `capability` to `plugin` whatever it is granted, from its next call on.
    pub fn deny(&self, plugin: &str, capability: &str) -> Result<(), PolicyError> {
        self.add(plugin, capability, true)
    }

    /// Revokes a grant made earlier (spelled the same); returns whether there was one.
    pub fn revoke(&self, plugin: &str, capability: &str) -> bool {
        let mut plugins = self.write();
        let Some(entry) = plugins.get_mut(plugin) else {
            return false;
        };
        let before = entry.grants.len();
        entry.grants.retain(|grant| grant.as_str() != capability);
        entry.grants.len() != before
    }

    /// The capabilities granted to `plugin`, as written.
    pub fn grants(&self, plugin: &str) -> Vec<String> {
        self.read()
            .get(plugin)
            .map(|entry| entry.grants.iter().map(|c| c.as_str().to_owned()).collect())
            .unwrap_or_default()
    }

    fn add(&self, plugin: &str, capability: &str, deny: bool) -> Result<(), PolicyError> {
        let parsed: Capability = capability
            .parse()
            .map_err(|err| PolicyError::Capabilities {
                plugin: plugin.to_owned(),
                errors: vec![err],
            })?;
        let mut plugins = self.write();
        let entry = plugins
            .get_mut(plugin)
            .ok_or_else(|| PolicyError::NoWorkspace {
                plugin: plugin.to_owned(),
            })?;
        let list = if deny {
            &mut entry.denies
        } else {
            &mut entry.grants
        };
        if !list.contains(&parsed) {
            list.push(parsed);
        }
        Ok(())
    }

    /// Decides whether `plugin` may do `verb` on `resource` (a checked workspace-relative
    /// path, or a variable name for `env`).
    pub(crate) fn decide(&self, plugin: &str, verb: Verb, resource: &str) -> Decision {
        let needed = format!("{verb}:{resource}");
        let plugins = self.read();
        let Some(entry) = plugins.get(plugin) else {
            return Decision::Deny {
                reason: format!("plugin `{plugin}` has no grants"),
                needed,
            };
        };
        if let Some(deny) = entry.denies.iter().find(|d| d.covers(verb, resource)) {
            return Decision::Deny {
                reason: format!("denied by the operator's rule `{deny}`"),
                needed,
            };
        }
        match entry.grants.iter().find(|g| g.covers(verb, resource)) {
            Some(grant) => Decision::Allow {
                workspace: entry.workspace.clone(),
                grant: grant.as_str().to_owned(),
            },
            None => Decision::Deny {
                reason: format!("no grant covers `{needed}`"),
                needed,
            },
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, PluginGrants>> {
        self.plugins.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, PluginGrants>> {
        self.plugins.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(policy: &Policy, plugin: &str, verb: Verb, resource: &str) -> Option<PathBuf> {
        match policy.decide(plugin, verb, resource) {
            Decision::Allow { workspace, .. } => Some(workspace),
            Decision::Deny { .. } => None,
        }
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
    fn a_bad_policy_file_says_which_file_and_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let err = Policy::load(&missing).unwrap_err();
        assert!(matches!(err, PolicyError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.toml"), "{err}");

        let path = dir.path().join("policy.toml");
        for (text, expected) in [
            ("[plugins.p]\ngrant = [\"read:x/**\"]\n", "workspace"),
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
                    match policy.decide(name, Verb::Read, "probe.txt") {
                        Decision::Allow { workspace: granted, grant } => {
                            prop_assert_eq!(granted, base.join(workspace));
                            prop_assert_eq!(grant, "read:probe.txt");
                        }
                        Decision::Deny { reason, .. } => prop_assert!(false, "denied: {}", reason),
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
                prop_assert_eq!(parse_all(&all).map(|_| ()).unwrap_err().len(), bad.len());
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
