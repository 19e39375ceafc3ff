//! The report: `docs/benchmarks.md` (a table of figures against targets) and
//! `docs/benchmarks.json` (the same figures). The markdown keeps everything from its
//! `## Analysis` heading on, which is written by hand from the measurements.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::machine::Machine;
use crate::runs::{Load, Many, Transfer};
use crate::stats::Latency;

/// What this run was asked to do.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Settings {
    pub(crate) calls: usize,
    pub(crate) starts: usize,
    pub(crate) bytes: u64,
    pub(crate) plugins: usize,
    pub(crate) load_plugins: usize,
    pub(crate) load_millis: u64,
}

/// go-plugin's figures, or why there are none.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GoFigures {
    pub(crate) status: String,
    pub(crate) cold_start: Option<Latency>,
    pub(crate) ping: Option<Latency>,
    pub(crate) callback: Option<Latency>,
}

/// Calls over one of go-plugin's opt-in wires (AutoMTLS, multiplexing).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WireFigures {
    pub(crate) wire: String,
    pub(crate) ping: Latency,
    pub(crate) host_call: Latency,
}

/// Every figure of one run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figures {
    pub(crate) machine: Machine,
    pub(crate) settings: Settings,
    pub(crate) floor: Latency,
    /// The floor with both processes on one CPU.
    pub(crate) floor_pinned: Latency,
    pub(crate) health: Latency,
    /// The same health checks from a multi-thread host runtime.
    pub(crate) health_multi_thread: Latency,
    pub(crate) ping: Latency,
    pub(crate) host_call: Latency,
    /// The same calls over go-plugin's opt-in wires.
    pub(crate) wires: Vec<WireFigures>,
    /// Starting `/bin/true` and waiting for it: the floor of any cold start.
    pub(crate) spawn_floor: Latency,
    pub(crate) cold_start_sandboxed: Latency,
    pub(crate) cold_start_unsandboxed: Latency,
    pub(crate) transfer: Transfer,
    pub(crate) many: Many,
    pub(crate) load: Load,
    pub(crate) go: GoFigures,
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) figure: String,
    pub(crate) tether: String,
    pub(crate) floor: String,
    pub(crate) go_plugin: String,
    pub(crate) ratio: String,
    pub(crate) target: String,
    /// `yes`, `no`, or why it could not be judged.
    pub(crate) met: String,
}

fn us(latency: &Latency, p99: bool) -> String {
    let value = if p99 { latency.p99_us } else { latency.p50_us };
    if value >= 1000.0 {
        format!("{:.2} ms", value / 1000.0)
    } else {
        format!("{value:.1} us")
    }
}

fn met(ok: bool) -> String {
    if ok { "yes" } else { "no" }.to_owned()
}

fn row(figure: &str, tether: String, target: &str) -> Row {
    Row {
        figure: figure.to_owned(),
        tether,
        floor: String::new(),
        go_plugin: String::new(),
        ratio: String::new(),
        target: target.to_owned(),
        met: String::new(),
    }
}

/// The table: every figure with a target (each target is written in its row below and
/// shown in docs/benchmarks.md's `target` column), then the figures without a target.
pub(crate) fn rows(f: &Figures) -> Vec<Row> {
    let mut rows = Vec::new();
    let floor = f.floor.p50_us;
    let skipped = || f.go.status.clone();

    // Host -> plugin.
    rows.push(Row {
        floor: us(&f.floor, false),
        ratio: format!("{:.1}x floor", f.health.p50_us / floor),
        met: met(f.health.p50_us <= 5.0 * floor),
        ..row(
            "host -> plugin unary call (health) p50",
            us(&f.health, false),
            "<= 5x floor",
        )
    });
    rows.push(match &f.go.ping {
        Some(go) => Row {
            go_plugin: us(go, false),
            ratio: format!("{:.2}x go-plugin", f.health.p50_us / go.p50_us),
            met: met(f.health.p50_us <= go.p50_us / 4.0),
            ..row(
                "host -> plugin unary call (health) p50",
                us(&f.health, false),
                "<= 1/4 of go-plugin",
            )
        },
        None => Row {
            go_plugin: skipped(),
            met: skipped(),
            ..row(
                "host -> plugin unary call (health) p50",
                us(&f.health, false),
                "<= 1/4 of go-plugin",
            )
        },
    });
    // Plugin -> host.
    rows.push(Row {
        floor: us(&f.floor, false),
        ratio: format!("{:.1}x floor", f.host_call.p50_us / floor),
        met: met(f.host_call.p50_us <= 6.0 * floor),
        ..row(
            "plugin -> host service call (GetEnv, reused connection) p50",
            us(&f.host_call, false),
            "<= 6x floor",
        )
    });
    rows.push(match &f.go.callback {
        Some(go) => Row {
            go_plugin: us(go, false),
            ratio: format!("{:.0}x faster", go.p50_us / f.host_call.p50_us),
            met: met(go.p50_us >= 50.0 * f.host_call.p50_us),
            ..row(
                "plugin -> host call vs go-plugin's per-call broker callback, p50",
                us(&f.host_call, false),
                ">= 50x faster than go-plugin",
            )
        },
        None => Row {
            go_plugin: skipped(),
            met: skipped(),
            ..row(
                "plugin -> host call vs go-plugin's per-call broker callback, p50",
                us(&f.host_call, false),
                ">= 50x faster than go-plugin",
            )
        },
    });
    // Cold start.
    let spawn = format!("{} (spawn /bin/true)", us(&f.spawn_floor, false));
    rows.push(match &f.go.cold_start {
        Some(go) => Row {
            floor: spawn.clone(),
            go_plugin: us(go, false),
            ratio: format!(
                "{:.2}x go-plugin",
                f.cold_start_sandboxed.p50_us / go.p50_us
            ),
            met: met(f.cold_start_sandboxed.p50_us <= go.p50_us / 4.0),
            ..row(
                "cold start (spawn to first call, sandboxed) p50",
                us(&f.cold_start_sandboxed, false),
                "<= 1/4 of go-plugin",
            )
        },
        None => Row {
            floor: spawn,
            go_plugin: skipped(),
            met: skipped(),
            ..row(
                "cold start (spawn to first call, sandboxed) p50",
                us(&f.cold_start_sandboxed, false),
                "<= 1/4 of go-plugin",
            )
        },
    });
    let overhead = f.cold_start_sandboxed.p50_us / f.cold_start_unsandboxed.p50_us;
    rows.push(Row {
        ratio: format!(
            "{overhead:.2}x unsandboxed ({})",
            us(&f.cold_start_unsandboxed, false)
        ),
        met: met(overhead <= 1.2),
        ..row(
            "sandboxing overhead on cold start p50",
            us(&f.cold_start_sandboxed, false),
            "<= 1.2x unsandboxed",
        )
    });
    // Throughput and memory.
    let gb = f.transfer.bytes as f64 / 1e9;
    let gib = f.transfer.bytes as f64 / (1u64 << 30) as f64;
    let t = &f.transfer;
    let rate = |seconds: f64| format!("{:.2} GB/s", gb / seconds);
    rows.push(Row {
        floor: format!("{} (std::fs + fsync)", rate(t.disk_write_sync_seconds)),
        ratio: format!("{:.2}x floor", t.disk_write_sync_seconds / t.write_seconds),
        met: met(gb / t.write_seconds >= 1.0),
        ..row(
            &format!("WriteFile of {gib:.2} GiB through host services (durable: fsync, rename)"),
            rate(t.write_seconds),
            ">= 1 GB/s",
        )
    });
    rows.push(Row {
        floor: format!("{} (std::fs)", rate(t.disk_write_seconds)),
        ratio: format!(
            "{:.2}x floor",
            t.disk_write_seconds / t.write_unsynced_seconds
        ),
        met: met(gb / t.write_unsynced_seconds >= 1.0),
        ..row(
            &format!("WriteFile of {gib:.2} GiB with durable_writes off"),
            rate(t.write_unsynced_seconds),
            ">= 1 GB/s",
        )
    });
    rows.push(Row {
        met: met(gb / t.read_seconds >= 1.0),
        ..row(
            &format!("ReadFile of {gib:.2} GiB through host services"),
            rate(t.read_seconds),
            ">= 1 GB/s",
        )
    });
    let peak = f
        .transfer
        .host_peak_rss_kib
        .max(f.transfer.plugin_peak_rss_kib);
    rows.push(Row {
        met: met(peak <= 64 * 1024),
        ..row(
            "peak memory during the transfer (host, plugin)",
            format!(
                "{:.1} MiB, {:.1} MiB",
                f.transfer.host_peak_rss_kib as f64 / 1024.0,
                f.transfer.plugin_peak_rss_kib as f64 / 1024.0
            ),
            "flat: <= 64 MiB each, for any file size",
        )
    });
    // Many plugins.
    rows.push(Row {
        met: met(f.many.healthy == f.many.plugins),
        ..row(
            &format!(
                "{} plugins started at once, answering health",
                f.many.plugins
            ),
            format!(
                "{}/{} in {:.2} s",
                f.many.healthy, f.many.plugins, f.many.start_seconds
            ),
            "all answer",
        )
    });
    rows.push(Row {
        ratio: format!(
            "VmRSS {:.1} MiB mean, {:.1} MiB max",
            f.many.rss_per_plugin_kib_mean as f64 / 1024.0,
            f.many.rss_per_plugin_kib_max as f64 / 1024.0
        ),
        met: met(f.many.pss_per_plugin_kib_mean <= 5 * 1024),
        ..row(
            "resident memory per idle plugin (PSS mean: shared code counted once)",
            format!("{:.1} MiB", f.many.pss_per_plugin_kib_mean as f64 / 1024.0),
            "<= 5 MiB",
        )
    });
    rows.push(Row {
        met: met(f.load.calls_per_second >= 50_000.0 && f.load.errors == 0),
        ..row(
            &format!(
                "aggregate host-service calls across {} plugins",
                f.load.plugins
            ),
            format!(
                "{:.0} calls/s ({} errors)",
                f.load.calls_per_second, f.load.errors
            ),
            ">= 50,000 calls/s",
        )
    });
    // Figures without a target.
    rows.push(Row {
        ratio: format!("{:.2}x the free floor", f.floor_pinned.p50_us / floor),
        ..row(
            "floor with both processes on one CPU (no cross-core wake-up) p50",
            us(&f.floor_pinned, false),
            "",
        )
    });
    rows.push(Row {
        floor: us(&f.floor, true),
        go_plugin: f.go.ping.as_ref().map_or_else(skipped, |go| us(go, true)),
        ..row(
            "host -> plugin unary call (health) p99",
            us(&f.health, true),
            "",
        )
    });
    rows.push(Row {
        floor: us(&f.floor, false),
        ratio: format!("{:.1}x floor", f.health_multi_thread.p50_us / floor),
        ..row(
            "host -> plugin unary call (health) p50, multi-thread host runtime",
            us(&f.health_multi_thread, false),
            "",
        )
    });
    rows.push(Row {
        floor: us(&f.floor, false),
        ratio: format!("{:.1}x floor", f.ping.p50_us / floor),
        ..row(
            "host -> plugin 32-byte unary call p50",
            us(&f.ping, false),
            "",
        )
    });
    for wire in &f.wires {
        rows.push(Row {
            floor: us(&f.floor, false),
            ratio: format!(
                "{:.1}x floor, {:.2}x plain",
                wire.ping.p50_us / floor,
                wire.ping.p50_us / f.ping.p50_us
            ),
            ..row(
                &format!("host -> plugin 32-byte unary call p50, {}", wire.wire),
                us(&wire.ping, false),
                "",
            )
        });
        rows.push(Row {
            floor: us(&f.floor, false),
            ratio: format!(
                "{:.1}x floor, {:.2}x plain",
                wire.host_call.p50_us / floor,
                wire.host_call.p50_us / f.host_call.p50_us
            ),
            ..row(
                &format!("plugin -> host service call p50, {}", wire.wire),
                us(&wire.host_call, false),
                "",
            )
        });
    }
    rows.push(Row {
        floor: us(&f.floor, true),
        go_plugin: f
            .go
            .callback
            .as_ref()
            .map_or_else(skipped, |go| us(go, true)),
        ..row(
            "plugin -> host service call p99",
            us(&f.host_call, true),
            "",
        )
    });
    rows.push(Row {
        go_plugin: f
            .go
            .cold_start
            .as_ref()
            .map_or_else(skipped, |go| us(go, true)),
        ..row(
            "cold start (sandboxed) p99",
            us(&f.cold_start_sandboxed, true),
            "",
        )
    });
    rows.push(row(
        "audit records dropped under the aggregate load",
        f.load.audit_records_dropped.to_string(),
        "",
    ));
    rows
}

fn markdown(f: &Figures, rows: &[Row], analysis: &str) -> String {
    let m = &f.machine;
    let s = &f.settings;
    let mut out = String::new();
    out.push_str("# Benchmarks\n\n");
    out.push_str(
        "Written by `cargo xtask bench` (release build); the figures above the analysis are\n",
    );
    out.push_str(
        "regenerated on every run, side by side in one run, and also in `benchmarks.json`.\n\n",
    );
    out.push_str(&format!(
        "Machine: {}, {} cores, {} GiB; Linux {}; {}; {}; go-plugin {}. Run {}.\n\n",
        m.cpu, m.cores, m.memory_gib, m.kernel, m.rustc, m.go, m.go_plugin, m.date
    ));
    out.push_str(&format!(
        "Latencies are p50/p99 over {} calls after {} warm-up calls; cold starts over {} starts \
         after one warm-up start; the transfer moves {} bytes; {} plugins for the many-plugins \
         row; {} plugins x 16 concurrent calls for {} ms for the aggregate. Plugins run under \
         the default sandbox (`BestEffort`) and the SDK's default current-thread runtime; the \
         host runs a current-thread tokio runtime unless a row says otherwise. The floor is a \
         32-byte request/response between two processes over a Unix socket.\n\n",
        s.calls,
        s.calls / 10,
        s.starts,
        s.bytes,
        s.plugins,
        s.load_plugins,
        s.load_millis
    ));
    out.push_str("| figure | tether | floor | go-plugin | ratio | target | met |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.figure, r.tether, r.floor, r.go_plugin, r.ratio, r.target, r.met
        ));
    }
    out.push('\n');
    out.push_str(analysis);
    out
}

/// Writes both files into `dir`, keeping the hand-written analysis of an earlier report.
pub(crate) fn write(dir: &Path, figures: &Figures) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let rows = rows(figures);
    let md_path = dir.join("benchmarks.md");
    let previous = std::fs::read_to_string(&md_path).unwrap_or_default();
    let analysis = previous
        .find("## Analysis")
        .map_or("## Analysis\n\n(Not written yet for this run.)\n", |at| {
            &previous[at..]
        })
        .to_owned();
    std::fs::write(&md_path, markdown(figures, &rows, &analysis))
        .with_context(|| format!("writing {}", md_path.display()))?;
    let json_path = dir.join("benchmarks.json");
    let json = serde_json::json!({ "figures": figures, "rows": rows });
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    Ok(())
}
