//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`).
//!
//! Not a stable API: this module exists only so that the coverage-guided fuzzers can reach
//! the private handling of the connection infos the other side sends. It may change or
//! vanish in any release.

use std::path::{Path, PathBuf};

use tether_protocol::plugin::ConnInfo;
use tokio::sync::oneshot;

use crate::{Broker, BrokerConfig, BrokerError, Peer};

/// The most connection infos a broker keeps unclaimed.
pub const MAX_UNCLAIMED: usize = crate::broker::MAX_UNCLAIMED;

/// A broker that is never attached to a stream: connection infos are handed to it as the
/// stream would, and dials stop before connecting.
#[derive(Debug)]
pub struct Offers {
    broker: Broker,
}

/// A dial waiting for its connection info.
#[derive(Debug)]
pub struct Waiter {
    receiver: oneshot::Receiver<ConnInfo>,
}

impl Waiter {
    /// The connection info handed to this dial, if one was.
    pub fn take(&mut self) -> Option<ConnInfo> {
        self.receiver.try_recv().ok()
    }
}

impl Offers {
    /// A broker whose sockets live in `socket_dir`, confining dialed addresses to it or not.
    pub fn new(socket_dir: &Path, confine: bool) -> Self {
        Offers {
            broker: Broker::new(
                BrokerConfig::new("fuzz", socket_dir, Peer::SameUser)
                    .confine_dialed_addresses(confine),
            ),
        }
    }

    /// Handles a connection info as if it arrived on the stream.
    pub fn receive(&self, info: ConnInfo) {
        self.broker.receive(info);
    }

    /// Starts a dial of `id` that waits for its connection info.
    pub fn wait_for(&self, id: u32) -> Waiter {
        Waiter {
            receiver: self.broker.wait_for(id),
        }
    }

    /// Takes the connection info kept for `id`, as a dial does when it already arrived.
    pub fn take_arrived(&self, id: u32) -> Option<ConnInfo> {
        self.broker.take_arrived(id)
    }

    /// How many connection infos wait unclaimed.
    pub fn unclaimed(&self) -> usize {
        self.broker.unclaimed()
    }

    /// The socket a dial of `id` would connect to with `info`, or why it refuses to.
    pub fn check(&self, id: u32, info: ConnInfo) -> Result<PathBuf, BrokerError> {
        self.broker.check_offer(id, info)
    }
}
