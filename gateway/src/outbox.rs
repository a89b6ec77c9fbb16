//! One connection's outbound queue: the hub pushes shared frames in, the
//! connection task takes them all out at once and writes them in one
//! batch; or, when nothing is waiting and the task has nothing to write,
//! the hub writes the frame to the socket itself.
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
//!
//! # The direct path
//!
//! Waking the connection's task for every frame costs a wake-up, a poll
//! and a lock more than the write itself. So while the task waits with
//! nothing of its own to write, it *parks* the outbox ([`Outbox::park`]),
//! handing the socket to whoever pushes. A push to a parked outbox whose
//! queue is empty admits the frame ([`held`]) and writes it with one
//! non-blocking vectored write (header and shared payload) from the
//! hub's thread: no task is woken. If the socket takes only part of it,
//! the rest is kept ([`Outbox::claim`]) for the task, which writes it
//! before anything else; if it takes nothing (`WouldBlock`, or an error
//! the task will meet too), the frame is queued as it would have been.
//! Either way the outbox is no longer parked, so every later frame
//! queues behind it, in order.
//!
//! Only a frame whose message did not come in a burst takes the direct
//! path ([`Delivery::direct`], [`crate::broker::Pace`]): when the node is
//! behind its backplane, one write per frame per subscriber would make a
//! busy node busier, so such frames queue (also into a parked outbox,
//! which then stops being parked) and the task writes them many at a time.
//!
//! Why this is safe: the outbox's lock decides who writes. The hub writes
//! only while the outbox is parked, and holds the lock for the whole
//! write (one syscall, never across an `.await`), so two pushes never
//! write at once and a frame is never written beside one queued before
//! it (parked implies an empty queue). The task parks only when its own
//! socket buffer is empty and nothing is queued, and claims the socket
//! back (under the same lock) before it writes anything: a reply, a pong,
//! a ping, a replay, a close. Between its claim and its next park it is
//! the only writer, and the frames fanned out meanwhile queue, so the
//! overflow policy, conflation (which only ever replaces a queued frame)
//! and the slow-consumer close are those of the queue, untouched: the
//! direct path only takes frames that would have been queued into an
//! empty queue. Admission (topics held, recovery's floor, a gap notice)
//! lives in the outbox ([`held`]) so a frame written directly is
//! admitted by the same rule as one the task takes; a frame whose
//! admission would need a gap notice is queued for the task, which sends
//! the notice first. The path is off when the connection is not a plain
//! TCP stream (no [`TcpStream`] to share) or `ws_direct_writes` is off.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::net::TcpStream;
use wire::Topic;

pub mod held;

use held::{Admit, Held};

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
    /// The fan-out may write it to a parked socket itself (the message was
    /// not part of a burst: [`crate::broker::Pace::Alone`]); otherwise it
    /// is queued for the connection's task, which writes queued frames in
    /// batches.
    pub direct: bool,
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Written to the socket from the pushing thread (the direct path);
    /// all of it, or the first bytes with the rest left to the task.
    Written,
    /// Admitted on the direct path as not for this socket (its topic was
    /// left, or recovery sent it): nothing to write.
    Skipped,
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
    /// queue goes from empty to not, or overflows, or a direct write left
    /// a rest.
    waker: AtomicWaker,
    limits: Limits,
    /// The connection's socket, when pushes may write to it themselves
    /// (the direct path is on and the connection is a plain TCP stream).
    direct: Option<Arc<TcpStream>>,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Arc<Delivery>>,
    /// Bytes of the frames queued.
    bytes: usize,
    overflowed: bool,
    closed: bool,
    /// What the connection holds and sent: every frame is admitted here,
    /// on either path.
    held: Held,
    /// The task waits with nothing to write and has handed the socket to
    /// the pushes (only with `direct`, an empty queue and no `partial`).
    parked: bool,
    /// A frame a direct write did not finish, and how many of its bytes
    /// (header included) are on the wire: the task writes the rest before
    /// anything else. Boxed: rare, and every connection's outbox would
    /// carry 40 B for it.
    partial: Option<Box<(Bytes, usize)>>,
}

/// What [`Outbox::take`] took besides the frames.
#[derive(Debug, Default)]
pub struct Taken {
    /// The queue had overflowed: close the slow consumer.
    pub overflowed: bool,
    /// Frames (by position in the batch) before which the client must be
    /// told that updates after the given seq are missing.
    pub gaps: Vec<(usize, u64)>,
}

impl Outbox {
    /// An outbox; with `direct`, pushes write to that socket themselves
    /// while the task is parked.
    pub fn new(limits: Limits, direct: Option<Arc<TcpStream>>) -> Self {
        Outbox { state: Mutex::default(), waker: AtomicWaker::new(), limits, direct }
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
        if state.parked
            && delivery.direct
            && let Some(tcp) = &self.direct
            && size <= self.limits.bytes
            && let Some(pushed) = write_direct(&mut state, tcp, delivery)
        {
            let rest_left = state.partial.is_some();
            drop(state);
            if rest_left {
                self.waker.wake();
            }
            return pushed;
        }
        // Queued (or refused): the task writes from here on, in order.
        state.parked = false;
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

    /// The task is about to wait with nothing of its own to write
    /// (`socket_idle`: its socket buffer is empty): hands the socket to
    /// the pushes, if nothing is queued. Returns whether it did.
    pub(crate) fn park(&self, socket_idle: bool) -> bool {
        if self.direct.is_none() || !socket_idle {
            return false;
        }
        let mut state = self.lock();
        let idle = state.frames.is_empty() && !state.overflowed && state.partial.is_none() && !state.closed;
        state.parked = idle;
        idle
    }

    /// Takes the socket back from the pushes before the task writes
    /// anything itself; returns the rest of a frame a direct write did
    /// not finish (to be written first) and how much of it was written.
    pub(crate) fn claim(&self) -> Option<(Bytes, usize)> {
        // Without the direct path the socket is never handed over.
        self.direct.as_ref()?;
        let mut state = self.lock();
        state.parked = false;
        state.partial.take().map(|partial| *partial)
    }

    /// Works on what the connection holds (under the outbox's lock).
    pub fn held<R>(&self, f: impl FnOnce(&mut Held) -> R) -> R {
        f(&mut self.lock().held)
    }

    /// Waits until there is something to take (or an overflow to act on).
    /// For the one task that takes from this queue. Cancel safe.
    pub fn ready(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            // Registered before the state is read, so a push in between
            // still wakes this task.
            self.waker.register(cx.waker());
            let state = self.lock();
            if state.frames.is_empty() && !state.overflowed && state.partial.is_none() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
    }

    /// Moves every queued frame the connection is to send into `into`
    /// (which should be empty and is swapped with the queue, so both
    /// buffers are reused), admitted in order: frames of topics left, or
    /// sent already by recovery, are dropped. The task calls it after
    /// [`Outbox::claim`].
    pub fn take(&self, into: &mut VecDeque<Arc<Delivery>>) -> Taken {
        let mut state = self.lock();
        let state = &mut *state;
        std::mem::swap(&mut state.frames, into);
        state.bytes = 0;
        let mut taken = Taken { overflowed: state.overflowed, gaps: Vec::new() };
        let mut kept = 0;
        into.retain(|delivery| match state.held.admit(delivery, true) {
            Admit::Skip => false,
            Admit::Send => {
                kept += 1;
                true
            }
            Admit::Gap { after } => {
                taken.gaps.push((kept, after));
                kept += 1;
                true
            }
        });
        taken
    }

    /// Refuses further frames, frees the queued ones and ends the direct
    /// path; returns what the connection held (to leave it).
    pub fn close(&self) -> Held {
        let mut state = self.lock();
        state.closed = true;
        state.parked = false;
        state.partial = None;
        state.frames = VecDeque::new();
        state.bytes = 0;
        std::mem::take(&mut state.held)
    }
}

/// The direct path: admits `delivery` and writes it now. `None` when
/// it is to be queued after all (a gap notice must precede it, or the
/// socket took nothing); a frame admitted here and then queued is
/// admitted again by the task with the same answer (admitting a frame
/// twice in a row changes nothing the second time). A rest left sets
/// `partial`; the caller wakes the task for it.
fn write_direct(state: &mut State, tcp: &TcpStream, delivery: &Delivery) -> Option<Pushed> {
    match state.held.admit(delivery, false) {
        Admit::Skip => return Some(Pushed::Skipped),
        Admit::Gap { .. } => return None,
        Admit::Send => {}
    }
    let (wrote, len) = match crate::ws::socket::write_text_now(tcp, &delivery.text) {
        Ok((wrote, len)) if wrote > 0 => (wrote, len),
        // `WouldBlock` (which clears tokio's write readiness, so the
        // task's flush waits for it), an error (the task's write meets
        // it too and ends the connection), or nothing taken.
        _ => return None,
    };
    if wrote < len {
        state.parked = false;
        state.partial = Some(Box::new((delivery.text.clone(), wrote)));
    }
    Some(Pushed::Written)
}

#[cfg(test)]
mod direct_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(topic: &str, seq: u64) -> Arc<Delivery> {
        let topic = Topic::parse(topic).unwrap();
        let conflatable = topic.family() == wire::TopicFamily::Quotes;
        Arc::new(Delivery {
            topic,
            seq,
            text: Bytes::from_static(b"{}"),
            conflatable,
            fanned_out: None,
            direct: true,
        })
    }

    /// An outbox without the direct path, holding `topics`.
    fn holding(limits: Limits, topics: &[&str]) -> Outbox {
        let outbox = Outbox::new(limits, None);
        for t in topics {
            outbox.held(|held| held.insert(Topic::parse(t).unwrap()));
        }
        outbox
    }

    fn seqs(outbox: &Outbox) -> Vec<(String, u64)> {
        let mut batch = VecDeque::new();
        outbox.take(&mut batch);
        batch.iter().map(|d| (d.topic.to_string(), d.seq)).collect()
    }

    #[tokio::test]
    async fn queues_wakes_and_overflows() {
        let outbox = holding(Limits { frames: 2, bytes: 1 << 20 }, &["orders.a"]);
        assert!(!outbox.park(true), "no socket to share: never parked");
        assert_eq!(outbox.push(&delivery("orders.a", 1)), Pushed::Queued);
        assert_eq!(outbox.push(&delivery("orders.a", 2)), Pushed::Queued);
        assert_eq!(outbox.push(&delivery("orders.a", 3)), Pushed::Overflow);
        // Frames are waiting: this returns at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), outbox.ready()).await.unwrap();
        let mut batch = VecDeque::new();
        assert!(outbox.take(&mut batch).overflowed);
        assert_eq!(batch.iter().map(|d| d.seq).collect::<Vec<_>>(), vec![1, 2]);
        let held = outbox.close();
        assert_eq!(held.len(), 1, "closing hands back what was held");
        assert_eq!(outbox.push(&delivery("orders.a", 4)), Pushed::Closed);
    }

    #[test]
    fn quotes_conflate_under_pressure_only() {
        let outbox = holding(Limits { frames: 4, bytes: 1 << 20 }, &["quotes.A", "quotes.B", "orders.x"]);
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
            Arc::new(Delivery { topic, seq, text, conflatable: false, fanned_out: None, direct: true })
        };
        let outbox = holding(Limits { frames: 100, bytes: 1000 }, &["orders.a"]);
        assert_eq!(outbox.push(&big(1)), Pushed::Queued);
        assert_eq!(outbox.push(&big(2)), Pushed::Overflow);
        outbox.take(&mut VecDeque::new());
        assert_eq!(outbox.push(&big(3)), Pushed::Queued, "taking frees the bytes");
    }

    #[test]
    fn take_admits_in_order_and_marks_gaps() {
        let outbox = holding(Limits { frames: 100, bytes: 1 << 20 }, &["orders.a"]);
        outbox.held(|held| held.set_floor("orders.a", 2));
        for seq in [1, 2, 3, 5, 6] {
            outbox.push(&delivery("orders.a", seq));
        }
        outbox.push(&delivery("orders.gone", 1));
        let mut batch = VecDeque::new();
        let taken = outbox.take(&mut batch);
        assert_eq!(
            batch.iter().map(|d| d.seq).collect::<Vec<_>>(),
            vec![3, 5, 6],
            "replayed and unheld skipped"
        );
        assert_eq!(taken.gaps, vec![(1, 3)], "the frame after the hole, and the last seq before it");
    }
}
