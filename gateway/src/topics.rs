//! The node's topic lifecycle: a connection joins or leaves a topic here
//! and nowhere else. The hub answers whether a join is the topic's first
//! local subscriber and a leave its last; only those answers reach the
//! broker (a subscribe, awaited until the backplane confirmed; a
//! release), as centrifuge's `Node.addSubscription` does. Connections
//! never call the broker's subscriptions themselves.
//!
//! Joins of one topic are serialised (one async lock per topic while
//! joins of it are under way): the first joiner holds it while the
//! backplane confirms, so joiners behind it wait for that one
//! confirmation instead of each asking the broker, and a join that failed
//! is undone before the next one runs (that one is then the first and
//! asks again). No client is told `subscribed` before the backplane
//! confirmed, so nothing published after it is missed.
//!
//! Leaves do not wait (they run in a connection's cleanup): a last leave
//! releases at once. The broker keeps the subscription for the grace
//! delay and drops it only if, when that ends, [`Sink::wanted`] (the hub)
//! says nobody came back. So however a release and a new first join
//! interleave, a topic with local subscribers is never left without its
//! backplane subscription.
//!
//! [`Sink::wanted`]: crate::broker::Sink::wanted

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use wire::Topic;

use crate::broker::{Broker, BrokerError};
use crate::hub::{ConnId, Hub, Subscriber};
use crate::inbound::Inbound;

/// One topic's turn: held by the join under way.
type Gate = Arc<tokio::sync::Mutex<()>>;

pub(crate) struct Topics {
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    inbound: Arc<Inbound>,
    /// Topics with joins under way.
    gates: Mutex<HashMap<Topic, Gate>>,
}

impl Topics {
    pub(crate) fn new(hub: Arc<Hub>, broker: Arc<dyn Broker>, inbound: Arc<Inbound>) -> Self {
        Topics { hub, broker, inbound, gates: Mutex::default() }
    }

    /// Adds `sub` to `topic`; resolves once the backplane carries the
    /// topic to this node. On an error `sub` is not subscribed.
    pub(crate) async fn join(&self, topic: &Topic, sub: Subscriber) -> Result<(), BrokerError> {
        let turn = Turn::take(self, topic);
        let _held = turn.gate.lock().await;
        let conn = sub.conn;
        if !self.hub.subscribe(topic, sub) {
            // The first joiner confirmed before it let this one in.
            return Ok(());
        }
        let confirmed = self.broker.subscribe(topic).await;
        if confirmed.is_err() {
            self.leave(topic, conn);
        }
        confirmed
    }

    /// Removes `conn` from `topic`; the topic's last leave releases it.
    /// A second leave of the same connection is a no-op.
    pub(crate) fn leave(&self, topic: &Topic, conn: ConnId) {
        if self.hub.unsubscribe(topic.as_str(), conn) {
            self.inbound.forget(topic.as_str());
            self.broker.release(topic);
        }
    }
}

/// A join's hold on its topic's gate; the gate goes with the last one.
struct Turn<'a> {
    topics: &'a Topics,
    topic: &'a Topic,
    gate: Gate,
}

impl<'a> Turn<'a> {
    fn take(topics: &'a Topics, topic: &'a Topic) -> Self {
        let mut gates = topics.gates.lock().unwrap_or_else(PoisonError::into_inner);
        let gate = Arc::clone(gates.entry(topic.clone()).or_default());
        Turn { topics, topic, gate }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut gates = self.topics.gates.lock().unwrap_or_else(PoisonError::into_inner);
        // Clones are taken under this lock: two left means the map's and ours.
        if gates.get(self.topic.as_str()).is_some_and(|g| Arc::strong_count(g) == 2) {
            gates.remove(self.topic.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::fake::FakeBroker;
    use crate::metrics::Metrics;
    use crate::outbox::{Limits, Outbox};
    use crate::requests::Requests;
    use std::sync::atomic::Ordering;

    fn node() -> (Arc<Topics>, Arc<FakeBroker>, Arc<Hub>) {
        let metrics = Arc::new(Metrics::default());
        let hub = Arc::new(Hub::new(Arc::clone(&metrics), "n1"));
        let inbound = Inbound::new(Arc::clone(&hub), Arc::new(Requests::default()), metrics, 10);
        let broker = Arc::new(FakeBroker::default());
        let topics = Topics::new(Arc::clone(&hub), Arc::clone(&broker) as Arc<dyn Broker>, inbound);
        (Arc::new(topics), broker, hub)
    }

    fn sub(id: u64) -> Subscriber {
        Subscriber { conn: ConnId(id), outbox: Arc::new(Outbox::new(Limits { frames: 8, bytes: 1 << 20 })) }
    }

    #[tokio::test]
    async fn concurrent_joins_share_one_backplane_subscribe_and_the_last_leave_releases() {
        let (topics, broker, hub) = node();
        let topic = Topic::parse("quotes.A").unwrap();
        let joins: Vec<_> = (1..=20)
            .map(|id| {
                let (topics, topic) = (Arc::clone(&topics), topic.clone());
                tokio::spawn(async move { topics.join(&topic, sub(id)).await })
            })
            .collect();
        for join in joins {
            assert!(join.await.unwrap().is_ok());
        }
        assert_eq!(broker.subscribes.load(Ordering::SeqCst), 1, "one subscribe for twenty joins");
        assert!(topics.gates.lock().unwrap().is_empty(), "no gate outlives its joins");
        for id in 1..20 {
            topics.leave(&topic, ConnId(id));
        }
        topics.leave(&topic, ConnId(1));
        assert_eq!(broker.releases.load(Ordering::SeqCst), 0, "not the last yet; a second leave is a no-op");
        topics.leave(&topic, ConnId(20));
        assert_eq!(broker.releases.load(Ordering::SeqCst), 1);
        assert!(!hub.has_subscribers("quotes.A"));
    }

    #[tokio::test]
    async fn a_refused_join_is_undone_before_the_next_join_asks_again() {
        let (topics, broker, hub) = node();
        broker.refuse.store(true, Ordering::SeqCst);
        let topic = Topic::parse("orders.acl").unwrap();
        let joins: Vec<_> = (1..=3)
            .map(|id| {
                let (topics, topic) = (Arc::clone(&topics), topic.clone());
                tokio::spawn(async move { topics.join(&topic, sub(id)).await })
            })
            .collect();
        for join in joins {
            assert!(join.await.unwrap().is_err(), "nobody is told it is subscribed");
        }
        // Each found the topic empty again, so each asked (and was refused).
        assert_eq!(broker.subscribes.load(Ordering::SeqCst), 3);
        assert_eq!(broker.releases.load(Ordering::SeqCst), 3);
        assert!(!hub.has_subscribers("orders.acl"));
    }
}
