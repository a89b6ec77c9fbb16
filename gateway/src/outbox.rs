//! One connection's outbound queue: the hub pushes shared frames in, the
//! connection task takes them all out at once and writes them in one
//! batch.
//!
//! Bounded in frames and bytes, and never blocking the hub. Under
//! pressure (the queue half full) a quote replaces the pending frame of
//! its own topic instead of queueing behind it: a slow client gets the
//! latest price, not a backlog. Anything else that does not fit marks the
//! queue overflowed; the connection then closes with `slow_consumer`
//! (4001) so the client reconnects and recovers with `since`: order
//! updates are never silently dropped.
//!
//! The one task that reads the queue waits through an [`AtomicWaker`]
//! and the queue's own state, not a `tokio::sync::Notify`: the future
//! every idle connection's task holds for it is then a reference (a
//! `Notified` is 80 B), and the outbox itself is 8 B smaller.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use wire::Topic;

/// A frame built once and shared by every local subscriber of its topic.
#[derive(Debug)]
pub struct Delivery {
    pub topic: Topic,
    pub seq: u64,
    /// The client frame's payload (JSON, so valid UTF-8 by construction).
    pub text: Bytes,
    /// A newer frame of the same topic supersedes this one (quotes).
    pub conflatable: bool,
    /// When it was fanned out, on the few messages whose queue wait is
    /// measured (so deliveries need no clock read of their own).
    pub fanned_out: Option<std::time::Instant>,
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Replaced an older pending frame of the same topic.
    Conflated,
    /// The queue was full; the frame was dropped and the queue overflowed.
    Overflow,
    /// The connection is gone; nothing to do.
    Closed,
}

/// How much may wait for one socket.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub frames: usize,
    pub bytes: usize,
}

pub struct Outbox {
    state: Mutex<State>,
    /// The connection task waiting in [`Outbox::ready`]; woken when the
    /// queue goes from empty to not, or overflows.
    waker: AtomicWaker,
    limits: Limits,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Arc<Delivery>>,
    /// Bytes of the frames queued.
    bytes: usize,
    overflowed: bool,
    closed: bool,
}

impl Outbox {
    pub fn new(limits: Limits) -> Self {
        Outbox { state: Mutex::default(), waker: AtomicWaker::new(), limits }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn push(&self, delivery: &Arc<Delivery>) -> Pushed {
        let size = delivery.text.len();
        let mut state = self.lock();
        if state.closed {
            return Pushed::Closed;
        }
        let pressured = state.frames.len() * 2 >= self.limits.frames || state.bytes * 2 >= self.limits.bytes;
        if pressured && delivery.conflatable {
            let st = &mut *state;
            if let Some(slot) = st.frames.iter_mut().rev().find(|d| d.topic == delivery.topic) {
                st.bytes = st.bytes - slot.text.len() + size;
                *slot = Arc::clone(delivery);
                return Pushed::Conflated;
            }
        }
        if state.frames.len() >= self.limits.frames || state.bytes + size > self.limits.bytes {
            let first = !state.overflowed;
            state.overflowed = true;
            drop(state);
            if first {
                self.waker.wake();
            }
            return Pushed::Overflow;
        }
        let was_empty = state.frames.is_empty();
        state.frames.push_back(Arc::clone(delivery));
        state.bytes += size;
        drop(state);
        if was_empty {
            self.waker.wake();
        }
        Pushed::Queued
    }

    /// Waits until there is something to take (or an overflow to act on).
    /// For the one task that takes from this queue. Cancel safe.
    pub fn ready(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            // Registered before the state is read, so a push in between
            // still wakes this task.
            self.waker.register(cx.waker());
            let state = self.lock();
            if state.frames.is_empty() && !state.overflowed { Poll::Pending } else { Poll::Ready(()) }
        })
    }

    /// Moves every queued frame into `into` (which should be empty and is
    /// swapped with the queue, so both buffers are reused). Returns whether
    /// the queue had overflowed.
    pub fn take(&self, into: &mut VecDeque<Arc<Delivery>>) -> bool {
        let mut state = self.lock();
        std::mem::swap(&mut state.frames, into);
        state.bytes = 0;
        state.overflowed
    }

    /// Refuses further frames and frees the queued ones.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.frames = VecDeque::new();
        state.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(topic: &str, seq: u64) -> Arc<Delivery> {
        let topic = Topic::parse(topic).unwrap();
        let conflatable = topic.family() == wire::TopicFamily::Quotes;
        Arc::new(Delivery { topic, seq, text: Bytes::from_static(b"{}"), conflatable, fanned_out: None })
    }

    fn seqs(outbox: &Outbox) -> Vec<(String, u64)> {
        let mut batch = VecDeque::new();
        outbox.take(&mut batch);
        batch.iter().map(|d| (d.topic.to_string(), d.seq)).collect()
    }

    #[tokio::test]
    async fn queues_wakes_and_overflows() {
        let outbox = Outbox::new(Limits { frames: 2, bytes: 1 << 20 });
        assert_eq!(outbox.push(&delivery("orders.a", 1)), Pushed::Queued);
        assert_eq!(outbox.push(&delivery("orders.a", 2)), Pushed::Queued);
        assert_eq!(outbox.push(&delivery("orders.a", 3)), Pushed::Overflow);
        // Frames are waiting: this returns at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), outbox.ready()).await.unwrap();
        let mut batch = VecDeque::new();
        assert!(outbox.take(&mut batch));
        assert_eq!(batch.iter().map(|d| d.seq).collect::<Vec<_>>(), vec![1, 2]);
        outbox.close();
        assert_eq!(outbox.push(&delivery("orders.a", 4)), Pushed::Closed);
    }

    #[test]
    fn quotes_conflate_under_pressure_only() {
        let outbox = Outbox::new(Limits { frames: 4, bytes: 1 << 20 });
        assert_eq!(outbox.push(&delivery("quotes.A", 1)), Pushed::Queued);
        assert_eq!(outbox.push(&delivery("quotes.A", 2)), Pushed::Queued, "no pressure yet: keep both");
        assert_eq!(outbox.push(&delivery("orders.x", 1)), Pushed::Queued);
        assert_eq!(outbox.push(&delivery("quotes.A", 3)), Pushed::Conflated);
        assert_eq!(outbox.push(&delivery("quotes.B", 1)), Pushed::Queued);
        assert_eq!(outbox.push(&delivery("quotes.B", 2)), Pushed::Conflated, "full, but B conflates");
        assert_eq!(outbox.push(&delivery("orders.x", 2)), Pushed::Overflow, "orders are never conflated");
        let got = seqs(&outbox);
        let want = [("quotes.A", 1), ("quotes.A", 3), ("orders.x", 1), ("quotes.B", 2)];
        assert_eq!(got, want.map(|(t, s)| (t.to_string(), s)));
    }

    #[test]
    fn byte_limit_counts_too() {
        let big = |seq| {
            let text = Bytes::from("x".repeat(600));
            let topic = Topic::parse("orders.a").unwrap();
            Arc::new(Delivery { topic, seq, text, conflatable: false, fanned_out: None })
        };
        let outbox = Outbox::new(Limits { frames: 100, bytes: 1000 });
        assert_eq!(outbox.push(&big(1)), Pushed::Queued);
        assert_eq!(outbox.push(&big(2)), Pushed::Overflow);
        outbox.take(&mut VecDeque::new());
        assert_eq!(outbox.push(&big(3)), Pushed::Queued, "taking frees the bytes");
    }
}
