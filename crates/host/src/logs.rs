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

    mod properties {
        use proptest::prelude::*;
        use serde_json::{Map, json};

        use super::super::*;

        const LEVELS: [(&str, Level); 6] = [
            ("trace", Level::TRACE),
            ("debug", Level::DEBUG),
            ("info", Level::INFO),
            ("warn", Level::WARN),
            ("warning", Level::WARN),
            ("error", Level::ERROR),
        ];

        fn field_value() -> impl Strategy<Value = Value> {
            prop_oneof![
                any::<String>().prop_map(Value::String),
                any::<i64>().prop_map(Value::from),
                any::<bool>().prop_map(Value::Bool),
                Just(Value::Null),
                proptest::collection::vec(any::<u8>(), 0..3).prop_map(Value::from),
            ]
        }

        proptest! {
            #[test]
            fn an_hclog_line_keeps_its_level_message_and_fields(
                level in 0..LEVELS.len(),
                message in any::<String>(),
                fields in proptest::collection::btree_map("[a-z@_][a-z0-9_.]{0,8}", field_value(), 0..5),
                timestamp in any::<bool>(),
            ) {
                let (name, expected) = LEVELS[level];
                let mut object = Map::new();
                for (key, value) in &fields {
                    object.insert(key.clone(), value.clone());
                }
                object.insert("@level".into(), json!(name));
                object.insert("@message".into(), json!(message));
                if timestamp {
                    object.insert("@timestamp".into(), json!("2024-01-01T00:00:00.000000Z"));
                }
                let line = Value::Object(object).to_string();
                let parsed = LogParser::default().parse(&line);
                prop_assert_eq!(parsed.level, expected);
                prop_assert_eq!(parsed.message, message);
                let mut got = parsed.fields;
                got.sort();
                let mut want: Vec<(String, String)> = fields
                    .into_iter()
                    .filter(|(key, _)| !["@level", "@message", "@timestamp"].contains(&key.as_str()))
                    .map(|(key, value)| (key, text(value)))
                    .collect();
                want.sort();
                prop_assert_eq!(got, want);
            }

            #[test]
            fn any_line_is_re_levelled_without_panicking(lines in proptest::collection::vec(any::<String>(), 0..8)) {
                let mut parser = LogParser::default();
                for line in &lines {
                    let parsed = parser.parse(line);
                    if parse_json(line).is_none() {
                        prop_assert!(parsed.fields.is_empty());
                    }
                }
                let _ = plugin_versions(&lines.join("\n"));
            }

            #[test]
            fn json_without_level_or_message_is_a_plain_line(
                fields in proptest::collection::btree_map("[a-z_]{1,8}", any::<String>(), 0..4),
            ) {
                let line = json!(fields).to_string();
                prop_assert_eq!(parse_json(&line), None);
                let parsed = LogParser::default().parse(&line);
                prop_assert_eq!(parsed.level, Level::DEBUG);
                prop_assert_eq!(parsed.message, line);
            }

            #[test]
            fn tagged_lines_take_their_level_and_panics_colour_what_follows(
                tag in 0..5usize,
                message in "[^\n]{0,20}",
                after in proptest::collection::vec("[a-z ]{0,10}", 0..4),
            ) {
                let (tag, level) = [
                    ("[TRACE]", Level::TRACE),
                    ("[DEBUG]", Level::DEBUG),
                    ("[INFO]", Level::INFO),
                    ("[WARN]", Level::WARN),
                    ("[ERROR]", Level::ERROR),
                ][tag];
                let mut parser = LogParser::default();
                let parsed = parser.parse(&format!("{tag} {message}"));
                prop_assert_eq!(parsed.level, level);
                prop_assert_eq!(parsed.message, message.trim());
                prop_assert_eq!(parser.parse("panic: boom").level, Level::ERROR);
                for line in &after {
                    prop_assert_eq!(parser.parse(line).level, Level::ERROR, "{:?}", line);
                }
                prop_assert_eq!(parser.parse(&format!("{tag} {message}")).level, level);
                prop_assert_eq!(parser.parse("after").level, Level::DEBUG);
            }

            #[test]
            fn announced_versions_are_found(
                versions in proptest::collection::vec(any::<u32>(), 0..5),
                noise in proptest::collection::vec("[^\n]{0,12}", 0..3),
            ) {
                let announced = json!({
                    "@level": "info",
                    "@message": "serving",
                    "tether_plugin_versions": tether_protocol::format_versions(&versions),
                });
                let mut tail = noise.clone();
                tail.push(announced.to_string());
                let found = plugin_versions(&tail.join("\n"));
                prop_assert_eq!(found, Some(versions));
            }
        }
    }
}
