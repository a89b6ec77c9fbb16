//! Where the publisher's messages go: the [`Backplane`] the feed, the
//! order lifecycles and `POST /publish` write to, and the messages they
//! write.
//!
//! The service writes to Redis ([`crate::redis_writer::RedisWriter`]). A
//! gateway running the one-command demo writes to its in-memory backplane
//! through the same trait, so the feed, the order service and the
//! lifecycles are the same code in both.
//!
//! Whatever the backplane, `seq` is assigned by it, atomically with the
//! publish: reserving numbers here and publishing later would let another
//! publisher's higher number overtake ours on the wire.

use std::future::Future;
use std::pin::Pin;

use service::telemetry::trace::{self, Kind, Role};
use wire::Topic;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("redis pool: {0}")]
    Pool(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from the backplane: {0}")]
    Reply(String),
    #[error("the backplane is closed")]
    Closed,
}

/// What every producer of this service publishes through.
pub trait Backplane: Send + Sync + 'static {
    /// Publishes every batch, each message with its topic's next `seq`;
    /// topics with `store_last` keep their last envelope as the snapshot.
    /// Returns the last `seq` of each batch.
    fn publish<'a>(&'a self, batches: &'a [TopicBatch]) -> BoxFuture<'a, Result<Vec<u64>, WriteError>>;

    /// Writes order updates in order, each with history, once: repeating
    /// an update (same `id`) after any failure returns its first `seq`.
    fn write_updates<'a>(
        &'a self,
        updates: &'a [OrderUpdate],
    ) -> BoxFuture<'a, Result<Vec<Written>, WriteError>>;

    /// One round trip: is the backplane there?
    fn ping(&self) -> BoxFuture<'_, Result<(), WriteError>>;

    /// `redis`, `redis-cluster` or `memory`, for logs.
    fn kind(&self) -> &'static str;
}

/// Messages of one topic published in one call, in order.
#[derive(Debug)]
pub struct TopicBatch {
    pub topic: String,
    /// The envelope up to `"seq":`, the same for every message of a topic.
    pub head: String,
    /// Each message's envelope after its `seq`.
    pub tails: Vec<String>,
    /// Store the last envelope as the topic's snapshot (quotes).
    pub store_last: bool,
}

impl TopicBatch {
    pub fn new(topic: &str, store_last: bool) -> Self {
        TopicBatch { topic: topic.to_owned(), head: String::new(), tails: Vec::new(), store_last }
    }

    /// Adds a message; `data_json` must be a JSON object.
    pub fn push(&mut self, ts: u64, data_json: &str, traceparent: Option<&str>) {
        let (head, tail) = wire::envelope::encode_parts(&self.topic, ts, data_json, traceparent);
        if self.head.is_empty() {
            self.head = head;
        }
        self.tails.push(tail);
    }
}

/// One order update, ready to be written; kept as is across retries so a
/// retry sends the same bytes and the same dedupe id.
#[derive(Debug, Clone)]
pub struct OrderUpdate {
    pub topic: Topic,
    /// Unique per update; a retry with the same id is not written twice.
    pub id: String,
    pub head: String,
    pub tail: String,
    /// When it was made, for the time it takes to reach the backplane.
    pub created: std::time::Instant,
    /// The update's traced span when sampled: it lasts until the update
    /// is written (dropped with it), and its context rides in the envelope.
    pub span: Option<tracing::Span>,
}

impl OrderUpdate {
    /// An update whose envelope carries `traceparent` as given.
    pub fn new(topic: Topic, id: String, data_json: &str, traceparent: Option<&str>) -> Self {
        let (head, tail) =
            wire::envelope::encode_parts(topic.as_str(), wire::now_ms(), data_json, traceparent);
        OrderUpdate { topic, id, head, tail, created: std::time::Instant::now(), span: None }
    }

    /// An update of an order traced as `order_traceparent` (if any): when
    /// sampled, a producer span `publisher.order.update` in the order's trace,
    /// whose context the envelope carries so every gateway that delivers
    /// the update continues it.
    pub fn traced(
        topic: Topic,
        id: String,
        data_json: &str,
        order_traceparent: Option<&str>,
        status: &'static str,
    ) -> Self {
        let span = trace::start("publisher.order.update", Role::Producer, Kind::Order, order_traceparent);
        let traceparent = trace::hand_on(span.as_ref(), order_traceparent);
        let mut update = OrderUpdate::new(topic, id, data_json, traceparent.as_deref());
        if let Some(span) = &span {
            trace::set_attribute(span, "messaging.destination.name", update.topic.as_str().to_owned());
            trace::set_attribute(span, "order.status", status);
            trace::set_attribute(span, "order.update_id", update.id.clone());
        }
        update.span = span;
        update
    }
}

/// What the backplane did with one order update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub seq: u64,
    /// It had already been written by an earlier attempt.
    pub duplicate: bool,
}

/// Publishes one message on a topic that keeps no history; returns its `seq`.
pub async fn publish_one(
    backplane: &dyn Backplane,
    topic: &str,
    data_json: &str,
    traceparent: Option<&str>,
    store_last: bool,
) -> Result<u64, WriteError> {
    let mut batch = TopicBatch::new(topic, store_last);
    batch.push(wire::now_ms(), data_json, traceparent);
    let seqs = backplane.publish(std::slice::from_ref(&batch)).await?;
    seqs.first().copied().ok_or_else(|| WriteError::Reply("no reply".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_shares_one_head() {
        let mut b = TopicBatch::new("quotes.A", true);
        b.push(5, r#"{"x":1}"#, None);
        b.push(6, r#"{"x":2}"#, None);
        assert_eq!(b.head, r#"{"topic":"quotes.A","seq":"#);
        let env = format!("{}{}{}", b.head, 9, b.tails[1]);
        let parsed = wire::Envelope::parse(env.as_bytes(), Some("quotes.A")).unwrap();
        assert_eq!((parsed.seq, parsed.ts, parsed.data.get()), (9, 6, r#"{"x":2}"#));
    }
}
