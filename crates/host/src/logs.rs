//! A plugin's stderr log lines, re-levelled as `tracing` events.
//!
//! go-plugin plugins (and tether plugins) write hclog JSON lines; other lines carry their
//! level in a `[TRACE]`..`[ERROR]` prefix, else they are debug, except that a Go panic
//! (`panic: ` or `fatal error: `) and the untagged lines after it are errors.

use serde_json::Value;
use tracing::Level;

/// One parsed log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogLine {
    /// The level the plugin gave it.
    pub(crate) level: Level,
    /// The message.
    pub(crate) message: String,
    /// The other key/value pairs, in the plugin's order (`@module` included).
    pub(crate) fields: Vec<(String, String)>,
}

/// Parses a stream of stderr lines; stateful because of Go panics.
#[derive(Debug, Default)]
pub(crate) struct LogParser {
    in_panic: bool,
}

impl LogParser {
    pub(crate) fn parse(&mut self, line: &str) -> LogLine {
        if let Some(json) = parse_json(line) {
            self.in_panic = false;
            return json;
        }
        let line = line.trim_end();
        const TAGS: [(&str, Level); 5] = [
            ("[TRACE]", Level::TRACE),
            ("[DEBUG]", Level::DEBUG),
            ("[INFO]", Level::INFO),
            ("[WARN]", Level::WARN),
            ("[ERROR]", Level::ERROR),
        ];
        for (tag, level) in TAGS {
            if let Some(rest) = line.strip_prefix(tag) {
                self.in_panic = false;
                return plain(level, rest.trim_start());
            }
        }
        if line.starts_with("panic: ") || line.starts_with("fatal error: ") {
            self.in_panic = true;
        }
        let level = if self.in_panic {
            Level::ERROR
        } else {
            Level::DEBUG
        };
        plain(level, line)
    }
}

fn plain(level: Level, message: &str) -> LogLine {
    LogLine {
        level,
        message: message.to_owned(),
        fields: Vec::new(),
    }
}

pub(crate) fn parse_json(line: &str) -> Option<LogLine> {
    if !line.trim_start().starts_with('{') {
        return None;
    }
    let Value::Object(map) = serde_json::from_str(line).ok()? else {
        return None;
    };
    if !map.contains_key("@level") && !map.contains_key("@message") {
        return None;
    }
    let level = match map.get("@level").and_then(Value::as_str) {
        Some("trace") => Level::TRACE,
        Some("info") => Level::INFO,
        Some("warn" | "warning") => Level::WARN,
        Some("error") => Level::ERROR,
        _ => Level::DEBUG,
    };
    let mut message = String::new();
    let mut fields = Vec::new();
    for (key, value) in map {
        match key.as_str() {
            "@message" => message = text(value),
            "@level" | "@timestamp" => {}
            _ => fields.push((key, text(value))),
        }
    }
    Some(LogLine {
        level,
        message,
        fields,
    })
}

fn text(value: Value) -> String {
    match value {
        Value::String(text) => text,
        other => other.to_string(),
    }
}

/// Emits `line` as a `tracing` event at its own level, with the plugin's name.
pub(crate) fn emit(plugin: &str, line: &LogLine) {
    let fields = line
        .fields
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(" ");
    let fields = (!fields.is_empty()).then_some(fields.as_str());
    let message = &line.message;
    macro_rules! event {
        ($level:expr) => {
            tracing::event!(target: "tether::plugin", $level, plugin, fields, "{message}")
        };
    }
    match line.level {
        Level::TRACE => event!(Level::TRACE),
        Level::DEBUG => event!(Level::DEBUG),
        Level::INFO => event!(Level::INFO),
        Level::WARN => event!(Level::WARN),
        Level::ERROR => event!(Level::ERROR),
    }
}

/// The versions a tether plugin said it serves, from its stderr log lines.
pub(crate) fn plugin_versions(tail: &str) -> Option<Vec<u32>> {
    tail.lines().find_map(|line| {
        let value: Value = serde_json::from_str(line).ok()?;
        let versions = value.get("tether_plugin_versions")?.as_str()?;
        Some(tether_protocol::parse_versions(versions))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn hclog_json_keeps_level_message_and_fields() {
        let mut parser = LogParser::default();
        let line = parser.parse(
            r#"{"@level":"warn","@message":"disk slow","@module":"kv","@timestamp":"2024-01-01T00:00:00.000000Z","ms":12,"path":"/x"}"#,
        );
        assert_eq!(
            line,
            LogLine {
                level: Level::WARN,
                message: "disk slow".into(),
                fields: fields(&[("@module", "kv"), ("ms", "12"), ("path", "/x")]),
            }
        );
    }

    #[test]
    fn every_hclog_level_maps() {
        let mut parser = LogParser::default();
        for (name, level) in [
            ("trace", Level::TRACE),
            ("debug", Level::DEBUG),
            ("info", Level::INFO),
            ("warn", Level::WARN),
            ("error", Level::ERROR),
        ] {
            let line = parser.parse(&format!(r#"{{"@level":"{name}","@message":"m"}}"#));
            assert_eq!(line.level, level, "{name}");
        }
    }

    #[test]
    fn plain_lines_use_prefixes_and_panics() {
        let mut parser = LogParser::default();
        assert_eq!(parser.parse("[WARN] careful").level, Level::WARN);
        assert_eq!(parser.parse("[WARN] careful").message, "careful");
        assert_eq!(parser.parse("just text").level, Level::DEBUG);
        assert_eq!(parser.parse("{not json").level, Level::DEBUG);
        assert_eq!(parser.parse("panic: boom").level, Level::ERROR);
        assert_eq!(parser.parse("goroutine 1 [running]:").level, Level::ERROR);
        assert_eq!(parser.parse("[INFO] recovered").level, Level::INFO);
        assert_eq!(parser.parse("after").level, Level::DEBUG);
        assert_eq!(parser.parse("fatal error: oom").level, Level::ERROR);
    }

    #[test]
    fn finds_the_versions_a_plugin_serves() {
        let tail =
            "noise\n{\"@level\":\"error\",\"@message\":\"x\",\"tether_plugin_versions\":\"1,2\"}";
        assert_eq!(plugin_versions(tail), Some(vec![1, 2]));
        assert_eq!(plugin_versions("nothing"), None);
    }
}
