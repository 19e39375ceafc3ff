//! Lexical checks on a requested path, before any grant is consulted or any file touched.

/// The longest path accepted, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// The longest component accepted, in bytes (Linux's `NAME_MAX`).
pub const MAX_COMPONENT: usize = 255;
/// Names starting with this are reserved for the host's unfinished writes (`WriteFile`
/// writes `.tether-partial-<pid>-<n>` beside its target, then renames it into place): no
/// request may name one, `ReadDir` never lists one, and the host services remove those
/// whose writer is gone (a host killed mid-write) when they first serve the workspace.
pub const RESERVED_PREFIX: &str = ".tether-partial-";

/// Why a requested path was rejected before any grant was consulted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty.
    #[error("the path is empty; name a file or directory inside the workspace")]
    Empty,
    /// Longer than [`MAX_PATH`].
    #[error("the path is {0} bytes long; the limit is {MAX_PATH}")]
    TooLong(usize),
    /// A component longer than [`MAX_COMPONENT`].
    #[error("a path component is {0} bytes long; the limit is {MAX_COMPONENT}")]
    ComponentTooLong(usize),
    /// Not UTF-8.
    #[error("the path is not valid UTF-8")]
    NotUtf8,
    /// Contains NUL.
    #[error("the path contains a NUL byte")]
    Nul,
    /// Starts with `/`.
    #[error("the path is absolute; paths are relative to the workspace (no leading `/`)")]
    Absolute,
    /// Has an empty component.
    #[error("the path has an empty component (`//`, or a trailing `/`)")]
    EmptyComponent,
    /// Has a `.` or `..` component.
    #[error("the path has a `.` or `..` component; name the file directly")]
    Dot,
    /// Has a component starting with [`RESERVED_PREFIX`].
    #[error(
        "the path names {0:?}: names starting with `{RESERVED_PREFIX}` are reserved for the \
         host's unfinished writes"
    )]
    Reserved(String),
}

/// A workspace-relative path that passed the lexical checks: UTF-8, no NUL, relative,
/// components that are neither empty, `.` nor `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestPath {
    text: String,
}

impl RequestPath {
    /// Checks `raw` as sent by the plugin. Nothing is decoded, trimmed or normalised.
    pub(crate) fn parse(raw: &[u8]) -> Result<Self, PathError> {
        if raw.is_empty() {
            return Err(PathError::Empty);
        }
        if raw.len() > MAX_PATH {
            return Err(PathError::TooLong(raw.len()));
        }
        let text = std::str::from_utf8(raw).map_err(|_| PathError::NotUtf8)?;
        if text.contains('\0') {
            return Err(PathError::Nul);
        }
        if text.starts_with('/') {
            return Err(PathError::Absolute);
        }
        for component in text.split('/') {
            match component {
                "" => return Err(PathError::EmptyComponent),
                "." | ".." => return Err(PathError::Dot),
                c if c.len() > MAX_COMPONENT => return Err(PathError::ComponentTooLong(c.len())),
                c if is_reserved(c) => return Err(PathError::Reserved(c.to_owned())),
                _ => {}
            }
        }
        Ok(RequestPath {
            text: text.to_owned(),
        })
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    pub(crate) fn components(&self) -> impl Iterator<Item = &str> {
        self.text.split('/')
    }
}

/// Whether a file name is reserved for the host's unfinished writes.
pub(crate) fn is_reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

/// How the audit log shows a raw path: lossless for UTF-8, escaped otherwise, and capped.
pub(crate) fn display(raw: &[u8]) -> String {
    const SHOWN: usize = 512;
    let shown = &raw[..raw.len().min(SHOWN)];
    let mut text = match std::str::from_utf8(shown) {
        Ok(text) => text.escape_debug().to_string(),
        Err(_) => shown.escape_ascii().to_string(),
    };
    if raw.len() > SHOWN {
        text.push_str(&format!("…({} bytes)", raw.len()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_rejections() {
        let cases: &[(&[u8], PathError)] = &[
            (b"", PathError::Empty),
            (b"../secret", PathError::Dot),
            (b"config/../../etc/passwd", PathError::Dot),
            (b".", PathError::Dot),
            (b"./", PathError::Dot),
            (b"config/./a", PathError::Dot),
            (b"/etc/passwd", PathError::Absolute),
            (b"//etc/passwd", PathError::Absolute),
            (b"config/", PathError::EmptyComponent),
            (b"config//a", PathError::EmptyComponent),
            (b"config/a\0b", PathError::Nul),
            (b"config/\xff", PathError::NotUtf8),
            (
                b".tether-partial-1-2",
                PathError::Reserved(".tether-partial-1-2".into()),
            ),
            (
                b"out/.tether-partial-x/f",
                PathError::Reserved(".tether-partial-x".into()),
            ),
        ];
        for (raw, expected) in cases {
            assert_eq!(RequestPath::parse(raw).as_ref(), Err(expected), "{raw:?}");
        }
        let long = vec![b'a'; 5000];
        assert_eq!(RequestPath::parse(&long), Err(PathError::TooLong(5000)));
        let name = vec![b'a'; 300];
        assert_eq!(
            RequestPath::parse(&name),
            Err(PathError::ComponentTooLong(300))
        );
    }

    #[test]
    fn look_alikes_stay_literal() {
        for ok in [
            "config/%2e%2e/x",
            "config\\..\\secrets",
            "config/\u{2024}\u{2024}/x",
            "config/*",
        ] {
            let path = RequestPath::parse(ok.as_bytes()).unwrap();
            assert_eq!(path.as_str(), ok);
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        fn component() -> impl Strategy<Value = String> {
            "[a-zA-Z0-9 ._%~*-]{1,12}|\\PC{1,4}".prop_filter("a valid component", |c| {
                c != "." && c != ".." && !c.contains(['/', '\0'])
            })
        }

        fn path() -> impl Strategy<Value = Vec<String>> {
            proptest::collection::vec(component(), 1..8)
        }

        proptest! {
            #[test]
            fn valid_paths_pass_unchanged(components in path()) {
                let text = components.join("/");
                let path = RequestPath::parse(text.as_bytes()).expect("valid");
                prop_assert_eq!(path.as_str(), text.as_str());
                prop_assert!(path.components().eq(components.iter().map(String::as_str)));
            }

            #[test]
            fn any_bytes_are_checked_without_panicking(
                raw in proptest::collection::vec(
                    prop_oneof![any::<u8>(), Just(b'/'), Just(b'.'), Just(b'a')],
                    0..64,
                ),
            ) {
                if let Ok(path) = RequestPath::parse(&raw) {
                    prop_assert_eq!(path.as_str().as_bytes(), &raw[..]);
                    for component in path.components() {
                        prop_assert!(!["", ".", ".."].contains(&component), "{:?}", component);
                        prop_assert!(!component.contains('\0'));
                    }
                }
                let _ = display(&raw);
            }

            #[test]
            fn paths_outside_the_grammar_are_refused_with_the_rule_they_break(
                before in path(),
                after in path(),
                bad in prop_oneof![
                    Just((".", PathError::Dot)),
                    Just(("..", PathError::Dot)),
                    Just(("", PathError::EmptyComponent)),
                    Just((
                        ".tether-partial-7-1",
                        PathError::Reserved(".tether-partial-7-1".into()),
                    )),
                    Just((".tether-partial-", PathError::Reserved(RESERVED_PREFIX.into()))),
                ],
            ) {
                let (component, expected) = bad;
                for text in [
                    format!("{}/{component}/{}", before.join("/"), after.join("/")),
                    format!("{component}/{}", after.join("/")),
                    format!("{}/{component}", before.join("/")),
                ] {
                    if !text.starts_with('/') {
                        prop_assert_eq!(RequestPath::parse(text.as_bytes()), Err(expected.clone()), "{:?}", text);
                    }
                }
                let text = format!("/{}", after.join("/"));
                prop_assert_eq!(RequestPath::parse(text.as_bytes()), Err(PathError::Absolute));
            }

            #[test]
            fn bytes_no_path_may_hold_are_refused(
                components in path(),
                at in any::<proptest::sample::Index>(),
                byte in prop_oneof![Just(0u8), 0x80..=0xffu8],
            ) {
                let mut raw = components.join("/").into_bytes();
                let at = at.index(raw.len() + 1);
                raw.insert(at, byte);
                let parsed = RequestPath::parse(&raw);
                if std::str::from_utf8(&raw).is_err() {
                    prop_assert_eq!(parsed, Err(PathError::NotUtf8));
                } else {
                    // A NUL, or a byte that completed a character: still refused or valid,
                    // never altered.
                    prop_assert!(byte == 0 || parsed.is_ok());
                    if byte == 0 {
                        prop_assert_eq!(parsed, Err(PathError::Nul));
                    }
                }
            }

            #[test]
            fn overlong_paths_and_components_are_refused(
                name in MAX_COMPONENT + 1..MAX_COMPONENT + 64,
                total in MAX_PATH + 1..MAX_PATH + 64,
            ) {
                let long_name = "n".repeat(name);
                prop_assert_eq!(
                    RequestPath::parse(format!("dir/{long_name}/f").as_bytes()),
                    Err(PathError::ComponentTooLong(name))
                );
                let long_path = "a/".repeat(total / 2 + 1);
                let long_path = &long_path[..total];
                prop_assert_eq!(RequestPath::parse(long_path.as_bytes()), Err(PathError::TooLong(total)));
            }
        }
    }
}
