//! `tether-demo`: the demo host. Starts the filelister and colorlister plugins, gives both
//! the same capability-checked host services (tether's file services and the host's own
//! message bus, [`bus`]), calls them, shows denials with their audit records and a
//! capability revoked at runtime, then shuts everything down.
//!
//! `cargo xtask demo` builds everything and runs it; `tether-demo --help` lists the options.

mod bus;
mod demo;
mod out;
mod sample;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// tether's demo: two sandboxed plugins share one set of capability-checked host services.
///
/// Every host-service call is checked against the capabilities granted to the plugin that
/// made it and leaves one line in the audit log. Run it through `cargo xtask demo`, which
/// builds and stages the plugins.
#[derive(Debug, Parser)]
#[command(name = "tether-demo", version, about, long_about)]
pub(crate) struct Args {
    /// The plugins: a directory holding `filelister/` and `colorlister/`, each with its
    /// `plugin.toml` and its executable. Default: `plugins/` beside this executable.
    #[arg(long, value_name = "DIR")]
    plugins: Option<PathBuf>,

    /// The plugins' workspace. If it is missing or empty, the sample files are written
    /// into it first. Default: a temporary directory with the sample files, removed at the
    /// end.
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,

    /// Append the audit log (JSON lines) to this file and keep it. Default: a temporary
    /// file, removed at the end.
    #[arg(long, value_name = "FILE")]
    audit: Option<PathBuf>,

    /// How to confine the plugin processes.
    #[arg(long, value_enum, default_value_t = SandboxChoice::BestEffort)]
    sandbox: SandboxChoice,

    /// Print only the final summary (and errors).
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,

    /// Show the host's and the plugins' log lines at INFO (`-vv`: DEBUG) on stderr.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Colors: `auto` uses them only when stdout is a terminal (and NO_COLOR is unset).
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
}

/// How to confine the plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SandboxChoice {
    /// Every layer, or the plugin does not start.
    Strict,
    /// Every layer this kernel offers.
    BestEffort,
    /// None (a warning says so).
    Off,
}

/// When to use colors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ColorChoice {
    /// On a terminal only.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(&args);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: could not start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(demo::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines go to stderr. By default: warnings, plus the plugins' own log lines at INFO
/// (they carry the request ids); the audit trail is shown by the demo itself.
fn init_logging(args: &Args) {
    let filter = match (args.quiet, args.verbose) {
        (true, _) => Targets::new().with_default(LevelFilter::ERROR),
        (false, 0) => Targets::new()
            .with_default(LevelFilter::WARN)
            .with_target("tether::plugin", LevelFilter::INFO)
            .with_target("tether::audit", LevelFilter::OFF),
        (false, 1) => Targets::new()
            .with_default(LevelFilter::INFO)
            .with_target("h2", LevelFilter::WARN)
            .with_target("tower", LevelFilter::WARN),
        (false, _) => Targets::new()
            .with_default(LevelFilter::DEBUG)
            .with_target("h2", LevelFilter::INFO)
            .with_target("hyper_util", LevelFilter::INFO)
            .with_target("tower", LevelFilter::INFO),
    };
    let ansi = out::use_color(args.color, &std::io::stderr());
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .without_time()
                .with_filter(filter),
        )
        .init();
}
