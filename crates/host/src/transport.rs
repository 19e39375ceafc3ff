//! The transport, kept in one place so another platform (named pipes on Windows, or
//! loopback TCP as go-plugin does) can be added without touching the rest: the private
//! socket directory, the address check, and connecting with the peer-credential check.

use std::fs::Permissions;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

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
    let path = Path::new(address);
    // `Path::components` hides `.` and `//`, so compare with the canonical spelling.
    let exact = path
        .file_name()
        .map(|name| dir.join(name))
        .filter(|joined| joined.as_os_str() == path.as_os_str() && joined.parent() == Some(dir));
    exact.ok_or_else(|| Error::AddressOutsideSocketDir {
        plugin: plugin.to_owned(),
        address: address.to_owned(),
        socket_dir: dir.to_owned(),
    })
}

/// The pid on the other end of a connected socket.
pub(crate) fn peer_pid(stream: &UnixStream) -> io::Result<Option<i32>> {
    Ok(stream.peer_cred()?.pid())
}

/// Connects to `path` and checks that `expected_pid` serves it.
async fn connect_checked(
    plugin: &str,
    path: &Path,
    expected_pid: u32,
) -> Result<UnixStream, Error> {
    let address = || path.display().to_string();
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| Error::Connect {
            plugin: plugin.to_owned(),
            address: address(),
            source: Box::new(source),
        })?;
    let peer = peer_pid(&stream).map_err(|source| Error::Connect {
        plugin: plugin.to_owned(),
        address: address(),
        source: Box::new(source),
    })?;
    if peer != i32::try_from(expected_pid).ok() {
        return Err(Error::SocketNotOwnedByPlugin {
            plugin: plugin.to_owned(),
            address: address(),
            expected_pid,
            peer_pid: peer,
        });
    }
    Ok(stream)
}

/// A gRPC channel to the plugin's socket. Every connection the channel makes (the first,
/// and any reconnection) is checked to be served by `expected_pid`.
pub(crate) async fn connect(
    plugin: &str,
    path: &Path,
    expected_pid: u32,
) -> Result<Channel, Error> {
    // The first connection is made here so that a wrong peer is a typed error.
    let first = connect_checked(plugin, path, expected_pid).await?;
    let first = Arc::new(Mutex::new(Some(first)));
    let (name, socket) = (plugin.to_owned(), path.to_owned());
    let connector = tower::service_fn(move |_: Uri| {
        let first = first.lock().ok().and_then(|mut first| first.take());
        let (name, socket) = (name.clone(), socket.clone());
        async move {
            let stream = match first {
                Some(stream) => stream,
                None => connect_checked(&name, &socket, expected_pid)
                    .await
                    .map_err(io::Error::other)?,
            };
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    });
    // The URI is required by tonic but unused: the connector decides where to connect.
    Endpoint::from_static("http://plugin.invalid")
        .connect_with_connector(connector)
        .await
        .map_err(|source| Error::Connect {
            plugin: plugin.to_owned(),
            address: path.display().to_string(),
            source: Box::new(source),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_must_be_directly_inside_the_socket_dir() {
        let dir = Path::new("/tmp/tether-x-abc");
        assert!(check_address("p", "/tmp/tether-x-abc/plugin-1.sock", dir).is_ok());
        for bad in [
            "/tmp/elsewhere.sock",
            "/tmp/tether-x-abc/../elsewhere.sock",
            "/tmp/tether-x-abc/./plugin.sock",
            "/tmp/tether-x-abc//plugin.sock",
            "/tmp/tether-x-abc/plugin.sock/",
            "/tmp//tether-x-abc/plugin.sock",
            "/tmp/tether-x-abc/sub/plugin.sock",
            "tmp/tether-x-abc/plugin.sock",
            "/tmp/tether-x-abc",
            "127.0.0.1:1234",
        ] {
            assert!(
                matches!(
                    check_address("p", bad, dir),
                    Err(Error::AddressOutsideSocketDir { .. })
                ),
                "{bad}"
            );
        }
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
