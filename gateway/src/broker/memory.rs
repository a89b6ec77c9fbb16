//! The in-memory backplane: messages never leave this process.
//!
//! Used when no Redis URL is configured, like Centrifugo's memory engine:
//! one node serves clients and `POST /publish` with nothing else running.
//! It keeps what the Redis scripts keep, in memory: a `seq` per topic, the
//! latest quote per `quotes.*` topic (snapshots), a short history of every
//! other topic (`since` recovery), and the ids of recent updates, so an
//! update published twice with one id is written once. Orders go to the
//! order service of the one-command demo when this node runs it (an
//! in-process desk); without it they are refused as `not_supported`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use publisher::order_desk::RequestSender;
use wire::orders::OrderRequest;
use wire::{Topic, TopicFamily};

use super::{Answer, Broker, BrokerError, Pacing, Publish, Sink, Subscribed};

/// Envelopes of history kept per non-quote topic.
const HISTORY_LEN: usize = 512;

#[derive(Default)]
struct Log {
    seq: u64,
    /// Latest envelope (quotes).
    last: Option<Vec<u8>>,
    /// Recent envelopes (other topics), oldest first.
    history: VecDeque<Entry>,
}

struct Entry {
    seq: u64,
    /// The publisher's id of the update, if it gave one.
    id: Option<String>,
    envelope: Vec<u8>,
}

pub struct MemoryBroker {
    sink: Arc<dyn Sink>,
    /// Per-topic state. Held while a message is handed to the sink so
    /// concurrent publishes on one topic reach subscribers in `seq` order.
    topics: Mutex<HashMap<Topic, Log>>,
    /// The demo's order service, when this node runs it.
    orders: Option<RequestSender>,
}

impl MemoryBroker {
    pub(crate) fn new(sink: Arc<dyn Sink>, orders: Option<RequestSender>) -> Self {
        MemoryBroker { sink, topics: Mutex::default(), orders }
    }

    /// Publishes one message per tail on `topic`, each envelope being
    /// `head`, its `seq`, then the tail (as the Redis scripts assemble
    /// them). An `id` seen in the topic's history is not published again:
    /// its `seq` is returned with `true`. Returns the last `seq` and
    /// whether it was such a duplicate.
    pub fn append<'t>(
        &self,
        topic: &Topic,
        head: &str,
        tails: impl IntoIterator<Item = &'t str>,
        id: Option<&str>,
    ) -> (u64, bool) {
        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        let log = topics.entry(topic.clone()).or_default();
        if let Some(id) = id
            && let Some(seen) = log.history.iter().find(|e| e.id.as_deref() == Some(id))
        {
            return (seen.seq, true);
        }
        let mut pacing = Pacing::default();
        let mut tails = tails.into_iter().peekable();
        while let Some(tail) = tails.next() {
            log.seq += 1;
            let envelope = format!("{head}{}{tail}", log.seq).into_bytes();
            let pace = pacing.next(tails.peek().is_some());
            self.sink.message(topic.as_str(), &envelope, pace);
            if topic.family() == TopicFamily::Quotes {
                log.last = Some(envelope);
            } else {
                if log.history.len() == HISTORY_LEN {
                    log.history.pop_front();
                }
                log.history.push_back(Entry { seq: log.seq, id: id.map(str::to_owned), envelope });
            }
        }
        (log.seq, false)
    }
}

impl Broker for MemoryBroker {
    fn subscribe<'a>(&'a self, _topic: &'a Topic) -> Answer<'a, Subscribed> {
        Box::pin(async { Ok(Subscribed::Confirmed) })
    }

    fn release(&self, _topic: &Topic) {}

    fn publish<'a>(&'a self, message: Publish<'a>) -> Answer<'a, u64> {
        Box::pin(async move {
            let Publish { topic, data_json, traceparent, id } = message;
            let (head, tail) =
                wire::envelope::encode_parts(topic.as_str(), wire::now_ms(), data_json, traceparent);
            Ok(self.append(topic, &head, [tail.as_str()], id).0)
        })
    }

    fn last_value<'a>(&'a self, topic: &'a Topic) -> Answer<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
            Ok(topics.get(topic.as_str()).and_then(|log| log.last.clone()))
        })
    }

    fn history_after<'a>(&'a self, topic: &'a Topic, since: u64, limit: usize) -> Answer<'a, Vec<Vec<u8>>> {
        Box::pin(async move {
            let topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
            let current = topics.get(topic.as_str()).map_or(0, |log| log.seq);
            // Nothing here ever numbered `since`: it comes from before this
            // process started, whose history is gone.
            if since > current {
                return Err(BrokerError::Behind(current));
            }
            let Some(log) = topics.get(topic.as_str()) else {
                return Ok(Vec::new());
            };
            Ok(log.history.iter().filter(|e| e.seq > since).take(limit).map(|e| e.envelope.clone()).collect())
        })
    }

    fn submit_order<'a>(&'a self, request_json: String) -> Answer<'a, ()> {
        Box::pin(async move {
            let Some(orders) = &self.orders else {
                return Err(BrokerError::NotSupported(
                    "orders need the order service: the Redis backplane with the publisher, or the demo",
                ));
            };
            let request: OrderRequest =
                serde_json::from_str(&request_json).map_err(|e| BrokerError::Refused(e.to_string()))?;
            orders.submit(request).map_err(|e| BrokerError::Unavailable(e.to_string()))
        })
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Pace;

    /// Counts what it is handed, and how each message came.
    #[derive(Default)]
    struct Counting(Mutex<Vec<(String, u64)>>, Mutex<Vec<Pace>>);

    impl Sink for Counting {
        fn message(&self, topic: &str, envelope: &[u8], pace: Pace) {
            let seq = wire::Envelope::parse(envelope, Some(topic)).unwrap().seq;
            self.0.lock().unwrap().push((topic.to_owned(), seq));
            self.1.lock().unwrap().push(pace);
        }
        fn reply(&self, _payload: &[u8]) {}
        fn wanted(&self, _topic: &str) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn appends_assign_seq_keep_history_and_deduplicate_by_id() {
        let sink = Arc::new(Counting::default());
        let broker = MemoryBroker::new(Arc::clone(&sink) as Arc<dyn Sink>, None);
        let topic = Topic::parse("orders.a").unwrap();
        let (head, tail) = wire::envelope::encode_parts("orders.a", 5, r#"{"n":1}"#, None);
        assert_eq!(broker.append(&topic, &head, [tail.as_str()], Some("u1")), (1, false));
        assert_eq!(broker.append(&topic, &head, [tail.as_str()], Some("u1")), (1, true), "same id");
        assert_eq!(broker.append(&topic, &head, [tail.as_str(), tail.as_str()], None), (3, false));
        let history = broker.history_after(&topic, 1, 10).await.unwrap();
        let seqs: Vec<u64> =
            history.iter().map(|raw| wire::Envelope::parse(raw, Some("orders.a")).unwrap().seq).collect();
        assert_eq!(seqs, [2, 3]);
        let quotes = Topic::parse("quotes.A").unwrap();
        broker
            .publish(Publish { topic: &quotes, data_json: r#"{"bid":1}"#, traceparent: None, id: None })
            .await
            .unwrap();
        let last = broker.last_value(&quotes).await.unwrap().unwrap();
        assert_eq!(wire::Envelope::parse(&last, Some("quotes.A")).unwrap().seq, 1);
        assert!(matches!(broker.history_after(&topic, 9, 10).await, Err(BrokerError::Behind(3))));
        let delivered: Vec<(String, u64)> = sink.0.lock().unwrap().clone();
        let want = [("orders.a", 1), ("orders.a", 2), ("orders.a", 3), ("quotes.A", 1)];
        assert_eq!(delivered, want.map(|(t, s)| (t.to_owned(), s)), "every append reaches the sink once");
        let tails = vec![tail.as_str(); Pacing::ENTER as usize + 3];
        broker.append(&topic, &head, tails, None);
        let paces = sink.1.lock().unwrap().split_off(4);
        let bursts = paces.iter().filter(|p| **p == Pace::Burst).count();
        assert_eq!(bursts, 4, "from the ENTER-th with one more behind, to the end: a burst");
        assert_eq!(paces[0], Pace::Alone, "a batch starts alone");
        let refused = broker.submit_order("{}".into()).await;
        assert!(matches!(refused, Err(BrokerError::NotSupported(_))));
    }
}
