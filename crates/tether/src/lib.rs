//! tether: plugins for Rust applications that run as separate, kernel-sandboxed processes
//! and talk gRPC to their host; plugins call back into host services that the host checks
//! against the capabilities an operator granted each plugin, and audits, on every call.
//! tether speaks HashiCorp go-plugin's wire protocol, so Go plugins and Go hosts
//! interoperate with it.
//!
//! This crate is the one dependency a host or a plugin needs (besides `tonic` and `prost`
//! for its own contracts). Pick what you write with features:
//!
//! | feature | module | for |
//! |---|---|---|
//! | `plugin` | [`plugin`] | a plugin: serve your gRPC services, call host services |
//! | `host` | [`host`] | a host: start, sandbox, supervise and stop plugin processes; connect host services to them |
//! | `hostserve` | [`hostserve`] | host services behind one gate: capability policy, audit, limits, the ready-made file services (implies `host`) |
//!
//! Always here: [`protocol`] (the wire contracts and constants, [`HandshakeConfig`],
//! [`CallContext`]), [`tonic`], and [`codec::ProstCodec`] for generated code.
//!
//! # Your own contract
//!
//! Write a `.proto`, generate its code with `tonic-prost-build` (in a `build.rs`, or once,
//! committed) and point the generated code at this crate's codec, so your crate depends on
//! `tether`, `tonic` and `prost` only:
//!
//! ```text
//! // build.rs, with tonic-prost-build as a build dependency
//! tonic_prost_build::configure()
//!     .codec_path("tether::codec::ProstCodec")
//!     .compile_protos(&["proto/greeter/v1/greeter.proto"], &["proto"])?;
//! ```
//!
//! The repository's `examples/greeter` is a whole host and plugin built this way: its own
//! proto, a plugin that reads a file through the host's file service, a host that grants
//! it and audits the call, and a test of the plugin's logic without a process.
//!
//! # A plugin
//!
//! ```no_run
//! # #[cfg(feature = "plugin")] mod doc {
//! use tether::plugin::{Plugin, Routes};
//! use tether_example_greeter::proto::greeter_server::GreeterServer;
//! use tether_example_greeter::{Greeter, HANDSHAKE, VERSION};
//!
//! fn main() -> std::process::ExitCode {
//!     // Opt in to host services: `host` reaches the host's file service and its own.
//!     let (plugin, host) = Plugin::new(HANDSHAKE).with_host_services();
//!     plugin
//!         .version(VERSION, Routes::new(GreeterServer::new(Greeter::new(host))))
//!         .run()
//! }
//! # }
//! ```
//!
//! # A host
//!
//! ```no_run
//! # #[cfg(feature = "hostserve")] mod doc {
//! use tether::host::{PluginClient, Sandbox};
//! use tether::hostserve::{Audit, HostServices, Limits, Policy};
//! use tether_example_greeter::proto::GreetRequest;
//! use tether_example_greeter::proto::greeter_client::GreeterClient;
//! use tether_example_greeter::{HANDSHAKE, VERSION};
//!
//! async fn run(workspace: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
//!     // The operator's grants: this plugin may read one file of its workspace.
//!     let policy = Policy::new();
//!     policy.set_workspace("greeter", workspace);
//!     policy.grant("greeter", "read:greeting.txt")?;
//!     let audit = Audit::to_file("audit.jsonl", 64 << 20)?;
//!     let services = HostServices::new(policy, audit, Limits::default());
//!
//!     // A sandboxed process; then its host services, in one line.
//!     let plugin = PluginClient::builder("greeter", "./greeter-plugin")
//!         .handshake(HANDSHAKE)
//!         .protocol_versions(&[VERSION])
//!         .sandbox(Sandbox::best_effort())
//!         .start()
//!         .await?;
//!     let connection = services.connect(&plugin).await?.required()?;
//!
//!     let reply = GreeterClient::new(plugin.channel())
//!         .greet(GreetRequest { name: "Ada".into() })
//!         .await?;
//!     println!("{}", reply.into_inner().greeting);
//!
//!     connection.close().await;
//!     plugin.shutdown().await?;
//!     Ok(())
//! }
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

pub use tether_protocol as protocol;
pub use tether_protocol::{CallContext, HandshakeConfig};
pub use tonic;

/// The codec generated code uses: point `tonic-prost-build`'s `codec_path` at
/// `tether::codec::ProstCodec`, and your crate needs no `tonic-prost` of its own.
pub mod codec {
    pub use tonic_prost::ProstCodec;
}

/// Writing a plugin: [`Plugin`](plugin::Plugin) serves your services and go-plugin's
/// built-in ones, [`Host`](plugin::Host) calls back into the host's services. All of
/// `tether-plugin-sdk`.
#[cfg(feature = "plugin")]
pub mod plugin {
    pub use tether_plugin_sdk::*;
}

/// Running plugins: [`PluginClient`](host::PluginClient) starts a plugin process in its
/// [`Sandbox`](host::Sandbox), hands out its channel, and stops it;
/// [`Supervisor`](host::Supervisor) restarts it by policy. All of `tether-host`, plus
/// `tether-hostconn`'s connection of host services to a running plugin
/// ([`establish_host_services`](host::establish_host_services), or
/// `hostserve::HostServices::connect`).
#[cfg(feature = "host")]
pub mod host {
    pub use tether_host::*;
    pub use tether_hostconn::{
        DEFAULT_MAX_CONNECTIONS, ESTABLISH_TIMEOUT, Error as HostConnectionError, HostConnection,
        InProcess, Options as HostConnectionOptions, Outcome, PluginIdentity, Refusal, RefusalHook,
        Violation, ViolationHook, establish_host_services, establish_host_services_with,
        in_process,
    };
}

/// The async runtime tether runs on, for a host's `main`: re-exported so that a host needs
/// no `tokio` dependency of its own.
#[cfg(feature = "host")]
pub use tokio;

/// Host services behind one gate: [`HostServices`](hostserve::HostServices) (the file
/// services and your own), [`Gate`](hostserve::Gate), [`Policy`](hostserve::Policy),
/// [`Audit`](hostserve::Audit). All of `tether-hostserve`.
#[cfg(feature = "hostserve")]
pub mod hostserve {
    pub use tether_hostserve::*;
}
