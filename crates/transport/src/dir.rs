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

/// Why a socket group (`PLUGIN_UNIX_SOCKET_GROUP`) could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// No such group in `/etc/group`, and not a number.
    #[error(
        "socket group {0:?} is neither a group id nor a group name in /etc/group; \
         name an existing group"
    )]
    Unknown(String),
    /// Changing a file's group or mode failed.
    #[error("could not give {path} to group {gid}: {source}")]
    Chown {
        /// The file.
        path: String,
        /// The group id.
        gid: u32,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// The group id named by `group`: a number, or a name in `/etc/group` (as go-plugin reads
/// `PLUGIN_UNIX_SOCKET_GROUP`).
pub fn resolve_group(group: &str) -> Result<u32, GroupError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let entries = std::fs::read_to_string("/etc/group").unwrap_or_default();
    entries
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?.parse::<u32>().ok()?;
            Some((name, gid))
        })
        .find(|(name, _)| *name == group)
        .map(|(_, gid)| gid)
        .ok_or_else(|| GroupError::Unknown(group.to_owned()))
}

/// Gives `path` to group `gid` with `mode` (go-plugin: 0660 for sockets, 0770 for their
/// directory), so that processes of that group can use it. Changes nothing when `path`
/// already is the group's and allows it what `mode` does (a tether host makes the socket
/// directory set-group-id and starts the plugin with a umask that makes it so, because a
/// sandboxed plugin may not change file owners or modes).
pub fn share_with_group(path: &Path, gid: u32, mode: u32) -> Result<(), GroupError> {
    use std::os::unix::fs::MetadataExt;
    let failed = |source: io::Error| GroupError::Chown {
        path: path.display().to_string(),
        gid,
        source,
    };
    let meta = std::fs::metadata(path).map_err(failed)?;
    if meta.gid() == gid && meta.mode() & mode & 0o070 == mode & 0o070 {
        return Ok(());
    }
    std::os::unix::fs::chown(path, None, Some(gid)).map_err(failed)?;
    std::fs::set_permissions(path, Permissions::from_mode(mode)).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_resolve_by_number_and_name() {
        assert_eq!(resolve_group("0").unwrap(), 0);
        assert_eq!(resolve_group("root").unwrap(), 0);
        assert!(matches!(
            resolve_group("no-such-group-here"),
            Err(GroupError::Unknown(_))
        ));
    }

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
