//! The node's topic lifecycle: a connection joins or leaves a topic here
//! and nowhere else. The hub answers whether a join is the topic's first
//! local subscriber and a leave its last; only those answers reach the
//! broker (a subscribe, awaited until the backplane confirmed; a
//! release), as centrifuge's `Node.addSubscription` does. Connections
//! never call the broker's subscriptions themselves.
//!
//! Joins of one topic are serialised (an async lock per topic held
//! here): the first joiner holds it while the backplane confirms, so
//! joiners behind it wait for that one confirmation instead of each
//! asking the broker, and a join that failed is undone before the next
//! one runs (that one is then the first and asks again). Once confirmed,
//! joins cost no broker call. While the backplane is away a first join is
//! answered `Recorded` at once; the joins after it ask again until one is
//! confirmed, so no client is told `subscribed` past a backplane that has
//! come back but not yet confirmed. A client told `subscribed` while it
//! is away misses what is published until it returns (order topics are
//! filled from history then, `inbound.rs`).
//!
//! Leaves do not wait (they run in a connection's cleanup): a last leave
//! forgets the topic here and releases it. The broker keeps the
//! subscription for the grace delay and drops it only if, when that
//! ends, [`Sink::wanted`] (the hub) says nobody came back. So however a
//! release and a new first join interleave, a topic with local
//! subscribers is never left without its backplane subscription.
//!
//! [`Sink::wanted`]: crate::broker::Sink::wanted

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use wire::Topic;

use crate::broker::{Broker, BrokerError, Subscribed};
use crate::hub::{ConnId, Hub, Subscriber};
use crate::inbound::Inbound;

/// One topic's lock; it guards whether the backplane confirmed it.
type Gate = Arc<tokio::sync::Mutex<bool>>;

pub(crate) struct Topics {
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    inbound: Arc<Inbound>,
    /// Topics joined (or being joined) on this node.
    gates: Mutex<HashMap<Topic, Gate>>,
}

impl Topics {
    pub(crate) fn new(hub: Arc<Hub>, broker: Arc<dyn Broker>, inbound: Arc<Inbound>) -> Self {
        Topics { hub, broker, inbound, gates: Mutex::default() }
    }

    /// Adds `sub` to `topic`; resolves once the backplane carries the
    /// topic to this node (or recorded it while away). On an error `sub`
    /// is not subscribed.
    ///
    /// Returns the node's copy of the name (the first joiner's, which the
    /// hub keys the topic by): a connection that keeps it instead of the
    /// one it parsed holds no name of its own (~48 B per connection).
    pub(crate) async fn join(&self, topic: &Topic, sub: Subscriber) -> Result<Topic, BrokerError> {
        let (shared, gate) = {
            let mut gates = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
            match gates.get_key_value(topic.as_str()) {
                Some((shared, gate)) => (shared.clone(), Arc::clone(gate)),
                None => {
                    let gate = Gate::default();
                    gates.insert(topic.clone(), Arc::clone(&gate));
                    (topic.clone(), gate)
                }
            }
        };
        let mut confirmed = gate.lock().await;
        let conn = sub.conn;
        let first = self.hub.subscribe(&shared, sub);
        if !first && *confirmed {
            return Ok(shared);
        }
        match self.broker.subscribe(&shared).await {
            Ok(answer) => {
                *confirmed = answer == Subscribed::Confirmed;
                Ok(shared)
            }
            Err(e) => {
                self.leave(topic, conn);
                Err(e)
            }
        }
    }

    /// Removes `conn` from `topic`; the topic's last leave releases it.
    /// A second leave of the same connection is a no-op.
    pub(crate) fn leave(&self, topic: &Topic, conn: ConnId) {
        if self.hub.unsubscribe(topic.as_str(), conn) {
            // A join waiting on this gate is not in the hub yet: it finds
            // the topic empty, so it is a first and asks the broker.
            self.gates.lock().unwrap_or_else(PoisonError::into_inner).remove(topic.as_str());
            self.inbound.forget(topic.as_str());
            self.broker.release(topic);
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
    use std::ops::RangeInclusive;
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
        Subscriber {
            conn: ConnId(id),
            outbox: Arc::new(Outbox::new(Limits { frames: 8, bytes: 1 << 20 }, None)),
        }
    }

    /// Joins `topic` as connections `ids`, all at once.
    async fn join_at_once(topics: &Arc<Topics>, topic: &Topic, ids: RangeInclusive<u64>) -> Vec<bool> {
        let joins: Vec<_> = ids
            .map(|id| {
                let (topics, topic) = (Arc::clone(topics), topic.clone());
                tokio::spawn(async move { topics.join(&topic, sub(id)).await })
            })
            .collect();
        let mut joined = Vec::new();
        for join in joins {
            joined.push(join.await.unwrap().is_ok());
        }
        joined
    }

    #[tokio::test]
    async fn concurrent_joins_share_one_backplane_subscribe_and_the_last_leave_releases() {
        let (topics, broker, hub) = node();
        let topic = Topic::parse("quotes.A").unwrap();
        assert_eq!(join_at_once(&topics, &topic, 1..=20).await, [true; 20]);
        assert_eq!(broker.subscribes.load(Ordering::SeqCst), 1, "one subscribe for twenty joins");
        for id in 1..20 {
            topics.leave(&topic, ConnId(id));
        }
        topics.leave(&topic, ConnId(1));
        assert_eq!(broker.releases.load(Ordering::SeqCst), 0, "not the last yet; a second leave is a no-op");
        topics.leave(&topic, ConnId(20));
        assert_eq!(broker.releases.load(Ordering::SeqCst), 1);
        assert!(!hub.has_subscribers("quotes.A"));
        assert!(topics.gates.lock().unwrap().is_empty(), "nothing kept of a topic left");
    }

    #[tokio::test]
    async fn a_refused_join_is_undone_before_the_next_join_asks_again() {
        let (topics, broker, hub) = node();
        broker.refuse.store(true, Ordering::SeqCst);
        let topic = Topic::parse("orders.acl").unwrap();
        assert_eq!(join_at_once(&topics, &topic, 1..=3).await, [false; 3], "nobody is told it is subscribed");
        // Each found the topic empty again, so each asked (and was refused).
        assert_eq!(broker.subscribes.load(Ordering::SeqCst), 3);
        assert_eq!(broker.releases.load(Ordering::SeqCst), 3);
        assert!(!hub.has_subscribers("orders.acl"));
    }

    #[tokio::test]
    async fn joins_ask_again_until_the_backplane_confirmed() {
        let (topics, broker, _hub) = node();
        broker.away.store(true, Ordering::SeqCst);
        let topic = Topic::parse("quotes.B").unwrap();
        topics.join(&topic, sub(1)).await.unwrap();
        topics.join(&topic, sub(2)).await.unwrap();
        assert_eq!(broker.subscribes.load(Ordering::SeqCst), 2, "recorded only: the second asks again");
        broker.away.store(false, Ordering::SeqCst);
        topics.join(&topic, sub(3)).await.unwrap();
        topics.join(&topic, sub(4)).await.unwrap();
        assert_eq!(
            broker.subscribes.load(Ordering::SeqCst),
            3,
            "confirmed by the third: the fourth does not ask"
        );
    }
}
