//! Capabilities: `kind[:action][:resource]`, parsed and validated when loaded against the
//! kinds the host declared.
//!
//! Built-in kinds, for the file services (no action; the rest is the resource):
//! - `read` (ReadFile, ReadDir, Stat), `write` (WriteFile, CreateDir), `delete` (DeleteFile):
//!   a path pattern, relative to the plugin's workspace;
//! - `env` (GetEnv): one exact variable name (`[A-Za-z_][A-Za-z0-9_]*`), no wildcards.
//!
//! A host declares its own kinds with [`CapabilityKind`]: a lowercase name, optional
//! actions, and what its resource is ([`Resource`]): none (`counter:incr`), a path pattern
//! (`kv:read:users/**`, `bus:publish:alerts`), or an exact name
//! (`net:connect:api.example.com:443`).
//!
//! Path patterns:
//! - components separated by `/`: no leading `/`, no empty, `.` or `..` components, no NUL,
//!   no `\`;
//! - `*` matches any run of characters within one component (never `/`); `**` as a whole
//!   component matches zero or more components; no other character is special (`?`, `[`,
//!   `{` are rejected so nobody mistakes them for wildcards);
//! - `dir/**` covers `dir` itself as well as everything beneath it.
//!
//! Names: one or more visible ASCII characters other than `*?[]{}` and `\`; they match
//! exactly.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use globset::{GlobBuilder, GlobMatcher};

/// The built-in file and environment capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    /// ReadFile, ReadDir, Stat.
    Read,
    /// WriteFile, CreateDir.
    Write,
    /// DeleteFile.
    Delete,
    /// GetEnv.
    Env,
}

impl Verb {
    /// The verb as written in a capability: its kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Read => "read",
            Verb::Write => "write",
            Verb::Delete => "delete",
            Verb::Env => "env",
        }
    }

    fn of(kind: &str) -> Option<Verb> {
        match kind {
            "read" => Some(Verb::Read),
            "write" => Some(Verb::Write),
            "delete" => Some(Verb::Delete),
            "env" => Some(Verb::Env),
            _ => None,
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the resource part of a capability kind is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource(Shape);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    None,
    Path,
    Name,
    EnvName,
}

impl Resource {
    /// No resource: the capability is the kind and its action (`counter:incr`).
    pub const NONE: Resource = Resource(Shape::None);
    /// A `/`-separated path pattern with `*` and `**` (`kv:read:users/**`); requests name
    /// one path, checked lexically like file paths.
    pub const PATH: Resource = Resource(Shape::Path);
    /// An exact name (`net:connect:api.example.com:443`); no wildcards.
    pub const NAME: Resource = Resource(Shape::Name);
    const ENV_NAME: Resource = Resource(Shape::EnvName);
}

/// A kind of capability the host's services check: a name, its actions (if any) and its
/// resource. Declare it on the [`crate::Policy`] before loading grants that use it.
///
/// ```
/// use tether_hostserve::{CapabilityKind, Resource};
/// let bus = CapabilityKind::new("bus").actions(["publish", "subscribe"]).resource(Resource::PATH);
/// let counter = CapabilityKind::new("counter").actions(["incr"]);
/// # drop((bus, counter));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityKind {
    name: String,
    actions: Vec<String>,
    resource: Resource,
}

impl CapabilityKind {
    /// A kind named `name` (lowercase `[a-z][a-z0-9_-]*`), with no actions and no resource
    /// until said otherwise.
    pub fn new(name: impl Into<String>) -> Self {
        CapabilityKind {
            name: name.into(),
            actions: Vec::new(),
            resource: Resource::NONE,
        }
    }

    /// Its actions (each lowercase `[a-z][a-z0-9_-]*`): a capability names exactly one.
    pub fn actions<I, S>(mut self, actions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.actions = actions.into_iter().map(Into::into).collect();
        self
    }

    /// What its resource is.
    pub fn resource(mut self, resource: Resource) -> Self {
        self.resource = resource;
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How a capability of this kind is written, for messages (`bus:<action>:<path>`).
    fn shape(&self) -> String {
        let mut shape = self.name.clone();
        if !self.actions.is_empty() {
            shape.push_str(&format!(":{{{}}}", self.actions.join("|")));
        }
        match self.resource.0 {
            Shape::None => {}
            Shape::Path => shape.push_str(":<path pattern>"),
            Shape::Name | Shape::EnvName => shape.push_str(":<name>"),
        }
        shape
    }

    fn validate(&self) -> Result<(), String> {
        if !is_word(&self.name) {
            return Err(format!(
                "the kind name {:?} is not lowercase `[a-z][a-z0-9_-]*`",
                self.name
            ));
        }
        if let Some(bad) = self.actions.iter().find(|action| !is_word(action)) {
            return Err(format!(
                "kind `{}`: the action {bad:?} is not lowercase `[a-z][a-z0-9_-]*`",
                self.name
            ));
        }
        let mut sorted = self.actions.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.actions.len() {
            return Err(format!("kind `{}` lists an action twice", self.name));
        }
        if self.actions.is_empty() && self.resource == Resource::NONE {
            return Err(format!(
                "kind `{}` has neither actions nor a resource: a capability of it could not \
                 say anything",
                self.name
            ));
        }
        Ok(())
    }
}

fn is_word(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Why a kind could not be declared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot declare the capability kind `{kind}`: {reason}")]
pub struct KindError {
    /// The kind's name.
    pub kind: String,
    /// What is wrong.
    pub reason: String,
}

/// The capability kinds a host knows: the built-in ones, and those it declared.
#[derive(Debug, Clone)]
pub struct Kinds {
    kinds: BTreeMap<String, Arc<CapabilityKind>>,
}

static BUILTIN: LazyLock<Kinds> = LazyLock::new(|| {
    let mut kinds = BTreeMap::new();
    for (name, resource) in [
        ("read", Resource::PATH),
        ("write", Resource::PATH),
        ("delete", Resource::PATH),
        ("env", Resource::ENV_NAME),
    ] {
        kinds.insert(
            name.to_owned(),
            Arc::new(CapabilityKind::new(name).resource(resource)),
        );
    }
    Kinds { kinds }
});

impl Default for Kinds {
    fn default() -> Self {
        BUILTIN.clone()
    }
}

impl Kinds {
    /// The built-in kinds only: `read`, `write`, `delete`, `env`.
    pub fn builtin() -> Self {
        Kinds::default()
    }

    /// Adds a kind; its name must be new (the built-in names are taken).
    pub fn declare(&mut self, kind: CapabilityKind) -> Result<(), KindError> {
        let fail = |reason: String| KindError {
            kind: kind.name.clone(),
            reason,
        };
        kind.validate().map_err(fail)?;
        if self.kinds.contains_key(&kind.name) {
            return Err(fail("a kind of that name is declared already".to_owned()));
        }
        self.kinds.insert(kind.name.clone(), Arc::new(kind));
        Ok(())
    }

    /// The kind named `name`.
    pub fn get(&self, name: &str) -> Option<&CapabilityKind> {
        self.kinds.get(name).map(AsRef::as_ref)
    }

    fn names(&self) -> String {
        self.kinds
            .keys()
            .map(|name| format!("`{name}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Splits `kind[:action][:resource]` text into its declared kind, its action (checked
    /// against the kind's) and the rest, the resource if any; or says what is wrong.
    fn split<'t>(
        &self,
        text: &'t str,
    ) -> Result<(&CapabilityKind, Option<&'t str>, Option<&'t str>), String> {
        let (name, rest) = match text.split_once(':') {
            Some((name, rest)) => (name, Some(rest)),
            None => (text, None),
        };
        let Some(kind) = self.kinds.get(name) else {
            return Err(format!(
                "unknown capability kind `{}`; the kinds are {}, lowercase",
                name.escape_debug(),
                self.names()
            ));
        };
        if kind.actions.is_empty() {
            return Ok((kind, None, rest));
        }
        let rest =
            rest.ok_or_else(|| format!("`{}` needs an action: {}", kind.name, kind.shape()))?;
        let (action, resource) = match rest.split_once(':') {
            Some((action, resource)) => (action, Some(resource)),
            None => (rest, None),
        };
        if !kind.actions.iter().any(|known| known == action) {
            return Err(format!(
                "unknown action `{}` for `{}`; its actions are {}",
                action.escape_debug(),
                kind.name,
                kind.actions
                    .iter()
                    .map(|a| format!("`{a}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok((kind, Some(action), resource))
    }

    /// Parses a capability written with these kinds.
    pub fn parse(&self, text: &str) -> Result<Capability, CapabilityError> {
        let fail = |reason: String| CapabilityError {
            capability: text.to_owned(),
            reason,
        };
        let (name, rest) = match text.split_once(':') {
            Some((name, rest)) => (name, Some(rest)),
            None => (text, None),
        };
        if let (Some(kind), None) = (self.kinds.get(name), rest) {
            return Err(fail(format!("expected `kind:...`: write {}", kind.shape())));
        }
        if rest.is_none() && !self.kinds.contains_key(name) {
            return Err(fail(format!(
                "expected `kind:...`, e.g. `read:config/**`; the kinds are {}",
                self.names()
            )));
        }
        let (kind, action, resource) = self.split(text).map_err(fail)?;
        let action = action.map(Arc::<str>::from);
        let pattern = match (kind.resource.0, resource) {
            (Shape::None, None) => Pattern::None,
            (Shape::None, Some(_)) => {
                return Err(fail(format!(
                    "`{}` takes no resource: write {}",
                    kind.name,
                    kind.shape()
                )));
            }
            (_, None) | (_, Some("")) => {
                return Err(fail(format!(
                    "the pattern is empty: write {}",
                    kind.shape()
                )));
            }
            (Shape::EnvName, Some(name)) => {
                if !is_env_name(name) {
                    return Err(fail(
                        "an env capability names one variable exactly ([A-Za-z_][A-Za-z0-9_]*), \
                         without wildcards"
                            .to_owned(),
                    ));
                }
                Pattern::Exact(name.to_owned())
            }
            (Shape::Name, Some(name)) => {
                if let Err(reason) = check_name(name) {
                    return Err(fail(reason));
                }
                Pattern::Exact(name.to_owned())
            }
            (Shape::Path, Some(pattern)) => path_pattern(pattern).map_err(fail)?,
        };
        Ok(Capability {
            text: text.to_owned(),
            kind: Arc::from(name),
            action,
            pattern,
        })
    }

    /// Reads a request written as text, such as `read:docs/a.txt` or
    /// `bus:publish:reports`, into the [`Need`] a service would build for it: a declared
    /// kind, its action if it has actions, and one literal resource (a `*` in it is a
    /// character of the name, not a wildcard).
    pub fn need(&self, text: &str) -> Result<Need, CapabilityError> {
        let fail = |reason: String| CapabilityError {
            capability: text.to_owned(),
            reason,
        };
        let (kind, action, resource) = self.split(text).map_err(fail)?;
        let mut need = Need::new(kind.name.as_str());
        if let Some(action) = action {
            need = need.action(action);
        }
        match (kind.resource.0, resource) {
            (Shape::None, None) => {}
            (Shape::None, Some(_)) => {
                return Err(fail(format!(
                    "`{}` takes no resource: write {}",
                    kind.name,
                    kind.shape()
                )));
            }
            (_, None) => {
                return Err(fail(format!(
                    "the resource is missing: write {}",
                    kind.shape()
                )));
            }
            (Shape::EnvName, Some(name)) if !is_env_name(name) => {
                return Err(fail(
                    "not a variable name ([A-Za-z_][A-Za-z0-9_]*)".to_owned(),
                ));
            }
            (Shape::EnvName, Some(name)) => need = need.resource(name),
            (Shape::Name, Some(name)) => {
                check_name(name).map_err(fail)?;
                need = need.resource(name);
            }
            (Shape::Path, Some(path)) => {
                check_request_path(path).map_err(fail)?;
                need = need.resource(path);
            }
        }
        debug_assert!(self.check(&need).is_ok(), "{need}");
        Ok(need)
    }

    /// Checks that `need` names a declared kind and action and a well-formed resource.
    pub(crate) fn check(&self, need: &Need) -> Result<(), NeedError> {
        let Some(kind) = self.kinds.get(&need.kind) else {
            return Err(NeedError::Undeclared(format!(
                "the host's service asks for `{need}`, but no capability kind `{}` is declared \
                 (declare it on the policy)",
                need.kind
            )));
        };
        match &need.action {
            Some(action) if kind.actions.iter().any(|known| known == action) => {}
            None if kind.actions.is_empty() => {}
            _ => {
                return Err(NeedError::Undeclared(format!(
                    "the host's service asks for `{need}`, which is not {} (the kind `{}` as \
                     declared)",
                    kind.shape(),
                    kind.name
                )));
            }
        }
        let invalid = |reason: String| NeedError::Invalid(format!("{need:?}: {reason}"));
        match (kind.resource.0, &need.resource) {
            (Shape::None, None) => Ok(()),
            (Shape::None, Some(_)) | (_, None) => Err(NeedError::Undeclared(format!(
                "the host's service asks for `{need}`, which is not {} (the kind `{}` as \
                 declared)",
                kind.shape(),
                kind.name
            ))),
            (Shape::EnvName, Some(name)) if !is_env_name(name) => Err(invalid(
                "not a variable name ([A-Za-z_][A-Za-z0-9_]*)".to_owned(),
            )),
            (Shape::EnvName, Some(_)) => Ok(()),
            (Shape::Name, Some(name)) => check_name(name).map_err(invalid),
            (Shape::Path, Some(path)) => check_request_path(path).map_err(invalid),
        }
    }
}

/// Why a [`Need`] cannot be decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NeedError {
    /// The service asks for a kind or action nobody declared: the host's bug.
    Undeclared(String),
    /// The plugin's request names a malformed resource.
    Invalid(String),
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".to_owned());
    }
    if name.len() > 1024 {
        return Err(format!(
            "the name is {} bytes long; the limit is 1024",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\'))
    {
        return Err(format!(
            "names are visible ASCII without `*?[]{{}}\\`, matched exactly; {:?} is not allowed",
            bad
        ));
    }
    Ok(())
}

/// The lexical check on a requested resource of a path kind.
fn check_request_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the path is empty".to_owned());
    }
    if path.len() > crate::MAX_PATH {
        return Err(format!(
            "the path is {} bytes long; the limit is {}",
            path.len(),
            crate::MAX_PATH
        ));
    }
    if path.starts_with('/') {
        return Err("the path is absolute (a leading `/`)".to_owned());
    }
    if path.contains('\0') {
        return Err("NUL is not allowed".to_owned());
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("empty, `.` and `..` components are not allowed".to_owned());
    }
    Ok(())
}

/// What a call needs: a kind, maybe an action, maybe a resource. Built by the service for
/// each call, from the request (never from the plugin's claims about itself).
///
/// ```
/// use tether_hostserve::Need;
/// let need = Need::new("bus").action("publish").resource("alerts");
/// assert_eq!(need.to_string(), "bus:publish:alerts");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    kind: String,
    action: Option<String>,
    resource: Option<String>,
}

impl Need {
    /// A need of the kind `kind`.
    pub fn new(kind: impl Into<String>) -> Self {
        Need {
            kind: kind.into(),
            action: None,
            resource: None,
        }
    }

    /// A built-in file or environment need: `read:docs/a.txt`, `env:HOME`.
    pub fn verb(verb: Verb, resource: impl Into<String>) -> Self {
        Need::new(verb.as_str()).resource(resource)
    }

    /// With this action.
    pub fn action(mut self, action: impl Into<String>) -> Self {
        self.action = Some(action.into());
        self
    }

    /// On this resource.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// The kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The resource, if any.
    pub fn resource_name(&self) -> Option<&str> {
        self.resource.as_deref()
    }
}

impl fmt::Display for Need {
    /// The capability that would allow exactly this.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind)?;
        if let Some(action) = &self.action {
            write!(f, ":{action}")?;
        }
        if let Some(resource) = &self.resource {
            write!(f, ":{resource}")?;
        }
        Ok(())
    }
}

/// Why a capability string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid capability {capability:?}: {reason}")]
pub struct CapabilityError {
    /// The capability as written.
    pub capability: String,
    /// What is wrong with it.
    pub reason: String,
}

/// One capability, such as `read:config/**`, `env:API_KEY` or `bus:publish:alerts`.
#[derive(Debug, Clone)]
pub struct Capability {
    text: String,
    kind: Arc<str>,
    action: Option<Arc<str>>,
    pattern: Pattern,
}

#[derive(Debug, Clone)]
enum Pattern {
    None,
    Exact(String),
    Path {
        matcher: GlobMatcher,
        /// The leading components without wildcards: the directory a grant is confined to.
        base: Vec<String>,
        /// `dir/**`: also covers `dir` itself.
        covers_base: bool,
    },
}

impl PartialEq for Capability {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Capability {}

impl Capability {
    /// The built-in verb, for file and environment capabilities.
    pub fn verb(&self) -> Option<Verb> {
        Verb::of(&self.kind)
    }

    /// The kind's name.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The action, for kinds that have actions.
    pub fn action(&self) -> Option<&str> {
        self.action.as_deref()
    }

    /// The capability as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// For path capabilities, the directory (as components) the grant is confined to: the
    /// components before the first wildcard, or the parent of an exact path.
    pub fn base(&self) -> Option<&[String]> {
        match &self.pattern {
            Pattern::Path { base, .. } => Some(base),
            Pattern::Exact(_) | Pattern::None => None,
        }
    }

    /// Whether this capability covers `need` (whose resource, for paths, was checked
    /// lexically).
    pub fn covers(&self, need: &Need) -> bool {
        if *self.kind != *need.kind || self.action.as_deref() != need.action.as_deref() {
            return false;
        }
        match (&self.pattern, need.resource.as_deref()) {
            (Pattern::None, None) => true,
            (Pattern::Exact(name), Some(resource)) => name == resource,
            (
                Pattern::Path {
                    matcher,
                    base,
                    covers_base,
                },
                Some(path),
            ) => matcher.is_match(path) || (*covers_base && path == base.join("/")),
            _ => false,
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Capability {
    type Err = CapabilityError;

    /// Parses a capability of a built-in kind; for the host's own kinds use
    /// [`Kinds::parse`].
    fn from_str(text: &str) -> Result<Self, CapabilityError> {
        BUILTIN.parse(text)
    }
}

/// Whether `name` is a well-formed environment variable name.
pub(crate) fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn path_pattern(pattern: &str) -> Result<Pattern, String> {
    if pattern.starts_with('/') {
        return Err("paths are relative to the plugin's workspace; remove the leading `/`".into());
    }
    if pattern.contains('\0') || pattern.contains('\\') {
        return Err("NUL and `\\` are not allowed in patterns".into());
    }
    if pattern.contains(['?', '[', ']', '{', '}']) {
        return Err(
            "only `*` and `**` are wildcards; `?`, `[`, `]`, `{`, `}` are not allowed".into(),
        );
    }
    let components: Vec<&str> = pattern.split('/').collect();
    let mut base = Vec::new();
    let mut wild = false;
    for component in &components {
        match *component {
            "" => return Err("empty path component (`//` or a trailing `/`)".into()),
            "." | ".." => return Err("`.` and `..` components are not allowed".into()),
            "**" => wild = true,
            c if c.contains("**") => {
                return Err("`**` must be a whole component, as in `dir/**/name`".into());
            }
            c if c.contains('*') => wild = true,
            c if !wild => base.push(c.to_owned()),
            _ => {}
        }
    }
    if !wild {
        // An exact file: confined to its parent directory.
        base.pop();
    }
    let covers_base = pattern.ends_with("/**") && base.len() + 1 == components.len();
    let matcher = GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(false)
        .build()
        .map_err(|err| err.to_string())?
        .compile_matcher();
    Ok(Pattern::Path {
        matcher,
        base,
        covers_base,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(text: &str) -> Capability {
        text.parse().unwrap()
    }

    #[test]
    fn bad_capabilities_are_rejected_naming_themselves() {
        for bad in [
            "read:/**",
            "read:../**",
            "read:config/../x",
            "read:",
            "READ:x",
            "exec:x",
            "readx",
            "read:config//a",
            "read:config/",
            "read:./config",
            "read:a**/b",
            "read:config/?",
            "read:config/[a]",
            "read:a\\b",
            "env:API_*",
            "env:*",
            "env:",
            "env:API KEY",
            "env:A=B",
        ] {
            let err = bad.parse::<Capability>().unwrap_err();
            assert_eq!(err.capability, bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn star_stays_within_a_component_and_double_star_crosses() {
        let c = cap("read:config/*.toml");
        assert!(c.covers(&Need::verb(Verb::Read, "config/app.toml")));
        assert!(!c.covers(&Need::verb(Verb::Read, "config/sub/app.toml")));
        assert!(!c.covers(&Need::verb(Verb::Write, "config/app.toml")));
        assert_eq!(c.base(), Some(&["config".to_owned()][..]));

        let c = cap("read:config/**");
        assert!(
            c.covers(&Need::verb(Verb::Read, "config")),
            "dir/** covers dir itself"
        );
        assert!(c.covers(&Need::verb(Verb::Read, "config/a")));
        assert!(c.covers(&Need::verb(Verb::Read, "config/a/b/c")));
        assert!(!c.covers(&Need::verb(Verb::Read, "configx/a")));
        assert!(!c.covers(&Need::verb(Verb::Read, "secrets/config/a")));

        let c = cap("read:**");
        assert!(c.covers(&Need::verb(Verb::Read, "a/b")));
        assert_eq!(c.base(), Some(&[][..]));

        let c = cap("read:config/app.toml");
        assert!(c.covers(&Need::verb(Verb::Read, "config/app.toml")));
        assert!(!c.covers(&Need::verb(Verb::Read, "config/app.tomlx")));
        assert_eq!(c.base(), Some(&["config".to_owned()][..]));
    }

    #[test]
    fn requests_with_glob_characters_are_literal_names() {
        let c = cap("read:config/a.txt");
        assert!(!c.covers(&Need::verb(Verb::Read, "config/*")));
        assert!(!c.covers(&Need::verb(Verb::Read, "config/[a].txt")));
    }

    #[test]
    fn env_names_match_exactly() {
        let c = cap("env:API_KEY");
        assert!(c.covers(&Need::verb(Verb::Env, "API_KEY")));
        for other in [
            "api_key",
            "API_KEY ",
            "API_*",
            "*",
            "",
            "API_KEY=x",
            "API_KEY\0",
        ] {
            assert!(!c.covers(&Need::verb(Verb::Env, other)), "{other:?}");
        }
    }

    #[test]
    fn a_request_text_reads_into_the_need_a_service_would_build() {
        let mut kinds = Kinds::builtin();
        kinds
            .declare(
                CapabilityKind::new("bus")
                    .actions(["publish", "subscribe"])
                    .resource(Resource::PATH),
            )
            .unwrap();
        kinds
            .declare(CapabilityKind::new("counter").actions(["incr"]))
            .unwrap();
        kinds
            .declare(
                CapabilityKind::new("net")
                    .actions(["connect"])
                    .resource(Resource::NAME),
            )
            .unwrap();
        assert_eq!(
            kinds.need("read:docs/a.txt").unwrap(),
            Need::verb(Verb::Read, "docs/a.txt")
        );
        assert_eq!(
            kinds.need("env:HOME").unwrap(),
            Need::verb(Verb::Env, "HOME")
        );
        assert_eq!(
            kinds.need("bus:publish:reports").unwrap(),
            Need::new("bus").action("publish").resource("reports")
        );
        assert_eq!(
            kinds.need("counter:incr").unwrap(),
            Need::new("counter").action("incr")
        );
        assert_eq!(
            kinds.need("net:connect:example.com:443").unwrap(),
            Need::new("net")
                .action("connect")
                .resource("example.com:443")
        );
        // A `*` in a request is a character of its name, covered only by a pattern.
        let star = kinds.need("read:docs/*").unwrap();
        assert!(cap("read:docs/**").covers(&star));
        assert!(!cap("read:docs/a.txt").covers(&star));
        for (bad, why) in [
            ("read", "the resource is missing"),
            ("read:/etc/passwd", "absolute"),
            ("read:docs/../x", "components"),
            ("env:A-B", "not a variable name"),
            ("bus:publish", "the resource is missing"),
            ("bus:shout:x", "unknown action `shout`"),
            ("bus", "needs an action"),
            ("counter:incr:x", "takes no resource"),
            ("net:connect:a*b", "not allowed"),
            ("kv:get:x", "unknown capability kind `kv`"),
        ] {
            let err = kinds.need(bad).unwrap_err();
            assert_eq!(err.capability, bad);
            assert!(err.reason.contains(why), "{bad}: {err}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        const PATH_VERBS: [Verb; 3] = [Verb::Read, Verb::Write, Verb::Delete];

        /// A component without wildcards.
        fn literal() -> impl Strategy<Value = String> {
            "[a-z0-9._ ~-]{1,6}|\\PC{1,3}".prop_filter("a grammar component", |c| {
                c != "."
                    && c != ".."
                    && !c.contains(['/', '*', '?', '[', ']', '{', '}', '\\', '\0'])
            })
        }

        /// A component with a wildcard: `**`, or `*` within a name.
        fn wildcard() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("**".to_owned()),
                Just("*".to_owned()),
                ("[a-z.]{0,3}", "[a-z.]{0,3}").prop_map(|(a, b)| format!("{a}*{b}")),
            ]
        }

        fn pattern(wild: bool) -> impl Strategy<Value = Vec<String>> {
            let component = if wild {
                prop_oneof![literal(), wildcard()].boxed()
            } else {
                literal().boxed()
            };
            proptest::collection::vec(component, 1..5)
        }

        fn verb() -> impl Strategy<Value = Verb> {
            proptest::sample::select(&PATH_VERBS[..])
        }

        /// Requests made of the components patterns use, so that some are covered.
        fn request() -> impl Strategy<Value = String> {
            proptest::collection::vec("a|b|x.toml|a\\.b|[a-z.]{1,3}", 1..6)
                .prop_map(|components| components.join("/"))
        }

        fn reason(text: &str) -> String {
            text.parse::<Capability>()
                .map(|_| String::new())
                .unwrap_or_else(|err| {
                    assert_eq!(err.capability, text);
                    err.reason
                })
        }

        proptest! {
            #[test]
            fn every_capability_in_the_grammar_parses_and_displays_as_written(
                verb in verb(),
                components in pattern(true),
                env in "[A-Za-z_][A-Za-z0-9_]{0,15}",
            ) {
                let text = format!("{verb}:{}", components.join("/"));
                let capability: Capability = text.parse().expect("in the grammar");
                prop_assert_eq!(capability.verb(), Some(verb));
                prop_assert_eq!(capability.as_str(), text.as_str());
                prop_assert_eq!(capability.to_string().parse::<Capability>(), Ok(capability));

                let text = format!("env:{env}");
                let capability: Capability = text.parse().expect("in the grammar");
                prop_assert_eq!(capability.verb(), Some(Verb::Env));
                prop_assert!(capability.covers(&Need::verb(Verb::Env, &env)));
                let longer = format!("{env}_");
                prop_assert!(!capability.covers(&Need::verb(Verb::Env, &longer)));
                prop_assert_eq!(capability.base(), None);
            }

            #[test]
            fn a_pattern_without_wildcards_covers_exactly_its_path(
                verb in verb(),
                components in pattern(false),
                other in request(),
            ) {
                let path = components.join("/");
                let capability: Capability = format!("{verb}:{path}").parse().expect("valid");
                prop_assert!(capability.covers(&Need::verb(verb, &path)));
                prop_assert_eq!(capability.covers(&Need::verb(verb, &other)), other == path);
                for wrong in PATH_VERBS.into_iter().chain([Verb::Env]).filter(|v| *v != verb) {
                    prop_assert!(!capability.covers(&Need::verb(wrong, &path)));
                }
                prop_assert_eq!(capability.base(), Some(&components[..components.len() - 1]));
            }

            #[test]
            fn a_grant_never_covers_a_path_outside_its_base(
                verb in verb(),
                components in proptest::collection::vec(
                    prop_oneof![Just("a".to_owned()), Just("b".to_owned()), wildcard()],
                    1..5,
                ),
                request in request(),
            ) {
                let capability: Capability = format!("{verb}:{}", components.join("/"))
                    .parse()
                    .expect("valid");
                let base = capability.base().expect("a path capability");
                if capability.covers(&Need::verb(verb, &request)) {
                    let requested: Vec<&str> = request.split('/').collect();
                    prop_assert!(
                        requested.len() >= base.len() && base.iter().zip(&requested).all(|(b, r)| b == r),
                        "{} covers {} outside {:?}", capability, request, base
                    );
                }
            }

            #[test]
            fn any_text_parses_or_is_refused_naming_itself(text in any::<String>(), request in any::<String>()) {
                match text.parse::<Capability>() {
                    Ok(capability) => {
                        let _ = capability.covers(&Need::verb(capability.verb().unwrap_or(Verb::Read), request.as_str()));
                    }
                    Err(err) => prop_assert_eq!(err.capability, text),
                }
            }

            #[test]
            fn patterns_outside_the_grammar_are_refused_with_the_rule_they_break(
                verb in verb(),
                before in pattern(true),
                after in pattern(true),
                bad in prop_oneof![
                    Just(("", "empty path component")),
                    Just((".", "`.` and `..`")),
                    Just(("..", "`.` and `..`")),
                    Just(("a**", "`**` must be a whole component")),
                    Just(("**b", "`**` must be a whole component")),
                    Just(("***", "`**` must be a whole component")),
                    Just(("a?", "only `*` and `**` are wildcards")),
                    Just(("[a]", "only `*` and `**` are wildcards")),
                    Just(("{a,b}", "only `*` and `**` are wildcards")),
                    Just(("a\\b", "NUL and `\\` are not allowed")),
                    Just(("a\0", "NUL and `\\` are not allowed")),
                ],
            ) {
                let (component, rule) = bad;
                let text = format!("{verb}:{}/{component}/{}", before.join("/"), after.join("/"));
                prop_assert!(reason(&text).contains(rule), "{:?}: {}", text, reason(&text));
                let text = format!("{verb}:/{}", before.join("/"));
                prop_assert!(reason(&text).contains("leading `/`"), "{:?}", text);
                let text = format!("{verb}:{}/", before.join("/"));
                prop_assert!(reason(&text).contains("empty path component"), "{:?}", text);
            }

            #[test]
            fn verbs_and_env_names_outside_the_grammar_are_refused(
                word in "[A-Za-z]{0,8}",
                pattern in pattern(false),
                env in "[A-Za-z0-9_*=. -]{0,12}",
            ) {
                let path = pattern.join("/");
                if !["read", "write", "delete", "env"].contains(&word.as_str()) {
                    let text = format!("{word}:{path}");
                    prop_assert!(reason(&text).contains("unknown capability kind"), "{:?}", text);
                }
                let text = format!("{word}{}", path.replace(':', ""));
                prop_assert!(reason(&text).contains("expected `kind:"), "{:?}", text);
                prop_assert!(reason("read:").contains("the pattern is empty"));
                if !is_env_name(&env) && !env.is_empty() {
                    let text = format!("env:{env}");
                    prop_assert!(reason(&text).contains("names one variable exactly"), "{:?}", text);
                }
            }
        }
    }
}
