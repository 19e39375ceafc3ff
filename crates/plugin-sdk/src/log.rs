//! A `tracing` layer that writes go-plugin's (hclog's) JSON log lines.

use std::fmt::{self, Debug};
use std::io::Write;
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Writes each `tracing` event as one hclog JSON line:
/// `{"@level":"info","@message":"...","@module":"<target>","@timestamp":"...",<fields>}`.
///
/// A go-plugin host (and a tether host) reads these lines from the plugin's stderr and
/// shows them at their own level with their fields. An event inside spans also carries the
/// fields of those spans (the event's own win), so an event logged while serving a call
/// carries that call's `trace_id` and `span_id` (see [`crate::Plugin::serve`]).
/// [`crate::Plugin::run`] installs it on the real stderr unless told not to.
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
    // A map with string keys of JSON values, written to memory: nothing in it can fail.
    let mut bytes = serde_json::to_vec(&Value::Object(line))
        .expect("a JSON object with string keys always serialises to memory");
    bytes.push(b'\n');
    bytes
}

/// The fields a span was created with, kept in its extensions for the events inside it.
struct SpanFields(Map<String, Value>);

impl<S, W> Layer<S> for JsonLogLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: Write + Send + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut visitor = FieldVisitor(Map::new());
        attrs.record(&mut visitor);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(visitor.0));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut visitor = FieldVisitor(Map::new());
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<SpanFields>() {
                    visitor.0.extend(fields.0.clone());
                }
            }
        }
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

    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn events_carry_the_fields_of_their_spans() {
        use tracing_subscriber::layer::SubscriberExt;
        let out = Shared::default();
        let subscriber = tracing_subscriber::registry().with(JsonLogLayer::new(out.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("call", trace_id = "abc", n = 1);
            let _outer = outer.enter();
            let inner = tracing::info_span!("step", n = 2);
            let _inner = inner.enter();
            tracing::info!(extra = true, "inside");
        });
        tracing::subscriber::with_default(
            tracing_subscriber::registry().with(JsonLogLayer::new(out.clone())),
            || tracing::info!("outside"),
        );
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["@message"], "inside");
        assert_eq!(lines[0]["trace_id"], "abc");
        assert_eq!(lines[0]["n"], 2, "the innermost span wins");
        assert_eq!(lines[0]["extra"], true);
        assert!(lines[1].get("trace_id").is_none(), "{}", lines[1]);
    }
}
