//! The report: `docs/benchmarks.md` (a table of figures against targets) and
//! `docs/benchmarks.json` (the same figures). The markdown keeps everything from its
//! `## Analysis` heading on, which is written by hand from the measurements.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::machine::Machine;
use crate::runs::{Load, Many, Transfer};
use crate::stats::{Paired, Series, Spread};

/// What this run was asked to do.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Settings {
    pub(crate) repeats: u32,
    pub(crate) calls: usize,
    pub(crate) starts: usize,
    pub(crate) bytes: u64,
    pub(crate) plugins: usize,
    pub(crate) load_plugins: usize,
    pub(crate) load_millis: u64,
}

/// go-plugin's figures (one per repetition, each measured beside tether's), or why there
/// are none.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GoFigures {
    pub(crate) status: String,
    pub(crate) cold_start: Option<Series>,
    pub(crate) ping: Option<Series>,
    pub(crate) callback: Option<Series>,
}

/// Calls over one of go-plugin's opt-in wires (AutoMTLS, multiplexing).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WireFigures {
    pub(crate) wire: String,
    pub(crate) ping: Paired,
    pub(crate) host_call: Paired,
}

/// Every figure of one run, each repetition kept.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figures {
    pub(crate) machine: Machine,
    pub(crate) settings: Settings,
    /// The blocking floor, measured beside the two below in each repetition.
    pub(crate) floor: Series,
    /// The floor with both processes on one CPU.
    pub(crate) floor_pinned: Series,
    /// The floor with tokio's current-thread runtime on both sides.
    pub(crate) floor_tokio: Series,
    pub(crate) health: Paired,
    /// The same health checks from a multi-thread host runtime.
    pub(crate) health_multi_thread: Paired,
    pub(crate) ping: Paired,
    pub(crate) host_call: Paired,
    /// The same calls over go-plugin's opt-in wires.
    pub(crate) wires: Vec<WireFigures>,
    /// Starting `/bin/true` and waiting for it: the floor of any cold start.
    pub(crate) spawn_floor: Series,
    pub(crate) cold_start_sandboxed: Series,
    pub(crate) cold_start_unsandboxed: Series,
    pub(crate) transfer: Vec<Transfer>,
    pub(crate) many: Vec<Many>,
    pub(crate) load: Vec<Load>,
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

/// A latency in microseconds, as read: `85.8 us`, `1.23 ms`.
fn us_value(value: f64) -> String {
    if value >= 1000.0 {
        format!("{:.2} ms", value / 1000.0)
    } else {
        format!("{value:.1} us")
    }
}

/// The median, then `(min-max)` over the repetitions when they differ.
fn spread_with(spread: Spread, show: impl Fn(f64) -> String) -> String {
    let median = show(spread.median);
    let (min, max) = (show(spread.min), show(spread.max));
    if min == max {
        median
    } else {
        format!("{median} ({min} - {max})")
    }
}

fn us(spread: Spread) -> String {
    spread_with(spread, us_value)
}

/// A ratio with `digits` decimals and what it is of: `1.0x floor (0.9x - 1.1x)`.
fn times(spread: Spread, digits: usize, of: &str) -> String {
    let show = |v: f64| format!("{v:.digits$}x");
    let median = show(spread.median);
    let (min, max) = (show(spread.min), show(spread.max));
    if min == max {
        format!("{median} {of}")
    } else {
        format!("{median} {of} ({min} - {max})")
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

/// The spread of `value` over the repetitions of `runs`.
fn over<T>(runs: &[T], value: impl Fn(&T) -> f64) -> Spread {
    Spread::of(runs.iter().map(value).collect())
}

/// The table: every figure with a target (each target is written in its row below and
/// shown in docs/benchmarks.md's `target` column), then the figures without a target. A
/// target is judged on the median over the repetitions; ratios are taken repetition by
/// repetition, between figures measured side by side.
pub(crate) fn rows(f: &Figures) -> Vec<Row> {
    let mut rows = Vec::new();
    let skipped = || f.go.status.clone();

    // Host -> plugin.
    let ratio = f.health.ratio();
    rows.push(Row {
        floor: us(f.health.floor.p50()),
        ratio: times(ratio, 1, "floor"),
        met: met(ratio.median <= 5.0),
        ..row(
            "host -> plugin unary call (health) p50",
            us(f.health.figure.p50()),
            "<= 5x floor",
        )
    });
    let health_vs_go = |target: &str| match &f.go.ping {
        Some(go) => {
            let ratio = f.health.figure.ratio_to(go);
            Row {
                go_plugin: us(go.p50()),
                ratio: times(ratio, 2, "go-plugin"),
                met: met(ratio.median <= 0.25),
                ..row(
                    "host -> plugin unary call (health) p50",
                    us(f.health.figure.p50()),
                    target,
                )
            }
        }
        None => Row {
            go_plugin: skipped(),
            met: skipped(),
            ..row(
                "host -> plugin unary call (health) p50",
                us(f.health.figure.p50()),
                target,
            )
        },
    };
    rows.push(health_vs_go("<= 1/4 of go-plugin"));
    // Plugin -> host.
    let ratio = f.host_call.ratio();
    rows.push(Row {
        floor: us(f.host_call.floor.p50()),
        ratio: times(ratio, 1, "floor"),
        met: met(ratio.median <= 6.0),
        ..row(
            "plugin -> host service call (GetEnv, reused connection) p50",
            us(f.host_call.figure.p50()),
            "<= 6x floor",
        )
    });
    let callback_figure = "plugin -> host call vs go-plugin's per-call broker callback, p50";
    rows.push(match &f.go.callback {
        Some(go) => {
            let faster = go.ratio_to(&f.host_call.figure);
            Row {
                go_plugin: us(go.p50()),
                ratio: times(faster, 0, "faster"),
                met: met(faster.median >= 50.0),
                ..row(
                    callback_figure,
                    us(f.host_call.figure.p50()),
                    ">= 50x faster than go-plugin",
                )
            }
        }
        None => Row {
            go_plugin: skipped(),
            met: skipped(),
            ..row(
                callback_figure,
                us(f.host_call.figure.p50()),
                ">= 50x faster than go-plugin",
            )
        },
    });
    // Cold start.
    let spawn = format!("{} (spawn /bin/true)", us(f.spawn_floor.p50()));
    let cold_figure = "cold start (spawn to first call, sandboxed) p50";
    rows.push(match &f.go.cold_start {
        Some(go) => {
            let ratio = f.cold_start_sandboxed.ratio_to(go);
            Row {
                floor: spawn.clone(),
                go_plugin: us(go.p50()),
                ratio: times(ratio, 2, "go-plugin"),
                met: met(ratio.median <= 0.25),
                ..row(
                    cold_figure,
                    us(f.cold_start_sandboxed.p50()),
                    "<= 1/4 of go-plugin",
                )
            }
        }
        None => Row {
            floor: spawn,
            go_plugin: skipped(),
            met: skipped(),
            ..row(
                cold_figure,
                us(f.cold_start_sandboxed.p50()),
                "<= 1/4 of go-plugin",
            )
        },
    });
    let overhead = f.cold_start_sandboxed.ratio_to(&f.cold_start_unsandboxed);
    rows.push(Row {
        ratio: format!(
            "{}, unsandboxed {}",
            times(overhead, 2, "unsandboxed"),
            us(f.cold_start_unsandboxed.p50())
        ),
        met: met(overhead.median <= 1.2),
        ..row(
            "sandboxing overhead on cold start p50",
            us(f.cold_start_sandboxed.p50()),
            "<= 1.2x unsandboxed",
        )
    });
    // Throughput and memory.
    let t = &f.transfer;
    let bytes = t.first().map_or(0, |t| t.bytes);
    let gb = bytes as f64 / 1e9;
    let gib = bytes as f64 / (1u64 << 30) as f64;
    let rate = |spread: Spread| spread_with(spread, |v| format!("{v:.2} GB/s"));
    let write = over(t, |t| gb / t.write_seconds);
    rows.push(Row {
        floor: format!(
            "{} (std::fs + fsync)",
            rate(over(t, |t| gb / t.disk_write_sync_seconds))
        ),
        ratio: times(
            over(t, |t| t.disk_write_sync_seconds / t.write_seconds),
            2,
            "floor",
        ),
        met: met(write.median >= 1.0),
        ..row(
            &format!("WriteFile of {gib:.2} GiB through host services (durable: fsync, rename)"),
            rate(write),
            ">= 1 GB/s",
        )
    });
    let unsynced = over(t, |t| gb / t.write_unsynced_seconds);
    rows.push(Row {
        floor: format!("{} (std::fs)", rate(over(t, |t| gb / t.disk_write_seconds))),
        ratio: times(
            over(t, |t| t.disk_write_seconds / t.write_unsynced_seconds),
            2,
            "floor",
        ),
        met: met(unsynced.median >= 1.0),
        ..row(
            &format!("WriteFile of {gib:.2} GiB with durable_writes off"),
            rate(unsynced),
            ">= 1 GB/s",
        )
    });
    let read = over(t, |t| gb / t.read_seconds);
    rows.push(Row {
        met: met(read.median >= 1.0),
        ..row(
            &format!("ReadFile of {gib:.2} GiB through host services"),
            rate(read),
            ">= 1 GB/s",
        )
    });
    let mib = |kib: u64| kib as f64 / 1024.0;
    let host_peak = t.iter().map(|t| t.host_peak_rss_kib).max().unwrap_or(0);
    let plugin_peak = t.iter().map(|t| t.plugin_peak_rss_kib).max().unwrap_or(0);
    rows.push(Row {
        met: met(host_peak.max(plugin_peak) <= 64 * 1024),
        ..row(
            "peak memory during the transfer (host, plugin; the largest of the repetitions)",
            format!("{:.1} MiB, {:.1} MiB", mib(host_peak), mib(plugin_peak)),
            "flat: <= 64 MiB each, for any file size",
        )
    });
    // Many plugins.
    let m = &f.many;
    let plugins = m.first().map_or(0, |m| m.plugins);
    let healthy = m.iter().map(|m| m.healthy).min().unwrap_or(0);
    rows.push(Row {
        met: met(!m.is_empty() && m.iter().all(|m| m.healthy == m.plugins)),
        ..row(
            &format!("{plugins} plugins started at once, answering health"),
            format!(
                "{healthy}/{plugins} in {}",
                spread_with(over(m, |m| m.start_seconds), |v| format!("{v:.2} s"))
            ),
            "all answer",
        )
    });
    let pss = over(m, |m| mib(m.pss_per_plugin_kib_mean));
    rows.push(Row {
        ratio: format!(
            "VmRSS {} mean, {:.1} MiB max",
            spread_with(over(m, |m| mib(m.rss_per_plugin_kib_mean)), |v| format!(
                "{v:.1} MiB"
            )),
            mib(m
                .iter()
                .map(|m| m.rss_per_plugin_kib_max)
                .max()
                .unwrap_or(0))
        ),
        met: met(pss.max <= 5.0),
        ..row(
            "resident memory per idle plugin (PSS mean: shared code counted once)",
            spread_with(pss, |v| format!("{v:.1} MiB")),
            "<= 5 MiB",
        )
    });
    let l = &f.load;
    let rate = over(l, |l| l.calls_per_second);
    let errors: u64 = l.iter().map(|l| l.errors).sum();
    rows.push(Row {
        met: met(rate.median >= 50_000.0 && errors == 0),
        ..row(
            &format!(
                "aggregate host-service calls across {} plugins",
                l.first().map_or(0, |l| l.plugins)
            ),
            format!(
                "{} calls/s ({errors} errors)",
                spread_with(rate, |v| format!("{v:.0}"))
            ),
            ">= 50,000 calls/s",
        )
    });
    // Figures without a target.
    rows.push(Row {
        floor: us(f.floor.p50()),
        ratio: times(f.floor_tokio.ratio_to(&f.floor), 2, "the blocking floor"),
        ..row(
            "floor with tokio's current-thread runtime on both sides p50",
            us(f.floor_tokio.p50()),
            "",
        )
    });
    rows.push(Row {
        floor: us(f.floor.p50()),
        ratio: times(f.floor_pinned.ratio_to(&f.floor), 2, "the free floor"),
        ..row(
            "floor with both processes on one CPU (no cross-core wake-up) p50",
            us(f.floor_pinned.p50()),
            "",
        )
    });
    rows.push(Row {
        floor: us(f.health.floor.p99()),
        go_plugin: f.go.ping.as_ref().map_or_else(skipped, |go| us(go.p99())),
        ..row(
            "host -> plugin unary call (health) p99",
            us(f.health.figure.p99()),
            "",
        )
    });
    rows.push(Row {
        floor: us(f.health_multi_thread.floor.p50()),
        ratio: times(f.health_multi_thread.ratio(), 1, "floor"),
        ..row(
            "host -> plugin unary call (health) p50, multi-thread host runtime",
            us(f.health_multi_thread.figure.p50()),
            "",
        )
    });
    rows.push(Row {
        floor: us(f.ping.floor.p50()),
        ratio: times(f.ping.ratio(), 1, "floor"),
        ..row(
            "host -> plugin 32-byte unary call p50",
            us(f.ping.figure.p50()),
            "",
        )
    });
    for wire in &f.wires {
        rows.push(Row {
            floor: us(wire.ping.floor.p50()),
            ratio: format!(
                "{}; {}",
                times(wire.ping.ratio(), 1, "floor"),
                times(wire.ping.figure.ratio_to(&f.ping.figure), 2, "plain")
            ),
            ..row(
                &format!("host -> plugin 32-byte unary call p50, {}", wire.wire),
                us(wire.ping.figure.p50()),
                "",
            )
        });
        rows.push(Row {
            floor: us(wire.host_call.floor.p50()),
            ratio: format!(
                "{}; {}",
                times(wire.host_call.ratio(), 1, "floor"),
                times(
                    wire.host_call.figure.ratio_to(&f.host_call.figure),
                    2,
                    "plain"
                )
            ),
            ..row(
                &format!("plugin -> host service call p50, {}", wire.wire),
                us(wire.host_call.figure.p50()),
                "",
            )
        });
    }
    rows.push(Row {
        floor: us(f.host_call.floor.p99()),
        go_plugin: f
            .go
            .callback
            .as_ref()
            .map_or_else(skipped, |go| us(go.p99())),
        ..row(
            "plugin -> host service call p99",
            us(f.host_call.figure.p99()),
            "",
        )
    });
    rows.push(Row {
        go_plugin: f
            .go
            .cold_start
            .as_ref()
            .map_or_else(skipped, |go| us(go.p99())),
        ..row(
            "cold start (sandboxed) p99",
            us(f.cold_start_sandboxed.p99()),
            "",
        )
    });
    rows.push(row(
        "audit records dropped under the aggregate load",
        l.iter()
            .map(|l| l.audit_records_dropped)
            .sum::<u64>()
            .to_string(),
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
        "Every figure was measured {} times in this run and is shown as its median, then \
         (min - max) over the repetitions; a target is judged on the median. Every latency \
         was measured right after a floor of its own (floor, figure, floor, figure, ...), and \
         its ratio to the floor, or to go-plugin's figure measured beside it, is taken \
         repetition by repetition. Latencies are p50/p99 over {} calls after {} warm-up \
         calls; cold starts over {} starts after one warm-up start; the transfer moves {} \
         bytes; {} plugins for the many-plugins row; {} plugins x 16 concurrent calls for {} \
         ms for the aggregate. Plugins run under the default sandbox (`BestEffort`) and the \
         SDK's default current-thread runtime; the host runs a current-thread tokio runtime \
         unless a row says otherwise. The floor is a 32-byte request/response between two \
         processes over a Unix socket with blocking calls (no runtime); its tokio row is the \
         same on tokio's current-thread runtime on both sides.\n\n",
        s.repeats,
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
