//! Log lines: text by default, JSON on request, both carrying `trace_id`
//! and `span_id` when written inside a traced span.
//!
//! The ids come from the OpenTelemetry context that the trace layer makes
//! current while a traced span is entered, so a line logged anywhere in a
//! fan-out or an order round trip names its trace, and a line logged
//! outside one costs a thread-local look-up. The formats are written here
//! because `tracing-subscriber`'s own cannot add those two fields.
//!
//! Nothing secret reaches a log line through this module: it prints the
//! event's own fields and the names and fields of its (non-trace) spans,
//! and configuration secrets are redacted by their types' `Debug`.

use std::fmt;

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `LOG_FORMAT` decides (`json` or `text`); unset means text.
    #[default]
    #[serde(rename = "")]
    Auto,
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Resolves `Auto` through the value of `LOG_FORMAT`.
    pub(crate) fn resolve(self, log_format_env: Option<&str>) -> Result<LogFormat, super::TelemetryError> {
        match (self, log_format_env) {
            (LogFormat::Auto, None) => Ok(LogFormat::Text),
            (LogFormat::Auto, Some(v)) if v.eq_ignore_ascii_case("json") => Ok(LogFormat::Json),
            (LogFormat::Auto, Some(v)) if v.eq_ignore_ascii_case("text") => Ok(LogFormat::Text),
            (LogFormat::Auto, Some(v)) => {
                Err(super::TelemetryError::new("LOG_FORMAT", format!("{v:?}: use text or json")))
            }
            (chosen, _) => Ok(chosen),
        }
    }
}

/// The trace and span of the traced span the current thread is in.
fn current_ids() -> Option<(TraceId, SpanId)> {
    opentelemetry::Context::map_current(|cx| {
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
    })
}

/// `2026-01-01T10:00:00.000000Z  INFO span{field=1}: target: message k=v trace_id=… span_id=…`
pub(crate) struct Text;

impl<S, N> FormatEvent<S, N> for Text
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        SystemTime.format_time(&mut w)?;
        let level = *meta.level();
        if w.has_ansi_escapes() {
            let colour = match level {
                Level::ERROR => "31",
                Level::WARN => "33",
                Level::INFO => "32",
                Level::DEBUG => "34",
                Level::TRACE => "35",
            };
            write!(w, " \x1b[{colour}m{level:>5}\x1b[0m ")?;
        } else {
            write!(w, " {level:>5} ")?;
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                w.write_str(span.name())?;
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(w, "{{{fields}}}")?;
                }
                w.write_char(':')?;
            }
            w.write_char(' ')?;
        }
        write!(w, "{}: ", meta.target())?;
        ctx.format_fields(w.by_ref(), event)?;
        if let Some((trace, span)) = current_ids() {
            write!(w, " trace_id={trace:032x} span_id={span:016x}")?;
        }
        writeln!(w)
    }
}

/// `{"timestamp","level","target","message",<fields>,"spans":[…],"trace_id","span_id"}`;
/// span fields must be formatted by `JsonFields`.
pub(crate) struct Json;

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        use serde_json::{Map, Value};
        let meta = event.metadata();
        let mut line = Map::new();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        line.insert("timestamp".into(), Value::String(timestamp));
        line.insert("level".into(), Value::String(meta.level().to_string()));
        line.insert("target".into(), Value::String(meta.target().to_owned()));
        event.record(&mut JsonVisitor(&mut line));
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    let mut entry = Map::new();
                    entry.insert("name".into(), Value::String(span.name().to_owned()));
                    if let Some(fields) = span.extensions().get::<FormattedFields<N>>() {
                        match serde_json::from_str::<Map<String, Value>>(fields) {
                            Ok(map) => entry.extend(map),
                            Err(_) if fields.is_empty() => {}
                            Err(_) => {
                                entry.insert("fields".into(), Value::String(fields.to_string()));
                            }
                        }
                    }
                    Value::Object(entry)
                })
                .collect();
            if !spans.is_empty() {
                line.insert("spans".into(), Value::Array(spans));
            }
        }
        if let Some((trace, span)) = current_ids() {
            line.insert("trace_id".into(), Value::String(format!("{trace:032x}")));
            line.insert("span_id".into(), Value::String(format!("{span:016x}")));
        }
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        w.write_str(&text)?;
        writeln!(w)
    }
}

/// Collects an event's fields into a JSON object.
struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_log_format() {
        assert_eq!(LogFormat::Auto.resolve(None).unwrap(), LogFormat::Text);
        assert_eq!(LogFormat::Auto.resolve(Some("JSON")).unwrap(), LogFormat::Json);
        assert_eq!(LogFormat::Text.resolve(Some("json")).unwrap(), LogFormat::Text, "the config wins");
        let e = LogFormat::Auto.resolve(Some("xml")).unwrap_err().to_string();
        assert!(e.contains("LOG_FORMAT"), "{e}");
    }
}
