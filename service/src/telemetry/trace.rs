//! Traced spans that cross processes: deciding whether a unit of work is
//! traced, continuing a `traceparent`, and handing one on.
//!
//! A traced span is an ordinary `tracing` span with target [`TARGET`];
//! only those reach OpenTelemetry (other spans and events stay local to
//! the logs). Every trace root goes through [`sample`] (or [`start`],
//! which calls it): when it says no, or when export is off, no span is
//! made and the work costs one branch (plus parsing the `traceparent`, if
//! the message carries one). Spans created inside a traced span (with
//! `parent:` or as the current span) follow it.
//!
//! ```ignore
//! use service::telemetry::trace::{self, Kind, Role};
//! // Publisher, per message: a span when sampled, and the traceparent for its envelope.
//! let published = trace::publish(topic.as_str(), incoming_header);
//! let traceparent = published.as_ref().map(|p| p.traceparent.as_str());
//! // Continuing a context that arrived with a request (header or stream field):
//! let span = trace::start("publisher.order", Role::Consumer, Kind::Order, request.traceparent.as_deref());
//! // A later order update, in the order's trace and linked to it:
//! let update = trace::start("publisher.order.update", Role::Producer, Kind::Order, Some(&order_traceparent));
//! ```

use opentelemetry::trace::{SpanContext, TraceContextExt};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use super::sampling::Kind;
use super::sampling::{PRIORITY, format_traceparent, parse_traceparent};

/// The `tracing` target of spans that are exported (at level INFO or
/// above: the exporter's filter admits nothing more verbose).
pub const TARGET: &str = "rtgate::trace";

/// A positive sampling decision: the span to make continues `parent`, or
/// is a new root when there is none.
#[derive(Debug)]
#[must_use = "a sampled decision does nothing until attached to a span"]
pub struct Sampled {
    parent: Option<SpanContext>,
}

impl Sampled {
    /// Makes `span` (created with target [`TARGET`], not yet entered) the
    /// traced span this decision is for: its parent is the incoming
    /// context or none (whatever local `tracing` span it was created in,
    /// which only shapes the log lines).
    pub fn attach(self, span: &Span) {
        let parent = match self.parent {
            Some(parent) => opentelemetry::Context::new().with_remote_span_context(parent),
            None => opentelemetry::Context::new(),
        };
        let _ = span.set_parent(parent);
        span.set_attribute(PRIORITY, 1);
    }

    /// Whether the span continues an incoming context.
    pub fn has_parent(&self) -> bool {
        self.parent.is_some()
    }
}

/// Decides whether a unit of work of `kind` continuing `traceparent` is
/// traced. `None` when it is not, or when trace export is off.
pub fn sample(kind: Kind, traceparent: Option<&str>) -> Option<Sampled> {
    let sampling = super::sampling_policy()?;
    let parent = traceparent.and_then(parse_traceparent);
    sampling.decide(kind, parent.as_ref().map(SpanContext::is_sampled)).then_some(Sampled { parent })
}

/// What a span does, as OpenTelemetry's span kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends a message (publish).
    Producer,
    /// Handles a message it received (fan-out, order service).
    Consumer,
    /// Answers a request (`POST /publish`, an order at the gateway).
    Server,
    /// Asks another service.
    Client,
    Internal,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
            Role::Server => "server",
            Role::Client => "client",
            Role::Internal => "internal",
        }
    }
}

/// Starts a traced span named `name` when [`sample`] says so: a child of
/// `traceparent` if given and valid, else a root. Record attributes with
/// [`set_attribute`]; the span ends when dropped.
pub fn start(name: &'static str, role: Role, kind: Kind, traceparent: Option<&str>) -> Option<Span> {
    let sampled = sample(kind, traceparent)?;
    let span = tracing::info_span!(target: TARGET, "traced", otel.name = name, otel.kind = role.as_str());
    sampled.attach(&span);
    Some(span)
}

/// A traced span and the `traceparent` that hands it on.
#[derive(Debug)]
pub struct Traced {
    /// Ends when dropped (or when last exited, if entered).
    pub span: Span,
    pub traceparent: String,
}

/// Starts a `publisher.publish` span (producer) for a message on `topic` when
/// sampled (at the topic family's ratio, or following `incoming`, e.g. a
/// `POST /publish` header), and returns it with the `traceparent` to
/// write into the envelope.
pub fn publish(topic: &str, incoming: Option<&str>) -> Option<Traced> {
    let span = start("publisher.publish", Role::Producer, Kind::of_topic(topic), incoming)?;
    span.set_attribute("messaging.destination.name", topic.to_owned());
    let traceparent = traceparent(&span)?;
    Some(Traced { span, traceparent })
}

/// A traced span named `name` inside `parent` (same trace); disabled when
/// `parent` is not traced.
pub fn child(name: &'static str, role: Role, parent: &Span) -> Span {
    if parent.is_disabled() {
        return Span::none();
    }
    tracing::info_span!(target: TARGET, parent: parent, "traced", otel.name = name, otel.kind = role.as_str())
}

/// The W3C `traceparent` of a traced span, to hand to the next hop.
pub fn traceparent(span: &Span) -> Option<String> {
    let cx = span.context();
    let span_ref = cx.span();
    let sc = span_ref.span_context();
    sc.is_valid().then(|| format_traceparent(sc))
}

/// The `traceparent` the next hop gets: `span`'s when this process traces
/// the work, else a valid `incoming` one unchanged (so a process that does
/// not trace never breaks a trace that passes through it).
pub fn hand_on(span: Option<&Span>, incoming: Option<&str>) -> Option<String> {
    match span {
        Some(span) => traceparent(span),
        None => incoming.filter(|tp| is_valid(tp)).map(str::to_owned),
    }
}

/// Links `span` to the trace of `traceparent` (ignored if malformed).
pub fn link(span: &Span, traceparent: &str) {
    if let Some(cx) = parse_traceparent(traceparent) {
        span.add_link(cx);
    }
}

/// Sets an attribute on a traced span (a no-op on others).
pub fn set_attribute(span: &Span, key: &'static str, value: impl Into<opentelemetry::Value>) {
    span.set_attribute(key, value);
}

/// The trace id and span id of a traced span, as lowercase hex.
pub fn ids(span: &Span) -> Option<(String, String)> {
    let cx = span.context();
    let span_ref = cx.span();
    let sc = span_ref.span_context();
    sc.is_valid().then(|| (format!("{:032x}", sc.trace_id()), format!("{:016x}", sc.span_id())))
}

/// Whether `traceparent` is well formed (worth handing on unchanged by a
/// process that does not trace itself).
pub fn is_valid(traceparent: &str) -> bool {
    parse_traceparent(traceparent).is_some()
}

/// Whether spans are exported at all (an OTLP endpoint is configured).
pub fn enabled() -> bool {
    super::sampling_policy().is_some()
}
