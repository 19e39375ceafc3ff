//! The transport, kept in one place so another platform (named pipes on Windows, or
//! loopback TCP as go-plugin does) can be added without touching the rest: the private
//! socket directory, the address check, and connecting with the peer-credential check
//! (the socket code itself is shared with the broker, in `tether_broker::unix`).

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tether_broker::unix::{self, ConnectError, Peer};
use tonic::transport::Channel;

use crate::error::Error;

/// Creates the plugin's private socket directory (mode 0700) in `base`.
pub(crate) fn socket_dir(plugin: &str, base: &Path) -> Result<tempfile::TempDir, Error> {
    let tag: String = plugin
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(24)
        .collect();
    tempfile::Builder::new()
        .prefix(&format!("tether-{tag}-"))
        .permissions(Permissions::from_mode(0o700))
        .tempdir_in(base)
        .map_err(|source| Error::SocketDir {
            plugin: plugin.to_owned(),
            base: base.to_owned(),
            source,
        })
}

/// Accepts only `dir/<name>`, spelled exactly so: no `.`, `..`, doubled or trailing `/`.
pub(crate) fn check_address(plugin: &str, address: &str, dir: &Path) -> Result<PathBuf, Error> {
    unix::address_in_dir(address, dir).ok_or_else(|| Error::AddressOutsideSocketDir {
        plugin: plugin.to_owned(),
        address: address.to_owned(),
        socket_dir: dir.to_owned(),
    })
}

/// A gRPC channel to the plugin's socket. Every connection the channel makes (the first,
/// and any reconnection) is checked to be served by `expected_pid`.
pub(crate) async fn connect(
    plugin: &str,
    path: &Path,
    expected_pid: u32,
) -> Result<Channel, Error> {
    unix::connect(path, Peer::Process(expected_pid))
        .await
        .map_err(|err| match err {
            ConnectError::WrongPeer { address, found, .. } => Error::SocketNotOwnedByPlugin {
                plugin: plugin.to_owned(),
                address,
                expected_pid,
                peer_pid: found.pid,
            },
            other => Error::Connect {
                plugin: plugin.to_owned(),
                address: path.display().to_string(),
                source: Box::new(other),
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_outside_the_socket_dir_is_a_typed_error() {
        // The spelling rules themselves are tested in `tether_broker::unix`.
        let dir = Path::new("/tmp/tether-x-abc");
        assert!(check_address("p", "/tmp/tether-x-abc/plugin-1.sock", dir).is_ok());
        assert!(matches!(
            check_address("p", "/tmp/tether-x-abc/../elsewhere.sock", dir),
            Err(Error::AddressOutsideSocketDir { .. })
        ));
    }

    #[test]
    fn socket_dirs_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let dir = socket_dir("my plugin/../x", base.path()).unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let name = dir.path().file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("tether-mypluginx-"), "{name}");
    }
}
