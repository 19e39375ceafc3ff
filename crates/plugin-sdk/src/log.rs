//! A `tracing` layer that writes go-plugin's (hclog's) JSON log lines.

use std::fmt::{self, Debug};
use std::io::Write;
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// Writes each `tracing` event as one hclog JSON line:
/// `{"@level":"info","@message":"...","@module":"<target>","@timestamp":"...",<fields>}`.
///
/// A go-plugin host (and a tether host) reads these lines from the plugin's stderr and
/// shows them at their own level with their fields. [`crate::Plugin::run`] installs it on
/// the real stderr unless told not to.
pub struct JsonLogLayer<W> {
    writer: Mutex<W>,
}

impl<W> Debug for JsonLogLayer<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonLogLayer").finish_non_exhaustive()
    }
}

impl<W: Write> JsonLogLayer<W> {
    /// A layer writing to `writer` (usually the process's real stderr).
    pub fn new(writer: W) -> Self {
        JsonLogLayer {
            writer: Mutex::new(writer),
        }
    }
}

/// hclog's level names.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

/// Formats one event as an hclog JSON line (with its newline).
pub(crate) fn format_line(level: Level, target: &str, mut fields: Map<String, Value>) -> Vec<u8> {
    let message = match fields.remove("message") {
        Some(Value::String(message)) => message,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let mut line = Map::new();
    line.insert("@level".into(), level_name(level).into());
    line.insert("@message".into(), message.into());
    line.insert("@module".into(), target.into());
    line.insert(
        "@timestamp".into(),
        humantime::format_rfc3339_micros(SystemTime::now())
            .to_string()
            .into(),
    );
    line.extend(fields);
    let mut bytes = serde_json::to_vec(&Value::Object(line)).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

impl<S: Subscriber, W: Write + Send + 'static> Layer<S> for JsonLogLayer<W> {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut visitor = FieldVisitor(Map::new());
        event.record(&mut visitor);
        let metadata = event.metadata();
        let line = format_line(*metadata.level(), metadata.target(), visitor.0);
        if let Ok(mut writer) = self.writer.lock() {
            // Nothing sensible to do if the host stopped reading our stderr.
            let _ = writer.write_all(&line);
            let _ = writer.flush();
        }
    }
}

struct FieldVisitor(Map<String, Value>);

impl Visit for FieldVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_hclog_keys_and_fields() {
        let mut fields = Map::new();
        fields.insert("message".into(), "hello".into());
        fields.insert("n".into(), 3.into());
        let line = format_line(Level::WARN, "my_plugin::db", fields);
        assert_eq!(line.last(), Some(&b'\n'));
        let value: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["@level"], "warn");
        assert_eq!(value["@message"], "hello");
        assert_eq!(value["@module"], "my_plugin::db");
        assert_eq!(value["n"], 3);
        // hclog's layout: 2006-01-02T15:04:05.000000Z07:00, exactly six fractional digits.
        let stamp = value["@timestamp"].as_str().unwrap();
        assert_eq!(stamp.len(), "2006-01-02T15:04:05.000000Z".len(), "{stamp}");
        assert_eq!(&stamp[19..20], ".");
        assert!(stamp.ends_with('Z'));
    }
}
