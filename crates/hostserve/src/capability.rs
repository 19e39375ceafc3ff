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
                prop_assert_eq!(capability.verb(), verb);
                prop_assert_eq!(capability.as_str(), text.as_str());
                prop_assert_eq!(capability.to_string().parse::<Capability>(), Ok(capability));

                let text = format!("env:{env}");
                let capability: Capability = text.parse().expect("in the grammar");
                prop_assert_eq!(capability.verb(), Verb::Env);
                prop_assert!(capability.covers(Verb::Env, &env));
                let longer = format!("{env}_");
                prop_assert!(!capability.covers(Verb::Env, &longer));
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
                prop_assert!(capability.covers(verb, &path));
                prop_assert_eq!(capability.covers(verb, &other), other == path);
                for wrong in PATH_VERBS.into_iter().chain([Verb::Env]).filter(|v| *v != verb) {
                    prop_assert!(!capability.covers(wrong, &path));
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
                if capability.covers(verb, &request) {
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
                        let _ = capability.covers(capability.verb(), &request);
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
                    prop_assert!(reason(&text).contains("unknown verb"), "{:?}", text);
                }
                let text = format!("{word}{}", path.replace(':', ""));
                prop_assert!(reason(&text).contains("expected `verb:pattern`"), "{:?}", text);
                prop_assert!(reason("read:").contains("the pattern is empty"));
                if !is_env_name(&env) && !env.is_empty() {
                    let text = format!("env:{env}");
                    prop_assert!(reason(&text).contains("names one variable exactly"), "{:?}", text);
                }
            }
        }
    }
}
