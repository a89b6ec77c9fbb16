//! What the backplane hands this node, and where it goes: envelopes into
//! the hub, order replies to the requests waiting for them. This is the
//! broker's [`Sink`]; brokers know nothing else of the node.
//!
//! Order topics also pass the node's gap check here. Their `seq` has no
//! holes by construction, so an update whose `seq` skips ahead of the
//! last one this node fanned out (updates published while its link was
//! down, or in a cluster's failover window) makes the node read the
//! missing ones from history once, in a task of its own, and fan them out
//! to every local subscriber, in order, before that update and anything
//! else of the topic that arrives meanwhile (held here until the fill is
//! done). The fan-out path and the sockets never wait for Redis;
//! connections only skip what their own `since` replay already sent, and
//! tell their client `recovery_failed` if a hole is left (history gone).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use wire::envelope::Envelope;
use wire::{Topic, TopicFamily};

use crate::broker::{Broker, Pace, Sink};
use crate::history::History;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::requests::Requests;

pub(crate) struct Inbound {
    /// Itself, for the task a gap fill runs in.
    me: Weak<Inbound>,
    hub: Arc<Hub>,
    requests: Arc<Requests>,
    metrics: Arc<Metrics>,
    /// Where gaps are read from; set once the broker exists (the broker
    /// holds this sink, so a weak link: no cycle).
    history: OnceLock<Weak<dyn Broker>>,
    /// Updates read to fill one gap at the most.
    fill_limit: usize,
    /// Order topics with local subscribers that got an update.
    streams: Mutex<HashMap<Topic, Stream>>,
}

/// The node's view of one order topic's live stream.
#[derive(Default)]
struct Stream {
    /// The last `seq` fanned out (0: none yet).
    last: u64,
    /// A gap is being filled: live updates wait in `held`.
    filling: bool,
    held: VecDeque<Vec<u8>>,
}

/// What to do with one live order update.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    FanOut,
    Held,
    /// Held, behind the updates after `after` that history must supply.
    Fill {
        after: u64,
    },
}

impl Inbound {
    pub(crate) fn new(
        hub: Arc<Hub>,
        requests: Arc<Requests>,
        metrics: Arc<Metrics>,
        fill_limit: usize,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Inbound {
            me: me.clone(),
            hub,
            requests,
            metrics,
            history: OnceLock::new(),
            fill_limit,
            streams: Mutex::default(),
        })
    }

    /// The broker gaps are read from (built after this sink).
    pub(crate) fn attach(&self, broker: &Arc<dyn Broker>) {
        let _ = self.history.set(Arc::downgrade(broker));
    }

    /// `topic` lost its last local subscriber: nothing of its stream is
    /// kept (a fill under way forgets it when done).
    pub(crate) fn forget(&self, topic: &str) {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        if streams.get(topic).is_some_and(|s| !s.filling) {
            streams.remove(topic);
        }
    }

    /// Where a live order update goes (`payload` is kept only when held).
    fn order_update(&self, topic: &Topic, seq: u64, payload: &[u8]) -> Next {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let stream = match streams.get_mut(topic.as_str()) {
            Some(stream) => stream,
            // Nobody here to fill a gap for: the stream starts with the
            // first update a subscriber gets.
            None if !self.hub.has_subscribers(topic.as_str()) => return Next::FanOut,
            None => streams.entry(topic.clone()).or_default(),
        };
        if stream.filling {
            stream.held.push_back(payload.to_vec());
            return Next::Held;
        }
        let after = stream.last;
        // A `seq` at or below the last (numbering restarted) goes on as is.
        if after > 0 && seq > after + 1 {
            stream.filling = true;
            stream.held.push_back(payload.to_vec());
            return Next::Fill { after };
        }
        stream.last = seq;
        Next::FanOut
    }

    /// Fills the gap after `after` of `topic`, then releases the updates
    /// held meanwhile in order, filling any further gap among them first.
    async fn fill(self: Arc<Self>, topic: Topic, mut after: u64) {
        loop {
            let before = {
                let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
                let first = streams.get(topic.as_str()).and_then(|s| s.held.front());
                match first.and_then(|raw| Envelope::parse(raw, Some(topic.as_str())).ok()) {
                    Some(env) => env.seq,
                    None => after + 1,
                }
            };
            self.fill_once(&topic, after, before).await;
            match self.release(&topic, before - 1) {
                Some(next_after) => after = next_after,
                None => return,
            }
        }
    }

    /// Fans out what history holds strictly between `after` and `before`.
    async fn fill_once(&self, topic: &Topic, after: u64, before: u64) {
        let missing = before.saturating_sub(after + 1);
        if missing == 0 {
            return;
        }
        let Some(broker) = self.history.get().and_then(Weak::upgrade) else { return };
        let limit = missing.min(self.fill_limit as u64) as usize;
        match History::read(broker.as_ref(), topic, after, limit).await {
            Ok(history) => {
                let mut sent = 0;
                for env in history.envelopes(Some(before)) {
                    self.hub.fan_out(topic.clone(), &env, false, Pace::Burst);
                    sent += 1;
                }
                self.metrics.gaps_filled.inc();
                self.metrics.recovered.inc_by(sent);
                if sent < missing {
                    tracing::warn!(%topic, after, before, sent, "a gap was only partly in history");
                }
            }
            Err(e) => tracing::warn!(%topic, after, before, error = %e, "could not fill a gap from history"),
        }
    }

    /// After a fill up to `filled`: fans out the held updates in order.
    /// Returns where the next gap starts if one is found among them (its
    /// update stays held), None once all are out and the stream is live.
    fn release(&self, topic: &Topic, filled: u64) -> Option<u64> {
        let mut filled = Some(filled);
        loop {
            let raw = {
                let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
                let stream = streams.get_mut(topic.as_str())?;
                if let Some(filled) = filled.take() {
                    stream.last = stream.last.max(filled);
                }
                let Some(raw) = stream.held.pop_front() else {
                    stream.filling = false;
                    if !self.hub.has_subscribers(topic.as_str()) {
                        streams.remove(topic.as_str());
                    }
                    return None;
                };
                let Ok(env) = Envelope::parse(&raw, Some(topic.as_str())) else { continue };
                if stream.last > 0 && env.seq > stream.last + 1 {
                    let after = stream.last;
                    stream.held.push_front(raw);
                    return Some(after);
                }
                stream.last = env.seq;
                raw
            };
            // Outside the lock: held updates are only fanned out here, one
            // at a time, and live ones wait while `filling` is set.
            if let Ok(env) = Envelope::parse(&raw, Some(topic.as_str())) {
                self.hub.fan_out(topic.clone(), &env, true, Pace::Burst);
            }
        }
    }
}

impl Sink for Inbound {
    fn message(&self, topic: &str, envelope: &[u8], pace: Pace) {
        let Some((topic, env)) = self.hub.parse(topic, envelope) else { return };
        if topic.family() != TopicFamily::Orders {
            self.hub.fan_out(topic, &env, true, pace);
            return;
        }
        match self.order_update(&topic, env.seq, envelope) {
            Next::FanOut => {
                self.hub.fan_out(topic, &env, true, pace);
            }
            Next::Held => {}
            Next::Fill { after } => {
                if let Some(me) = self.me.upgrade() {
                    tokio::spawn(me.fill(topic, after));
                }
            }
        }
    }

    fn reply(&self, payload: &[u8]) {
        self.requests.resolve(payload);
    }

    fn wanted(&self, topic: &str) -> bool {
        self.hub.has_subscribers(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::fake::FakeBroker;
    use crate::hub::{ConnId, Subscriber};
    use crate::outbox::{Limits, Outbox};
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    const TOPIC: &str = "orders.acc";

    struct Setup {
        inbound: Arc<Inbound>,
        broker: Arc<FakeBroker>,
        outboxes: Vec<Arc<Outbox>>,
    }

    /// A node with `subscribers` local subscribers of `TOPIC`.
    fn setup(broker: FakeBroker, subscribers: u64) -> Setup {
        let metrics = Arc::new(Metrics::default());
        let hub = Arc::new(Hub::new(Arc::clone(&metrics), "n1"));
        let inbound = Inbound::new(Arc::clone(&hub), Arc::new(Requests::default()), metrics, 100);
        let broker = Arc::new(broker);
        inbound.attach(&(Arc::clone(&broker) as Arc<dyn Broker>));
        let topic = Topic::parse(TOPIC).unwrap();
        let outboxes: Vec<_> = (0..subscribers)
            .map(|id| {
                let outbox = Arc::new(Outbox::new(Limits { frames: 64, bytes: 1 << 20 }, None));
                outbox.held(|held| held.insert(topic.clone()));
                hub.subscribe(&topic, Subscriber { conn: ConnId(id), outbox: Arc::clone(&outbox) });
                outbox
            })
            .collect();
        Setup { inbound, broker, outboxes }
    }

    /// The seqs queued for one subscriber so far.
    fn seqs(outbox: &Outbox) -> Vec<u64> {
        let mut taken = VecDeque::new();
        outbox.take(&mut taken);
        taken.iter().map(|d| d.seq).collect()
    }

    async fn until(what: impl Fn() -> bool) {
        for _ in 0..200 {
            if what() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out");
    }

    #[tokio::test]
    async fn a_gap_is_filled_once_for_every_subscriber_before_the_live_updates() {
        let s = setup(FakeBroker::gated(), 3);
        let live: Vec<Vec<u8>> = (1..=9).map(|seq| s.broker.keep(TOPIC, seq)).collect();
        s.inbound.message(TOPIC, &live[0], Pace::Alone);
        // 2 and 3 never arrive live; 4 and 5 arrive while the fill waits
        // for history, 8 after a second hole (6, 7) among the held ones.
        for seq in [4, 5, 8] {
            s.inbound.message(TOPIC, &live[seq - 1], Pace::Alone);
        }
        for outbox in &s.outboxes {
            assert_eq!(seqs(outbox), [1], "held while the gap is read");
        }
        s.broker.let_read();
        s.broker.let_read();
        until(|| s.broker.reads.load(Ordering::SeqCst) == 2).await;
        until(|| !s.inbound.streams.lock().unwrap()[TOPIC].filling).await;
        s.inbound.message(TOPIC, &live[8], Pace::Alone);
        for outbox in &s.outboxes {
            assert_eq!(seqs(outbox), [2, 3, 4, 5, 6, 7, 8, 9], "every update once, in order");
        }
        assert_eq!(s.broker.reads.load(Ordering::SeqCst), 2, "one read per hole, not per subscriber");
        assert_eq!(s.inbound.metrics.gaps_filled.get(), 2);
        assert_eq!(s.inbound.metrics.recovered.get(), 4);
    }

    #[tokio::test]
    async fn a_hole_history_lost_is_left_and_the_stream_goes_on() {
        let s = setup(FakeBroker::default(), 1);
        let first = s.broker.keep(TOPIC, 1);
        s.inbound.message(TOPIC, &first, Pace::Alone);
        // 2..4 are not in history: 5 goes out after the attempt.
        let fifth = wire::envelope::encode(TOPIC, 5, 1, "{}", None).into_bytes();
        s.inbound.message(TOPIC, &fifth, Pace::Alone);
        until(|| !s.inbound.streams.lock().unwrap()[TOPIC].filling).await;
        assert_eq!(seqs(&s.outboxes[0]), [1, 5]);
        // Quotes are never held or filled; a topic nobody holds is not tracked.
        let quote = wire::envelope::encode("quotes.A", 9, 1, "{}", None).into_bytes();
        s.inbound.message("quotes.A", &quote, Pace::Alone);
        let other = wire::envelope::encode("orders.other", 3, 1, "{}", None).into_bytes();
        s.inbound.message("orders.other", &other, Pace::Alone);
        assert_eq!(s.inbound.streams.lock().unwrap().len(), 1);
        s.inbound.forget(TOPIC);
        assert!(s.inbound.streams.lock().unwrap().is_empty());
        assert!(s.inbound.wanted(TOPIC), "the hub still has the subscriber (forget is the hub's echo)");
    }
}
