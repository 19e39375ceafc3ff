//! The report: `docs/benchmarks.md` (a table of figures against targets) and
//! `docs/benchmarks.json` (the same figures). The markdown keeps everything from its
//! `## Analysis` heading on, which is written by hand from the measurements.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::go::Go;
use crate::machine::Machine;
use crate::runs::{Load, Many, Transfer, Wire};
use crate::stats::{Paired, Series, Spread};

/// What this run was asked to do.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Settings {
    pub(crate) repeats: u32,
    pub(crate) calls: usize,
    pub(crate) starts: usize,
    pub(crate) bytes: u64,
    pub(crate) plugins: Vec<usize>,
    pub(crate) load_plugins: usize,
    pub(crate) load_millis: u64,
}

/// One go-plugin release's figures (one per repetition, each measured beside tether's), or
/// why there are none.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GoFigures {
    pub(crate) release: String,
    pub(crate) status: String,
    pub(crate) cold_start: Option<Series>,
    pub(crate) ping: Option<Series>,
    pub(crate) callback: Option<Series>,
}

impl GoFigures {
    /// Empty series to fill for a release whose programs are built; none, and why, for one
    /// that is skipped.
    pub(crate) fn new(release: &str, go: &Go) -> GoFigures {
        let (status, series) = match go {
            Go::Built(_) => ("measured".to_owned(), Some(Series::default())),
            Go::Skipped(why) => (why.clone(), None),
        };
        GoFigures {
            release: release.to_owned(),
            status,
            cold_start: series.clone(),
            ping: series.clone(),
            callback: series,
        }
    }
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
    /// The same round trip over a lane (shared memory), tokio on both sides.
    pub(crate) lane: Series,
    pub(crate) health: Paired,
    /// The same health checks from a multi-thread host runtime.
    pub(crate) health_multi_thread: Paired,
    pub(crate) ping: Paired,
    pub(crate) host_call: Paired,
    /// The same calls over go-plugin's opt-in wires.
    pub(crate) wires: Vec<WireFigures>,
    /// A bare tonic 32-byte call (as `floor`) beside tether's over HTTP/2 (as `figure`).
    pub(crate) bare_tonic: Paired,
    /// Starting `/bin/true` and waiting for it: the floor of any cold start.
    pub(crate) spawn_floor: Series,
    pub(crate) cold_start_sandboxed: Series,
    pub(crate) cold_start_unsandboxed: Series,
    /// The same plugin linked without PIE (as Go links its plugins), sandboxed; `None` when
    /// that build was not made (`cargo xtask bench` makes it).
    pub(crate) cold_start_no_pie: Option<Series>,
    /// Taking a plugin started ahead from a `Pool`, to its first call answered.
    pub(crate) warm_start: Series,
    pub(crate) transfer: Vec<Transfer>,
    pub(crate) many: Vec<Many>,
    pub(crate) load: Vec<Load>,
    /// One per go-plugin release measured, the newest first.
    pub(crate) go: Vec<GoFigures>,
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) figure: String,
    pub(crate) tether: String,
    pub(crate) floor: String,
    /// One cell per go-plugin release measured, the newest first.
    pub(crate) go_plugin: Vec<String>,
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
        go_plugin: Vec::new(),
        ratio: String::new(),
        target: target.to_owned(),
        met: String::new(),
    }
}

/// The spread of `value` over the repetitions of `runs`.
fn over<T>(runs: &[T], value: impl Fn(&T) -> f64) -> Spread {
    Spread::of(runs.iter().map(value).collect())
}

/// The rows of one way of starting many plugins at once (`runs`: all its counts and
/// repetitions): one per count, judged linear against the smallest, and its memory.
fn many_rows(rows: &mut Vec<Row>, variant: &str, runs: &[&Many]) {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut counts: Vec<usize> = runs.iter().map(|m| m.plugins).collect();
    counts.sort_unstable();
    counts.dedup();
    let smallest = counts.first().copied();
    let per_plugin_ms = |m: &Many| m.start_seconds * 1e3 / m.plugins.max(1) as f64;
    let of_count = |count: usize| -> Vec<&Many> {
        runs.iter()
            .copied()
            .filter(|m| m.plugins == count)
            .collect()
    };
    for count in &counts {
        let m = of_count(*count);
        let healthy = m.iter().map(|m| m.healthy).min().unwrap_or(0);
        let per_plugin = over(&m, |m| per_plugin_ms(m));
        // Linear: a plugin costs no more when many more start with it.
        let (ratio, linear) = match smallest.filter(|smallest| smallest != count) {
            Some(smallest) => {
                let base = over(&of_count(smallest), |m| per_plugin_ms(m));
                let growth = per_plugin.median / base.median;
                (
                    format!("{growth:.2}x the cost per plugin of {smallest}"),
                    growth <= 1.25,
                )
            }
            None => (String::new(), true),
        };
        rows.push(Row {
            ratio,
            met: met(healthy == *count && linear),
            ..row(
                &format!("{count} plugins started at once, each answering health ({variant})"),
                format!(
                    "{healthy}/{count} in {}, {} per plugin",
                    spread_with(over(&m, |m| m.start_seconds), |v| format!("{v:.2} s")),
                    spread_with(per_plugin, |v| format!("{v:.2} ms"))
                ),
                "all answer; linear (<= 1.25x the smallest run's cost per plugin)",
            )
        });
    }
    let pss = over(runs, |m| mib(m.pss_per_plugin_kib_mean));
    rows.push(Row {
        ratio: format!(
            "VmRSS {} mean, {:.1} MiB max",
            spread_with(over(runs, |m| mib(m.rss_per_plugin_kib_mean)), |v| {
                format!("{v:.1} MiB")
            }),
            mib(runs
                .iter()
                .map(|m| m.rss_per_plugin_kib_max)
                .max()
                .unwrap_or(0))
        ),
        met: met(pss.max <= 1.0),
        ..row(
            &format!(
                "resident memory per idle plugin (PSS mean: shared code counted once; {variant})"
            ),
            spread_with(pss, |v| format!("{v:.2} MiB")),
            "<= 1 MiB",
        )
    });
}

/// The table: every figure with a target (each target is written in its row below and
/// shown in docs/benchmarks.md's `target` column), then the figures without a target. A
/// target is judged on the median over the repetitions; ratios are taken repetition by
/// repetition, between figures measured side by side. Ratios to go-plugin are to the first
/// release measured (the newest); the other releases' figures are in columns beside it.
pub(crate) fn rows(f: &Figures) -> Vec<Row> {
    let mut rows = Vec::new();
    // One cell per go-plugin release: `value` of its series, or why it has none.
    let go_cells = |series: fn(&GoFigures) -> Option<&Series>, value: fn(&Series) -> String| {
        f.go.iter()
            .map(|go| series(go).map_or_else(|| go.status.clone(), value))
            .collect::<Vec<_>>()
    };
    let newest = f.go.first();
    // A row judged against the newest go-plugin's `series`: `ratio` of tether's to it.
    let vs_go = |figure: &str,
                 tether: &Series,
                 series: fn(&GoFigures) -> Option<&Series>,
                 target: &str,
                 floor: String| {
        let cells = go_cells(series, |s| us(s.p50()));
        match newest.and_then(series) {
            Some(go) => {
                let ratio = tether.ratio_to(go);
                Row {
                    floor,
                    go_plugin: cells,
                    ratio: times(ratio, 2, "go-plugin"),
                    met: met(ratio.median <= 0.25),
                    ..row(figure, us(tether.p50()), target)
                }
            }
            None => Row {
                floor,
                met: cells.first().cloned().unwrap_or_default(),
                go_plugin: cells,
                ..row(figure, us(tether.p50()), target)
            },
        }
    };

    // Host -> plugin.
    let health = "host -> plugin unary call (health) p50";
    let ratio = f.health.ratio();
    rows.push(Row {
        floor: us(f.health.floor.p50()),
        ratio: times(ratio, 1, "floor"),
        met: met(ratio.median <= 2.0),
        ..row(health, us(f.health.figure.p50()), "<= 2x floor")
    });
    rows.push(vs_go(
        health,
        &f.health.figure,
        |go| go.ping.as_ref(),
        "<= 1/4 of go-plugin",
        String::new(),
    ));
    // Plugin -> host.
    let host_call = "plugin -> host service call (GetEnv, audited, reused connection) p50";
    let ratio = f.host_call.ratio();
    rows.push(Row {
        floor: us(f.host_call.floor.p50()),
        ratio: times(ratio, 1, "floor"),
        met: met(ratio.median <= 2.0),
        ..row(host_call, us(f.host_call.figure.p50()), "<= 2x floor")
    });
    rows.push(vs_go(
        "plugin -> host call vs go-plugin's per-call broker callback, p50",
        &f.host_call.figure,
        |go| go.callback.as_ref(),
        "<= 1/4 of go-plugin",
        String::new(),
    ));
    // Peers that speak only HTTP/2 (go-plugin): tether's wire against tonic alone.
    let ratio = f.bare_tonic.ratio();
    rows.push(Row {
        floor: format!("{} (bare tonic)", us(f.bare_tonic.floor.p50())),
        ratio: times(ratio, 2, "bare tonic"),
        met: met(ratio.median <= 1.1),
        ..row(
            "host -> plugin 32-byte unary call over HTTP/2 (frames off, a go-plugin peer's wire) vs a bare tonic call p50",
            us(f.bare_tonic.figure.p50()),
            "<= 1.1x bare tonic",
        )
    });
    // The lane: its own round trip, then plugin -> host calls over it.
    rows.push(Row {
        floor: us(f.floor.p50()),
        ratio: times(f.lane.ratio_to(&f.floor), 2, "floor"),
        met: met(f.lane.p50().median <= 2.0),
        ..row(
            "low-latency lane between tether peers: a 32-byte round trip between two processes (tokio on both sides) p50",
            us(f.lane.p50()),
            "<= 2 us",
        )
    });
    if let Some(lane) = f.wires.iter().find(|wire| wire.wire == Wire::Lane.name()) {
        let p50 = lane.host_call.figure.p50();
        rows.push(Row {
            floor: us(lane.host_call.floor.p50()),
            ratio: times(lane.host_call.ratio(), 1, "floor"),
            met: met(p50.median <= 2.0),
            ..row(
                "low-latency lane between tether peers: plugin -> host GetEnv (audited) p50",
                us(p50),
                "<= 2 us",
            )
        });
        // The host's calls to the plugin on a lane of their own (`PluginBuilder::lane`).
        let ping = "low-latency lane between tether peers: host -> plugin 32-byte unary call p50";
        rows.push(Row {
            floor: us(lane.ping.floor.p50()),
            ratio: times(lane.ping.ratio(), 1, "floor"),
            met: met(lane.ping.figure.p50().median <= 2.0),
            ..row(ping, us(lane.ping.figure.p50()), "<= 2 us")
        });
        rows.push(vs_go(
            "host -> plugin 32-byte unary call on a lane vs go-plugin's health call p50",
            &lane.ping.figure,
            |go| go.ping.as_ref(),
            "<= 1/4 of go-plugin",
            String::new(),
        ));
    }
    // Starts: a plugin taken from a pool, for hosts that start plugins often, and the cold
    // path itself (judged against no target: it is the process start, profiled).
    rows.push(vs_go(
        "warm start (taken from a Pool, to first call answered, sandboxed) p50",
        &f.warm_start,
        |go| go.cold_start.as_ref(),
        "<= 1/4 of go-plugin's cold start",
        String::new(),
    ));
    rows.push(Row {
        met: String::new(),
        target: String::new(),
        ..vs_go(
            "cold start (spawn to first call, sandboxed) p50",
            &f.cold_start_sandboxed,
            |go| go.cold_start.as_ref(),
            "",
            format!("{} (spawn /bin/true)", us(f.spawn_floor.p50())),
        )
    });
    let no_pie = "cold start of the plugin linked without PIE, as Go links its plugins \
                  (sandboxed) p50";
    match &f.cold_start_no_pie {
        Some(series) => rows.push(Row {
            met: String::new(),
            target: String::new(),
            ..vs_go(
                no_pie,
                series,
                |go| go.cold_start.as_ref(),
                "",
                times(
                    series.ratio_to(&f.cold_start_sandboxed),
                    2,
                    "the PIE build's",
                ),
            )
        }),
        None => rows.push(Row {
            met: String::new(),
            target: String::new(),
            ..row(
                no_pie,
                "not built here (`cargo xtask bench` builds it)".to_owned(),
                "",
            )
        }),
    }
    let overhead = f.cold_start_sandboxed.ratio_to(&f.cold_start_unsandboxed);
    rows.push(Row {
        ratio: format!(
            "{}, unsandboxed {}",
            times(overhead, 2, "unsandboxed"),
            us(f.cold_start_unsandboxed.p50())
        ),
        met: met(overhead.median <= 1.1),
        ..row(
            "sandboxing overhead on cold start p50",
            us(f.cold_start_sandboxed.p50()),
            "<= 1.1x unsandboxed",
        )
    });
    // Throughput and memory.
    let t = &f.transfer;
    let bytes = t.first().map_or(0, |t| t.bytes);
    let gb = bytes as f64 / 1e9;
    let gib = bytes as f64 / (1u64 << 30) as f64;
    let rate = |spread: Spread| spread_with(spread, |v| format!("{v:.2} GB/s"));
    // The bulk calls carry the target; gRPC messages (what a Go host or an attached plugin
    // uses) are shown beside them, judged against the same floor but not the target.
    let bulk = |figure: &str,
                seconds: fn(&Transfer) -> f64,
                floor: fn(&Transfer) -> f64,
                of,
                judged: bool| {
        let ratio = over(t, |t| floor(t) / seconds(t));
        Row {
            floor: format!("{} ({of})", rate(over(t, |t| gb / floor(t)))),
            ratio: times(ratio, 2, "floor"),
            met: if judged {
                met(ratio.median >= 0.8)
            } else {
                "(the bulk row is judged)".to_owned()
            },
            ..row(
                figure,
                rate(over(t, |t| gb / seconds(t))),
                if judged {
                    ">= 0.8x floor"
                } else {
                    "none: the fallback"
                },
            )
        }
    };
    rows.push(bulk(
        &format!(
            "WriteFile of {gib:.2} GiB through shared memory (WriteFileBulk; durable: fsync, rename)"
        ),
        |t| t.bulk_write_seconds,
        |t| t.disk_write_sync_seconds,
        "std::fs + fsync",
        true,
    ));
    rows.push(bulk(
        &format!("WriteFile of {gib:.2} GiB through shared memory, durable_writes off"),
        |t| t.bulk_write_unsynced_seconds,
        |t| t.disk_write_seconds,
        "std::fs",
        true,
    ));
    rows.push(bulk(
        &format!("ReadFile of {gib:.2} GiB from the file handed over (ReadFileBulk)"),
        |t| t.bulk_read_seconds,
        |t| t.disk_read_seconds,
        "std::fs, page cache",
        true,
    ));
    rows.push(bulk(
        &format!("WriteFile of {gib:.2} GiB in gRPC messages (durable)"),
        |t| t.write_seconds,
        |t| t.disk_write_sync_seconds,
        "std::fs + fsync",
        false,
    ));
    rows.push(bulk(
        &format!("WriteFile of {gib:.2} GiB in gRPC messages, durable_writes off"),
        |t| t.write_unsynced_seconds,
        |t| t.disk_write_seconds,
        "std::fs",
        false,
    ));
    rows.push(bulk(
        &format!("ReadFile of {gib:.2} GiB in gRPC messages"),
        |t| t.read_seconds,
        |t| t.disk_read_seconds,
        "std::fs, page cache",
        false,
    ));
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
    // Many plugins, by how many were started at once, for each way of starting them.
    let mut variants: Vec<&str> = Vec::new();
    for m in &f.many {
        if !variants.contains(&m.variant.as_str()) {
            variants.push(&m.variant);
        }
    }
    for variant in variants {
        let runs: Vec<&Many> = f.many.iter().filter(|m| m.variant == variant).collect();
        many_rows(&mut rows, variant, &runs);
    }
    let l = &f.load;
    let rate = over(l, |l| l.calls_per_second);
    let errors: u64 = l.iter().map(|l| l.errors).sum();
    rows.push(Row {
        met: met(rate.median >= 200_000.0 && errors == 0),
        ..row(
            &format!(
                "aggregate audited host-service calls across {} plugins",
                l.first().map_or(0, |l| l.plugins)
            ),
            format!(
                "{} calls/s ({errors} errors)",
                spread_with(rate, |v| format!("{v:.0}"))
            ),
            ">= 200,000 calls/s",
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
        go_plugin: go_cells(|go| go.ping.as_ref(), |s| us(s.p99())),
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
        go_plugin: go_cells(|go| go.callback.as_ref(), |s| us(s.p99())),
        ..row(
            "plugin -> host service call p99",
            us(f.host_call.figure.p99()),
            "",
        )
    });
    rows.push(Row {
        go_plugin: go_cells(|go| go.cold_start.as_ref(), |s| us(s.p99())),
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
        "Machine: {}, {} cores, {} GiB; Linux {}; {}; {}; go-plugin {} (Go modules); plugin \
         sockets in {}. Run {}.\n\n",
        m.cpu,
        m.cores,
        m.memory_gib,
        m.kernel,
        m.rustc,
        m.go,
        f.go.iter()
            .map(|go| go.release.as_str())
            .collect::<Vec<_>>()
            .join(" and "),
        m.sockets,
        m.date
    ));
    out.push_str(&format!(
        "Every figure was measured {} times in this run and is shown as its median, then \
         (min - max) over the repetitions; a target is judged on the median. Every latency \
         was measured right after a floor of its own (floor, figure, floor, figure, ...), and \
         its ratio to the floor, or to go-plugin's figure measured beside it, is taken \
         repetition by repetition. Latencies are p50/p99 over {} calls after {} warm-up \
         calls; cold starts over {} starts after one warm-up start; the transfer moves {} \
         bytes; {} plugins at once for the many-plugins rows; {} plugins x 16 concurrent calls for {} \
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
        s.plugins
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" and "),
        s.load_plugins,
        s.load_millis
    ));
    let releases = f.go.len().max(1);
    out.push_str("| figure | tether | floor |");
    for go in &f.go {
        out.push_str(&format!(" go-plugin {} |", go.release));
    }
    out.push_str(" ratio | target | met |\n");
    out.push_str(&"|---".repeat(6 + releases));
    out.push_str("|\n");
    for r in rows {
        out.push_str(&format!("| {} | {} | {} |", r.figure, r.tether, r.floor));
        for i in 0..releases {
            out.push_str(&format!(
                " {} |",
                r.go_plugin.get(i).map_or("", String::as_str)
            ));
        }
        out.push_str(&format!(" {} | {} | {} |\n", r.ratio, r.target, r.met));
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
