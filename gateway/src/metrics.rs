//! The node's counters and gauges, exposed on `/metrics` in the
//! Prometheus/OpenMetrics text format.
//!
//! Hot-path counters are plain atomics bumped once per batch (not once per
//! frame per subscriber), so counting costs nothing measurable. Process
//! figures (CPU seconds, RSS, open files) are read from `/proc` at scrape
//! time, as benchmarks quote them next to message rates.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use wire::{CloseCode, ErrorCode};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Default)]
pub struct Metrics {
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// WebSocket connections accepted since start.
    pub connections_accepted: Counter,
    /// Connections refused, by reason (full, per_ip, pending_per_ip,
    /// draining, origin).
    pub connections_refused: Family<CodeLabel, Counter>,
    /// Accepted TCP connections not (yet) upgraded to a WebSocket.
    pub http_connections: Gauge,
    /// Connections closed for not sending a whole request in time.
    pub request_timeouts: Counter,
    /// `accept()` failures (out of files), each followed by a backoff.
    pub accept_errors: Counter,
    /// Subscriptions held by all connections.
    pub subscriptions: Gauge,
    /// Topics with at least one local subscriber.
    pub topics: Gauge,
    /// Envelopes received from the backplane.
    pub backplane_messages: Counter,
    /// Envelopes refused as malformed (logged, skipped).
    pub backplane_invalid: Counter,
    /// Backplane connections (re)established after a loss.
    pub backplane_reconnects: Counter,
    /// Backplane pub/sub connections currently up.
    pub backplane_up: Gauge,
    /// Frames written to client sockets.
    pub frames_sent: Counter,
    /// Socket writes (flushes); frames_sent / socket_writes is the batching.
    pub socket_writes: Counter,
    /// Frames a full outbound queue could not take.
    pub frames_dropped: Counter,
    /// Quotes that replaced an older pending quote of a slow client.
    pub frames_conflated: Counter,
    /// `error` frames sent, by code.
    pub client_errors: Family<CodeLabel, Counter>,
    /// Connections the gateway closed, by close reason.
    pub closes: Family<CodeLabel, Counter>,
    /// Messages accepted by `POST /publish`.
    pub http_published: Counter,
    /// Order requests handed to the order service.
    pub orders_submitted: Counter,
    /// Orders that got no reply in time.
    pub order_timeouts: Counter,
    /// Envelopes replayed from history or sent as snapshots on subscribe.
    pub recovered: Counter,
    /// Gaps in an order topic's live stream filled from its history.
    pub gaps_filled: Counter,
}

impl Metrics {
    pub fn client_error(&self, code: ErrorCode) {
        self.client_errors.get_or_create(&CodeLabel { code: code.as_str() }).inc();
    }

    pub fn refused(&self, reason: &'static str) {
        self.connections_refused.get_or_create(&CodeLabel { code: reason }).inc();
    }

    pub fn closed(&self, code: CloseCode) {
        self.closes.get_or_create(&CodeLabel { code: code.reason() }).inc();
    }

    /// Renders every metric; process figures are appended from `/proc`.
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("gateway");
        let m = self;
        registry.register("connections", "Open WebSocket connections", m.connections.clone());
        registry.register(
            "connections_accepted",
            "WebSocket connections accepted",
            m.connections_accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused, by reason",
            m.connections_refused.clone(),
        );
        registry.register(
            "http_connections",
            "Accepted connections not upgraded to a WebSocket",
            m.http_connections.clone(),
        );
        registry.register(
            "request_timeouts",
            "Connections closed for an unfinished request",
            m.request_timeouts.clone(),
        );
        registry.register("accept_errors", "accept() failures (out of files)", m.accept_errors.clone());
        registry.register("subscriptions", "Subscriptions held by all connections", m.subscriptions.clone());
        registry.register("topics", "Topics with at least one local subscriber", m.topics.clone());
        registry.register(
            "backplane_messages",
            "Envelopes received from the backplane",
            m.backplane_messages.clone(),
        );
        registry.register("backplane_invalid", "Malformed envelopes skipped", m.backplane_invalid.clone());
        registry.register(
            "backplane_reconnects",
            "Backplane connections re-established",
            m.backplane_reconnects.clone(),
        );
        registry.register("backplane_up", "Backplane pub/sub connections up", m.backplane_up.clone());
        registry.register("frames_sent", "Frames written to client sockets", m.frames_sent.clone());
        registry.register("socket_writes", "Batched socket writes", m.socket_writes.clone());
        registry.register(
            "frames_conflated",
            "Pending quotes replaced by newer ones",
            m.frames_conflated.clone(),
        );
        registry.register(
            "frames_dropped",
            "Frames refused by a full outbound queue",
            m.frames_dropped.clone(),
        );
        registry.register("client_errors", "Error frames sent to clients, by code", m.client_errors.clone());
        registry.register("closes", "Connections closed by the gateway, by reason", m.closes.clone());
        registry.register("http_published", "Messages accepted by POST /publish", m.http_published.clone());
        registry.register(
            "orders_submitted",
            "Order requests sent to the order service",
            m.orders_submitted.clone(),
        );
        registry.register("order_timeouts", "Orders with no reply in time", m.order_timeouts.clone());
        registry.register(
            "recovered",
            "Envelopes sent from history or snapshot on subscribe",
            m.recovered.clone(),
        );
        registry.register("gaps_filled", "Live-stream gaps filled from history", m.gaps_filled.clone());
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        service::telemetry::finish_openmetrics(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_process_figures() {
        let m = Metrics::default();
        m.frames_sent.inc_by(3);
        m.client_error(ErrorCode::InvalidJson);
        let text = m.render();
        assert!(text.contains("gateway_frames_sent_total 3"), "{text}");
        assert!(text.contains(r#"gateway_client_errors_total{code="invalid_json"} 1"#), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
