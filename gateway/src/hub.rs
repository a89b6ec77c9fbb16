//! The hub: who is subscribed to what on this node.
//!
//! A map from topic to its local subscribers, split into slices by topic
//! hash so subscribes and fan-outs on different topics never wait for one
//! another. A fan-out takes a snapshot of the topic's subscribers under
//! the slice lock (one reference count) and walks it after releasing it,
//! so a topic with thousands of subscribers never holds a lock while it
//! delivers; adding or removing a subscriber costs the same for a topic
//! of one and of 100,000 ([`crate::subscribers`]).
//!
//! The hub knows nothing of Redis: the node's inbound side
//! ([`crate::inbound`]) hands it what the broker received ([`Hub::parse`],
//! [`Hub::fan_out`]), and the node's topic lifecycle ([`crate::topics`])
//! turns its first / last answers into backplane subscribes and releases.
//!
//! [`Hub::fan_out`] is also where a message's latency is measured (from its
//! `ts`, and the fan-out itself; every order update, one feed message in
//! [`TIMED_EVERY`]) and where its trace continues: when the
//! envelope's `traceparent` is sampled, or the node's own quote / order
//! ratio picks a message that has none, a `gateway.fanout` span records
//! what this node did with it. Other messages make no span.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use service::telemetry::trace;
use tracing::field::Empty;
use wire::envelope::Envelope;
use wire::{Topic, TopicFamily};

use crate::broker::Pace;
use crate::metrics::Metrics;
use crate::outbox::{Delivery, Outbox, Pushed};
use crate::subscribers::Subscribers;

/// Slices of the topic map ("shards" in centrifuge; named apart from
/// Redis Cluster shards and the broker's pub/sub connections).
const SLICES: usize = 64;

/// One feed message in this many is timed (publish latency, fan-out
/// duration); every `orders.*` message is. Clock reads and histogram
/// updates cost about as much as a small fan-out itself.
pub const TIMED_EVERY: u64 = 8;

/// One message in this many carries its fan-out time to the sockets, so
/// queue wait is measured without a clock read per delivery.
pub const QUEUE_WAIT_EVERY: u64 = 64;

/// One slice of the topic map.
type Slice = HashMap<Topic, Subscribers>;

/// Identifies one connection for the life of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

#[derive(Clone)]
pub struct Subscriber {
    pub conn: ConnId,
    pub outbox: Arc<Outbox>,
}

pub struct Hub {
    slices: Box<[Mutex<Slice>]>,
    hasher: RandomState,
    metrics: Arc<Metrics>,
    /// This node's id, named by its fan-out spans.
    node: Box<str>,
    /// Malformed envelopes seen; the first and every 1000th are logged.
    invalid_seen: AtomicU64,
    /// Envelopes ingested, to pick the ones that are timed.
    ingested: AtomicU64,
}

/// What one fan-out did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// Local subscribers of the topic.
    pub subscribers: usize,
    /// Taken by a queue (or by a connection's admission on the direct
    /// path, which found nothing to send).
    pub queued: u64,
    /// Written to the socket by this fan-out (the direct path).
    pub written: u64,
    /// Replaced an older pending quote of a slow subscriber.
    pub conflated: u64,
    /// Refused by a full queue (the subscriber is closed as slow).
    pub dropped: u64,
}

impl Fanout {
    /// Connections that took the frame, queued or written.
    pub fn delivered(&self) -> usize {
        (self.queued + self.conflated + self.written) as usize
    }
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>, node: &str) -> Self {
        Hub {
            slices: (0..SLICES).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            metrics,
            node: node.into(),
            invalid_seen: AtomicU64::new(0),
            ingested: AtomicU64::new(0),
        }
    }

    fn slice(&self, topic: &str) -> std::sync::MutexGuard<'_, Slice> {
        let idx = self.hasher.hash_one(topic) as usize % SLICES;
        self.slices[idx].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `sub` to `topic` (replacing its connection's entry if it has
    /// one); returns true if it is the topic's first.
    pub fn subscribe(&self, topic: &Topic, sub: Subscriber) -> bool {
        let mut slice = self.slice(topic.as_str());
        let first = match slice.get_mut(topic.as_str()) {
            Some(list) => {
                list.insert(sub);
                false
            }
            None => {
                let mut list = Subscribers::default();
                list.insert(sub);
                slice.insert(topic.clone(), list);
                true
            }
        };
        drop(slice);
        if first {
            self.metrics.topics.inc();
        }
        first
    }

    /// Removes `conn` from `topic`; returns true if the topic is now empty
    /// (the caller releases the backplane subscription).
    pub fn unsubscribe(&self, topic: &str, conn: ConnId) -> bool {
        let mut slice = self.slice(topic);
        let Some(list) = slice.get_mut(topic) else {
            return false;
        };
        if !list.remove(conn) {
            return false;
        }
        let empty = list.is_empty();
        if empty {
            slice.remove(topic);
        }
        drop(slice);
        if empty {
            self.metrics.topics.dec();
        }
        empty
    }

    pub fn has_subscribers(&self, topic: &str) -> bool {
        self.slice(topic).contains_key(topic)
    }

    /// Delivers a frame to every local subscriber of its topic: into its
    /// queue, or onto its socket when its task is parked ([`Outbox`]'s
    /// direct path).
    pub fn dispatch(&self, delivery: Delivery) -> Fanout {
        let Some((list, subscribers)) =
            self.slice(delivery.topic.as_str()).get(delivery.topic.as_str()).map(|l| (l.snapshot(), l.len()))
        else {
            return Fanout::default();
        };
        let delivery = Arc::new(delivery);
        let mut done = Fanout { subscribers, ..Fanout::default() };
        for sub in list.iter() {
            match sub.outbox.push(&delivery) {
                Pushed::Queued | Pushed::Skipped => done.queued += 1,
                Pushed::Written => {
                    done.written += 1;
                    // As the task does for the frames it takes: no queue,
                    // so this is the fan-out's own time to this socket.
                    if let Some(at) = delivery.fanned_out {
                        let wait = at.elapsed().as_secs_f64();
                        self.metrics.queue_wait.get(delivery.topic.family()).observe(wait);
                    }
                }
                Pushed::Conflated => done.conflated += 1,
                Pushed::Overflow => done.dropped += 1,
                Pushed::Closed => {}
            }
        }
        if done.written > 0 {
            // One frame per write on this path.
            self.metrics.frames_sent.inc_by(done.written);
            self.metrics.socket_writes.inc_by(done.written);
            self.metrics.frames_direct.inc_by(done.written);
        }
        if done.dropped > 0 {
            self.metrics.frames_dropped.inc_by(done.dropped);
        }
        if done.conflated > 0 {
            self.metrics.frames_conflated.inc_by(done.conflated);
        }
        done
    }

    /// Takes one envelope from the backplane, arriving alone: parse it
    /// once, build the client frame once, fan it out. Malformed envelopes
    /// are counted and skipped (logged the first time and every 1000th
    /// after).
    pub fn ingest(&self, topic: &str, payload: &[u8]) -> usize {
        match self.parse(topic, payload) {
            Some((topic, env)) => self.fan_out(topic, &env, true, Pace::Alone),
            None => 0,
        }
    }

    /// Parses one envelope received on `topic`'s channel; a malformed one
    /// is counted and skipped (logged the first time and every 1000th).
    pub(crate) fn parse<'a>(&self, topic: &str, payload: &'a [u8]) -> Option<(Topic, Envelope<'a>)> {
        self.metrics.backplane_messages.inc();
        let env = match Envelope::parse(payload, Some(topic)) {
            Ok(env) => env,
            Err(e) => {
                self.metrics.backplane_invalid.inc();
                let n = self.invalid_seen.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(1000) {
                    tracing::warn!(topic, error = %e, seen = n + 1, "skipping malformed envelope");
                }
                return None;
            }
        };
        // The envelope's topic equals `topic`, which was validated by parse.
        let topic = Topic::parse(topic).ok()?;
        Some((topic, env))
    }

    /// Builds `env`'s client frame once and delivers it to every local
    /// subscriber of `topic`; returns how many queues took it. `live`:
    /// it came from the backplane now (its latency is measured), not
    /// from history (a gap being filled). `pace`: only a message that came
    /// alone may be written to idle sockets by the fan-out itself.
    pub(crate) fn fan_out(&self, topic: Topic, env: &Envelope<'_>, live: bool, pace: Pace) -> usize {
        let family = topic.family();
        let n = self.ingested.fetch_add(1, Ordering::Relaxed);
        let timed = live && (family == TopicFamily::Orders || n.is_multiple_of(TIMED_EVERY));
        let arrived = timed.then(|| {
            let late_ms = wire::now_ms().saturating_sub(env.ts);
            self.metrics.publish_latency.get(family).observe(late_ms as f64 / 1000.0);
            Instant::now()
        });
        let span = trace::sample(family.into(), env.traceparent.as_deref()).map(|sampled| {
            let span = tracing::info_span!(
                target: trace::TARGET,
                parent: None,
                "gateway.fanout",
                otel.kind = "consumer",
                messaging.destination.name = topic.as_str(),
                seq = env.seq,
                node.id = &*self.node,
                subscribers = Empty,
                frames.queued = Empty,
                frames.written = Empty,
                frames.conflated = Empty,
                frames.dropped = Empty,
            );
            sampled.attach(&span);
            span
        });
        let text = Bytes::from(env.to_message_frame());
        let conflatable = family == TopicFamily::Quotes;
        let fanned_out = n.is_multiple_of(QUEUE_WAIT_EVERY).then(Instant::now);
        let direct = pace == Pace::Alone;
        let done = self.dispatch(Delivery { topic, seq: env.seq, text, conflatable, fanned_out, direct });
        if let Some(arrived) = arrived {
            self.metrics.fanout_duration.get(family).observe(arrived.elapsed().as_secs_f64());
        }
        if let Some(span) = span {
            span.record("subscribers", done.subscribers);
            span.record("frames.queued", done.queued);
            span.record("frames.written", done.written);
            span.record("frames.conflated", done.conflated);
            span.record("frames.dropped", done.dropped);
        }
        done.delivered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Limits;
    use std::collections::VecDeque;

    fn sub(id: u64) -> Subscriber {
        let outbox = Arc::new(Outbox::new(Limits { frames: 8, bytes: 1 << 20 }, None));
        outbox.held(|held| held.insert(Topic::parse("quotes.A").unwrap()));
        Subscriber { conn: ConnId(id), outbox }
    }

    #[test]
    fn first_and_last_subscriber() {
        let hub = Hub::new(Arc::default(), "n1");
        let t = Topic::parse("quotes.A").unwrap();
        assert!(hub.subscribe(&t, sub(1)));
        assert!(!hub.subscribe(&t, sub(2)));
        assert!(!hub.unsubscribe("quotes.A", ConnId(1)));
        assert!(!hub.unsubscribe("quotes.A", ConnId(1)), "second removal is a no-op");
        assert!(hub.unsubscribe("quotes.A", ConnId(2)));
        assert!(!hub.has_subscribers("quotes.A"));
        assert_eq!(hub.metrics.topics.get(), 0);
    }

    #[test]
    fn ingest_shares_one_frame() {
        let hub = Hub::new(Arc::default(), "n1");
        let t = Topic::parse("quotes.A").unwrap();
        let (a, b) = (sub(1), sub(2));
        hub.subscribe(&t, a.clone());
        hub.subscribe(&t, b.clone());
        let n = hub.ingest("quotes.A", br#"{"topic":"quotes.A","seq":1,"ts":2,"data":{"p":1}}"#);
        assert_eq!(n, 2);
        assert_eq!(hub.ingest("quotes.A", b"garbage"), 0);
        assert_eq!(hub.metrics.backplane_invalid.get(), 1);
        let (mut qa, mut qb) = (VecDeque::new(), VecDeque::new());
        a.outbox.take(&mut qa);
        b.outbox.take(&mut qb);
        assert!(Arc::ptr_eq(&qa[0], &qb[0]), "both subscribers share one frame");
        assert_eq!(qa[0].text, r#"{"type":"message","topic":"quotes.A","seq":1,"ts":2,"data":{"p":1}}"#);
    }
}
