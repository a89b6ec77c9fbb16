//! The in-memory backplane: messages never leave this process.
//!
//! Used when no Redis URL is configured, like Centrifugo's memory engine:
//! one node serves clients and `POST /publish` with nothing else running.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use wire::Topic;

use super::{BoxFuture, Broker, BrokerError};
use crate::hub::Hub;

pub struct MemoryBroker {
    hub: Arc<Hub>,
    /// Last `seq` per topic. Held while a message is handed to the hub so
    /// concurrent publishes on one topic reach subscribers in `seq` order.
    seqs: Mutex<HashMap<Topic, u64>>,
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>) -> Self {
        MemoryBroker { hub, seqs: Mutex::default() }
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
    ) -> BoxFuture<'a, Result<u64, BrokerError>> {
        Box::pin(async move {
            let mut seqs = self.seqs.lock().unwrap_or_else(PoisonError::into_inner);
            let seq = seqs.entry(topic.clone()).or_insert(0);
            *seq += 1;
            let seq = *seq;
            let envelope =
                wire::envelope::encode(topic.as_str(), seq, wire::now_ms(), data_json, traceparent);
            self.hub.ingest(topic.as_str(), envelope.as_bytes());
            Ok(seq)
        })
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
