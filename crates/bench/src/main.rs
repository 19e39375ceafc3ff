//! `tether-bench`: measures tether against the raw Unix-socket floor and go-plugin, side
//! by side in one run, and writes `docs/benchmarks.md` and `docs/benchmarks.json`.
//!
//! Run it through `cargo xtask bench`, which builds it in release mode and builds the Go
//! counterpart when Go is installed. What is measured, and against which floors, is in
//! `docs/benchmarks.md`; every latency is measured where it happens (the
//! plugin -> host calls inside the plugin) and reported as p50 and p99.
#![allow(
    clippy::disallowed_methods,
    reason = "the benchmark starts its own helper processes and the Go programs"
)]
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "figures for a report"
)]

mod contract;
mod floor;
mod go;
mod machine;
mod report;
mod runs;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tether_host::Sandbox;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::go::Go;
use crate::report::{Figures, GoFigures, Settings, WireFigures};
use crate::runs::Wire;
use crate::stats::Latency;

/// Measures tether against the Unix-socket floor and go-plugin; writes the report.
#[derive(Debug, Parser)]
#[command(name = "tether-bench", about, args_override_self = true)]
struct Args {
    /// Where to write benchmarks.md and benchmarks.json.
    #[arg(long, value_name = "DIR", default_value = "docs")]
    out: PathBuf,
    /// Calls per latency figure (after a tenth as many to warm up).
    #[arg(long, default_value_t = 10_000)]
    calls: usize,
    /// Cold starts per cold-start figure (after one to warm up).
    #[arg(long, default_value_t = 10_000)]
    starts: usize,
    /// Bytes written and read through host services.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Plugins started at once.
    #[arg(long, default_value_t = 200)]
    plugins: usize,
    /// Plugins making host-service calls at once for the aggregate figure.
    #[arg(long, default_value_t = 8)]
    load_plugins: usize,
    /// How long the aggregate load runs, in milliseconds.
    #[arg(long, default_value_t = 3_000)]
    load_millis: u64,
    /// The directory of the Go programs (gobench, kvplugin, counterplugin); without it the
    /// go-plugin figures are skipped.
    #[arg(long, value_name = "DIR")]
    go_bin: Option<PathBuf>,
    #[command(subcommand)]
    internal: Option<Internal>,
}

/// The benchmark's own helper processes.
#[derive(Debug, Subcommand)]
enum Internal {
    /// The floor's echo side.
    #[command(hide = true)]
    FloorEcho { socket: PathBuf },
    /// The host side of the throughput run, in a process of its own.
    #[command(hide = true)]
    TransferHost { bytes: u64 },
}

fn main() -> ExitCode {
    // Warnings, except the sandbox's "runs without a sandbox": the unsandboxed cold
    // starts are measured on purpose, 10,000 times.
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::WARN)
        .with_target("tether::sandbox", tracing::Level::ERROR);
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
    let args = Args::parse();
    let result = match &args.internal {
        Some(Internal::FloorEcho { socket }) => floor::echo(socket),
        Some(Internal::TransferHost { bytes }) => {
            runtime().and_then(|rt| rt.block_on(runs::transfer_host(*bytes)))
        }
        None => runtime().and_then(|rt| rt.block_on(run(&args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The host's runtime: current-thread, which measured fastest (the report also measures
/// host -> plugin calls from a multi-thread runtime, for comparison).
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Host -> plugin calls made from a multi-thread host runtime (tokio's default), on a
/// thread of their own.
fn unary_multi_thread(program: PathBuf, calls: usize) -> Result<Vec<u64>> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting a multi-thread runtime")?
            .block_on(runs::unary(&program, calls, Wire::Plain))
            .map(|(health, _)| health)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the multi-thread measurement panicked"))?
}

/// Lifts the soft limit on open files to the hard one: 200 plugins need a few fds each.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit read and write the struct they are given.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn latency(what: &str, nanos: Vec<u64>) -> Result<Latency> {
    Latency::from_nanos(nanos).with_context(|| format!("no samples for {what}"))
}

fn step(text: &str) {
    println!("==> {text}");
}

async fn run(args: &Args) -> Result<()> {
    raise_fd_limit();
    let program = runs::plugin_program()?;
    let go = Go::new(args.go_bin.as_deref());
    let machine = machine::Machine::describe();
    println!(
        "tether-bench on {} ({} cores), {}",
        machine.cpu, machine.cores, machine.kernel
    );

    step(&format!(
        "floor: 32-byte round trips over a Unix socket ({} calls)",
        args.calls
    ));
    let floor = latency("the floor", floor::measure(args.calls, false)?)?;
    step(&format!(
        "floor again, both processes on CPU 0 ({} calls)",
        args.calls
    ));
    let floor_pinned = latency("the pinned floor", floor::measure(args.calls, true)?)?;
    step(&format!(
        "host -> plugin: health checks and 32-byte calls ({} each)",
        args.calls
    ));
    let (health, ping) = runs::unary(&program, args.calls, Wire::Plain).await?;
    let (health, ping) = (latency("health", health)?, latency("ping", ping)?);
    step(&format!(
        "host -> plugin from a multi-thread host runtime ({} calls)",
        args.calls
    ));
    let health_multi_thread = latency(
        "health (multi-thread host)",
        unary_multi_thread(program.clone(), args.calls)?,
    )?;
    step(&format!(
        "plugin -> host: GetEnv over the brokered connection ({} calls)",
        args.calls
    ));
    let host_call = latency(
        "host calls",
        runs::host_calls(&program, args.calls, Wire::Plain).await?,
    )?;
    let mut wires = Vec::new();
    for wire in Wire::OPT_IN {
        step(&format!(
            "{}: 32-byte calls and plugin -> host calls ({} each)",
            wire.name(),
            args.calls
        ));
        let (_, ping) = runs::unary(&program, args.calls, wire).await?;
        let host_call = runs::host_calls(&program, args.calls, wire).await?;
        wires.push(WireFigures {
            wire: wire.name().to_owned(),
            ping: latency("ping", ping)?,
            host_call: latency("host calls", host_call)?,
        });
    }
    step(&format!("spawn floor: /bin/true ({} starts)", args.starts));
    let starts = args.starts;
    let spawn_floor = latency(
        "the spawn floor",
        tokio::task::spawn_blocking(move || runs::spawn_floor(starts)).await??,
    )?;
    step(&format!("cold start, sandboxed ({} starts)", args.starts));
    let cold_sandboxed = latency(
        "cold start",
        runs::cold_start(&program, args.starts, &Sandbox::best_effort()).await?,
    )?;
    step(&format!("cold start, unsandboxed ({} starts)", args.starts));
    let cold_unsandboxed = latency(
        "cold start",
        runs::cold_start(&program, args.starts, &Sandbox::off()).await?,
    )?;
    step(&format!("WriteFile and ReadFile of {} bytes", args.bytes));
    let transfer = runs::transfer(args.bytes)?;
    step(&format!("{} plugins at once", args.plugins));
    let many = runs::many(&program, args.plugins).await?;
    step(&format!(
        "aggregate host-service calls: {} plugins for {} ms",
        args.load_plugins, args.load_millis
    ));
    let load = runs::load(&program, args.load_plugins, args.load_millis).await?;

    let go = match &go {
        Go::Built(_) => {
            step(&format!("go-plugin: cold start ({} starts)", args.starts));
            let cold_start = latency(
                "go cold start",
                go.run("coldstart", "kvplugin", args.starts)?,
            )?;
            step(&format!("go-plugin: health checks ({} calls)", args.calls));
            let ping = latency("go ping", go.run("ping", "kvplugin", args.calls)?)?;
            step(&format!(
                "go-plugin: callbacks through its broker ({} calls)",
                args.calls
            ));
            let callback = latency(
                "go callback",
                go.run("callback", "counterplugin", args.calls)?,
            )?;
            GoFigures {
                status: "measured".to_owned(),
                cold_start: Some(cold_start),
                ping: Some(ping),
                callback: Some(callback),
            }
        }
        Go::Skipped(why) => {
            step(&format!("go-plugin: {why}"));
            GoFigures {
                status: why.clone(),
                cold_start: None,
                ping: None,
                callback: None,
            }
        }
    };

    let figures = Figures {
        machine,
        settings: Settings {
            calls: args.calls,
            starts: args.starts,
            bytes: args.bytes,
            plugins: args.plugins,
            load_plugins: args.load_plugins,
            load_millis: args.load_millis,
        },
        floor,
        floor_pinned,
        health,
        health_multi_thread,
        ping,
        host_call,
        wires,
        spawn_floor,
        cold_start_sandboxed: cold_sandboxed,
        cold_start_unsandboxed: cold_unsandboxed,
        transfer,
        many,
        load,
        go,
    };
    report::write(&args.out, &figures)?;
    println!();
    for row in report::rows(&figures) {
        println!(
            "{:<70} {:>24}  {:<28} {}",
            row.figure, row.tether, row.ratio, row.met
        );
    }
    println!(
        "\nwrote {} and {}",
        args.out.join("benchmarks.md").display(),
        args.out.join("benchmarks.json").display()
    );
    Ok(())
}
