//! Requests this node sent to the order service and still waits on.
//!
//! Each `order` a client sends gets a correlation id unique on this node;
//! the order service answers on this node's reply channel, and
//! [`Requests::resolve`] hands the answer to the waiting connection. A
//! request that times out or whose connection went away is forgotten, so
//! a late reply is dropped instead of leaking.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;
use wire::orders::OrderReply;

#[derive(Default)]
pub struct Requests {
    pending: Mutex<HashMap<String, oneshot::Sender<OrderReply>>>,
    next: AtomicU64,
}

/// A registered request; dropping it (timeout, disconnect) forgets it.
pub struct Pending {
    requests: Arc<Requests>,
    pub corr: String,
    pub reply: oneshot::Receiver<OrderReply>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.requests.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.corr);
    }
}

impl Requests {
    pub fn register(self: &Arc<Self>) -> Pending {
        let corr = format!("r{}", self.next.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).insert(corr.clone(), tx);
        Pending { requests: Arc::clone(self), corr, reply: rx }
    }

    /// Takes one reply (JSON) from the reply channel; a malformed one is
    /// dropped and logged.
    pub fn resolve(&self, payload: &[u8]) {
        match serde_json::from_slice(payload) {
            Ok(reply) => self.deliver(reply),
            Err(e) => tracing::warn!(error = %e, "malformed order reply skipped"),
        }
    }

    /// Hands a reply to the connection waiting on it; one no longer waited
    /// on (late, or not ours) is dropped and logged at debug.
    pub fn deliver(&self, reply: OrderReply) {
        let waiter = self.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&reply.corr);
        match waiter {
            Some(tx) => {
                let _ = tx.send(reply);
            }
            None => tracing::debug!(corr = %reply.corr, "reply for a request no longer waited on"),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_by_correlation_and_forgets_dropped() {
        let requests = Arc::new(Requests::default());
        let mut a = requests.register();
        let b = requests.register();
        assert_ne!(a.corr, b.corr);
        requests.resolve(format!(r#"{{"corr":"{}","data":{{"ok":1}}}}"#, a.corr).as_bytes());
        let reply = (&mut a.reply).await.unwrap();
        assert_eq!(reply.data.unwrap().get(), r#"{"ok":1}"#);
        drop(b);
        assert!(requests.is_empty(), "a dropped request is forgotten");
        requests.resolve(br#"{"corr":"r1","data":{}}"#); // late: ignored
        requests.resolve(b"garbage");
    }
}
