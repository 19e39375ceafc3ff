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
use crate::stats::{Latency, Paired, Series};

/// Measures tether against the Unix-socket floor and go-plugin; writes the report.
#[derive(Debug, Parser)]
#[command(name = "tether-bench", about, args_override_self = true)]
struct Args {
    /// Where to write benchmarks.md and benchmarks.json.
    #[arg(long, value_name = "DIR", default_value = "docs")]
    out: PathBuf,
    /// Repetitions of every figure (each reported as min, median and max; every latency
    /// measured right after its floor, floor and figure alternating).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    repeats: u32,
    /// Calls per latency figure and repetition (after a tenth as many to warm up).
    #[arg(long, default_value_t = 10_000)]
    calls: usize,
    /// Cold starts per cold-start figure and repetition (after one to warm up).
    #[arg(long, default_value_t = 3_000)]
    starts: usize,
    /// Bytes written and read through host services.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Plugins started at once: each count is a run of its own (the cost per plugin of the
    /// larger counts is compared with the smallest's).
    #[arg(long, value_delimiter = ',', default_values_t = [200, 2_000])]
    plugins: Vec<usize>,
    /// Plugins making host-service calls at once for the aggregate figure.
    #[arg(long, default_value_t = 8)]
    load_plugins: usize,
    /// How long the aggregate load runs, in milliseconds.
    #[arg(long, default_value_t = 3_000)]
    load_millis: u64,
    /// A go-plugin release to measure beside tether: `RELEASE=DIR`, DIR holding gobench,
    /// kvplugin and counterplugin built against it (`v1.8.0=target/go/v1_8_0`). Give it
    /// once per release, the newest first: ratios are taken to the first. Without it the
    /// go-plugin figures are skipped.
    #[arg(long = "go", value_name = "RELEASE=DIR", value_parser = go::parse_release)]
    go: Vec<(String, PathBuf)>,
    #[command(subcommand)]
    internal: Option<Internal>,
}

/// The benchmark's own helper processes.
#[derive(Debug, Subcommand)]
enum Internal {
    /// The floor's echo side.
    #[command(hide = true)]
    FloorEcho {
        socket: PathBuf,
        /// On a tokio current-thread runtime instead of blocking calls.
        #[arg(long)]
        tokio: bool,
    },
    /// The host side of the throughput run, in a process of its own.
    #[command(hide = true)]
    TransferHost { bytes: u64 },
    /// The bare tonic server the HTTP/2 wire is compared with.
    #[command(hide = true)]
    TonicEcho { socket: PathBuf },
    /// The lane's echo side, on the three descriptors it inherited.
    #[command(hide = true)]
    LaneEcho {
        memory: i32,
        data_bell: i32,
        room_bell: i32,
    },
    /// Only the unary calls, both directions, unsandboxed: the run to profile, for example
    /// under `perf record -a -g`. Valgrind cannot run it: the host starts plugins with a
    /// vfork-style clone (`CLONE_VM | CLONE_VFORK`), which valgrind does not support.
    Profile {
        /// Calls in each direction (after a tenth as many to warm up).
        #[arg(long, default_value_t = 2_000)]
        calls: usize,
        /// Which direction (both by default).
        #[arg(long, value_enum)]
        only: Option<Direction>,
        /// Over HTTP/2 instead of tether's frames.
        #[arg(long, conflicts_with = "lane")]
        http2: bool,
        /// Plugin -> host calls over a lane (shared memory) instead of the socket.
        #[arg(long)]
        lane: bool,
    },
    /// Only cold starts, one after another: the run to profile the start path with.
    Cold {
        #[arg(long, default_value_t = 500)]
        starts: usize,
        /// Without the sandbox.
        #[arg(long)]
        unsandboxed: bool,
    },
    /// Only the aggregate load: `plugins` plugins calling their host services, 16 calls
    /// at once each, for `millis`; prints the calls per second.
    Load {
        #[arg(long, default_value_t = 8)]
        plugins: usize,
        #[arg(long, default_value_t = 2_000)]
        millis: u64,
    },
    /// Only the many-plugins start: `count` plugins at once; prints the figures as JSON.
    Many {
        #[arg(long, default_value_t = 200)]
        count: usize,
        /// Where the plugins' socket directories go (the default socket base otherwise).
        #[arg(long)]
        socket_base: Option<PathBuf>,
    },
}

/// A direction of unary calls, for `profile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Direction {
    /// Host -> plugin: the health check and a 32-byte call.
    ToPlugin,
    /// Plugin -> host: `GetEnv` over the brokered connection.
    ToHost,
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
        Some(Internal::FloorEcho { socket, tokio }) => match tokio {
            false => floor::echo(socket),
            true => floor::echo_tokio(socket),
        },
        Some(Internal::TonicEcho { socket }) => floor::tonic_echo(socket),
        Some(Internal::LaneEcho {
            memory,
            data_bell,
            room_bell,
        }) => floor::lane_echo(*memory, *data_bell, *room_bell),
        Some(Internal::TransferHost { bytes }) => {
            runtime().and_then(|rt| rt.block_on(runs::transfer_host(*bytes)))
        }
        Some(Internal::Load { plugins, millis }) => runtime().and_then(|rt| {
            rt.block_on(async {
                let program = runs::plugin_program()?;
                let load = runs::load(&program, *plugins, *millis).await?;
                println!("{}", serde_json::to_string(&load)?);
                Ok(())
            })
        }),
        Some(Internal::Many { count, socket_base }) => runtime().and_then(|rt| {
            rt.block_on(async {
                raise_fd_limit();
                let variant = runs::ManyVariant {
                    label: "as asked".to_owned(),
                    program: runs::plugin_program()?,
                    socket_base: socket_base.clone(),
                };
                let many = runs::many(&variant, *count).await?;
                println!("{}", serde_json::to_string(&many)?);
                Ok(())
            })
        }),
        Some(Internal::Cold {
            starts,
            unsandboxed,
        }) => runtime().and_then(|rt| {
            rt.block_on(async {
                let sandbox = match unsandboxed {
                    true => Sandbox::off(),
                    false => Sandbox::best_effort(),
                };
                let nanos = runs::cold_start(&runs::plugin_program()?, *starts, &sandbox).await?;
                println!("cold start p50 {:.1} us", latency("cold", nanos)?.p50_us);
                Ok(())
            })
        }),
        Some(Internal::Profile {
            calls,
            only,
            http2,
            lane,
        }) => runtime().and_then(|rt| rt.block_on(profile(*calls, *only, *http2, *lane))),
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
            .block_on(runs::unary(
                &program,
                calls,
                Wire::Plain,
                Sandbox::best_effort(),
            ))
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

/// The unary calls alone, both directions, without a sandbox; prints their p50s.
async fn profile(calls: usize, only: Option<Direction>, http2: bool, lane: bool) -> Result<()> {
    let program = runs::plugin_program()?;
    let wire = match (http2, lane) {
        (true, _) => Wire::Http2,
        (false, true) => Wire::Lane,
        (false, false) => Wire::Plain,
    };
    let mut figures = Vec::new();
    if only != Some(Direction::ToHost) {
        let (health, ping) = runs::unary(&program, calls, wire, Sandbox::off()).await?;
        figures.push(("host -> plugin health", health));
        figures.push(("host -> plugin 32-byte call", ping));
    }
    if only != Some(Direction::ToPlugin) {
        let (host_before, plugin_before) =
            (cpu_time(libc::RUSAGE_SELF), cpu_time(libc::RUSAGE_CHILDREN));
        let nanos = runs::host_calls(&program, calls, wire, Sandbox::off()).await?;
        // The plugin has exited and been waited for: its CPU time is the children's.
        let per_call = |before: f64, now: f64| (now - before) * 1e6 / (calls + calls / 10) as f64;
        println!(
            "CPU per plugin -> host call (start and stop included): host {:.1} us, plugin {:.1} us",
            per_call(host_before, cpu_time(libc::RUSAGE_SELF)),
            per_call(plugin_before, cpu_time(libc::RUSAGE_CHILDREN)),
        );
        figures.push(("plugin -> host GetEnv", nanos));
    }
    for (what, nanos) in figures {
        println!("{what}: p50 {:.1} us", latency(what, nanos)?.p50_us);
    }
    println!("the floor, now: p50 {:.1} us", floor_now(calls)?.p50_us);
    if lane {
        let lane = latency("the lane", floor::measure_lane(calls)?)?;
        println!(
            "the lane alone (32-byte round trip), now: p50 {:.1} us",
            lane.p50_us
        );
    }
    Ok(())
}

/// User and system CPU seconds of this process (`RUSAGE_SELF`) or of its waited-for
/// children (`RUSAGE_CHILDREN`).
fn cpu_time(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn latency(what: &str, nanos: Vec<u64>) -> Result<Latency> {
    Latency::from_nanos(nanos).with_context(|| format!("no samples for {what}"))
}

fn step(text: &str) {
    println!("==> {text}");
}

/// The blocking floor, measured now.
fn floor_now(calls: usize) -> Result<Latency> {
    latency("the floor", floor::measure(calls, false)?)
}

async fn run(args: &Args) -> Result<()> {
    raise_fd_limit();
    let program = runs::plugin_program()?;
    let releases: Vec<(String, Go)> = match args.go.is_empty() {
        true => vec![(
            "go-plugin".to_owned(),
            Go::Skipped("skipped: no Go toolchain".to_owned()),
        )],
        false => args
            .go
            .iter()
            .map(|(release, dir)| (release.clone(), Go::new(Some(dir))))
            .collect(),
    };
    let machine = machine::Machine::describe();
    println!(
        "tether-bench on {} ({} cores), {}",
        machine.cpu, machine.cores, machine.kernel
    );
    let calls = args.calls;
    let repeats = args.repeats;

    let (mut floor, mut floor_pinned, mut floor_tokio, mut lane) = (
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
    );
    let (mut health, mut ping, mut health_multi_thread, mut host_call) = (
        Paired::default(),
        Paired::default(),
        Paired::default(),
        Paired::default(),
    );
    let mut wires: Vec<WireFigures> = Wire::OPT_IN
        .iter()
        .map(|wire| WireFigures {
            wire: wire.name().to_owned(),
            ping: Paired::default(),
            host_call: Paired::default(),
        })
        .collect();
    let mut bare_tonic = Paired::default();
    let mut go_figures: Vec<GoFigures> = releases
        .iter()
        .map(|(release, go)| GoFigures::new(release, go))
        .collect();
    for r in 1..=repeats {
        let of = format!("repetition {r}/{repeats}");
        step(&format!(
            "{of}: floors: 32-byte round trips over a Unix socket, blocking, both on CPU 0, \
             and on tokio; then over a lane ({calls} calls each)"
        ));
        floor.push(floor_now(calls)?);
        floor_pinned.push(latency("the pinned floor", floor::measure(calls, true)?)?);
        floor_tokio.push(latency("the tokio floor", floor::measure_tokio(calls)?)?);
        lane.push(latency("the lane", floor::measure_lane(calls)?)?);

        step(&format!(
            "{of}: floor, then host -> plugin health checks and 32-byte calls ({calls} each)"
        ));
        let now = floor_now(calls)?;
        let (h, p) = runs::unary(&program, calls, Wire::Plain, Sandbox::best_effort()).await?;
        health.floor.push(now);
        health.figure.push(latency("health", h)?);
        ping.floor.push(now);
        ping.figure.push(latency("ping", p)?);
        for ((release, go), figures) in releases.iter().zip(&mut go_figures) {
            if let (Go::Built(_), Some(series)) = (go, &mut figures.ping) {
                step(&format!(
                    "{of}: go-plugin {release} health checks ({calls} calls)"
                ));
                series.push(latency("go ping", go.run("ping", "kvplugin", calls)?)?);
            }
        }

        step(&format!(
            "{of}: floor, then host -> plugin from a multi-thread host runtime ({calls} calls)"
        ));
        health_multi_thread.floor.push(floor_now(calls)?);
        health_multi_thread.figure.push(latency(
            "health (multi-thread host)",
            unary_multi_thread(program.clone(), calls)?,
        )?);

        step(&format!(
            "{of}: floor, then plugin -> host GetEnv over the brokered connection ({calls} calls)"
        ));
        host_call.floor.push(floor_now(calls)?);
        host_call.figure.push(latency(
            "host calls",
            runs::host_calls(&program, calls, Wire::Plain, Sandbox::best_effort()).await?,
        )?);
        for ((release, go), figures) in releases.iter().zip(&mut go_figures) {
            if let (Go::Built(_), Some(series)) = (go, &mut figures.callback) {
                step(&format!(
                    "{of}: go-plugin {release} callbacks through its broker ({calls} calls)"
                ));
                series.push(latency(
                    "go callback",
                    go.run("callback", "counterplugin", calls)?,
                )?);
            }
        }

        for (wire, figures) in Wire::OPT_IN.iter().zip(&mut wires) {
            step(&format!(
                "{of}: {}: floor, 32-byte calls, floor, plugin -> host calls ({calls} each)",
                wire.name()
            ));
            figures.ping.floor.push(floor_now(calls)?);
            if *wire == Wire::Http2 {
                bare_tonic.floor.push(latency(
                    "bare tonic",
                    tokio::task::spawn_blocking(move || floor::measure_bare_tonic(calls)).await??,
                )?);
            }
            let (_, p) = runs::unary(&program, calls, *wire, Sandbox::best_effort()).await?;
            if *wire == Wire::Http2 {
                bare_tonic
                    .figure
                    .push(latency("ping over HTTP/2", p.clone())?);
            }
            figures.ping.figure.push(latency("ping", p)?);
            figures.host_call.floor.push(floor_now(calls)?);
            figures.host_call.figure.push(latency(
                "host calls",
                runs::host_calls(&program, calls, *wire, Sandbox::best_effort()).await?,
            )?);
        }
    }

    let starts = args.starts;
    let (mut spawn_floor, mut cold_sandboxed, mut cold_unsandboxed, mut warm) = (
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
    );
    let no_pie = runs::plugin_program_no_pie()?;
    let mut cold_no_pie = no_pie.as_ref().map(|_| Series::default());
    for r in 1..=repeats {
        let of = format!("repetition {r}/{repeats}");
        step(&format!(
            "{of}: spawn floor (/bin/true), then cold starts sandboxed and unsandboxed \
             ({starts} each)"
        ));
        spawn_floor.push(latency(
            "the spawn floor",
            tokio::task::spawn_blocking(move || runs::spawn_floor(starts)).await??,
        )?);
        cold_sandboxed.push(latency(
            "cold start",
            runs::cold_start(&program, starts, &Sandbox::best_effort()).await?,
        )?);
        cold_unsandboxed.push(latency(
            "cold start",
            runs::cold_start(&program, starts, &Sandbox::off()).await?,
        )?);
        if let (Some(no_pie), Some(series)) = (&no_pie, &mut cold_no_pie) {
            step(&format!(
                "{of}: cold starts of the plugin linked without PIE, sandboxed ({starts})"
            ));
            series.push(latency(
                "cold start",
                runs::cold_start(no_pie, starts, &Sandbox::best_effort()).await?,
            )?);
        }
        step(&format!(
            "{of}: warm starts: taking a plugin started ahead from a pool ({starts})"
        ));
        warm.push(latency(
            "warm start",
            runs::warm_start(&program, starts).await?,
        )?);
        for ((release, go), figures) in releases.iter().zip(&mut go_figures) {
            if let (Go::Built(_), Some(series)) = (go, &mut figures.cold_start) {
                step(&format!("{of}: go-plugin {release} cold starts ({starts})"));
                series.push(latency(
                    "go cold start",
                    go.run("coldstart", "kvplugin", starts)?,
                )?);
            }
        }
    }

    let (mut transfer, mut many, mut load) = (Vec::new(), Vec::new(), Vec::new());
    let variants = runs::many_variants(&program)?;
    for r in 1..=repeats {
        let of = format!("repetition {r}/{repeats}");
        step(&format!(
            "{of}: WriteFile and ReadFile of {} bytes, and the disk's floors",
            args.bytes
        ));
        transfer.push(runs::transfer(args.bytes)?);
        for variant in &variants {
            for count in &args.plugins {
                step(&format!("{of}: {count} plugins at once, {}", variant.label));
                many.push(runs::many(variant, *count).await?);
            }
        }
        step(&format!(
            "{of}: aggregate host-service calls: {} plugins for {} ms",
            args.load_plugins, args.load_millis
        ));
        load.push(runs::load(&program, args.load_plugins, args.load_millis).await?);
    }

    for figures in &go_figures {
        if figures.ping.is_none() {
            step(&format!(
                "go-plugin {}: {}",
                figures.release, figures.status
            ));
        }
    }

    let figures = Figures {
        machine,
        settings: Settings {
            repeats,
            calls: args.calls,
            starts: args.starts,
            bytes: args.bytes,
            plugins: args.plugins.clone(),
            load_plugins: args.load_plugins,
            load_millis: args.load_millis,
        },
        floor,
        floor_pinned,
        floor_tokio,
        lane,
        health,
        health_multi_thread,
        ping,
        host_call,
        wires,
        bare_tonic,
        spawn_floor,
        cold_start_sandboxed: cold_sandboxed,
        cold_start_unsandboxed: cold_unsandboxed,
        cold_start_no_pie: cold_no_pie,
        warm_start: warm,
        transfer,
        many,
        load,
        go: go_figures,
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
