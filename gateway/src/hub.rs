//! The hub: who is subscribed to what on this node.
//!
//! A map from topic to its local subscribers, split into shards by topic
//! hash so subscribes and fan-outs on different topics never wait for one
//! another. Each topic's subscriber list is an immutable `Arc<[_]>`
//! replaced on change (copy on write): a fan-out clones the `Arc` under
//! the shard lock and walks the list after releasing it, so a topic with
//! thousands of subscribers never holds a lock while it delivers.
//!
//! The hub knows nothing of Redis; the broker feeds it envelopes through
//! [`Hub::ingest`] and asks it [`Hub::has_subscribers`] before releasing
//! a backplane subscription.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::ws::Utf8Bytes;
use wire::envelope::Envelope;
use wire::{Topic, TopicFamily};

use crate::metrics::Metrics;
use crate::outbox::{Delivery, Outbox, Pushed};

const SHARDS: usize = 64;

/// One shard of the topic map; each subscriber list is replaced, never
/// mutated, so fan-outs can walk a snapshot without the lock.
type Shard = HashMap<Topic, Arc<[Subscriber]>>;

/// Identifies one connection for the life of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

#[derive(Clone)]
pub struct Subscriber {
    pub conn: ConnId,
    pub outbox: Arc<Outbox>,
}

pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    metrics: Arc<Metrics>,
    /// Malformed envelopes seen; the first and every 1000th are logged.
    invalid_seen: AtomicU64,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            metrics,
            invalid_seen: AtomicU64::new(0),
        }
    }

    fn shard(&self, topic: &str) -> std::sync::MutexGuard<'_, Shard> {
        let idx = self.hasher.hash_one(topic) as usize % SHARDS;
        self.shards[idx].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `sub` to `topic`; returns true if it is the topic's first.
    pub fn subscribe(&self, topic: &Topic, sub: Subscriber) -> bool {
        let mut shard = self.shard(topic.as_str());
        let first = match shard.get_mut(topic.as_str()) {
            Some(list) => {
                let mut next = Vec::with_capacity(list.len() + 1);
                next.extend(list.iter().cloned());
                next.push(sub);
                *list = next.into();
                false
            }
            None => {
                shard.insert(topic.clone(), Arc::from([sub]));
                true
            }
        };
        drop(shard);
        if first {
            self.metrics.topics.inc();
        }
        first
    }

    /// Removes `conn` from `topic`; returns true if the topic is now empty
    /// (the caller releases the backplane subscription).
    pub fn unsubscribe(&self, topic: &str, conn: ConnId) -> bool {
        let mut shard = self.shard(topic);
        let Some(list) = shard.get_mut(topic) else {
            return false;
        };
        let before = list.len();
        let next: Vec<Subscriber> = list.iter().filter(|s| s.conn != conn).cloned().collect();
        if next.len() == before {
            return false;
        }
        let empty = next.is_empty();
        if empty {
            shard.remove(topic);
        } else {
            *list = next.into();
        }
        drop(shard);
        if empty {
            self.metrics.topics.dec();
        }
        empty
    }

    pub fn has_subscribers(&self, topic: &str) -> bool {
        self.shard(topic).contains_key(topic)
    }

    /// Every topic with local subscribers (to resubscribe after a
    /// backplane reconnect).
    pub fn topics(&self) -> Vec<Topic> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            all.extend(shard.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned());
        }
        all
    }

    /// Delivers a frame to every local subscriber of its topic; returns how
    /// many queues took it.
    pub fn dispatch(&self, delivery: Delivery) -> usize {
        let Some(list) = self.shard(delivery.topic.as_str()).get(delivery.topic.as_str()).cloned() else {
            return 0;
        };
        let delivery = Arc::new(delivery);
        let (mut queued, mut conflated, mut dropped) = (0, 0, 0);
        for sub in list.iter() {
            match sub.outbox.push(&delivery) {
                Pushed::Queued => queued += 1,
                Pushed::Conflated => conflated += 1,
                Pushed::Overflow => dropped += 1,
                Pushed::Closed => {}
            }
        }
        if dropped > 0 {
            self.metrics.frames_dropped.inc_by(dropped);
        }
        if conflated > 0 {
            self.metrics.frames_conflated.inc_by(conflated);
        }
        queued + conflated as usize
    }

    /// Takes one envelope from the backplane: parse it once, build the
    /// client frame once, fan it out. Malformed envelopes are counted and
    /// skipped (logged the first time and every 1000th after).
    pub fn ingest(&self, topic: &str, payload: &[u8]) -> usize {
        self.metrics.backplane_messages.inc();
        let env = match Envelope::parse(payload, Some(topic)) {
            Ok(env) => env,
            Err(e) => {
                self.metrics.backplane_invalid.inc();
                let n = self.invalid_seen.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(1000) {
                    tracing::warn!(topic, error = %e, seen = n + 1, "skipping malformed envelope");
                }
                return 0;
            }
        };
        // The envelope's topic equals `topic`, which was validated by parse.
        let Ok(topic) = Topic::parse(topic) else {
            return 0;
        };
        let text = Utf8Bytes::from(env.to_message_frame());
        let conflatable = topic.family() == TopicFamily::Quotes;
        self.dispatch(Delivery { topic, seq: env.seq, text, conflatable })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Limits;
    use std::collections::VecDeque;

    fn sub(id: u64) -> Subscriber {
        Subscriber { conn: ConnId(id), outbox: Arc::new(Outbox::new(Limits { frames: 8, bytes: 1 << 20 })) }
    }

    #[test]
    fn first_and_last_subscriber() {
        let hub = Hub::new(Arc::default());
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
        let hub = Hub::new(Arc::default());
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
        assert_eq!(
            qa[0].text.as_str(),
            r#"{"type":"message","topic":"quotes.A","seq":1,"ts":2,"data":{"p":1}}"#
        );
    }
}
