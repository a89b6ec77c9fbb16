//! Telemetry shared by the services: logs, trace export and the metrics
//! every `/metrics` ends with, set up by one call at start
//! ([`init_with`], or [`init`] with the defaults) and flushed by one at
//! exit ([`shutdown`]).
//!
//! - Logs ([`logs`]): `tracing` to stderr, filtered by `RUST_LOG`
//!   (default `info`), text or JSON lines, with `trace_id` / `span_id`
//!   inside traced spans.
//! - Traces ([`trace`], [`sampling`], [`export`]): spans with target
//!   [`trace::TARGET`] are exported over OTLP (gRPC or HTTP/protobuf)
//!   through `tracing-opentelemetry`, when the standard `OTEL_*`
//!   variables name an endpoint; without one nothing is built and
//!   [`trace::sample`] answers no at the cost of one atomic load.
//! - Metrics: `process_*` ([`process`]) and `trace_*` (export figures:
//!   spans exported and dropped, an outage in progress), appended by
//!   [`finish_openmetrics`]; [`LATENCY_BUCKETS`] for latency histograms.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::resource::{EnvResourceDetector, ResourceDetector, TelemetryResourceDetector};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

mod export;
mod logs;
mod process;
mod sampling;
pub mod trace;

pub use logs::LogFormat;
pub use process::{cpu_seconds, finish_openmetrics, process_metrics, rss_bytes};

/// Histogram buckets (seconds) for latencies: 0.1 ms to 10 s in 1-2.5-5
/// steps, shared so every service's histograms line up on one dashboard.
pub const LATENCY_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// What a service's own configuration says about telemetry; the rest
/// comes from the standard environment variables.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub log_format: LogFormat,
    /// Share of feed messages (quotes and other non-order topics) that
    /// start a trace when they arrive without a sampled context.
    pub quote_ratio: f64,
    /// Share of order round trips and `orders.*` updates that start one.
    pub order_ratio: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { log_format: LogFormat::Auto, quote_ratio: 0.01, order_ratio: 1.0 }
    }
}

impl Settings {
    /// Checks the ratios; on failure, the config key at fault
    /// (`trace_quote_ratio` or `trace_order_ratio`, as every service names
    /// them) and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, ratio) in [("trace_quote_ratio", self.quote_ratio), ("trace_order_ratio", self.order_ratio)]
        {
            if !(0.0..=1.0).contains(&ratio) {
                return Err((key, format!("{ratio} is outside 0..=1")));
            }
        }
        Ok(())
    }
}

/// An environment variable telemetry cannot use.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {var}: {reason}")]
pub struct TelemetryError {
    var: &'static str,
    reason: String,
}

impl TelemetryError {
    pub(crate) fn new(var: &'static str, reason: impl Into<String>) -> Self {
        TelemetryError { var, reason: reason.into() }
    }

    /// The variable at fault.
    pub fn variable(&self) -> &'static str {
        self.var
    }
}

/// The log filter without `RUST_LOG`. redis-rs's cluster connection warns at every
/// attempt to reach a node that failed (about once a second for as long
/// as the node stays in the cluster's configuration); the services log
/// each outage themselves, once per shard, so the library's lines show
/// only from `error` up unless `RUST_LOG` asks for them.
const DEFAULT_FILTER: &str = "info,redis=error";

/// The sampling policy, set once when export is on.
static POLICY: OnceLock<sampling::Sampling> = OnceLock::new();

/// What [`shutdown`] flushes and stops.
struct Running {
    provider: SdkTracerProvider,
    /// Keeps the gRPC exporter's runtime thread alive.
    _grpc: Option<tokio::sync::oneshot::Sender<()>>,
}

static RUNNING: Mutex<Option<Running>> = Mutex::new(None);

pub(crate) fn sampling_policy() -> Option<&'static sampling::Sampling> {
    POLICY.get()
}

/// [`init_with`] the defaults; an unusable variable is logged and export
/// stays off (logs are set up in any case).
pub fn init(service: &str) {
    if let Err(e) = init_with(service, &Settings::default()) {
        tracing::error!("telemetry: {e}; traces are not exported");
    }
}

/// Installs the global subscriber (logs, and trace export when an OTLP
/// endpoint is configured) once; later calls do nothing and return `Ok`.
/// `service` is `service.name` unless `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES` name another. On an unusable variable, logs
/// are still set up (text, without export) and the error names it.
pub fn init_with(service: &str, settings: &Settings) -> Result<(), TelemetryError> {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let mut error = None;
    let format = settings.log_format.resolve(env("LOG_FORMAT").as_deref()).unwrap_or_else(|e| {
        error = Some(e);
        LogFormat::Text
    });
    let exporter = match prepare_export(settings, &env) {
        Ok(exporter) => exporter,
        Err(e) => {
            error.get_or_insert(e);
            None
        }
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let fmt = match format {
        LogFormat::Json => fmt
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(logs::Json)
            .boxed(),
        LogFormat::Text | LogFormat::Auto => fmt.event_format(logs::Text).boxed(),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Traced spans are for the exporter; log lines name them by trace id.
    let fmt = fmt.with_filter(filter.and(filter_fn(|m| !is_traced(m))));
    let otel = exporter.map(|(processor, sampling, grpc)| {
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampling::Honour)
            .with_resource(resource(service))
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("rtgate"))
            .with_location(false)
            .with_target(false)
            .with_threads(false)
            // Traced spans are INFO: debug callsites stay statically off.
            .with_filter(filter_fn(is_traced).with_max_level_hint(tracing::Level::INFO));
        let _ = POLICY.set(sampling);
        *RUNNING.lock().unwrap_or_else(PoisonError::into_inner) = Some(Running { provider, _grpc: grpc });
        layer
    });
    if tracing_subscriber::registry().with(fmt).with(otel).try_init().is_ok() {
        tracing::debug!(service, export = trace::enabled(), "telemetry initialised");
    }
    match error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

type Prepared = (export::Gate, sampling::Sampling, Option<tokio::sync::oneshot::Sender<()>>);

fn prepare_export(
    settings: &Settings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Prepared>, TelemetryError> {
    let base = sampling::Base::parse(
        env("OTEL_TRACES_SAMPLER").as_deref(),
        env("OTEL_TRACES_SAMPLER_ARG").as_deref(),
    )?;
    let Some(plan) = export::Plan::from_env(env)? else { return Ok(None) };
    let sampling =
        sampling::Sampling { base, quote_ratio: settings.quote_ratio, order_ratio: settings.order_ratio };
    let exporter = export::build(&plan)?;
    Ok(Some((exporter.processor, sampling, exporter.runtime)))
}

fn is_traced(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() && meta.target() == trace::TARGET
}

/// `service.name` by the specification's precedence: `OTEL_SERVICE_NAME`,
/// then `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, then the binary's
/// own name; the other attributes of `OTEL_RESOURCE_ATTRIBUTES` as given.
fn resource(service: &str) -> Resource {
    let from_attributes = EnvResourceDetector::new().detect();
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .map(opentelemetry::Value::from)
        .or_else(|| from_attributes.get(&opentelemetry::Key::new("service.name")))
        .unwrap_or_else(|| service.to_owned().into());
    Resource::builder_empty()
        .with_detectors(&[Box::new(TelemetryResourceDetector), Box::new(EnvResourceDetector::new())])
        .with_service_name(name)
        .build()
}

/// Exports the spans still queued (waiting at most 3 s: a dead collector
/// must not hold up the exit) and stops the exporter. Call once, at exit.
pub fn shutdown() {
    let running = RUNNING.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(running) = running
        && let Err(e) = running.provider.shutdown_with_timeout(Duration::from_secs(3))
    {
        tracing::debug!(error = %e, "trace export shutdown");
    }
}
