//! `tether audit query` and `tether audit summary`: reading audit trails, rotated
//! generations included, oldest first.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::Outcome;
use crate::out::Out;

/// How often `--follow` looks at the file.
const POLL: Duration = Duration::from_millis(200);
/// Resources shown per plugin by `summary`.
const TOP: usize = 3;

/// Which records to show.
#[derive(Debug, Args)]
pub(crate) struct Filter {
    /// Only this plugin's records.
    #[arg(long, value_name = "PLUGIN")]
    plugin: Option<String>,

    /// Only allowed or only denied calls.
    #[arg(long, value_enum)]
    decision: Option<DecisionArg>,

    /// Only this operation, as the records name it: `read_file`, `get_env`, `connect`,
    /// `tether.bus.v1.Bus/Publish`.
    #[arg(long, value_name = "OP")]
    operation: Option<String>,

    /// Only records from this time on: an RFC 3339 time (`2026-03-02T10:00:00Z`) or a
    /// duration before now (`15m`, `2h 30m`, `1day`).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    since: Option<SystemTime>,

    /// Only records before this time (as for --since).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    until: Option<SystemTime>,
}

/// A decision, on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DecisionArg {
    /// The policy or the hook allowed the call.
    Allowed,
    /// The call was denied.
    Denied,
}

impl DecisionArg {
    fn as_str(self) -> &'static str {
        match self {
            DecisionArg::Allowed => "allowed",
            DecisionArg::Denied => "denied",
        }
    }
}

/// `tether audit query`.
#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    /// The audit files (JSON lines). Each is read after its rotated generations, oldest
    /// first: FILE.N .. FILE.1, then FILE.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,

    #[command(flatten)]
    filter: Filter,

    /// Print the matching records as they are in the file (JSON lines), not as a table.
    #[arg(long)]
    json: bool,

    /// Keep reading the last FILE as it grows, and on into a new one when it is rotated;
    /// stop with Ctrl-C.
    #[arg(long)]
    follow: bool,
}

/// `tether audit summary`.
#[derive(Debug, Args)]
pub(crate) struct SummaryArgs {
    /// The audit files (JSON lines), each read after its rotated generations.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,

    #[command(flatten)]
    filter: Filter,
}

fn parse_when(text: &str) -> Result<SystemTime, String> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        return Ok(time);
    }
    match humantime::parse_duration(text) {
        Ok(ago) => SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("{text:?} is too long ago")),
        Err(_) => Err(format!(
            "{text:?} is neither an RFC 3339 time (2026-03-02T10:00:00Z) nor a duration (15m, \
             2h 30m)"
        )),
    }
}

/// The fields of a record that are shown and filtered on.
#[derive(Debug, Deserialize)]
struct Record {
    time: String,
    plugin: String,
    operation: String,
    resource: String,
    decision: String,
    decided_by: String,
    #[serde(default)]
    capability: Option<String>,
    reason: String,
}

/// A record and its line as written.
struct Line {
    record: Record,
    text: String,
}

fn parse_line(text: &str) -> Result<Line, String> {
    let record: Record = serde_json::from_str(text).map_err(|err| err.to_string())?;
    if !matches!(record.decision.as_str(), "allowed" | "denied") {
        return Err(format!(
            "the decision {:?} is neither allowed nor denied",
            record.decision
        ));
    }
    humantime::parse_rfc3339_weak(&record.time)
        .map_err(|err| format!("the time {:?} is not RFC 3339: {err}", record.time))?;
    Ok(Line {
        record,
        text: text.to_owned(),
    })
}

impl Filter {
    fn matches(&self, record: &Record) -> bool {
        if self.plugin.as_ref().is_some_and(|p| *p != record.plugin)
            || self.decision.is_some_and(|d| d.as_str() != record.decision)
            || self
                .operation
                .as_ref()
                .is_some_and(|o| *o != record.operation)
        {
            return false;
        }
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        let Ok(time) = humantime::parse_rfc3339_weak(&record.time) else {
            return false;
        };
        self.since.is_none_or(|since| time >= since) && self.until.is_none_or(|until| time < until)
    }
}

/// `FILE.N` .. `FILE.1`, then `FILE`: the files of one audit trail, oldest first.
fn generations(file: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for n in 1.. {
        let mut name = file.as_os_str().to_owned();
        name.push(format!(".{n}"));
        let path = PathBuf::from(name);
        if !path.is_file() {
            break;
        }
        paths.push(path);
    }
    paths.reverse();
    paths.push(file.to_owned());
    paths
}

/// Reads one file's lines as they come, keeping a partial last line for later.
struct Reader {
    path: PathBuf,
    file: File,
    pending: Vec<u8>,
    line: usize,
    bad: usize,
}

impl Reader {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let file = File::open(path)
            .with_context(|| format!("could not read the audit file {}", path.display()))?;
        Ok(Reader {
            path: path.to_owned(),
            file,
            pending: Vec::new(),
            line: 0,
            bad: 0,
        })
    }

    /// Hands `each` every complete line read so far (and the partial last one if `all`).
    fn read(&mut self, all: bool, each: &mut dyn FnMut(Line)) -> anyhow::Result<()> {
        self.file
            .read_to_end(&mut self.pending)
            .with_context(|| format!("could not read the audit file {}", self.path.display()))?;
        let mut start = 0;
        while let Some(end) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let line = self.pending[start..start + end].to_vec();
            start += end + 1;
            self.take(&line, each);
        }
        self.pending.drain(..start);
        if all && !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.take(&line, each);
        }
        Ok(())
    }

    fn take(&mut self, line: &[u8], each: &mut dyn FnMut(Line)) {
        self.line += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let parsed = std::str::from_utf8(line)
            .map_err(|err| format!("not UTF-8: {err}"))
            .and_then(parse_line);
        match parsed {
            Ok(line) => each(line),
            Err(err) => {
                self.bad += 1;
                eprintln!(
                    "{}:{}: skipped, not an audit record: {err}",
                    self.path.display(),
                    self.line
                );
            }
        }
    }
}

/// Reads every file of every trail, oldest first within each; returns the reader of the
/// very last file, still open (for `--follow`), and how many lines were bad.
fn read_all(
    files: &[PathBuf],
    follow: bool,
    each: &mut dyn FnMut(Line),
) -> anyhow::Result<(Reader, usize)> {
    let mut bad = 0;
    let mut last = None;
    for (i, file) in files.iter().enumerate() {
        let paths = generations(file);
        for (j, path) in paths.iter().enumerate() {
            let mut reader = Reader::open(path)?;
            let final_one = i + 1 == files.len() && j + 1 == paths.len();
            // When followed, the very last file may still be growing: its partial last line
            // waits until it is complete.
            reader.read(!(follow && final_one), each)?;
            bad += reader.bad;
            if final_one {
                last = Some(reader);
            }
        }
    }
    let last = last.context("no audit file given")?;
    Ok((last, bad))
}

const HEADERS: [&str; 7] = [
    "TIME",
    "PLUGIN",
    "OPERATION",
    "RESOURCE",
    "DECISION",
    "DECIDED BY",
    "CAPABILITY / REASON",
];

fn row(record: &Record) -> [String; 7] {
    let detail = match (record.decision.as_str(), &record.capability) {
        ("allowed", Some(capability)) => capability.clone(),
        _ => record.reason.clone(),
    };
    let resource = if record.resource.is_empty() {
        "-".to_owned()
    } else {
        record.resource.clone()
    };
    [
        record.time.clone(),
        record.plugin.clone(),
        record.operation.clone(),
        resource,
        record.decision.clone(),
        record.decided_by.clone(),
        detail,
    ]
}

fn print_row(out: &Out, widths: &[usize; 7], cells: &[String; 7], header: bool) {
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        let padded = if i + 1 == cells.len() {
            cell.clone()
        } else {
            format!("{cell:<width$}  ", width = widths[i])
        };
        let styled = match (header, i, cell.as_str()) {
            (true, _, _) => out.bold(&padded),
            (false, 4, "denied") => out.red(&padded),
            (false, 4, _) => out.green(&padded),
            _ => padded,
        };
        line.push_str(&styled);
    }
    println!("{}", line.trim_end());
}

/// `tether audit query`.
pub(crate) fn query(out: &Out, args: &QueryArgs) -> anyhow::Result<Outcome> {
    let mut rows = Vec::new();
    let mut shown = 0usize;
    let (mut last, bad) = read_all(&args.files, args.follow, &mut |line| {
        if args.filter.matches(&line.record) {
            shown += 1;
            if args.json {
                println!("{}", line.text);
            } else {
                rows.push(row(&line.record));
            }
        }
    })?;
    let mut widths = HEADERS.map(str::len);
    if !args.json {
        for cells in &rows {
            for (width, cell) in widths.iter_mut().zip(cells) {
                *width = (*width).max(cell.chars().count());
            }
        }
        if !rows.is_empty() || args.follow {
            print_row(out, &widths, &HEADERS.map(str::to_owned), true);
        }
        for cells in &rows {
            print_row(out, &widths, cells, false);
        }
    }
    if args.follow {
        let mut each = |line: Line| {
            if args.filter.matches(&line.record) {
                if args.json {
                    println!("{}", line.text);
                } else {
                    print_row(out, &widths, &row(&line.record), false);
                }
            }
        };
        loop {
            last.read(false, &mut each)?;
            follow_rotation(&mut last, &mut each)?;
            std::thread::sleep(POLL);
        }
    }
    if shown == 0 && !args.json {
        println!("{}", out.dim("no record matches"));
    }
    Ok(if bad == 0 {
        Outcome::Clean
    } else {
        eprintln!("{bad} line(s) skipped");
        Outcome::Problems
    })
}

/// If the followed file was rotated (its name now names another file) or truncated, reads
/// what is left of the old one and goes on with the new one from its start.
fn follow_rotation(reader: &mut Reader, each: &mut dyn FnMut(Line)) -> anyhow::Result<()> {
    let open = reader.file.metadata().context("the followed audit file")?;
    let Ok(now) = std::fs::metadata(&reader.path) else {
        // Between the rename and the new file: look again next time.
        return Ok(());
    };
    if now.ino() != open.ino() || now.dev() != open.dev() {
        reader.read(true, each)?;
        let fresh = Reader::open(&reader.path)?;
        let bad = reader.bad;
        *reader = fresh;
        reader.bad = bad;
    } else if now.len() < reader.file.stream_position().unwrap_or(0) {
        reader.file.seek(SeekFrom::Start(0))?;
        reader.pending.clear();
        reader.line = 0;
    }
    Ok(())
}

/// Per plugin: calls, allowed, denied, and how often each resource was asked for.
#[derive(Default)]
struct Tally {
    calls: usize,
    allowed: usize,
    denied: usize,
    resources: BTreeMap<String, usize>,
}

/// `tether audit summary`.
pub(crate) fn summary(out: &Out, args: &SummaryArgs) -> anyhow::Result<Outcome> {
    let mut plugins: BTreeMap<String, Tally> = BTreeMap::new();
    let mut count = |line: Line| {
        if !args.filter.matches(&line.record) {
            return;
        }
        let record = line.record;
        let tally = plugins.entry(record.plugin).or_default();
        tally.calls += 1;
        if record.decision == "denied" {
            tally.denied += 1;
        } else {
            tally.allowed += 1;
        }
        let resource = if record.resource.is_empty() {
            record.operation
        } else {
            format!("{} {}", record.operation, record.resource)
        };
        *tally.resources.entry(resource).or_default() += 1;
    };
    let (_, bad) = read_all(&args.files, false, &mut count)?;
    if plugins.is_empty() {
        println!("{}", out.dim("no record matches"));
    } else {
        let width = plugins
            .keys()
            .map(|p| p.chars().count())
            .max()
            .unwrap_or(0)
            .max(6);
        println!(
            "{}",
            out.bold(&format!(
                "{:<width$}  {:>7}  {:>7}  {:>7}  MOST ASKED FOR",
                "PLUGIN", "CALLS", "ALLOWED", "DENIED"
            ))
        );
        for (plugin, tally) in &plugins {
            let mut top: Vec<(&String, &usize)> = tally.resources.iter().collect();
            top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let top: Vec<String> = top
                .into_iter()
                .take(TOP)
                .map(|(resource, n)| format!("{resource} ({n})"))
                .collect();
            let denied = format!("{:>7}", tally.denied);
            println!(
                "{plugin:<width$}  {:>7}  {:>7}  {}  {}",
                tally.calls,
                tally.allowed,
                if tally.denied > 0 {
                    out.red(&denied)
                } else {
                    denied
                },
                top.join(", ")
            );
        }
    }
    Ok(if bad == 0 {
        Outcome::Clean
    } else {
        eprintln!("{bad} line(s) skipped");
        Outcome::Problems
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_and_until_take_a_time_or_a_duration_ago() {
        let at = parse_when("2026-03-02T10:00:00Z").unwrap();
        assert_eq!(
            at,
            humantime::parse_rfc3339("2026-03-02T10:00:00Z").unwrap()
        );
        let ago = parse_when("1h").unwrap();
        let elapsed = SystemTime::now().duration_since(ago).unwrap();
        assert!(elapsed >= Duration::from_secs(3600), "{elapsed:?}");
        assert!(parse_when("yesterday-ish").is_err());
    }

    #[test]
    fn a_record_time_with_milliseconds_is_read() {
        let line = parse_line(
            r#"{"time":"2026-03-02T10:15:04.123Z","plugin":"p","instance":1,"pid":2,"operation":"read_file","resource":"a","decision":"allowed","decided_by":"policy","reason":"r"}"#,
        )
        .unwrap();
        assert_eq!(line.record.plugin, "p");
        assert!(parse_line(r#"{"time":"x"}"#).is_err());
    }
}
