//! The in-memory backplane: messages never leave this process.
//!
//! Used when no Redis URL is configured, like Centrifugo's memory engine:
//! one node serves clients and `POST /publish` with nothing else running.
//! It keeps what the Redis backplane keeps, in memory: the latest quote
//! per `quotes.*` topic (snapshots) and a short history of every other
//! topic (`since` recovery). There is no order service in this mode.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use wire::{Topic, TopicFamily};

use super::{BoxFuture, Broker, BrokerError};
use crate::hub::Hub;

/// Envelopes of history kept per non-quote topic.
const HISTORY_LEN: usize = 512;

#[derive(Default)]
struct Log {
    seq: u64,
    /// Latest envelope (quotes).
    last: Option<Vec<u8>>,
    /// Recent envelopes with their seq (other topics), oldest first.
    history: VecDeque<(u64, Vec<u8>)>,
}

pub struct MemoryBroker {
    hub: Arc<Hub>,
    /// Per-topic state. Held while a message is handed to the hub so
    /// concurrent publishes on one topic reach subscribers in `seq` order.
    topics: Mutex<HashMap<Topic, Log>>,
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>) -> Self {
        MemoryBroker { hub, topics: Mutex::default() }
    }
}

impl Broker for MemoryBroker {
    fn subscribe<'a>(&'a self, _topic: &'a Topic) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }

    fn release(&self, _topic: &Topic) {}

    fn publish<'a>(
        &'a self,
        topic: &'a Topic,
        data_json: &'a str,
        traceparent: Option<&'a str>,
        _id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<u64, BrokerError>> {
        Box::pin(async move {
            let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
            let log = topics.entry(topic.clone()).or_default();
            log.seq += 1;
            let seq = log.seq;
            let envelope =
                wire::envelope::encode(topic.as_str(), seq, wire::now_ms(), data_json, traceparent);
            self.hub.ingest(topic.as_str(), envelope.as_bytes());
            if topic.family() == TopicFamily::Quotes {
                log.last = Some(envelope.into_bytes());
            } else {
                if log.history.len() == HISTORY_LEN {
                    log.history.pop_front();
                }
                log.history.push_back((seq, envelope.into_bytes()));
            }
            Ok(seq)
        })
    }

    fn last_value<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<Option<Vec<u8>>, BrokerError>> {
        Box::pin(async move {
            let topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
            Ok(topics.get(topic.as_str()).and_then(|log| log.last.clone()))
        })
    }

    fn history_after<'a>(
        &'a self,
        topic: &'a Topic,
        since: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Vec<u8>>, BrokerError>> {
        Box::pin(async move {
            let topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(log) = topics.get(topic.as_str()) else {
                return Ok(Vec::new());
            };
            Ok(log
                .history
                .iter()
                .filter(|(seq, _)| *seq > since)
                .take(limit)
                .map(|(_, e)| e.clone())
                .collect())
        })
    }

    fn submit_order<'a>(&'a self, _request_json: String) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async {
            Err(BrokerError::NotSupported("orders need the Redis backplane and the publisher service"))
        })
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
