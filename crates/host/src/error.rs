use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use tether_protocol::HandshakeParseError;

/// Why a plugin could not be started, reached or stopped.
///
/// Every message names the plugin, says what was expected and what was found, and where it
/// helps, what to do. Errors about a plugin that died carry the tail of its stderr.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plugin's executable could not be started.
    #[error("could not start plugin `{plugin}` from {}: {source}{}", program.display(), spawn_hint(source))]
    Spawn {
        /// The plugin's name.
        plugin: String,
        /// The executable.
        program: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// The binary failed verification ([`PluginBuilder::sha256`](crate::PluginBuilder::sha256)):
    /// its digest is not the pinned one, it could be rewritten after the check, or it could
    /// not be read. Nothing was started.
    #[error("refused to start plugin `{plugin}` from {}: {reason}", program.display())]
    Binary {
        /// The plugin's name.
        plugin: String,
        /// The binary.
        program: PathBuf,
        /// What is wrong with it.
        #[source]
        reason: crate::BinaryRefusal,
    },
    /// The sandbox could not be built, or (under `Strict`) a layer is missing on this kernel.
    #[error("could not sandbox plugin `{plugin}`: {source}")]
    Sandbox {
        /// The plugin's name.
        plugin: String,
        /// Which layer, and why.
        #[source]
        source: crate::SandboxError,
    },
    /// The socket group ([`PluginBuilder::socket_group`](crate::PluginBuilder::socket_group))
    /// is unknown, or the socket directory could not be given to it.
    #[error("plugin `{plugin}`: could not share its sockets with group {group:?}: {reason}")]
    SocketGroup {
        /// The plugin's name.
        plugin: String,
        /// The group as given.
        group: String,
        /// What went wrong.
        reason: String,
    },
    /// The plugin's data directory could not be created, or is not private to the host's
    /// user (a symbolic link, not a directory, another user's, or writable by others).
    #[error("refused the data directory of plugin `{plugin}`: {source}")]
    DataDir {
        /// The plugin's name.
        plugin: String,
        /// What is wrong with it.
        #[source]
        source: crate::DataDirError,
    },
    /// The private socket directory could not be created.
    #[error("could not create a socket directory for plugin `{plugin}` in {}: {source}", base.display())]
    SocketDir {
        /// The plugin's name.
        plugin: String,
        /// Where the directory was to be created.
        base: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// The first line on the plugin's stdout is not a handshake line.
    #[error(
        "plugin `{plugin}` printed {line:?} on stdout where its handshake line was expected \
         ({reason}); a plugin must print nothing on stdout before its handshake"
    )]
    NotAHandshake {
        /// The plugin's name.
        plugin: String,
        /// What it printed (truncated to 200 characters).
        line: String,
        /// Why the line is not a handshake.
        #[source]
        reason: HandshakeParseError,
    },
    /// The plugin wrote more than the longest possible handshake line without a newline.
    #[error(
        "plugin `{plugin}` wrote more than {limit} bytes on stdout without a newline where its \
         handshake line was expected; it began {prefix:?}"
    )]
    HandshakeTooLong {
        /// The plugin's name.
        plugin: String,
        /// The limit.
        limit: usize,
        /// The first 200 characters it wrote.
        prefix: String,
    },
    /// The handshake's core protocol version is not 1.
    #[error(
        "plugin `{plugin}` speaks core protocol version {got}, this host speaks {expected}; \
         the plugin was built for an incompatible plugin framework"
    )]
    CoreVersion {
        /// The plugin's name.
        plugin: String,
        /// What the plugin announced.
        got: u32,
        /// What tether speaks.
        expected: u32,
    },
    /// The plugin speaks go-plugin's `netrpc`, which only Go hosts understand.
    #[error(
        "plugin `{plugin}` serves go-plugin's `netrpc` protocol, but tether speaks only `grpc`; \
         rebuild the plugin with `GRPCServer` set in its go-plugin `ServeConfig`"
    )]
    NetRpc {
        /// The plugin's name.
        plugin: String,
    },
    /// No app protocol version in common.
    #[error(
        "plugin `{plugin}` has no app protocol version in common with this host: the host accepts \
         [{}], the plugin {}; upgrade whichever side is older",
        join(accepted),
        match plugin_serves {
            Some(serves) => format!("serves [{}] (it answered {offered})", join(serves)),
            None => format!("answered {offered} and did not say which versions it serves"),
        }
    )]
    IncompatibleVersion {
        /// The plugin's name.
        plugin: String,
        /// The version the plugin answered with.
        offered: u32,
        /// What this host accepts.
        accepted: Vec<u32>,
        /// What the plugin serves, when it said so on stderr (tether plugins do).
        plugin_serves: Option<Vec<u32>>,
    },
    /// AutoMTLS could not be set up with the plugin, or the plugin's TLS failed: it did not
    /// answer with a certificate, answered with one unasked, or presented another.
    #[error("plugin `{plugin}`: AutoMTLS failed: {reason}")]
    AutoMtls {
        /// The plugin's name.
        plugin: String,
        /// What went wrong, in words.
        reason: String,
    },
    /// Multiplexing was asked for and not agreed to, or answered unasked.
    #[error("plugin `{plugin}`: multiplexing failed: {reason}")]
    Multiplex {
        /// The plugin's name.
        plugin: String,
        /// What went wrong, in words.
        reason: String,
    },
    /// The plugin named a network this host did not offer.
    #[error(
        "plugin `{plugin}` asked the host to connect to {network} address {address:?}, but this \
         host offered only a Unix socket in its private socket directory"
    )]
    UnexpectedNetwork {
        /// The plugin's name.
        plugin: String,
        /// The network it named.
        network: String,
        /// The address it named.
        address: String,
    },
    /// The plugin named a socket outside the private directory the host made for it.
    #[error(
        "plugin `{plugin}` asked the host to connect to {address:?}, which is not in the private \
         socket directory {} the host made for it; refusing to connect",
        socket_dir.display()
    )]
    AddressOutsideSocketDir {
        /// The plugin's name.
        plugin: String,
        /// The address it named.
        address: String,
        /// The directory the host made.
        socket_dir: PathBuf,
    },
    /// The socket is served by a process other than the one the host started.
    #[error(
        "the socket {address:?} named by plugin `{plugin}` (pid {expected_pid}) is served by {}; \
         refusing to connect",
        match peer_pid { Some(pid) => format!("pid {pid}"), None => "an unknown process".to_owned() }
    )]
    SocketNotOwnedByPlugin {
        /// The plugin's name.
        plugin: String,
        /// The address it named.
        address: String,
        /// The pid of the process the host started.
        expected_pid: u32,
        /// The pid on the other end of the socket.
        peer_pid: Option<u32>,
    },
    /// No handshake line arrived in time.
    #[error(
        "plugin `{plugin}` printed no handshake line within {timeout:?}; is it a plugin for this \
         host?{}",
        tail_suffix(stderr_tail)
    )]
    HandshakeTimeout {
        /// The plugin's name.
        plugin: String,
        /// The start timeout.
        timeout: Duration,
        /// The last lines of its stderr.
        stderr_tail: String,
    },
    /// The process exited before its handshake.
    ///
    /// The message names the magic cookie the host set: a plugin built with another
    /// handshake configuration exits at once, which is a common cause.
    #[error(
        "plugin `{plugin}` exited ({status}) before its handshake{}{}\n\
         note: the host set the magic cookie {cookie_key} for it; a plugin built with another \
         handshake configuration (another cookie key or value) exits at once, so check that \
         host and plugin agree on it",
        tail_suffix(stderr_tail),
        hint.map(|hint| format!("\nhint: {hint}")).unwrap_or_default()
    )]
    ExitedBeforeHandshake {
        /// The plugin's name.
        plugin: String,
        /// How it exited.
        status: ExitStatus,
        /// The environment variable of the magic cookie the host set (its
        /// `HandshakeConfig`'s key).
        cookie_key: String,
        /// The last lines of its stderr.
        stderr_tail: String,
        /// What may have caused it, when the host can tell (for example the sandbox).
        hint: Option<&'static str>,
    },
    /// Connecting to the plugin's socket failed.
    #[error("could not connect to plugin `{plugin}` at {address:?}: {source}")]
    Connect {
        /// The plugin's name.
        plugin: String,
        /// The address.
        address: String,
        /// The error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A call to one of the plugin's built-in services failed.
    #[error("plugin `{plugin}` failed {call}: {status}")]
    Rpc {
        /// The plugin's name.
        plugin: String,
        /// Which call.
        call: &'static str,
        /// The gRPC status.
        #[source]
        status: tonic::Status,
    },
    /// The plugin's health service does not report SERVING.
    #[error(
        "plugin `{plugin}` reports health status {status} for service \"plugin\", expected SERVING"
    )]
    NotServing {
        /// The plugin's name.
        plugin: String,
        /// The status it reported.
        status: String,
    },
    /// Attaching to a running plugin failed before anything was done to any process.
    #[error("cannot attach to plugin `{plugin}`: {reason}")]
    Reattach {
        /// The plugin's name.
        plugin: String,
        /// Why (for example: its process has exited).
        reason: String,
    },
    /// The plugin process ended (a call in flight, or the one guarded, could not finish).
    #[error("{0}")]
    Exited(ExitReport),
    /// A call to the plugin failed, and the plugin is still running.
    #[error("a call to plugin `{plugin}` failed: {status}")]
    Call {
        /// The plugin's name.
        plugin: String,
        /// The gRPC status.
        #[source]
        status: tonic::Status,
    },
    /// The host could not start its spawner thread or runtime task.
    #[error("internal error while starting plugin `{plugin}`: {reason}")]
    Internal {
        /// The plugin's name.
        plugin: String,
        /// What went wrong.
        reason: String,
    },
}

/// How a plugin process ended, as the host saw it.
#[derive(Debug, Clone)]
pub struct ExitReport {
    /// The plugin's name.
    pub plugin: String,
    /// How it ended: its exit status, or [`Exit::Unknown`](crate::Exit::Unknown) for a
    /// client attached to a plugin another host started.
    pub status: crate::Exit,
    /// The last lines it wrote on stderr (empty for an attached client).
    pub stderr_tail: String,
}

impl std::fmt::Display for ExitReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plugin `{}` {}", self.plugin, self.status)?;
        match self.status {
            crate::Exit::Status(_) => f.write_str(&tail_suffix(&self.stderr_tail)),
            // Its stderr is the starting host's: there is no tail to speak of.
            crate::Exit::Unknown if self.stderr_tail.is_empty() => Ok(()),
            crate::Exit::Unknown => f.write_str(&tail_suffix(&self.stderr_tail)),
        }
    }
}

fn join(versions: &[u32]) -> String {
    versions
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn tail_suffix(tail: &str) -> String {
    if tail.is_empty() {
        "; it wrote nothing on stderr".to_owned()
    } else {
        format!("; the end of its stderr:\n{tail}")
    }
}

/// What to do about a plugin that could not be started, where the error says.
fn spawn_hint(source: &io::Error) -> &'static str {
    match (source.kind(), crate::spawn::ChildFailed::errno(source)) {
        (io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied, _) => {
            " (check the path and that it is executable)"
        }
        (_, Some(libc::EMFILE | libc::ENFILE)) => {
            " (out of file descriptors: raise the host's limit, `ulimit -n`, or run fewer \
             plugins at once)"
        }
        (_, Some(libc::EAGAIN)) => {
            " (out of processes or threads: see `ulimit -u` and /proc/sys/kernel/threads-max)"
        }
        _ => "",
    }
}
