use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tether_transport::ConnectError;

/// Why a broker operation failed. Each message names the other side (`peer`: the plugin's
/// name on the host, `host` in a plugin) and the broker id involved.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No connection info for `id` arrived in time.
    #[error(
        "broker ({peer}): dialing id {id} timed out after {timeout:?}: no connection info \
         with that id arrived; the other side never called accept({id}), it expired unclaimed, \
         or the id is wrong"
    )]
    DialTimeout {
        /// The other side.
        peer: String,
        /// The id that was dialed.
        id: u32,
        /// How long the dial waited.
        timeout: Duration,
    },
    /// Another `dial` for the same id is still waiting.
    #[error(
        "broker ({peer}): id {id} is already being dialed; dial each id once and share the channel"
    )]
    DialInProgress {
        /// The other side.
        peer: String,
        /// The id.
        id: u32,
    },
    /// The other side offered a transport this broker does not speak.
    #[error(
        "broker ({peer}): id {id} was offered on network {network:?} at {address:?}; only \
         \"unix\" sockets are supported"
    )]
    UnsupportedNetwork {
        /// The other side.
        peer: String,
        /// The id.
        id: u32,
        /// The offered network.
        network: String,
        /// The offered address.
        address: String,
    },
    /// The other side offered a socket outside the private socket directory.
    #[error(
        "broker ({peer}): id {id} was offered at {address:?}, which is not directly inside \
         the private socket directory {socket_dir}; refusing to connect"
    )]
    AddressOutsideSocketDir {
        /// The other side.
        peer: String,
        /// The id.
        id: u32,
        /// The offered address.
        address: String,
        /// Where brokered sockets must live.
        socket_dir: PathBuf,
    },
    /// Multiplexed mode: the other side did not acknowledge the knock for `id`, or
    /// acknowledged it with an error (it has no listener for that id).
    #[error("broker ({peer}): the knock for id {id} failed: {reason}")]
    Knock {
        /// The other side.
        peer: String,
        /// The id.
        id: u32,
        /// What went wrong.
        reason: String,
    },
    /// Connecting to the offered socket failed, or somebody else serves it.
    #[error("broker ({peer}): dialing id {id}: {source}")]
    Connect {
        /// The other side.
        peer: String,
        /// The id.
        id: u32,
        /// What went wrong.
        #[source]
        source: ConnectError,
    },
    /// A socket for `accept` could not be created.
    #[error("broker ({peer}): could not listen for id {id} in {socket_dir}: {source}")]
    Listen {
        /// The other side.
        peer: String,
        /// The id.
        id: u32,
        /// Where the socket was to be created.
        socket_dir: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The broker was closed, or its stream to the other side ended.
    #[error("broker ({peer}): closed; the broker stream to the other side has ended")]
    Closed {
        /// The other side.
        peer: String,
    },
}
