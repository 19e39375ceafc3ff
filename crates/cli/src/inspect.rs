//! `tether inspect`: starts a plugin sandboxed, shows what it says and what confines it,
//! and stops it gracefully.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use tether_host::{HandshakeConfig, PluginChannel, PluginClient, Sandbox, Sha256};
use tether_hostserve::Manifest;
use tonic::codegen::http::uri::PathAndQuery;

use crate::out::Out;
use crate::{KindArgs, Outcome, kinds};

/// `tether inspect`.
#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The plugin's executable.
    plugin: PathBuf,

    /// The handshake's magic cookie, as `KEY=VALUE` (the plugin refuses to start without
    /// the one it expects).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_cookie)]
    cookie: (String, String),

    /// The app protocol versions the host offers, comma-separated.
    #[arg(long, value_name = "N,...", value_delimiter = ',', default_value = "1")]
    versions: Vec<u32>,

    /// How to confine the plugin: `strict` refuses to start it if this kernel lacks a
    /// layer.
    #[arg(long, value_enum, default_value_t = SandboxChoice::BestEffort)]
    sandbox: SandboxChoice,

    /// Let the sandboxed plugin create files in its socket directory (a go-plugin plugin
    /// makes a temporary file there before it binds its socket).
    #[arg(long)]
    socket_dir_files: bool,

    /// Start the plugin only if its binary's SHA-256 is this one (as `sha256sum` prints
    /// it), checked on the open file that is executed.
    #[arg(long, value_name = "DIGEST", value_parser = parse_digest)]
    sha256: Option<Sha256>,

    #[command(flatten)]
    kinds: KindArgs,
}

/// How to confine the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SandboxChoice {
    /// Every layer, or the plugin does not start.
    Strict,
    /// Every layer this kernel offers.
    BestEffort,
    /// None.
    Off,
}

fn parse_digest(text: &str) -> Result<Sha256, String> {
    text.parse()
        .map_err(|err: tether_host::DigestError| err.to_string())
}

fn parse_cookie(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!(
            "{text:?} is not KEY=VALUE, e.g. TETHER_PLUGIN=tether"
        )),
    }
}

/// `tether inspect`.
pub(crate) fn inspect(out: &Out, args: &InspectArgs) -> anyhow::Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    runtime.block_on(run(out, args))
}

async fn run(out: &Out, args: &InspectArgs) -> anyhow::Result<Outcome> {
    let path = &args.plugin;
    if !path.is_file() {
        bail!("could not read the plugin {}: not a file", path.display());
    }
    let name = path
        .file_name()
        .map_or_else(|| "plugin".to_owned(), |n| n.to_string_lossy().into_owned());
    let manifest = manifest(args, path)?;
    let sandbox = match args.sandbox {
        SandboxChoice::Strict => Sandbox::strict(),
        SandboxChoice::BestEffort => Sandbox::best_effort(),
        SandboxChoice::Off => Sandbox::off(),
    }
    .allow_socket_dir_files(args.socket_dir_files);
    let digest = Sha256::of_file(path)
        .with_context(|| format!("could not read the plugin {}", path.display()))?;
    let (key, value) = args.cookie.clone();
    let mut builder = PluginClient::builder(name.clone(), path)
        .handshake(HandshakeConfig {
            magic_cookie_key: Cow::Owned(key),
            magic_cookie_value: Cow::Owned(value),
        })
        .protocol_versions(&args.versions)
        .sandbox(sandbox);
    if let Some(pinned) = args.sha256 {
        builder = builder.sha256(pinned);
    }
    let plugin = builder
        .start()
        .await
        .with_context(|| format!("could not start the plugin {}", path.display()))?;

    println!("{}", out.bold(&format!("plugin {}", path.display())));
    let attach = plugin
        .reattach_config()
        .context("could not describe the running plugin")?;
    println!("  pid:                   {}", plugin.pid());
    let verified = if args.sha256.is_some() {
        " (verified: the pinned digest)"
    } else {
        ""
    };
    println!("  sha256:                {digest}{verified}");
    println!(
        "  core protocol version: {}",
        tether_protocol::CORE_PROTOCOL_VERSION
    );
    println!(
        "  app protocol version:  {} (offered: {})",
        plugin.protocol_version(),
        args.versions
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  network:               unix");
    println!("  address:               {}", attach.address.display());
    let health = match plugin.health().await {
        Ok(()) => out.green("SERVING"),
        Err(err) => out.red(&err.to_string()),
    };
    println!("  health:                {health}");

    println!("{}", out.bold("manifest"));
    let mut outcome = Outcome::Clean;
    match &manifest {
        Found::Missing(beside) => println!("  none ({} does not exist)", beside.display()),
        Found::Invalid(reason, beside) => {
            outcome = Outcome::Problems;
            println!("  file:         {}", beside.display());
            println!("  {} {reason}", out.red("not valid:"));
        }
        Found::Valid(manifest, beside) => {
            println!("  file:         {}", beside.display());
            println!("  name:         {}", manifest.name);
            println!("  version:      {}", manifest.version);
            println!("  protocol:     {}", manifest.protocol_version);
            let requested: Vec<&str> = manifest
                .capabilities
                .iter()
                .map(|capability| capability.as_str())
                .collect();
            println!(
                "  requests:     {}",
                if requested.is_empty() {
                    "nothing".to_owned()
                } else {
                    requested.join(", ")
                }
            );
        }
    }

    let mode = match args.sandbox {
        SandboxChoice::Strict => "strict",
        SandboxChoice::BestEffort => "best-effort",
        SandboxChoice::Off => "off",
    };
    println!("{}", out.bold(&format!("sandbox ({mode})")));
    let layers = plugin.sandbox().map(|status| status.layers.as_slice());
    for layer in layers.unwrap_or_default() {
        let state = if layer.enforced {
            out.green("on ")
        } else {
            out.red("OFF")
        };
        println!(
            "  {state} {:<20} {}",
            layer.layer.to_string(),
            out.dim(&layer.detail)
        );
    }
    if layers.is_none() {
        // Not for a plugin inspect started itself; said rather than assumed.
        println!("  unknown: another host started the plugin");
    }

    println!("{}", out.bold("gRPC services"));
    match reflection::list(plugin.channel()).await {
        Ok(services) if services.is_empty() => println!("  (reflection lists none)"),
        Ok(services) => {
            for service in services {
                println!("  {service}");
            }
        }
        Err(reason) => println!("  not listed: {reason}"),
    }

    let exit = plugin
        .shutdown()
        .await
        .context("could not stop the plugin")?;
    println!(
        "{}",
        out.dim(&format!(
            "stopped: {:?} ({})",
            exit.stop,
            match exit.status.status() {
                Some(status) => status.to_string(),
                None => exit.status.to_string(),
            }
        ))
    );
    Ok(outcome)
}

/// The manifest beside the plugin, and the path looked at.
enum Found {
    /// There is none.
    Missing(PathBuf),
    /// It loads.
    Valid(Manifest, PathBuf),
    /// It does not load: why.
    Invalid(String, PathBuf),
}

fn manifest(args: &InspectArgs, plugin: &Path) -> anyhow::Result<Found> {
    let beside = plugin
        .parent()
        .unwrap_or(Path::new("."))
        .join("plugin.toml");
    if !beside.exists() {
        return Ok(Found::Missing(beside));
    }
    let kinds = kinds::policy(&args.kinds)?.kinds();
    Ok(match Manifest::load_with(&beside, &kinds) {
        Ok(manifest) => Found::Valid(manifest, beside),
        Err(err) => {
            let hint = if err.to_string().contains("unknown capability kind") {
                " (a kind of the host's own? declare it: --kind NAME:ACTIONS:none|path|name)"
            } else {
                ""
            };
            Found::Invalid(format!("{err}{hint}"), beside)
        }
    })
}

/// The plugin's services through gRPC server reflection (`grpc.reflection.v1`, then
/// `v1alpha`), spoken with hand-written messages: the few fields needed to list services.
mod reflection {
    use tonic::Code;

    use super::{PathAndQuery, PluginChannel};

    #[derive(Clone, PartialEq, prost::Message)]
    struct Request {
        #[prost(string, tag = "1")]
        host: String,
        /// `list_services` of the request's `message_request` oneof.
        #[prost(string, optional, tag = "7")]
        list_services: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Response {
        /// `list_services_response` of the response's `message_response` oneof.
        #[prost(message, optional, tag = "6")]
        list_services_response: Option<ListServices>,
        /// `error_response` of the same oneof.
        #[prost(message, optional, tag = "7")]
        error_response: Option<ErrorResponse>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct ListServices {
        #[prost(message, repeated, tag = "1")]
        service: Vec<Service>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Service {
        #[prost(string, tag = "1")]
        name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct ErrorResponse {
        #[prost(int32, tag = "1")]
        error_code: i32,
        #[prost(string, tag = "2")]
        error_message: String,
    }

    const PATHS: [&str; 2] = [
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ];

    /// The services the plugin lists, or why they cannot be listed.
    pub(super) async fn list(channel: PluginChannel) -> Result<Vec<String>, String> {
        for path in PATHS {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready()
                .await
                .map_err(|err| format!("the channel is not ready: {err}"))?;
            let request = Request {
                host: String::new(),
                list_services: Some(String::new()),
            };
            let stream = tokio_stream::iter([request]);
            let answer = grpc
                .streaming(
                    tonic::Request::new(stream),
                    PathAndQuery::from_static(path),
                    tonic_prost::ProstCodec::<Request, Response>::default(),
                )
                .await;
            let mut responses = match answer {
                Ok(responses) => responses.into_inner(),
                Err(status) if status.code() == Code::Unimplemented => continue,
                Err(status) => return Err(format!("reflection failed: {status}")),
            };
            let response = responses
                .message()
                .await
                .map_err(|status| format!("reflection failed: {status}"))?;
            return match response {
                Some(Response {
                    list_services_response: Some(list),
                    ..
                }) => {
                    let mut names: Vec<String> = list
                        .service
                        .into_iter()
                        .map(|service| service.name)
                        .collect();
                    names.sort();
                    Ok(names)
                }
                Some(Response {
                    error_response: Some(error),
                    ..
                }) => Err(format!(
                    "reflection answered an error ({}): {}",
                    error.error_code, error.error_message
                )),
                _ => Err("reflection gave no list".to_owned()),
            };
        }
        Err("the plugin does not serve gRPC reflection".to_owned())
    }
}
