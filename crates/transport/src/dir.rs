//! The private directory a plugin's sockets live in.

use std::fs::Permissions;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Creates a private socket directory (mode 0700) in `base`, named `tether-<tag>-XXXXXX`
/// where `<tag>` is `name` reduced to at most 24 letters, digits, `-` and `_`. It is
/// removed, with what is in it, when the returned handle is dropped.
pub fn socket_dir(name: &str, base: &Path) -> io::Result<tempfile::TempDir> {
    let tag: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(24)
        .collect();
    tempfile::Builder::new()
        .prefix(&format!("tether-{tag}-"))
        .permissions(Permissions::from_mode(0o700))
        .tempdir_in(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_dirs_are_private_and_named_after_a_clean_tag() {
        let base = tempfile::tempdir().unwrap();
        let dir = socket_dir("my plugin/../x", base.path()).unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let name = dir.path().file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("tether-mypluginx-"), "{name}");
    }
}
