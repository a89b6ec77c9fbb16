//! OTLP export of finished spans, kept off the data path.
//!
//! Configured only by the standard variables: with neither
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` nor `OTEL_EXPORTER_OTLP_ENDPOINT`
//! set (or with `OTEL_SDK_DISABLED=true` / `OTEL_TRACES_EXPORTER=none`)
//! nothing is built. Otherwise `OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL`
//! picks gRPC (`grpc`) or HTTP/protobuf (`http/protobuf`, the
//! specification's default); endpoints, headers, timeout and compression
//! are read by `opentelemetry-otlp` from their usual variables, queue and
//! batch sizes by the SDK from `OTEL_BSP_*`.
//!
//! Spans go through the SDK's batch processor: the thread that ends a span
//! only puts it into a bounded queue (`OTEL_BSP_MAX_QUEUE_SIZE`, default
//! 2048) and never waits; the processor's own thread exports. A collector
//! that is down or slow therefore costs the data path nothing: the queue
//! fills and further spans are dropped. The SDK keeps its drop count to
//! itself, so [`Gate`] admits at most the queue's size in flight and
//! counts what it refuses, and [`Counted`] counts what the exporter sent
//! or lost; both land in [`STATS`], which every `/metrics` shows. An
//! outage is logged once when it starts and once when it ends, never per
//! span (the SDK's internal logging is compiled out).
//!
//! gRPC needs a Tokio runtime for its connection: it gets a
//! single-threaded one on a thread of its own (`otel-grpc`), so export
//! I/O never competes with the service's runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_otlp::{SpanExporter as OtlpExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor,
};

use super::TelemetryError;

/// The SDK's default queue size (`OTEL_BSP_MAX_QUEUE_SIZE`).
const DEFAULT_QUEUE: usize = 2048;

/// Which wire protocol spans travel on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// What the environment asks for, when it asks for export at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) protocol: Protocol,
    /// Spans that may wait for the exporter.
    pub(crate) queue: usize,
}

impl Plan {
    /// Reads the standard variables through `env` (which returns set,
    /// non-empty values); `Ok(None)` means no export.
    pub(crate) fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Plan>, TelemetryError> {
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match env("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(TelemetryError::new(
                    "OTEL_TRACES_EXPORTER",
                    format!("{other:?}: only otlp and none are supported"),
                ));
            }
        }
        if env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none() && env("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        {
            return Ok(None);
        }
        let (var, value) = match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
            Some(v) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", v),
            None => ("OTEL_EXPORTER_OTLP_PROTOCOL", env("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_default()),
        };
        let protocol = match value.as_str() {
            "" | "http/protobuf" => Protocol::HttpProtobuf,
            "grpc" => Protocol::Grpc,
            other => {
                return Err(TelemetryError::new(var, format!("{other:?}: use grpc or http/protobuf")));
            }
        };
        let queue = match env("OTEL_BSP_MAX_QUEUE_SIZE") {
            None => DEFAULT_QUEUE,
            Some(v) => v.parse().ok().filter(|n| (1..=1_000_000).contains(n)).ok_or_else(|| {
                TelemetryError::new("OTEL_BSP_MAX_QUEUE_SIZE", format!("{v:?} is not a size in 1..=1000000"))
            })?,
        };
        Ok(Some(Plan { protocol, queue }))
    }
}

/// The running exporter: the batch processor (inside the provider) and,
/// for gRPC, the thread whose runtime carries its connection.
pub(crate) struct Exporter {
    pub(crate) processor: Gate,
    /// Ends the gRPC runtime's thread when dropped.
    pub(crate) runtime: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Builds the exporter `plan` asks for; endpoint, headers and timeout come
/// from the environment through `opentelemetry-otlp`.
pub(crate) fn build(plan: &Plan) -> Result<Exporter, TelemetryError> {
    let queued = Arc::new(AtomicUsize::new(0));
    let batch = BatchConfigBuilder::default().with_max_queue_size(plan.queue).build();
    let invalid = |e: opentelemetry_otlp::ExporterBuildError| {
        let var = if std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some() {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        } else {
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        };
        TelemetryError::new(var, e.to_string())
    };
    let (processor, runtime) = match plan.protocol {
        Protocol::HttpProtobuf => {
            let exporter = OtlpExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .build()
                .map_err(invalid)?;
            (BatchSpanProcessor::new(Counted { inner: exporter, queued: Arc::clone(&queued) }, batch), None)
        }
        Protocol::Grpc => {
            let (exporter, stop) = grpc_exporter().map_err(|e| match e {
                GrpcError::Build(e) => invalid(e),
                GrpcError::Runtime(e) => TelemetryError::new("OTEL_EXPORTER_OTLP_PROTOCOL", e),
            })?;
            (
                BatchSpanProcessor::new(Counted { inner: exporter, queued: Arc::clone(&queued) }, batch),
                Some(stop),
            )
        }
    };
    STATS.enabled.store(true, Ordering::Relaxed);
    Ok(Exporter { processor: Gate { inner: processor, queued, capacity: plan.queue }, runtime })
}

enum GrpcError {
    Build(opentelemetry_otlp::ExporterBuildError),
    Runtime(String),
}

/// Builds the tonic exporter inside a runtime that lives on its own
/// thread until the returned sender is dropped.
fn grpc_exporter() -> Result<(OtlpExporter, tokio::sync::oneshot::Sender<()>), GrpcError> {
    let (built_tx, built_rx) = std::sync::mpsc::sync_channel(1);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("otel-grpc".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = built_tx.send(Err(GrpcError::Runtime(format!("starting its runtime: {e}"))));
                    return;
                }
            };
            let built = {
                // The channel's worker is spawned onto this runtime.
                let _enter = runtime.enter();
                OtlpExporter::builder().with_tonic().build().map_err(GrpcError::Build)
            };
            let ok = built.is_ok();
            let _ = built_tx.send(built);
            if ok {
                // Drive the connection until the sender is dropped (or the
                // process ends).
                let _ = runtime.block_on(stop_rx);
            }
        })
        .map_err(|e| GrpcError::Runtime(format!("starting its thread: {e}")))?;
    let exporter = built_rx.recv().map_err(|_| GrpcError::Runtime("its thread ended at start".into()))??;
    Ok((exporter, stop_tx))
}

/// Export figures and the outage state, shared by every exporter of the
/// process and rendered into `/metrics` by [`render`].
pub(crate) struct Stats {
    enabled: AtomicBool,
    exported: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_export_failed: AtomicU64,
    /// Set while spans are being lost; the first loss logs, the recovery
    /// logs, nothing in between.
    failing: AtomicBool,
    /// Spans lost since the last export, so a collector slow enough to
    /// fill the queue between exports is one outage, not one per export.
    lost_since_export: AtomicU64,
    lost_in_outage: AtomicU64,
}

pub(crate) static STATS: Stats = Stats {
    enabled: AtomicBool::new(false),
    exported: AtomicU64::new(0),
    dropped_queue_full: AtomicU64::new(0),
    dropped_export_failed: AtomicU64::new(0),
    failing: AtomicBool::new(false),
    lost_since_export: AtomicU64::new(0),
    lost_in_outage: AtomicU64::new(0),
};

impl Stats {
    fn lost(&self, n: u64, why: &dyn std::fmt::Display) {
        self.lost_since_export.fetch_add(n, Ordering::Relaxed);
        self.lost_in_outage.fetch_add(n, Ordering::Relaxed);
        if !self.failing.swap(true, Ordering::AcqRel) {
            // Not about the span being ended here: log outside its trace.
            let _outside = Context::new().attach();
            tracing::warn!(
                error = %why,
                "trace export failing: spans are dropped (counted in trace_spans_dropped_total) until it recovers"
            );
        }
    }

    fn exported(&self, n: u64) {
        self.exported.fetch_add(n, Ordering::Relaxed);
        let lost_meanwhile = self.lost_since_export.swap(0, Ordering::AcqRel);
        if lost_meanwhile == 0 && self.failing.swap(false, Ordering::AcqRel) {
            let _outside = Context::new().attach();
            let dropped = self.lost_in_outage.swap(0, Ordering::Relaxed);
            tracing::info!(dropped, "trace export recovered");
        }
    }
}

/// Appends the `trace_*` metrics (OpenMetrics text).
pub(crate) fn render(out: &mut String) {
    use std::fmt::Write;
    let s = &STATS;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let _ = write!(
        out,
        "# TYPE trace_export_enabled gauge\n# HELP trace_export_enabled 1 when spans are exported over OTLP\n\
         trace_export_enabled {}\n\
         # TYPE trace_export_failing gauge\n# HELP trace_export_failing 1 while spans are being dropped\n\
         trace_export_failing {}\n\
         # TYPE trace_spans_exported counter\n# HELP trace_spans_exported Spans the collector accepted\n\
         trace_spans_exported_total {}\n\
         # TYPE trace_spans_dropped counter\n# HELP trace_spans_dropped Spans lost: export queue full or export failed\n\
         trace_spans_dropped_total{{reason=\"queue_full\"}} {}\n\
         trace_spans_dropped_total{{reason=\"export_failed\"}} {}\n",
        u8::from(s.enabled.load(Ordering::Relaxed)),
        u8::from(s.failing.load(Ordering::Relaxed)),
        get(&s.exported),
        get(&s.dropped_queue_full),
        get(&s.dropped_export_failed),
    );
}

/// In front of the batch processor: refuses (and counts) a span when the
/// queue's size is already in flight, so the SDK never drops one
/// uncounted. In flight means ended and not yet handed to the exporter.
#[derive(Debug)]
pub(crate) struct Gate {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl SpanProcessor for Gate {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            STATS.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
            STATS.lost(1, &"export queue full (collector slow or unreachable)");
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what it sends and loses.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        self.queued.fetch_sub(n, Ordering::AcqRel);
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => STATS.exported(n as u64),
            Err(e) => {
                STATS.dropped_export_failed.fetch_add(n as u64, Ordering::Relaxed);
                STATS.lost(n as u64, e);
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn plan(vars: &[(&str, &str)]) -> Result<Option<Plan>, TelemetryError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Plan::from_env(&|k: &str| map.get(k).cloned())
    }

    #[test]
    fn no_endpoint_means_no_export() {
        assert_eq!(plan(&[]).unwrap(), None);
        assert_eq!(plan(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap(), None);
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")];
        assert_eq!(plan(&on).unwrap(), Some(Plan { protocol: Protocol::HttpProtobuf, queue: DEFAULT_QUEUE }));
        let disabled = [on[0], ("OTEL_SDK_DISABLED", "true")];
        assert_eq!(plan(&disabled).unwrap(), None);
        let none = [on[0], ("OTEL_TRACES_EXPORTER", "none")];
        assert_eq!(plan(&none).unwrap(), None);
    }

    #[test]
    fn protocol_and_queue_from_the_standard_variables() {
        let grpc = plan(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "16"),
        ]);
        assert_eq!(grpc.unwrap(), Some(Plan { protocol: Protocol::Grpc, queue: 16 }));
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
        ] {
            let e = plan(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x"), (var, value)]).unwrap_err();
            assert!(e.to_string().contains(var), "{e}");
        }
    }
}
