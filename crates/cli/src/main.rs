//! `tether`: the operator's command line. Works on a host's files (policy files, audit
//! trails) without writing Rust: `tether policy check`, `tether policy explain`,
//! `tether audit query`, `tether audit summary`, `tether inspect`. `tether --help` lists the commands and
//! `docs/cli.md` describes them.

mod audit;
mod inspect;
mod kinds;
mod out;
mod policy;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::out::Out;

const EXIT_CODES: &str = "\
Exit codes:
  0  all is well: the policy is valid, the request is allowed, every audit line was read
  1  the command found a problem: the policy is invalid, the request is denied (or no
     grant covers it), an audit line could not be read (it is reported and skipped),
     the plugin's manifest does not validate
  2  the command could not do its work: bad arguments, a file that cannot be read, a
     policy that does not load (for `explain`), a request that is not well formed, a
     plugin that cannot start";

/// tether's operator tool: check and explain policy files, query audit trails, inspect a
/// plugin.
#[derive(Debug, Parser)]
#[command(name = "tether", version, about, long_about, after_long_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Show the tool's own log lines on stderr (`-vv`: more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Colors: `auto` uses them only when stdout is a terminal (and NO_COLOR is unset).
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
}

/// When to use colors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ColorChoice {
    /// On a terminal only, and not with NO_COLOR.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Policy files: check one, or explain what it decides about a request.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Audit trails: query the records, or summarise them per plugin.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Start a plugin sandboxed, show its handshake, manifest, sandbox layers and gRPC
    /// services, and stop it gracefully.
    #[command(after_long_help = EXIT_CODES)]
    Inspect(inspect::InspectArgs),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Check a policy file: every error with its line and column, or one line per plugin.
    #[command(after_long_help = EXIT_CODES)]
    Check {
        /// The policy file (TOML).
        file: PathBuf,
        #[command(flatten)]
        kinds: KindArgs,
    },
    /// Explain whether a plugin may do something, and which grant or denial decides it,
    /// without spending a use of any grant.
    #[command(after_long_help = EXIT_CODES)]
    Explain {
        /// The policy file (TOML).
        file: PathBuf,
        /// The plugin's name, as in `[plugins.NAME]`.
        plugin: String,
        /// The request, written like a capability without wildcards: `read:docs/a.txt`,
        /// `env:API_KEY`, `bus:publish:reports`.
        capability: String,
        #[command(flatten)]
        kinds: KindArgs,
    },
}

/// The host's own capability kinds.
#[derive(Debug, Args)]
pub(crate) struct KindArgs {
    /// Declare one of the host's own capability kinds, as `NAME:ACTIONS:RESOURCE`: ACTIONS
    /// comma-separated (may be empty), RESOURCE one of `none`, `path`, `name`. For
    /// example `--kind bus:publish,subscribe:path --kind counter:incr:none`. The built-in
    /// kinds (read, write, delete, env) need no declaring. Repeat for each kind.
    #[arg(long = "kind", value_name = "SPEC")]
    pub(crate) kinds: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Print the records that match, oldest first, as a table or as JSON lines. Each
    /// FILE is read after its rotated generations (FILE.N .. FILE.1).
    #[command(after_long_help = EXIT_CODES)]
    Query(audit::QueryArgs),
    /// Per plugin: calls, allowed, denied, and the resources most asked for.
    #[command(after_long_help = EXIT_CODES)]
    Summary(audit::SummaryArgs),
}

/// How a command ended, when it could do its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// All is well.
    Clean,
    /// It found problems (exit code 1).
    Problems,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.color);
    let out = Out::new(out::use_color(cli.color, &std::io::stdout()));
    let result = match cli.command {
        Command::Policy(PolicyCommand::Check { file, kinds }) => policy::check(&out, &file, &kinds),
        Command::Policy(PolicyCommand::Explain {
            file,
            plugin,
            capability,
            kinds,
        }) => policy::explain(&out, &file, &plugin, &capability, &kinds),
        Command::Audit(AuditCommand::Query(args)) => audit::query(&out, &args),
        Command::Audit(AuditCommand::Summary(args)) => audit::summary(&out, &args),
        Command::Inspect(args) => inspect::inspect(&out, &args),
    };
    match result {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::Problems) => ExitCode::from(1),
        Err(err) => {
            eprintln!("{} {err:#}", out::error_label(cli.color));
            ExitCode::from(2)
        }
    }
}

/// The tool's own log lines go to stderr: errors only by default (it reports what it finds
/// itself), `-v` warnings and information, `-vv` debugging.
fn init_logging(verbose: u8, color: ColorChoice) {
    let level = match verbose {
        0 => LevelFilter::ERROR,
        1 => LevelFilter::INFO,
        _ => LevelFilter::DEBUG,
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(out::use_color(color, &std::io::stderr()))
                .without_time()
                .with_filter(Targets::new().with_default(level)),
        )
        .init();
}
