//! go-plugin's side: the `gobench` fixture (tests/go/fixtures/gobench), built by
//! `cargo xtask bench` against the newest go-plugin release of the interop matrix and
//! against 1.0.1 (`tests/go/versions/<release>`) when Go is installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// Where the Go programs are, or why there are none.
#[derive(Debug, Clone)]
pub(crate) enum Go {
    /// The directory holding `gobench`, `kvplugin` and `counterplugin`.
    Built(PathBuf),
    /// Why the go-plugin rows are skipped.
    Skipped(String),
}

#[derive(Deserialize)]
struct Output {
    nanos: Vec<u64>,
}

/// `RELEASE=DIR` of `--go`.
pub(crate) fn parse_release(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((release, dir)) if !release.is_empty() && !dir.is_empty() => {
            Ok((release.to_owned(), PathBuf::from(dir)))
        }
        _ => Err(format!(
            "`{text}` is not RELEASE=DIR (for example v1.8.0=target/go/v1_8_0)"
        )),
    }
}

impl Go {
    pub(crate) fn new(dir: Option<&Path>) -> Go {
        match dir {
            Some(dir) if dir.join("gobench").is_file() => Go::Built(dir.to_owned()),
            Some(dir) => Go::Skipped(format!("skipped: no gobench in {}", dir.display())),
            None => Go::Skipped("skipped: no Go toolchain".to_owned()),
        }
    }

    /// Runs `gobench <kind> <plugin> <n>`; the latencies in nanoseconds.
    pub(crate) fn run(&self, kind: &str, plugin: &str, n: usize) -> Result<Vec<u64>> {
        let Go::Built(dir) = self else {
            bail!("no Go programs");
        };
        let output = Command::new(dir.join("gobench"))
            .arg(kind)
            .arg(dir.join(plugin))
            .arg(n.to_string())
            .output()
            .with_context(|| format!("running gobench {kind}"))?;
        if !output.status.success() {
            bail!(
                "gobench {kind} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let parsed: Output = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("reading gobench {kind}'s output"))?;
        Ok(parsed.nanos)
    }
}
