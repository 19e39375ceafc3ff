//! Lexical checks on a requested path, before any grant is consulted or any file touched.

/// The longest path accepted, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// The longest component accepted, in bytes (Linux's `NAME_MAX`).
pub const MAX_COMPONENT: usize = 255;

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
}
