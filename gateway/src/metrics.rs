//! The node's counters and gauges, exposed on `/metrics` in the
//! Prometheus/OpenMetrics text format.
//!
//! Hot-path counters are plain atomics bumped once per batch (not once per
//! frame per subscriber), so counting costs nothing measurable. Latency
//! histograms are observed on sampled messages (publish latency, fan-out
//! duration: every order update, 1 feed message in 8; queue wait: 1
//! message in 64, per subscriber) or once per order, labelled by topic
//! family or outcome, never by topic. Process
//! figures (CPU seconds, RSS, open files) and the trace export figures are
//! appended at scrape time by `service::telemetry`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use wire::{CloseCode, ErrorCode, TopicFamily};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

/// One backplane link: `0`.. for the single-Redis connections, the
/// first slot range (`0-5460`) for a cluster shard; bounded by the
/// connections configured or the shards of the cluster, whichever master
/// serves them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabel {
    pub family: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(service::telemetry::LATENCY_BUCKETS)
}

/// One latency histogram per topic family, looked up without hashing on
/// the hot path.
pub struct ByFamily {
    family: Histograms<FamilyLabel>,
    quotes: Histogram,
    orders: Histogram,
    other: Histogram,
}

impl Default for ByFamily {
    fn default() -> Self {
        let family: Histograms<FamilyLabel> = Family::new_with_constructor(latency_histogram);
        let get = |name| family.get_or_create_owned(&FamilyLabel { family: name });
        let (quotes, orders, other) = (get("quotes"), get("orders"), get("other"));
        ByFamily { family, quotes, orders, other }
    }
}

impl ByFamily {
    pub fn get(&self, family: TopicFamily) -> &Histogram {
        match family {
            TopicFamily::Quotes => &self.quotes,
            TopicFamily::Orders => &self.orders,
            TopicFamily::Other => &self.other,
        }
    }
}

/// How an order round trip ended, as the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderOutcome {
    /// The order service replied with data.
    Ok,
    /// It replied with an error (a refused order).
    Refused,
    /// No reply within `order_timeout_ms`.
    Timeout,
    /// The request could not be handed to the order service.
    Unavailable,
}

impl OrderOutcome {
    pub fn label(self) -> &'static str {
        match self {
            OrderOutcome::Ok => "ok",
            OrderOutcome::Refused => "refused",
            OrderOutcome::Timeout => "timeout",
            OrderOutcome::Unavailable => "unavailable",
        }
    }
}

pub struct OrderLatency(Histograms<OutcomeLabel>);

impl Default for OrderLatency {
    /// Every outcome is shown from the start, so a dashboard's rate() sees
    /// the first order of each kind.
    fn default() -> Self {
        let family: Histograms<OutcomeLabel> = Family::new_with_constructor(latency_histogram);
        for outcome in
            [OrderOutcome::Ok, OrderOutcome::Refused, OrderOutcome::Timeout, OrderOutcome::Unavailable]
        {
            family.get_or_create_owned(&OutcomeLabel { outcome: outcome.label() });
        }
        OrderLatency(family)
    }
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
    /// Backplane pub/sub connections currently up (single Redis); 1 when
    /// every shard is up (Redis Cluster).
    pub backplane_up: Gauge,
    /// Per link (connection or cluster shard): 1 while up and holding
    /// every subscription it carries.
    pub backplane_shard_up: Family<ShardLabel, Gauge>,
    /// Per link: connections lost.
    pub backplane_shard_losses: Family<ShardLabel, Counter>,
    /// Per link: subscriptions restored in one go (after a reconnect, a
    /// failover or a slot move).
    pub backplane_shard_resubscribes: Family<ShardLabel, Counter>,
    /// Per link: delivery probes that did not come back in time, each of
    /// which reconnected the link.
    pub backplane_probe_failures: Family<ShardLabel, Counter>,
    /// Per cluster shard: 1 while a replica holds standby subscriptions
    /// of its topics (`redis_cluster_standby`).
    pub backplane_standby_up: Family<ShardLabel, Gauge>,
    /// Per link: delivery probes that could not be published (the command
    /// path's trouble; no verdict on the link).
    pub backplane_probe_errors: Family<ShardLabel, Counter>,
    /// Frames written to client sockets.
    pub frames_sent: Counter,
    /// Socket writes (flushes); frames_sent / socket_writes is the batching.
    pub socket_writes: Counter,
    /// Of `frames_sent`, those the fan-out wrote to an idle connection's
    /// socket itself, without waking its task (`outbox`'s direct path).
    pub frames_direct: Counter,
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
    /// From the envelope's `ts` (the publisher's clock, in ms) to its
    /// arrival here: backplane and publisher latency. Every order update,
    /// one feed message in [`crate::hub::TIMED_EVERY`].
    pub publish_latency: ByFamily,
    /// From an envelope's arrival to every local queue having its frame
    /// (sampled as `publish_latency`).
    pub fanout_duration: ByFamily,
    /// From a frame's fan-out into the queues to its connection taking it
    /// for the socket, for one message in [`crate::hub::QUEUE_WAIT_EVERY`]
    /// (per subscriber).
    pub queue_wait: ByFamily,
    /// From an `order` frame to its reply (or error) being written.
    pub order_round_trip: OrderLatency,
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

    pub fn order_done(&self, outcome: OrderOutcome, seconds: f64) {
        self.order_round_trip.0.get_or_create(&OutcomeLabel { outcome: outcome.label() }).observe(seconds);
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
        registry.register(
            "backplane_shard_up",
            "Backplane links up with all their subscriptions, by shard",
            m.backplane_shard_up.clone(),
        );
        registry.register(
            "backplane_shard_losses",
            "Backplane link connections lost, by shard",
            m.backplane_shard_losses.clone(),
        );
        registry.register(
            "backplane_shard_resubscribes",
            "Backplane subscriptions restored after a loss or a move, by shard",
            m.backplane_shard_resubscribes.clone(),
        );
        registry.register(
            "backplane_probe_failures",
            "Delivery probes not back in time (the link was reconnected), by shard",
            m.backplane_probe_failures.clone(),
        );
        registry.register(
            "backplane_standby_up",
            "Cluster shards whose topics a replica also holds (standby), by shard",
            m.backplane_standby_up.clone(),
        );
        registry.register(
            "backplane_probe_errors",
            "Delivery probes that could not be published, by shard",
            m.backplane_probe_errors.clone(),
        );
        registry.register("frames_sent", "Frames written to client sockets", m.frames_sent.clone());
        registry.register("socket_writes", "Batched socket writes", m.socket_writes.clone());
        registry.register(
            "frames_direct",
            "Frames the fan-out wrote to an idle socket itself (counted in frames_sent too)",
            m.frames_direct.clone(),
        );
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
        registry.register(
            "publish_latency_seconds",
            "From the envelope's ts (publisher clock, ms resolution) to its arrival at this node (every order update, 1 feed message in 8)",
            m.publish_latency.family.clone(),
        );
        registry.register(
            "fanout_duration_seconds",
            "From an envelope's arrival to its frame queued for every local subscriber (sampled as publish latency)",
            m.fanout_duration.family.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "From a frame's fan-out to its connection taking it for the socket (sampled messages, per subscriber)",
            m.queue_wait.family.clone(),
        );
        registry.register(
            "order_round_trip_seconds",
            "From an order frame to its reply or error written, by outcome",
            m.order_round_trip.0.clone(),
        );
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
        m.publish_latency.get(TopicFamily::Orders).observe(0.003);
        m.order_done(OrderOutcome::Ok, 0.02);
        let text = m.render();
        assert!(
            text.contains(r#"gateway_publish_latency_seconds_bucket{le="0.005",family="orders"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"gateway_order_round_trip_seconds_count{outcome="ok"} 1"#), "{text}");
        assert!(text.contains("gateway_frames_sent_total 3"), "{text}");
        assert!(text.contains(r#"gateway_client_errors_total{code="invalid_json"} 1"#), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(
            text.contains(r#"gateway_fanout_duration_seconds_bucket{le="0.0001",family="quotes"} 0"#),
            "{text}"
        );
        assert!(text.contains(r#"trace_spans_dropped_total{reason="queue_full"} 0"#), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
