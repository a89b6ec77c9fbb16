//! The topics one connection holds, joined through the node's lifecycle
//! ([`crate::topics`]), and what it already sent on each (to skip
//! duplicates and notice a hole the node could not fill).

use std::collections::HashMap;
use std::sync::Arc;

use wire::{Topic, TopicFamily};

use crate::broker::BrokerError;
use crate::hub::{ConnId, Subscriber};
use crate::metrics::Metrics;
use crate::outbox::{Delivery, Outbox};
use crate::topics::Topics;

/// The topics one connection holds. Dropping it leaves every one.
pub(super) struct Subscriptions {
    pub(super) conn: ConnId,
    /// Held topics and what was sent on each.
    pub(super) topics: HashMap<Topic, Sent>,
    pub(super) outbox: Arc<Outbox>,
    /// The node's lifecycle, which joins and leaves topics.
    pub(super) lifecycle: Arc<Topics>,
    pub(super) metrics: Arc<Metrics>,
}

impl Subscriptions {
    /// Joins `topic`; resolves once the backplane confirmed. On an error
    /// the topic is not held.
    pub(super) async fn add(&mut self, topic: Topic) -> Result<(), BrokerError> {
        // Recorded first: a task dropped mid-join still leaves on drop.
        self.topics.insert(topic.clone(), Sent::default());
        self.metrics.subscriptions.inc();
        let sub = Subscriber { conn: self.conn, outbox: Arc::clone(&self.outbox) };
        let joined = self.lifecycle.join(&topic, sub).await;
        if joined.is_err() {
            self.remove(topic.as_str());
        }
        joined
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
    /// already sent by recovery), send it, or first say that updates
    /// before it are missing (order topics, whose seq has no holes by
    /// construction: the node fills gaps before it fans out, so a hole
    /// left here means the history no longer had them).
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
        self.lifecycle.leave(topic, self.conn);
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
    /// Nothing was sent between `after` and this frame.
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
