//! The publisher's counters and gauges, exposed on `/metrics` in the
//! Prometheus/OpenMetrics text format.
//!
//! Counters are bumped once per batch, not once per message, so counting
//! costs nothing measurable at the feed's rates. Process CPU and memory
//! are read from `/proc` at scrape time, as benchmarks quote them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

/// The `code` label of a successful order reply.
pub const REPLY_OK: &str = "ok";

/// A latency histogram (seconds) on the buckets every service shares.
#[derive(Clone)]
pub struct Latency(Histogram);

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::new(service::telemetry::LATENCY_BUCKETS))
    }
}

impl Latency {
    pub fn observe(&self, elapsed: std::time::Duration) {
        self.0.observe(elapsed.as_secs_f64());
    }

    /// Observes a wait measured from a Unix-ms timestamp set by another
    /// process (clocks may differ: a negative wait counts as zero).
    pub fn observe_since_ms(&self, ts_ms: u64) {
        self.0.observe(wire::now_ms().saturating_sub(ts_ms) as f64 / 1000.0);
    }
}

#[derive(Default)]
pub struct Metrics {
    /// Quotes published (feed and `POST /publish` on `quotes.*`).
    pub quotes_published: Counter,
    /// Quotes not sent because Redis was away or the feed fell behind;
    /// only the latest quote matters, so these are skipped, not retried.
    pub quotes_skipped: Counter,
    /// Order updates written (history + publish), each counted once.
    pub order_updates_published: Counter,
    /// Retried order updates that Redis had already applied (deduplicated).
    pub order_updates_deduplicated: Counter,
    /// Order updates waiting in memory to be written.
    pub buffered_updates: Gauge,
    /// Order requests answered.
    pub requests_served: Counter,
    /// Order requests dropped unanswered: unreadable, or older than
    /// `request_max_age_ms`.
    pub requests_skipped: Counter,
    /// Order requests taken over from a replica that stopped serving them.
    pub requests_claimed: Counter,
    /// Replies sent, by code (`ok` or the error code).
    pub replies: Family<CodeLabel, Counter>,
    /// Redis writes that failed (each attempt).
    pub publish_failures: Counter,
    /// Attempts repeated after a failure.
    pub retries: Counter,
    /// Times Redis became unreachable.
    pub redis_outages: Counter,
    /// 1 while Redis answers.
    pub redis_up: Gauge,
    /// Messages accepted by `POST /publish`.
    pub http_published: Counter,
    /// One backplane round trip of the quote feed (a whole batch).
    pub feed_write_seconds: Latency,
    /// From a gateway's enqueueing an order request (its `ts`) to this
    /// service taking it: time spent waiting in the request stream.
    pub order_request_wait_seconds: Latency,
    /// From taking an order request to its reply sent: validation and the
    /// reply's publish (the order service's own time).
    pub order_service_seconds: Latency,
    /// From an order update's creation to the backplane's having it
    /// (queue wait plus write, retries included).
    pub order_update_write_seconds: Latency,
}

impl Metrics {
    pub fn reply(&self, code: &'static str) {
        self.replies.get_or_create(&CodeLabel { code }).inc();
    }

    /// Renders every metric; process figures are appended from `/proc`.
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("publisher");
        let m = self;
        registry.register("quotes_published", "Quotes published", m.quotes_published.clone());
        registry.register(
            "quotes_skipped",
            "Quotes skipped while Redis was away or the feed was behind",
            m.quotes_skipped.clone(),
        );
        registry.register(
            "order_updates_published",
            "Order updates written to history and published",
            m.order_updates_published.clone(),
        );
        registry.register(
            "order_updates_deduplicated",
            "Retried order updates Redis had already applied",
            m.order_updates_deduplicated.clone(),
        );
        registry.register(
            "buffered_updates",
            "Order updates waiting to be written",
            m.buffered_updates.clone(),
        );
        registry.register("requests_served", "Order requests answered", m.requests_served.clone());
        registry.register(
            "requests_skipped",
            "Order requests dropped unanswered (unreadable or too old)",
            m.requests_skipped.clone(),
        );
        registry.register(
            "requests_claimed",
            "Order requests claimed from an idle replica",
            m.requests_claimed.clone(),
        );
        registry.register("replies", "Order replies sent, by code", m.replies.clone());
        registry.register("publish_failures", "Failed Redis write attempts", m.publish_failures.clone());
        registry.register("retries", "Redis writes retried after a failure", m.retries.clone());
        registry.register("redis_outages", "Times Redis became unreachable", m.redis_outages.clone());
        registry.register("redis_up", "1 while Redis answers", m.redis_up.clone());
        registry.register("http_published", "Messages accepted by POST /publish", m.http_published.clone());
        let latencies = [
            ("feed_write_seconds", "Backplane round trip of one quote feed batch", &m.feed_write_seconds),
            (
                "order_request_wait_seconds",
                "Wait of an order request from the gateway's enqueue to this service",
                &m.order_request_wait_seconds,
            ),
            (
                "order_service_seconds",
                "Order service time, from taking a request to its reply sent",
                &m.order_service_seconds,
            ),
            (
                "order_update_write_seconds",
                "From an order update's creation to the backplane's having it",
                &m.order_update_write_seconds,
            ),
        ];
        for (name, help, latency) in latencies {
            registry.register(name, help, latency.0.clone());
        }
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
        m.quotes_published.inc_by(3);
        m.reply("invalid_side");
        m.buffered_updates.set(2);
        m.order_service_seconds.observe(std::time::Duration::from_micros(300));
        let text = m.render();
        assert!(text.contains(r#"publisher_order_service_seconds_bucket{le="0.0005"} 1"#), "{text}");
        assert!(text.contains(r#"publisher_order_service_seconds_bucket{le="0.00025"} 0"#), "{text}");
        assert!(text.contains("publisher_quotes_published_total 3"), "{text}");
        assert!(text.contains(r#"publisher_replies_total{code="invalid_side"} 1"#), "{text}");
        assert!(text.contains("publisher_buffered_updates 2"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
