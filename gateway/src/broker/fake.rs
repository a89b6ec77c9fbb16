//! A broker for unit tests of what sits on top of one (the topic
//! lifecycle, the gap fill): it counts subscribes and releases, confirms
//! a subscribe after a short delay (or refuses or records it), and serves a history
//! it is given, optionally only once a test lets it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Semaphore;
use wire::Topic;

use super::{Answer, Broker, BrokerError, Publish, Subscribed};

/// One topic's kept envelopes with their `seq`, oldest first.
type Kept = Vec<(u64, Vec<u8>)>;

#[derive(Default)]
pub(crate) struct FakeBroker {
    pub(crate) subscribes: AtomicUsize,
    pub(crate) releases: AtomicUsize,
    /// Subscribes are refused while set.
    pub(crate) refuse: AtomicBool,
    /// Subscribes are answered `Recorded` while set (the backplane is away).
    pub(crate) away: AtomicBool,
    /// History reads so far.
    pub(crate) reads: AtomicUsize,
    /// Envelopes of each topic's history, oldest first.
    history: Mutex<HashMap<String, Kept>>,
    /// When set, each history read waits for one permit.
    gate: Option<Semaphore>,
}

impl FakeBroker {
    /// One whose history reads wait for [`FakeBroker::let_read`].
    pub(crate) fn gated() -> Self {
        FakeBroker { gate: Some(Semaphore::new(0)), ..FakeBroker::default() }
    }

    pub(crate) fn let_read(&self) {
        if let Some(gate) = &self.gate {
            gate.add_permits(1);
        }
    }

    /// Adds `seq` of `topic` to the history; returns its envelope.
    pub(crate) fn keep(&self, topic: &str, seq: u64) -> Vec<u8> {
        let envelope = wire::envelope::encode(topic, seq, 1, &format!(r#"{{"n":{seq}}}"#), None).into_bytes();
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        history.entry(topic.to_owned()).or_default().push((seq, envelope.clone()));
        envelope
    }
}

impl Broker for FakeBroker {
    fn subscribe<'a>(&'a self, _topic: &'a Topic) -> Answer<'a, Subscribed> {
        self.subscribes.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if self.refuse.load(Ordering::SeqCst) {
                return Err(BrokerError::Refused("NOPERM".into()));
            }
            match self.away.load(Ordering::SeqCst) {
                true => Ok(Subscribed::Recorded),
                false => Ok(Subscribed::Confirmed),
            }
        })
    }

    fn release(&self, _topic: &Topic) {
        self.releases.fetch_add(1, Ordering::SeqCst);
    }

    fn publish<'a>(&'a self, _message: Publish<'a>) -> Answer<'a, u64> {
        Box::pin(async { Err(BrokerError::NotSupported("fake broker")) })
    }

    fn last_value<'a>(&'a self, _topic: &'a Topic) -> Answer<'a, Option<Vec<u8>>> {
        Box::pin(async { Ok(None) })
    }

    fn history_after<'a>(&'a self, topic: &'a Topic, since: u64, limit: usize) -> Answer<'a, Vec<Vec<u8>>> {
        Box::pin(async move {
            if let Some(gate) = &self.gate {
                gate.acquire().await.map_err(|_| BrokerError::Timeout)?.forget();
            }
            self.reads.fetch_add(1, Ordering::SeqCst);
            let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
            let kept = history.get(topic.as_str()).map(Vec::as_slice).unwrap_or_default();
            Ok(kept.iter().filter(|(seq, _)| *seq > since).take(limit).map(|(_, e)| e.clone()).collect())
        })
    }

    fn submit_order<'a>(&'a self, _request_json: String) -> Answer<'a, ()> {
        Box::pin(async { Err(BrokerError::NotSupported("fake broker")) })
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "fake"
    }
}
