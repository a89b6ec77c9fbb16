//! The topics one connection holds, mirrored in the hub, and what it
//! already sent on each (to skip duplicates and notice gaps).

use std::collections::HashMap;
use std::sync::Arc;

use wire::{Topic, TopicFamily};

use crate::broker::Broker;
use crate::hub::{ConnId, Hub, Subscriber};
use crate::metrics::Metrics;
use crate::outbox::{Delivery, Outbox};

/// The topics one connection holds, mirrored in the hub. Dropping it
/// removes every hub entry and releases topics left empty.
pub(super) struct Subscriptions {
    pub(super) conn: ConnId,
    /// Held topics and what was sent on each.
    pub(super) topics: HashMap<Topic, Sent>,
    pub(super) outbox: Arc<Outbox>,
    pub(super) hub: Arc<Hub>,
    pub(super) broker: Arc<dyn Broker>,
    pub(super) metrics: Arc<Metrics>,
}

impl Subscriptions {
    pub(super) fn add(&mut self, topic: Topic) {
        self.hub.subscribe(&topic, Subscriber { conn: self.conn, outbox: Arc::clone(&self.outbox) });
        self.topics.insert(topic, Sent::default());
        self.metrics.subscriptions.inc();
    }

    pub(super) fn remove(&mut self, topic: &str) -> bool {
        let Some((topic, _)) = self.topics.remove_entry(topic) else {
            return false;
        };
        self.leave(&topic);
        true
    }

    /// Recovery sent everything up to `seq` on `topic`.
    pub(super) fn set_floor(&mut self, topic: &str, seq: u64) {
        if let Some(sent) = self.topics.get_mut(topic) {
            sent.floor = Some(seq);
            sent.last = seq;
        }
    }

    /// What to do with a queued frame: skip it (topic no longer held, or
    /// already sent by recovery), send it, or first fill the gap before it
    /// (order topics, whose seq has no holes by construction).
    pub(super) fn admit(&mut self, delivery: &Delivery) -> Admit {
        let Some(sent) = self.topics.get_mut(delivery.topic.as_str()) else {
            return Admit::Skip;
        };
        if let Some(floor) = sent.floor {
            if delivery.seq <= floor {
                return Admit::Skip;
            }
            // Dropped at the first newer frame, so a backend that restarts
            // its seq is not muted.
            sent.floor = None;
        }
        let after = sent.last;
        sent.last = delivery.seq;
        if delivery.topic.family() == TopicFamily::Orders && after > 0 && delivery.seq > after + 1 {
            Admit::Gap { after }
        } else {
            Admit::Send
        }
    }

    fn leave(&self, topic: &Topic) {
        if self.hub.unsubscribe(topic.as_str(), self.conn) {
            self.broker.release(topic);
        }
        self.metrics.subscriptions.dec();
    }
}

/// Per-topic delivery state of one connection.
#[derive(Default)]
pub(super) struct Sent {
    /// Highest `seq` a snapshot or replay sent: live frames up to it are
    /// duplicates and skipped (until the first newer one).
    floor: Option<u64>,
    /// The last `seq` sent (0: none yet), to notice gaps.
    last: u64,
}

pub(super) enum Admit {
    Skip,
    Send,
    /// Send the history after `after` first.
    Gap {
        after: u64,
    },
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        self.outbox.close();
        for (topic, _) in std::mem::take(&mut self.topics) {
            self.leave(&topic);
        }
    }
}
