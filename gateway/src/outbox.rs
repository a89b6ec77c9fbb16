//! One connection's outbound queue: the hub pushes shared frames in, the
//! connection task takes them all out at once and writes them in one
//! batch.
//!
//! Bounded: when a client stops reading and its queue is full the frame is
//! refused and the queue marked overflowed; the connection then closes
//! with `slow_consumer` (4001) so the client reconnects and recovers
//! instead of silently missing updates, and the hub never waits.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;
use wire::Topic;

/// A frame built once and shared by every local subscriber of its topic.
#[derive(Debug)]
pub struct Delivery {
    pub topic: Topic,
    pub seq: u64,
    pub text: Utf8Bytes,
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue was full; the frame was dropped and the queue overflowed.
    Overflow,
    /// The connection is gone; nothing to do.
    Closed,
}

pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the connection task when the queue goes from empty to not.
    notify: Notify,
    capacity: usize,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Arc<Delivery>>,
    overflowed: bool,
    closed: bool,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Outbox { state: Mutex::default(), notify: Notify::new(), capacity }
    }

    pub fn push(&self, delivery: &Arc<Delivery>) -> Pushed {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.closed {
            return Pushed::Closed;
        }
        if state.frames.len() >= self.capacity {
            let first = !state.overflowed;
            state.overflowed = true;
            drop(state);
            if first {
                self.notify.notify_one();
            }
            return Pushed::Overflow;
        }
        let was_empty = state.frames.is_empty();
        state.frames.push_back(Arc::clone(delivery));
        drop(state);
        if was_empty {
            self.notify.notify_one();
        }
        Pushed::Queued
    }

    /// Waits until there is something to take (or an overflow to act on).
    pub async fn ready(&self) {
        self.notify.notified().await
    }

    /// Moves every queued frame into `into` (which should be empty and is
    /// swapped with the queue, so both buffers are reused). Returns whether
    /// the queue had overflowed.
    pub fn take(&self, into: &mut VecDeque<Arc<Delivery>>) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut state.frames, into);
        state.overflowed
    }

    /// Refuses further frames and frees the queued ones.
    pub fn close(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.closed = true;
        state.frames = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(seq: u64) -> Arc<Delivery> {
        Arc::new(Delivery { topic: Topic::parse("t").unwrap(), seq, text: Utf8Bytes::from_static("{}") })
    }

    #[tokio::test]
    async fn queues_wakes_and_overflows() {
        let outbox = Outbox::new(2);
        assert_eq!(outbox.push(&delivery(1)), Pushed::Queued);
        assert_eq!(outbox.push(&delivery(2)), Pushed::Queued);
        assert_eq!(outbox.push(&delivery(3)), Pushed::Overflow);
        // The permit stored by the first push makes this return at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), outbox.ready()).await.unwrap();
        let mut batch = VecDeque::new();
        assert!(outbox.take(&mut batch));
        assert_eq!(batch.iter().map(|d| d.seq).collect::<Vec<_>>(), vec![1, 2]);
        outbox.close();
        assert_eq!(outbox.push(&delivery(4)), Pushed::Closed);
    }
}
