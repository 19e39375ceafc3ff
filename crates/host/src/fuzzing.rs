//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`).
//!
//! Not a stable API: this module exists only so that the coverage-guided fuzzers can reach
//! the private code that reads a plugin's stderr. It may change or vanish in any release.

use futures_util::FutureExt;
use tracing::Level;

use crate::lines::{self, Read, Tail};
use crate::logs::{self, LogLine, LogParser};

/// One stderr line as the host re-levels it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The level the plugin gave it.
    pub level: Level,
    /// The message.
    pub message: String,
    /// The other key/value pairs.
    pub fields: Vec<(String, String)>,
}

impl From<LogLine> for Parsed {
    fn from(line: LogLine) -> Self {
        Parsed {
            level: line.level,
            message: line.message,
            fields: line.fields,
        }
    }
}

/// Splits `output` into lines as the host reads a plugin's stderr: at most `limit` bytes
/// each (`limit` of at least 1), a longer line cut into pieces, the unterminated rest last.
/// Each line comes with whether a newline ended it.
pub fn read_lines(output: &[u8], limit: usize) -> Vec<(Vec<u8>, bool)> {
    let mut reader = tokio::io::BufReader::with_capacity(64, output);
    let mut lines = Vec::new();
    // Reading a byte slice never waits, so every read completes on its first poll.
    while let Some(Ok(read)) = lines::read_line(&mut reader, limit).now_or_never() {
        match read {
            Read::Line(line) => lines.push((line, true)),
            Read::TooLong(line) => lines.push((line, false)),
            Read::Eof(line) => {
                lines.push((line, false));
                break;
            }
        }
    }
    lines
}

/// The stderr reader's state: the log-line parser (stateful for Go panics) and the tail.
#[derive(Debug, Default)]
pub struct Stderr {
    parser: LogParser,
    tail: Tail,
}

impl Stderr {
    /// What the host does with one line of stderr: keeps it in the tail and re-levels it.
    pub fn push(&mut self, line: &[u8]) -> Parsed {
        self.tail.push(line);
        self.parser.parse(&String::from_utf8_lossy(line)).into()
    }

    /// The tail as error messages show it.
    pub fn tail(&self) -> String {
        self.tail.text()
    }
}

/// An hclog JSON line, if `line` is one.
pub fn parse_json(line: &str) -> Option<Parsed> {
    logs::parse_json(line).map(Parsed::from)
}

/// The versions a tether plugin said it serves, from its stderr tail.
pub fn plugin_versions(tail: &str) -> Option<Vec<u32>> {
    logs::plugin_versions(tail)
}
