//! Attaching another host process to a running plugin: [`ReattachConfig`],
//! [`PluginClient::reattach_config`] and [`PluginClient::reattach`].

use std::path::PathBuf;
use std::time::Duration;

use tether_protocol::DEFAULT_MAX_MESSAGE_SIZE;

use crate::client::{DEFAULT_CALL_TIMEOUT, Owner, Parts, PluginClient};
use crate::error::Error;
use crate::process::Attached;
use crate::spawn;
use crate::transport;

/// What another host process needs to attach to a running plugin
/// ([`PluginClient::reattach`]); serialisable, from [`PluginClient::reattach_config`].
/// A tether plugin accepts the attaching process only once the host that started it has
/// named it with [`PluginClient::admit`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReattachConfig {
    /// The plugin's name.
    pub name: String,
    /// Its process.
    pub pid: u32,
    /// When that process started (clock ticks since boot): with the pid, it names one
    /// process for good, so a reused pid is never taken for the plugin.
    pub start_time: u64,
    /// Its Unix socket.
    pub address: PathBuf,
    /// The app protocol version it serves.
    pub protocol_version: u32,
}

impl PluginClient {
    /// What another host process needs to attach to this plugin while it runs.
    ///
    /// Fails with [`Error::Reattach`] when the process's start time cannot be read (from
    /// `/proc/<pid>/stat`): the plugin has exited, or `/proc` is not mounted. Without it a
    /// reused pid could not be told from the plugin, and [`PluginClient::reattach`]
    /// would refuse the config anyway. Fails the same way for a plugin started with
    /// AutoMTLS: its connections need certificates that a reattach config does not carry
    /// (go-plugin's has none either), or with multiplexing (its one connection is this
    /// host's).
    pub fn reattach_config(&self) -> Result<ReattachConfig, Error> {
        let pid = self.pid();
        if self.broker().is_some_and(|broker| broker.uses_tls()) {
            return Err(Error::Reattach {
                plugin: self.name().to_owned(),
                reason: "it was started with AutoMTLS, and a reattach config carries no \
                         certificates; start it without AutoMTLS to reattach to it"
                    .to_owned(),
            });
        }
        if self.broker().is_some_and(|broker| broker.is_multiplexed()) {
            return Err(Error::Reattach {
                plugin: self.name().to_owned(),
                reason: "it was started with multiplexing, and its one connection belongs to \
                         this host; start it without multiplexing to reattach to it"
                    .to_owned(),
            });
        }
        let start_time = spawn::process_start_time(pid).ok_or_else(|| Error::Reattach {
            plugin: self.name().to_owned(),
            reason: format!(
                "could not read the start time of its process {pid} from /proc/{pid}/stat: \
                 the plugin has exited, or /proc is not mounted"
            ),
        })?;
        Ok(ReattachConfig {
            name: self.name().to_owned(),
            pid,
            start_time,
            address: self.address().to_owned(),
            protocol_version: self.protocol_version(),
        })
    }

    /// Attaches to a plugin another host process started and still owns, from its
    /// [`ReattachConfig`]: checks that the process is the plugin's (its pid and start
    /// time, and that it serves the plugin's socket; otherwise [`Error::Reattach`], and
    /// nothing is signalled), and checks its health.
    ///
    /// The attached client calls the plugin, sees its end and can stop it
    /// ([`PluginClient::shutdown`]: `Shutdown`, then signals to that process alone, through
    /// a pidfd). Dropping it leaves the plugin running. What only the starting host has, it
    /// says it lacks: its exit status is [`Exit::Unknown`](crate::Exit::Unknown) (only the
    /// parent learns the real one), [`PluginClient::broker`] and [`PluginClient::sandbox`]
    /// are `None` (the broker stream, so host services, and the sandbox are the starting
    /// host's), and it has no stderr.
    pub async fn reattach(config: &ReattachConfig) -> Result<PluginClient, Error> {
        let name = config.name.clone();
        if config.address.parent().is_none() {
            return Err(Error::Reattach {
                plugin: name,
                reason: format!(
                    "its socket address {:?} names no file in a directory; a reattach config \
                     comes from `reattach_config` on the host that started the plugin",
                    config.address
                ),
            });
        }
        let attached =
            Attached::open(config.pid, config.start_time).map_err(|reason| Error::Reattach {
                plugin: name.clone(),
                reason,
            })?;
        // The start time is only as fine as a clock tick: the process must also serve the
        // plugin's socket (its credentials are checked at every connection).
        let channel = transport::connect(&name, &config.address, config.pid, None)
            .await
            .map_err(|err| Error::Reattach {
                plugin: name.clone(),
                reason: format!(
                    "process {} does not serve the plugin's socket ({err}): the plugin has \
                     exited",
                    config.pid
                ),
            })?;
        let client = PluginClient::new(Parts {
            name,
            version: config.protocol_version,
            channel,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            graceful_timeout: Duration::from_secs(2),
            call_timeout: Some(DEFAULT_CALL_TIMEOUT),
            kill_timeout: Duration::from_secs(5),
            address: config.address.clone(),
            owner: Owner::Attached(attached),
        });
        client.health().await?;
        Ok(client)
    }
}
