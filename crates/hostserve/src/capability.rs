//! Capabilities: `verb:pattern`, parsed and validated when loaded.
//!
//! Grammar:
//! - verbs, lowercase: `read` (ReadFile, ReadDir, Stat), `write` (WriteFile), `delete`
//!   (DeleteFile), `env` (GetEnv);
//! - a path pattern is relative to the plugin's workspace, components separated by `/`:
//!   no leading `/`, no empty, `.` or `..` components, no NUL, no `\`;
//! - `*` matches any run of characters within one component (never `/`); `**` as a whole
//!   component matches zero or more components; no other character is special (`?`, `[`,
//!   `{` are rejected so nobody mistakes them for wildcards);
//! - `dir/**` covers the directory `dir` itself as well as everything beneath it;
//! - an `env` pattern is one exact variable name (`[A-Za-z_][A-Za-z0-9_]*`), no wildcards.

use std::fmt;
use std::str::FromStr;

use globset::{GlobBuilder, GlobMatcher};

/// What a capability allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    /// ReadFile, ReadDir, Stat.
    Read,
    /// WriteFile.
    Write,
    /// DeleteFile.
    Delete,
    /// GetEnv.
    Env,
}

impl Verb {
    /// The verb as written in a capability.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Read => "read",
            Verb::Write => "write",
            Verb::Delete => "delete",
            Verb::Env => "env",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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

/// One capability, such as `read:config/**` or `env:API_KEY`.
#[derive(Debug, Clone)]
pub struct Capability {
    text: String,
    verb: Verb,
    pattern: Pattern,
}

#[derive(Debug, Clone)]
enum Pattern {
    Env(String),
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
    /// The verb.
    pub fn verb(&self) -> Verb {
        self.verb
    }

    /// The capability as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// For path capabilities, the directory (relative to the workspace, as components) the
    /// grant is confined to: the components before the first wildcard, or the parent of an
    /// exact file.
    pub fn base(&self) -> Option<&[String]> {
        match &self.pattern {
            Pattern::Path { base, .. } => Some(base),
            Pattern::Env(_) => None,
        }
    }

    /// Whether this capability covers `verb` on the workspace-relative `path` (already
    /// checked lexically), or on the variable `path` for `env`.
    pub fn covers(&self, verb: Verb, path: &str) -> bool {
        if verb != self.verb {
            return false;
        }
        match &self.pattern {
            Pattern::Env(name) => name == path,
            Pattern::Path {
                matcher,
                base,
                covers_base,
            } => matcher.is_match(path) || (*covers_base && path == base.join("/")),
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

    fn from_str(text: &str) -> Result<Self, CapabilityError> {
        let fail = |reason: &str| CapabilityError {
            capability: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (verb, pattern) = text
            .split_once(':')
            .ok_or_else(|| fail("expected `verb:pattern`, e.g. `read:config/**`"))?;
        let verb = match verb {
            "read" => Verb::Read,
            "write" => Verb::Write,
            "delete" => Verb::Delete,
            "env" => Verb::Env,
            _ => {
                return Err(fail(
                    "unknown verb; the verbs are `read`, `write`, `delete` and `env`, lowercase",
                ));
            }
        };
        if pattern.is_empty() {
            return Err(fail("the pattern is empty"));
        }
        let pattern = if verb == Verb::Env {
            if !is_env_name(pattern) {
                return Err(fail(
                    "an env capability names one variable exactly ([A-Za-z_][A-Za-z0-9_]*), \
                     without wildcards",
                ));
            }
            Pattern::Env(pattern.to_owned())
        } else {
            path_pattern(pattern).map_err(|reason| fail(&reason))?
        };
        Ok(Capability {
            text: text.to_owned(),
            verb,
            pattern,
        })
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
        assert!(c.covers(Verb::Read, "config/app.toml"));
        assert!(!c.covers(Verb::Read, "config/sub/app.toml"));
        assert!(!c.covers(Verb::Write, "config/app.toml"));
        assert_eq!(c.base(), Some(&["config".to_owned()][..]));

        let c = cap("read:config/**");
        assert!(c.covers(Verb::Read, "config"), "dir/** covers dir itself");
        assert!(c.covers(Verb::Read, "config/a"));
        assert!(c.covers(Verb::Read, "config/a/b/c"));
        assert!(!c.covers(Verb::Read, "configx/a"));
        assert!(!c.covers(Verb::Read, "secrets/config/a"));

        let c = cap("read:**");
        assert!(c.covers(Verb::Read, "a/b"));
        assert_eq!(c.base(), Some(&[][..]));

        let c = cap("read:config/app.toml");
        assert!(c.covers(Verb::Read, "config/app.toml"));
        assert!(!c.covers(Verb::Read, "config/app.tomlx"));
        assert_eq!(c.base(), Some(&["config".to_owned()][..]));
    }

    #[test]
    fn requests_with_glob_characters_are_literal_names() {
        let c = cap("read:config/a.txt");
        assert!(!c.covers(Verb::Read, "config/*"));
        assert!(!c.covers(Verb::Read, "config/[a].txt"));
    }

    #[test]
    fn env_names_match_exactly() {
        let c = cap("env:API_KEY");
        assert!(c.covers(Verb::Env, "API_KEY"));
        for other in [
            "api_key",
            "API_KEY ",
            "API_*",
            "*",
            "",
            "API_KEY=x",
            "API_KEY\0",
        ] {
            assert!(!c.covers(Verb::Env, other), "{other:?}");
        }
    }
}
