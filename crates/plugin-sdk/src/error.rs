use std::io;
use std::path::PathBuf;

/// Why a plugin could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The magic cookie is missing: the binary was not started by a tether or go-plugin host.
    #[error(
        "This binary is a tether plugin: its host application starts it and talks to it.\n\
         It was started without the environment variable {key} that its host sets, so it\n\
         is most likely being run by hand. Run the host application instead; it will start\n\
         this plugin when it needs it."
    )]
    NotLaunchedByHost {
        /// The cookie's environment variable.
        key: String,
    },
    /// The magic cookie is set but to another value: the binary was started by a host whose
    /// handshake configuration differs from the plugin's.
    ///
    /// Neither value is printed. The cookie is no secret (go-plugin calls it a usability
    /// feature, not a security one), but showing the expected value would only teach
    /// whoever runs the plugin how to start it without its real host.
    #[error(
        "This binary is a tether plugin, and it was started with the environment variable\n\
         {key} set, as a plugin host does, but to a value other than the one this plugin was\n\
         built with: the host and the plugin disagree on the handshake configuration (the\n\
         magic cookie). Use a plugin built for this host, or a host built for this plugin."
    )]
    CookieMismatch {
        /// The cookie's environment variable.
        key: String,
    },
    /// The plugin registered no app protocol version.
    #[error("the plugin serves no app protocol version: call `Plugin::version` at least once")]
    NoVersions,
    /// The socket directory could not be created.
    #[error("could not create a private socket directory: {source}")]
    SocketDir {
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// The socket could not be bound.
    #[error("could not listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// The host asked for AutoMTLS (`PLUGIN_CLIENT_CERT`) and it could not be set up: its
    /// certificate is not a PEM certificate, or ours could not be made.
    #[error("AutoMTLS: {source}")]
    AutoMtls {
        /// What went wrong.
        #[source]
        source: tether_transport::tls::TlsError,
    },
    /// The host named a socket group (`PLUGIN_UNIX_SOCKET_GROUP`) that could not be used.
    #[error("{source}")]
    SocketGroup {
        /// What went wrong.
        #[source]
        source: tether_transport::GroupError,
    },
    /// The host asked for multiplexing and its connection could not be taken.
    #[error("could not accept the host's multiplexed connection: {source}")]
    Multiplex {
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// Redirecting stdout and stderr failed.
    #[error("could not redirect stdout and stderr to the host's stdio stream: {source}")]
    Stdio {
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// Writing the handshake line failed (the host closed our stdout?).
    #[error("could not write the handshake line to stdout: {source}")]
    Handshake {
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// The async runtime could not start.
    #[error("could not start the async runtime: {source}")]
    Runtime {
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("the gRPC server failed: {source}")]
    Serve {
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
}
