//! Logging set-up shared by the binaries: `tracing` to stderr, filtered by
//! `RUST_LOG` (default `info`), as JSON lines when `LOG_FORMAT=json`.
//!
//! Trace export (OTLP to Jaeger) plugs in here as one more layer, so every
//! binary gets it from the same call.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls are no-ops (tests).
pub fn init(service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = if json { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
    if result.is_ok() {
        tracing::debug!(service, "telemetry initialised");
    }
}
