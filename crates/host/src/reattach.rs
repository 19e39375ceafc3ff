//! Attaching another host process to a running plugin: [`ReattachConfig`],
//! [`PluginClient::reattach_config`] and [`PluginClient::reattach`].

use std::collections::BTreeMap;
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
            channel: channel.into(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            graceful_timeout: Duration::from_secs(2),
            call_timeout: Some(DEFAULT_CALL_TIMEOUT),
            kill_timeout: Duration::from_secs(5),
            address: config.address.clone(),
            verified: None,
            owner: Owner::Attached(attached),
        });
        client.health().await?;
        Ok(client)
    }
}

/// go-plugin's reattach config, as Go hosts and Terraform spell it in JSON
/// (`{"Protocol":"grpc","ProtocolVersion":6,"Pid":…,"Test":true,"Addr":{"Network":"unix","String":…}}`).
/// It names no plugin and carries no start time; see [`ReattachConfig::from_go`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GoReattachConfig {
    /// `grpc` (tether speaks nothing else).
    pub protocol: String,
    /// The app protocol version the plugin serves.
    pub protocol_version: u32,
    /// Where it listens.
    pub addr: GoAddr,
    /// Its process.
    pub pid: u32,
    /// Set when the plugin is owned by someone else (a test or debugger), so the attaching
    /// host must not kill it; tether writes `true`: the starting host owns the plugin.
    #[serde(default)]
    pub test: bool,
}

/// A Go `net.Addr`, as reattach configs carry it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GoAddr {
    /// `unix` (tether speaks nothing else).
    #[serde(rename = "Network")]
    pub network: String,
    /// The socket's path.
    #[serde(rename = "String")]
    pub address: String,
}

impl ReattachConfig {
    /// This config as go-plugin spells it, for a Go host (or Terraform, see
    /// [`ReattachConfig::to_terraform`]) to attach to the plugin.
    pub fn to_go(&self) -> GoReattachConfig {
        GoReattachConfig {
            protocol: "grpc".to_owned(),
            protocol_version: self.protocol_version,
            addr: GoAddr {
                network: "unix".to_owned(),
                address: self.address.display().to_string(),
            },
            pid: self.pid,
            test: true,
        }
    }

    /// A config from go-plugin's, for the plugin `name`. go-plugin's carries no start
    /// time, so the process's is read now: a pid reused since the config was written would
    /// pass that check, but not [`PluginClient::reattach`]'s other one, that the process
    /// serves the plugin's socket.
    pub fn from_go(name: &str, go: &GoReattachConfig) -> Result<ReattachConfig, Error> {
        let refuse = |reason: String| Error::Reattach {
            plugin: name.to_owned(),
            reason,
        };
        if go.protocol != "grpc" {
            return Err(refuse(format!(
                "its reattach config names protocol {:?}; tether speaks only grpc",
                go.protocol
            )));
        }
        if go.addr.network != "unix" {
            return Err(refuse(format!(
                "its reattach config names a {} address; tether connects only to Unix sockets",
                go.addr.network
            )));
        }
        let start_time = spawn::process_start_time(go.pid).ok_or_else(|| {
            refuse(format!(
                "could not read the start time of its process {} from /proc: the plugin has \
                 exited",
                go.pid
            ))
        })?;
        Ok(ReattachConfig {
            name: name.to_owned(),
            pid: go.pid,
            start_time,
            address: PathBuf::from(&go.addr.address),
            protocol_version: go.protocol_version,
        })
    }

    /// Terraform's `TF_REATTACH_PROVIDERS` for these plugins: a JSON object of go-plugin
    /// reattach configs keyed by provider address (for example
    /// `registry.terraform.io/hashicorp/null`).
    pub fn to_terraform<'a>(
        providers: impl IntoIterator<Item = (&'a str, &'a ReattachConfig)>,
    ) -> String {
        let map: BTreeMap<&str, GoReattachConfig> = providers
            .into_iter()
            .map(|(address, config)| (address, config.to_go()))
            .collect();
        // A map of plain structs with string keys always serialises.
        serde_json::to_string(&map).unwrap_or_else(|_| "{}".to_owned())
    }

    /// The configs in Terraform's `TF_REATTACH_PROVIDERS`, keyed by provider address; each
    /// plugin is named after its address.
    pub fn from_terraform(json: &str) -> Result<BTreeMap<String, ReattachConfig>, Error> {
        let map: BTreeMap<String, GoReattachConfig> =
            serde_json::from_str(json).map_err(|err| Error::Reattach {
                plugin: "TF_REATTACH_PROVIDERS".to_owned(),
                reason: format!(
                    "it is not a JSON object of go-plugin reattach configs keyed by provider \
                     address: {err}"
                ),
            })?;
        map.into_iter()
            .map(|(address, go)| {
                let config = ReattachConfig::from_go(&address, &go)?;
                Ok((address, config))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Terraform itself writes for a provider started with `-debug`.
    const TERRAFORM: &str = r#"{"registry.terraform.io/hashicorp/null":{"Protocol":"grpc","ProtocolVersion":5,"Pid":PID,"Test":true,"Addr":{"Network":"unix","String":"/tmp/plugin123456"}}}"#;

    #[test]
    fn terraform_reattach_configs_are_read_and_written() {
        let json = TERRAFORM.replace("PID", &std::process::id().to_string());
        let configs = ReattachConfig::from_terraform(&json).unwrap();
        let config = &configs["registry.terraform.io/hashicorp/null"];
        assert_eq!(config.pid, std::process::id());
        assert_eq!(config.protocol_version, 5);
        assert_eq!(config.address, PathBuf::from("/tmp/plugin123456"));
        assert_eq!(config.name, "registry.terraform.io/hashicorp/null");
        let written =
            ReattachConfig::to_terraform([("registry.terraform.io/hashicorp/null", config)]);
        let again: serde_json::Value = serde_json::from_str(&written).unwrap();
        let original: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(again, original);
    }

    #[test]
    fn foreign_protocols_and_networks_are_refused_by_name() {
        let json = TERRAFORM.replace("PID", &std::process::id().to_string());
        for (from, to, says) in [
            ("\"grpc\"", "\"netrpc\"", "netrpc"),
            ("\"unix\"", "\"tcp\"", "tcp"),
        ] {
            let err = ReattachConfig::from_terraform(&json.replace(from, to)).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        }
        let err = ReattachConfig::from_terraform("[1, 2]").unwrap_err();
        assert!(err.to_string().contains("TF_REATTACH_PROVIDERS"), "{err}");
    }
}
