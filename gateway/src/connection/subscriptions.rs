//! The topics one connection holds, joined through the node's lifecycle
//! ([`crate::topics`]). What was sent on each (to skip duplicates and
//! notice a hole the node could not fill) is kept beside the queue, in
//! the connection's outbox ([`crate::outbox::held`]), where frames the
//! hub writes directly are admitted too.

use std::sync::Arc;

use wire::Topic;

use crate::broker::BrokerError;
use crate::hub::{ConnId, Subscriber};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::topics::Topics;

/// The topics one connection holds. Dropping it leaves every one.
pub(super) struct Subscriptions {
    pub(super) conn: ConnId,
    /// Also holds what is held, and what was sent on each topic.
    pub(super) outbox: Arc<Outbox>,
    /// The node's lifecycle, which joins and leaves topics.
    pub(super) lifecycle: Arc<Topics>,
    pub(super) metrics: Arc<Metrics>,
}

impl Subscriptions {
    pub(super) fn len(&self) -> usize {
        self.outbox.held(|held| held.len())
    }

    pub(super) fn contains(&self, topic: &str) -> bool {
        self.outbox.held(|held| held.contains(topic))
    }

    /// Joins `topic`; resolves once the backplane confirmed. On an error
    /// the topic is not held.
    pub(super) async fn add(&mut self, topic: Topic) -> Result<(), BrokerError> {
        // Recorded first: a task dropped mid-join still leaves on drop.
        self.outbox.held(|held| held.insert(topic.clone()));
        self.metrics.subscriptions.inc();
        let sub = Subscriber { conn: self.conn, outbox: Arc::clone(&self.outbox) };
        match self.lifecycle.join(&topic, sub).await {
            Ok(shared) => {
                self.outbox.held(|held| held.share(shared));
                Ok(())
            }
            Err(e) => {
                self.remove(topic.as_str());
                Err(e)
            }
        }
    }

    pub(super) fn remove(&mut self, topic: &str) -> bool {
        // Out of the admission rule first: a fan-out still walking an
        // older list of the topic's subscribers skips this connection.
        let Some(topic) = self.outbox.held(|held| held.remove(topic)) else {
            return false;
        };
        self.leave(&topic);
        true
    }

    /// Recovery sent everything up to `seq` on `topic`.
    pub(super) fn set_floor(&mut self, topic: &str, seq: u64) {
        self.outbox.held(|held| held.set_floor(topic, seq));
    }

    fn leave(&self, topic: &Topic) {
        self.lifecycle.leave(topic, self.conn);
        self.metrics.subscriptions.dec();
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        for topic in self.outbox.close().into_topics() {
            self.leave(&topic);
        }
    }
}
