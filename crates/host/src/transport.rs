//! The host's use of `tether-transport`: its errors, in the host's terms (which plugin,
//! which address, which process).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tether_protocol::lane::OpenRequest;
use tether_protocol::lane::lanes_client::LanesClient;
use tether_transport::frames::FramedChannel;
use tether_transport::mux::{Inbound, Session};
use tether_transport::tls::MutualTls;
use tether_transport::{ConnectError, DescriptorSender, Link, Peer, PeerCredentials};
use tonic::transport::Channel;

use crate::error::Error;

/// Creates the plugin's private socket directory (mode 0700) in `base`.
pub(crate) fn socket_dir(plugin: &str, base: &Path) -> Result<tempfile::TempDir, Error> {
    tether_transport::socket_dir(plugin, base).map_err(|source| Error::SocketDir {
        plugin: plugin.to_owned(),
        base: base.to_owned(),
        source,
    })
}

/// Gives the socket directory to `group` (mode 2770: what is created in it is the group's),
/// returning the group's id.
pub(crate) fn share_dir(plugin: &str, dir: &Path, group: &str) -> Result<u32, Error> {
    let failed = |err: tether_transport::GroupError| Error::SocketGroup {
        plugin: plugin.to_owned(),
        group: group.to_owned(),
        reason: err.to_string(),
    };
    let gid = tether_transport::resolve_group(group).map_err(failed)?;
    tether_transport::share_with_group(dir, gid, 0o2770).map_err(failed)?;
    Ok(gid)
}

/// Accepts only `dir/<name>`, spelled exactly so: no `.`, `..`, doubled or trailing `/`.
pub(crate) fn check_address(plugin: &str, address: &str, dir: &Path) -> Result<PathBuf, Error> {
    tether_transport::address_in_dir(address, dir).ok_or_else(|| Error::AddressOutsideSocketDir {
        plugin: plugin.to_owned(),
        address: address.to_owned(),
        socket_dir: dir.to_owned(),
    })
}

/// A gRPC channel to the plugin's socket. Every connection the channel makes (the first,
/// and any reconnection) is checked to be served by `expected_pid`, and speaks TLS when
/// `tls` is given (AutoMTLS).
pub(crate) async fn connect(
    plugin: &str,
    path: &Path,
    expected_pid: u32,
    tls: Option<MutualTls>,
) -> Result<Channel, Error> {
    tether_transport::connect_with(path, Peer::Process(expected_pid), tls)
        .await
        .map_err(|err| connect_failed(plugin, path, expected_pid, err))
}

/// [`connect`], with the calls carried as tether's frames (the plugin agreed to them).
pub(crate) async fn connect_framed(
    plugin: &str,
    path: &Path,
    expected_pid: u32,
    tls: Option<MutualTls>,
) -> Result<FramedChannel, Error> {
    tether_transport::connect_framed(path, Peer::Process(expected_pid), tls.as_ref(), plugin)
        .await
        .map_err(|err| connect_failed(plugin, path, expected_pid, err))
}

/// How long a plugin has to take the lane it is offered.
const LANE_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes a lane, hands the plugin its descriptors on `descriptors`, asks the plugin on
/// `channel` to serve on it (`tether.lane.v1.Lanes/Open`), and starts frames on the host's
/// side. Why not, when the plugin cannot take it.
pub(crate) async fn open_lane(
    plugin: &str,
    channel: &Link,
    descriptors: &DescriptorSender,
    limit: usize,
) -> Result<FramedChannel, String> {
    let (stream, offer) = tether_transport::lane::lane().map_err(|err| err.to_string())?;
    let hand_over = |fd, what: &'static str| async move {
        descriptors
            .send(fd, LANE_TIMEOUT)
            .await
            .map_err(|err| format!("handing over the lane's {what}: {err}"))
    };
    let request = OpenRequest {
        memory: hand_over(offer.memory.as_fd(), "memory").await?,
        data_bell: hand_over(offer.data_bell.as_fd(), "data doorbell").await?,
        room_bell: hand_over(offer.room_bell.as_fd(), "room doorbell").await?,
    };
    let mut lanes = LanesClient::new(channel.clone())
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    match tokio::time::timeout(LANE_TIMEOUT, lanes.open(request)).await {
        Ok(Ok(_)) => {}
        Ok(Err(status)) => {
            return Err(format!(
                "it answered {:?}: {}",
                status.code(),
                status.message()
            ));
        }
        Err(_) => return Err(format!("it did not answer within {LANE_TIMEOUT:?}")),
    }
    FramedChannel::start(stream, format!("plugin `{plugin}` (lane)"))
        .await
        .map_err(|err| format!("could not start frames on the lane: {err}"))
}

/// A failed connection to the plugin's socket, in the host's terms.
fn connect_failed(plugin: &str, path: &Path, expected_pid: u32, err: ConnectError) -> Error {
    match err {
        ConnectError::WrongPeer { address, found, .. } => Error::SocketNotOwnedByPlugin {
            plugin: plugin.to_owned(),
            address,
            expected_pid,
            peer_pid: found.pid,
        },
        ConnectError::Tls { reason, .. } => Error::AutoMtls {
            plugin: plugin.to_owned(),
            reason,
        },
        other => Error::Connect {
            plugin: plugin.to_owned(),
            address: path.display().to_string(),
            source: Box::new(other),
        },
    }
}

/// The main connection multiplexed (go-plugin 1.6+): yamux on the plugin's socket, checked
/// to be served by `expected_pid`, and a gRPC channel over its streams (TLS on each when
/// `tls` is given). Also returns the session and what the broker needs to take it over.
pub(crate) async fn connect_multiplexed(
    plugin: &str,
    path: &Path,
    expected_pid: u32,
    tls: Option<MutualTls>,
) -> Result<(Channel, (Session, Inbound, PeerCredentials)), Error> {
    let failed = |err| connect_failed(plugin, path, expected_pid, err);
    let (session, inbound, credentials) =
        tether_transport::connect_multiplexed(path, Peer::Process(expected_pid), plugin)
            .await
            .map_err(failed)?;
    let opener = session.clone();
    let channel = tether_transport::channel_over(
        format!("{} (multiplexed)", path.display()),
        move || {
            let opener = opener.clone();
            async move { opener.open().await }
        },
        tls,
    )
    .await
    .map_err(failed)?;
    Ok((channel, (session, inbound, credentials)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_outside_the_socket_dir_is_a_typed_error() {
        // The spelling rules themselves are tested in `tether-transport`.
        let dir = Path::new("/tmp/tether-x-abc");
        assert!(check_address("p", "/tmp/tether-x-abc/plugin-1.sock", dir).is_ok());
        assert!(matches!(
            check_address("p", "/tmp/tether-x-abc/../elsewhere.sock", dir),
            Err(Error::AddressOutsideSocketDir { .. })
        ));
    }
}
