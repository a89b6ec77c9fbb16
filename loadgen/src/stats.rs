//! What one process measured: connection counters, message counters,
//! the end-to-end latency histogram, error tallies and how many of its
//! connections currently hold each topic; the order connections' numbers
//! live in [`OrderStats`], owned here.
//!
//! Every connection task writes here. Per-message updates go to one of a
//! few shards (chosen by connection id) behind short std locks, so two
//! cores never fight over one cache line per message; connection events
//! are rare and use plain atomics. Everything serialises, so a worker
//! process can hand its numbers to the parent, which merges them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::order_stats::{OrderCounters, OrderStats};

/// Shards for per-message updates; a power of two well above the cores.
const SHARDS: usize = 16;
/// Highest latency kept exactly (one hour, in µs); larger ones saturate.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Distinct error messages kept; the rest are counted under one key.
const MAX_ERROR_KINDS: usize = 16;
const OTHER_ERRORS: &str = "(other errors)";

/// Counters one process (or, summed, the whole fleet) reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Connection attempts, first ones and reconnects.
    pub attempted: u64,
    /// Attempts that completed the WebSocket upgrade.
    pub established: u64,
    /// Attempts that did not (refused, timed out, upgrade refused).
    pub failed: u64,
    /// Established connections lost before loadgen closed them.
    pub dropped: u64,
    /// Established connections after the first one of a client.
    pub reconnects: u64,
    /// Connections open right now.
    pub open: u64,
    /// Clients whose first attempt has an outcome (all subscriptions
    /// acknowledged, or a failure); the run starts measuring when all have.
    pub settled: u64,
    /// `subscribed` frames received (again after each reconnect).
    pub subs_acked: u64,
    /// `error` frames received for a subscription.
    pub sub_errors: u64,
    /// `message` frames received, duplicates included.
    pub messages: u64,
    /// Bytes of those `message` frames.
    pub bytes: u64,
    /// Of those, published before this socket subscribed: the snapshot or
    /// history replay the gateway sends after `subscribed` (no latency).
    pub recovered: u64,
    /// Sequence numbers skipped, per (connection, topic).
    pub lost: u64,
    /// Messages whose `seq` was not above the last one seen.
    pub duplicates: u64,
    /// Connections closed at the end with a completed close handshake.
    pub closed_clean: u64,
    /// Frames that were not JSON or not of a known shape.
    pub invalid_frames: u64,
    /// The order connections' side (order mode).
    #[serde(default)]
    pub orders: OrderCounters,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.attempted += o.attempted;
        self.established += o.established;
        self.failed += o.failed;
        self.dropped += o.dropped;
        self.reconnects += o.reconnects;
        self.open += o.open;
        self.settled += o.settled;
        self.subs_acked += o.subs_acked;
        self.sub_errors += o.sub_errors;
        self.messages += o.messages;
        self.bytes += o.bytes;
        self.recovered += o.recovered;
        self.lost += o.lost;
        self.duplicates += o.duplicates;
        self.closed_clean += o.closed_clean;
        self.invalid_frames += o.invalid_frames;
        self.orders.add(&o.orders);
    }
}

/// What a message's `seq` says about the ones before it on its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// The first message seen on this (connection, topic): gaps count
    /// from here, since the subscription may start mid-stream.
    First,
    InOrder,
    /// `n` sequence numbers were skipped.
    Gap(u64),
    /// Not above the last one seen.
    Duplicate,
}

/// Advances `last` (the highest `seq` seen on one topic of one
/// connection) past `seq`, classifying it.
pub fn check_seq(last: &mut Option<u64>, seq: u64) -> SeqCheck {
    match *last {
        None => {
            *last = Some(seq);
            SeqCheck::First
        }
        Some(prev) if seq <= prev => SeqCheck::Duplicate,
        Some(prev) => {
            *last = Some(seq);
            match seq - prev - 1 {
                0 => SeqCheck::InOrder,
                n => SeqCheck::Gap(n),
            }
        }
    }
}

/// A latency histogram in µs, built with the bounds every process uses
/// so histograms from different workers merge exactly.
#[allow(clippy::expect_used, reason = "constant, valid bounds: low >= 1, high >= 2 * low, sigfig <= 5")]
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// A histogram as `(value, count)` pairs of its non-empty buckets: small,
/// and exact to merge (each value lands in the bucket it came from).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyBuckets(pub Vec<(u64, u64)>);

impl LatencyBuckets {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        LatencyBuckets(h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect())
    }

    pub fn add_to(&self, h: &mut Histogram<u64>) {
        for &(value, count) in &self.0 {
            h.saturating_record_n(value, count);
        }
    }
}

/// Error messages and how often each happened, capped in size.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorTally(pub BTreeMap<String, u64>);

impl ErrorTally {
    pub fn record(&mut self, message: &str, n: u64) {
        if let Some(count) = self.0.get_mut(message) {
            *count += n;
        } else if self.0.len() < MAX_ERROR_KINDS {
            self.0.insert(message.to_owned(), n);
        } else {
            *self.0.entry(OTHER_ERRORS.to_owned()).or_insert(0) += n;
        }
    }

    pub fn merge(&mut self, other: &ErrorTally) {
        for (message, &n) in &other.0 {
            self.record(message, n);
        }
    }

    /// The most frequent messages first.
    pub fn by_count(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self.0.iter().map(|(m, &n)| (m.as_str(), n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }
}

#[repr(align(128))]
struct Shard(Mutex<ShardData>);

struct ShardData {
    latency_us: Histogram<u64>,
    messages: u64,
    bytes: u64,
    recovered: u64,
    lost: u64,
    duplicates: u64,
}

/// The live numbers of one process.
pub struct Stats {
    attempted: AtomicU64,
    established: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
    open: AtomicU64,
    settled: AtomicU64,
    subs_acked: AtomicU64,
    sub_errors: AtomicU64,
    closed_clean: AtomicU64,
    invalid_frames: AtomicU64,
    shards: Box<[Shard]>,
    errors: Mutex<ErrorTally>,
    /// Connections holding an acknowledged subscription to each topic (by
    /// topic index), so the run knows how many deliveries each publish owes.
    subscribers: Box<[AtomicU32]>,
    /// What the order connections measured.
    pub orders: OrderStats,
}

impl Stats {
    pub fn new(topics: usize) -> Self {
        Self::with_orders(topics, OrderStats::new(1, 0, false))
    }

    pub fn with_orders(topics: usize, orders: OrderStats) -> Self {
        let shard = || {
            Shard(Mutex::new(ShardData {
                latency_us: new_histogram(),
                messages: 0,
                bytes: 0,
                recovered: 0,
                lost: 0,
                duplicates: 0,
            }))
        };
        Stats {
            attempted: AtomicU64::new(0),
            established: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            open: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            subs_acked: AtomicU64::new(0),
            sub_errors: AtomicU64::new(0),
            closed_clean: AtomicU64::new(0),
            invalid_frames: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| shard()).collect(),
            errors: Mutex::default(),
            subscribers: (0..topics).map(|_| AtomicU32::new(0)).collect(),
            orders,
        }
    }

    pub fn attempt(&self) {
        self.attempted.fetch_add(1, Relaxed);
    }

    pub fn connect_failed(&self, why: &str) {
        self.failed.fetch_add(1, Relaxed);
        self.error(why);
    }

    pub fn established(&self, reconnect: bool) {
        self.established.fetch_add(1, Relaxed);
        self.open.fetch_add(1, Relaxed);
        if reconnect {
            self.reconnects.fetch_add(1, Relaxed);
        }
    }

    /// An open connection ended; `dropped` unless loadgen closed it.
    pub fn closed(&self, dropped: Option<&str>, clean: bool) {
        self.open.fetch_sub(1, Relaxed);
        if let Some(why) = dropped {
            self.dropped.fetch_add(1, Relaxed);
            self.error(why);
        }
        if clean {
            self.closed_clean.fetch_add(1, Relaxed);
        }
    }

    pub fn settled(&self) {
        self.settled.fetch_add(1, Relaxed);
    }

    pub fn subscribed(&self, topic: u32) {
        self.subs_acked.fetch_add(1, Relaxed);
        if let Some(n) = self.subscribers.get(topic as usize) {
            n.fetch_add(1, Relaxed);
        }
    }

    /// A connection holding `topic` went away.
    pub fn unsubscribed(&self, topic: u32) {
        if let Some(n) = self.subscribers.get(topic as usize) {
            n.fetch_sub(1, Relaxed);
        }
    }

    pub fn sub_error(&self, why: &str) {
        self.sub_errors.fetch_add(1, Relaxed);
        self.error(why);
    }

    pub fn invalid_frame(&self, why: &str) {
        self.invalid_frames.fetch_add(1, Relaxed);
        self.error(why);
    }

    pub fn error(&self, why: &str) {
        self.errors.lock().unwrap_or_else(PoisonError::into_inner).record(why, 1);
    }

    /// One `message` frame of `bytes` bytes, received on connection
    /// `conn`; `latency_us` is None for recovered (or `ts`-less) messages.
    pub fn message(&self, conn: u64, bytes: usize, latency_us: Option<u64>, recovered: bool, seq: SeqCheck) {
        let shard = &self.shards[conn as usize % self.shards.len()];
        let mut s = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
        s.messages += 1;
        s.bytes += bytes as u64;
        s.recovered += u64::from(recovered);
        match seq {
            SeqCheck::Gap(n) => s.lost += n,
            SeqCheck::Duplicate => s.duplicates += 1,
            SeqCheck::First | SeqCheck::InOrder => {}
        }
        if let Some(us) = latency_us {
            s.latency_us.saturating_record(us.max(1));
        }
    }

    pub fn counters(&self) -> Counters {
        let mut c = Counters {
            attempted: self.attempted.load(Relaxed),
            established: self.established.load(Relaxed),
            failed: self.failed.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            open: self.open.load(Relaxed),
            settled: self.settled.load(Relaxed),
            subs_acked: self.subs_acked.load(Relaxed),
            sub_errors: self.sub_errors.load(Relaxed),
            closed_clean: self.closed_clean.load(Relaxed),
            invalid_frames: self.invalid_frames.load(Relaxed),
            orders: self.orders.counters(),
            ..Counters::default()
        };
        for shard in self.shards.iter() {
            let s = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
            c.messages += s.messages;
            c.bytes += s.bytes;
            c.recovered += s.recovered;
            c.lost += s.lost;
            c.duplicates += s.duplicates;
        }
        c
    }

    /// Every shard's latencies merged into one histogram.
    pub fn latency(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        for shard in self.shards.iter() {
            let s = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
            // Same bounds everywhere, so adding cannot fail.
            let _ = h.add(&s.latency_us);
        }
        h
    }

    pub fn errors(&self) -> ErrorTally {
        self.errors.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Topics with at least one subscriber here, and how many.
    pub fn subscribers(&self) -> BTreeMap<u32, u64> {
        self.subscribers
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match n.load(Relaxed) {
                0 => None,
                n => Some((i as u32, u64::from(n))),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_count_from_the_first_seq_seen() {
        let mut last = None;
        let seen: Vec<SeqCheck> = [5, 6, 8, 8, 7, 12].iter().map(|&s| check_seq(&mut last, s)).collect();
        assert_eq!(
            seen,
            [
                SeqCheck::First,
                SeqCheck::InOrder,
                SeqCheck::Gap(1),
                SeqCheck::Duplicate,
                SeqCheck::Duplicate,
                SeqCheck::Gap(3)
            ]
        );
        assert_eq!(last, Some(12));
    }

    #[test]
    fn messages_are_counted_across_shards() {
        let stats = Stats::new(4);
        for conn in 0..40 {
            stats.message(conn, 100, Some(1000 + conn), false, SeqCheck::InOrder);
        }
        stats.message(3, 50, None, true, SeqCheck::Gap(2));
        stats.message(4, 50, Some(5), false, SeqCheck::Duplicate);
        let c = stats.counters();
        assert_eq!((c.messages, c.bytes, c.lost, c.duplicates, c.recovered), (42, 4100, 2, 1, 1));
        let h = stats.latency();
        assert_eq!(h.len(), 41);
        assert_eq!(h.min(), 5);
    }

    #[test]
    fn histograms_merge_exactly_through_buckets() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        for v in [1u64, 10, 100, 1_000, 10_000, 123_456] {
            a.record(v).unwrap();
            b.record(v * 3).unwrap();
        }
        let mut merged = new_histogram();
        LatencyBuckets::from_histogram(&a).add_to(&mut merged);
        let json = serde_json::to_string(&LatencyBuckets::from_histogram(&b)).unwrap();
        serde_json::from_str::<LatencyBuckets>(&json).unwrap().add_to(&mut merged);
        let mut direct = a.clone();
        direct.add(&b).unwrap();
        assert_eq!(merged.len(), direct.len());
        for q in [0.5, 0.9, 0.99, 1.0] {
            assert_eq!(merged.value_at_quantile(q), direct.value_at_quantile(q));
        }
    }

    #[test]
    fn error_tally_is_bounded() {
        let mut t = ErrorTally::default();
        for i in 0..40 {
            t.record(&format!("e{i}"), 1);
        }
        t.record("e0", 5);
        assert_eq!(t.0.len(), MAX_ERROR_KINDS + 1);
        assert_eq!(t.0[OTHER_ERRORS], 40 - MAX_ERROR_KINDS as u64);
        assert_eq!(t.by_count()[0], (OTHER_ERRORS, 24));
        assert_eq!(t.by_count()[1], ("e0", 6));
    }

    #[test]
    fn subscribers_follow_acks_and_departures() {
        let stats = Stats::new(3);
        stats.subscribed(1);
        stats.subscribed(1);
        stats.subscribed(2);
        stats.unsubscribed(2);
        stats.subscribed(99); // out of range: counted as an ack only
        assert_eq!(stats.subscribers(), BTreeMap::from([(1, 2)]));
        assert_eq!(stats.counters().subs_acked, 4);
    }
}
