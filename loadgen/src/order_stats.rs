//! What one process measured of its order connections: counters (which
//! worker processes send to their parent, who sums them), per-step reply
//! latency histograms and outcomes, answers' error codes, and, with
//! `--order-trace`, every order's times.
//!
//! Steps are windows of the measured phase (`--order-step-every` long,
//! the last one running through the drain); an event belongs to the step
//! in which it happened: a send to the step it was sent in, an answer and
//! its latency to the step it arrived in.
//!
//! As in [`crate::stats`], events go to one of a few shards chosen by
//! connection, behind short std locks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::book::{Answer, Final, TraceRow, Update};
use crate::stats::{ErrorTally, LatencyBuckets, SeqCheck, new_histogram};

const SHARDS: usize = 16;
/// An order that goes out later than this after its slot counts as late:
/// loadgen itself could not keep the pace.
pub const LATE_US: u64 = 10_000;
/// Trace rows kept per process; beyond, rows are counted, not kept.
const MAX_TRACE_ROWS: usize = 4_000_000;

/// Counters of the order connections of one process (or, summed, of the
/// whole fleet).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCounters {
    /// Order connections holding their orders topic right now.
    pub ready: u64,
    /// Orders sent.
    pub sent: u64,
    /// Of those, sent more than 10 ms after their slot (loadgen behind).
    pub late: u64,
    /// Orders with an answer (their first `reply` or `error`).
    pub answered: u64,
    /// First answers that were replies.
    pub replied: u64,
    /// First answers that were errors (any code).
    pub errors: u64,
    /// Of those, code `timeout`.
    pub timeouts: u64,
    /// Answers after an order's first.
    pub duplicate_replies: u64,
    /// Answers naming an id loadgen never sent, or replies without an
    /// order id.
    pub unknown_replies: u64,
    /// `message` frames on the order connections' topics.
    pub updates: u64,
    /// Lifecycle updates owed by accepted orders.
    pub updates_owed: u64,
    /// First arrivals of an (order, status).
    pub updates_unique: u64,
    /// Of the updates owed, those that arrived (the drain waits for all;
    /// updates of orders no reply named are not among them).
    #[serde(default)]
    pub updates_arrived: u64,
    /// Repeats of an (order, status), or a second terminal status.
    pub duplicate_updates: u64,
    /// Updates that are not lifecycle rows (no order id, unknown status,
    /// no seq).
    pub invalid_updates: u64,
    /// `seq` numbers skipped on the order topics.
    pub seq_gaps: u64,
    /// Updates whose `seq` was not above the last one.
    pub seq_duplicates: u64,
    /// Judged when each connection ends: orders never answered.
    pub unanswered: u64,
    /// Judged at the end: owed updates that never arrived.
    pub updates_missing: u64,
    /// Judged at the end: updates of orders no reply named (a timed-out
    /// order served after all, or a lost reply).
    pub orphan_updates: u64,
    /// Judged at the end: statuses an order cannot have.
    pub unexpected_updates: u64,
}

impl OrderCounters {
    pub fn add(&mut self, o: &OrderCounters) {
        self.ready += o.ready;
        self.sent += o.sent;
        self.late += o.late;
        self.answered += o.answered;
        self.replied += o.replied;
        self.errors += o.errors;
        self.timeouts += o.timeouts;
        self.duplicate_replies += o.duplicate_replies;
        self.unknown_replies += o.unknown_replies;
        self.updates += o.updates;
        self.updates_owed += o.updates_owed;
        self.updates_unique += o.updates_unique;
        self.updates_arrived += o.updates_arrived;
        self.duplicate_updates += o.duplicate_updates;
        self.invalid_updates += o.invalid_updates;
        self.seq_gaps += o.seq_gaps;
        self.seq_duplicates += o.seq_duplicates;
        self.unanswered += o.unanswered;
        self.updates_missing += o.updates_missing;
        self.orphan_updates += o.orphan_updates;
        self.unexpected_updates += o.unexpected_updates;
    }

    /// Every order sent is answered and every update owed arrived (the
    /// drain can end).
    pub fn all_in(&self) -> bool {
        self.answered >= self.sent && self.updates_arrived >= self.updates_owed
    }
}

/// One step's outcomes, as sent from a worker to its parent.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    pub sent: u64,
    pub replied: u64,
    pub errors: u64,
    pub timeouts: u64,
    /// Reply latency (send → `reply`), µs.
    pub latency_us: LatencyBuckets,
}

impl StepResult {
    /// Adds `other` step by step (the longer list wins the length).
    pub fn merge_all(into: &mut Vec<StepResult>, other: &[StepResult]) {
        if into.len() < other.len() {
            into.resize(other.len(), StepResult::default());
        }
        for (a, b) in into.iter_mut().zip(other) {
            a.sent += b.sent;
            a.replied += b.replied;
            a.errors += b.errors;
            a.timeouts += b.timeouts;
            let mut h = a.histogram();
            b.latency_us.add_to(&mut h);
            a.latency_us = LatencyBuckets::from_histogram(&h);
        }
    }

    pub fn histogram(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        self.latency_us.add_to(&mut h);
        h
    }
}

struct StepData {
    sent: u64,
    replied: u64,
    errors: u64,
    timeouts: u64,
    latency_us: Histogram<u64>,
}

impl StepData {
    fn new() -> Self {
        StepData { sent: 0, replied: 0, errors: 0, timeouts: 0, latency_us: new_histogram() }
    }
}

struct ShardData {
    c: OrderCounters,
    steps: Vec<StepData>,
}

#[repr(align(128))]
struct Shard(Mutex<ShardData>);

/// The order side of one process's numbers.
pub struct OrderStats {
    shards: Box<[Shard]>,
    /// Unix µs when measuring began here; 0 before.
    go_us: AtomicU64,
    /// Length of a step, µs (0: the whole run is one step).
    step_us: u64,
    codes: Mutex<ErrorTally>,
    trace: Option<Mutex<Vec<TraceRow>>>,
    trace_dropped: AtomicU64,
}

impl OrderStats {
    /// `steps` windows of `step_us` each; `trace` keeps every order's times.
    pub fn new(steps: usize, step_us: u64, trace: bool) -> Self {
        let steps = steps.max(1);
        let shard = || {
            Shard(Mutex::new(ShardData {
                c: OrderCounters::default(),
                steps: (0..steps).map(|_| StepData::new()).collect(),
            }))
        };
        OrderStats {
            shards: (0..SHARDS).map(|_| shard()).collect(),
            go_us: AtomicU64::new(0),
            step_us,
            codes: Mutex::default(),
            trace: trace.then(Mutex::default),
            trace_dropped: AtomicU64::new(0),
        }
    }

    /// Measuring begins (steps count from here).
    pub fn start(&self, go_us: u64) {
        self.go_us.store(go_us, Relaxed);
    }

    fn with<R>(&self, conn: u64, f: impl FnOnce(&mut ShardData) -> R) -> R {
        let shard = &self.shards[conn as usize % self.shards.len()];
        f(&mut shard.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The step an event at `t_us` belongs to.
    fn step_of(&self, t_us: u64, steps: usize) -> usize {
        let go = self.go_us.load(Relaxed);
        if go == 0 || self.step_us == 0 || t_us < go {
            return 0;
        }
        (((t_us - go) / self.step_us) as usize).min(steps.saturating_sub(1))
    }

    /// An order connection got (`true`) or lost (`false`) its topic.
    pub fn ready(&self, conn: u64, up: bool) {
        self.with(conn, |s| {
            if up {
                s.c.ready += 1;
            } else {
                s.c.ready = s.c.ready.wrapping_sub(1);
            }
        });
    }

    pub fn placed(&self, conn: u64, now_us: u64, late_us: u64) {
        let step = self.step_of(now_us, self.steps_len());
        self.with(conn, |s| {
            s.c.sent += 1;
            s.c.late += u64::from(late_us > LATE_US);
            s.steps[step].sent += 1;
        });
    }

    pub fn answered(&self, conn: u64, answer: &Answer, now_us: u64) {
        let step = self.step_of(now_us, self.steps_len());
        if let Answer::First { error: Some(code), .. } = answer {
            self.codes.lock().unwrap_or_else(PoisonError::into_inner).record(code, 1);
        }
        self.with(conn, |s| match answer {
            Answer::First { latency_us, error: None, owed, arrived, .. } => {
                s.c.answered += 1;
                s.c.replied += 1;
                s.c.updates_owed += owed;
                s.c.updates_arrived += arrived;
                s.steps[step].replied += 1;
                s.steps[step].latency_us.saturating_record((*latency_us).max(1));
            }
            Answer::First { error: Some(code), .. } => {
                let timeout = code == wire::ErrorCode::Timeout.as_str();
                s.c.answered += 1;
                s.c.errors += 1;
                s.c.timeouts += u64::from(timeout);
                s.steps[step].errors += 1;
                s.steps[step].timeouts += u64::from(timeout);
            }
            Answer::Duplicate => s.c.duplicate_replies += 1,
            Answer::Unknown(_) => s.c.unknown_replies += 1,
        });
    }

    /// An update; `arrived` is 1 when it is one an accepted order owed.
    pub fn update(&self, conn: u64, check: Option<SeqCheck>, update: &Update, arrived: u64) {
        self.with(conn, |s| {
            s.c.updates += 1;
            s.c.updates_arrived += arrived;
            match check {
                Some(SeqCheck::Gap(n)) => s.c.seq_gaps += n,
                Some(SeqCheck::Duplicate) => s.c.seq_duplicates += 1,
                Some(SeqCheck::First | SeqCheck::InOrder) => {}
                None => s.c.invalid_updates += 1,
            }
            match update {
                Update::Unique => s.c.updates_unique += 1,
                Update::Duplicate => s.c.duplicate_updates += 1,
                // Without a seq it is counted above already.
                Update::Invalid(_) => s.c.invalid_updates += u64::from(check.is_some()),
            }
        });
    }

    /// A connection's book is closed: its verdict and trace rows.
    pub fn finished(&self, conn: u64, f: &Final, rows: Vec<TraceRow>) {
        self.with(conn, |s| {
            s.c.unanswered += f.unanswered;
            s.c.updates_missing += f.missing;
            s.c.orphan_updates += f.orphans;
            s.c.unexpected_updates += f.unexpected;
        });
        if let Some(trace) = &self.trace {
            let mut kept = trace.lock().unwrap_or_else(PoisonError::into_inner);
            let room = MAX_TRACE_ROWS.saturating_sub(kept.len());
            let dropped = rows.len().saturating_sub(room);
            kept.extend(rows.into_iter().take(room));
            self.trace_dropped.fetch_add(dropped as u64, Relaxed);
        }
    }

    fn steps_len(&self) -> usize {
        self.with(0, |s| s.steps.len())
    }

    pub fn counters(&self) -> OrderCounters {
        let mut c = OrderCounters::default();
        for shard in self.shards.iter() {
            c.add(&shard.0.lock().unwrap_or_else(PoisonError::into_inner).c);
        }
        c
    }

    /// Every shard's steps merged.
    pub fn steps(&self) -> Vec<StepResult> {
        let n = self.steps_len();
        (0..n)
            .map(|i| {
                let mut r = StepResult::default();
                let mut h = new_histogram();
                for shard in self.shards.iter() {
                    let s = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
                    let d = &s.steps[i];
                    r.sent += d.sent;
                    r.replied += d.replied;
                    r.errors += d.errors;
                    r.timeouts += d.timeouts;
                    // Same bounds everywhere, so adding cannot fail.
                    let _ = h.add(&d.latency_us);
                }
                r.latency_us = LatencyBuckets::from_histogram(&h);
                r
            })
            .collect()
    }

    /// p99 reply latency so far over every step, µs.
    pub fn reply_p99_us(&self) -> u64 {
        let mut h = new_histogram();
        for shard in self.shards.iter() {
            let s = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
            for d in &s.steps {
                let _ = h.add(&d.latency_us);
            }
        }
        h.value_at_quantile(0.99)
    }

    /// Error codes of first answers, and how often each came.
    pub fn codes(&self) -> ErrorTally {
        self.codes.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The trace rows kept (emptied), and how many did not fit.
    pub fn take_trace(&self) -> (Vec<TraceRow>, u64) {
        let rows = match &self.trace {
            Some(t) => std::mem::take(&mut *t.lock().unwrap_or_else(PoisonError::into_inner)),
            None => Vec::new(),
        };
        (rows, self.trace_dropped.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(latency_us: u64, error: Option<&str>, owed: u64) -> Answer {
        Answer::First { sent_us: 0, latency_us, error: error.map(str::to_owned), owed, arrived: 0 }
    }

    #[test]
    fn events_land_in_the_step_they_happen_in() {
        let stats = OrderStats::new(3, 1_000_000, false);
        let go = 10_000_000;
        stats.placed(1, 5, 0); // before go: step 0
        stats.start(go);
        stats.placed(1, go + 10, 20_000);
        stats.placed(2, go + 1_500_000, 0);
        stats.placed(3, go + 99_000_000, 0); // past the end: the last step
        stats.answered(1, &first(2_000, None, 3), go + 1_000_001);
        stats.answered(2, &first(4_000, Some("timeout"), 0), go + 2_500_000);
        stats.answered(2, &first(4_000, Some("rate_limited"), 0), go + 2_600_000);
        stats.answered(2, &Answer::Duplicate, go);
        stats.answered(2, &Answer::Unknown("x"), go);
        let steps = stats.steps();
        assert_eq!(steps.iter().map(|s| s.sent).collect::<Vec<_>>(), [2, 1, 1]);
        assert_eq!(steps.iter().map(|s| s.replied).collect::<Vec<_>>(), [0, 1, 0]);
        assert_eq!((steps[2].errors, steps[2].timeouts), (2, 1));
        assert_eq!(steps[1].histogram().len(), 1);
        let c = stats.counters();
        assert_eq!((c.sent, c.late, c.answered, c.replied, c.errors, c.timeouts), (4, 1, 3, 1, 2, 1));
        assert_eq!((c.duplicate_replies, c.unknown_replies, c.updates_owed), (1, 1, 3));
        assert_eq!(stats.codes().0, [("rate_limited".to_owned(), 1), ("timeout".to_owned(), 1)].into());
        assert!(!c.all_in());
    }

    #[test]
    fn the_drain_waits_for_owed_updates_not_for_orphans() {
        let stats = OrderStats::new(1, 0, false);
        stats.placed(1, 10, 0);
        stats.answered(
            1,
            &Answer::First { sent_us: 10, latency_us: 5, error: None, owed: 3, arrived: 1 },
            15,
        );
        // Updates of an order no reply named (a timed-out one, served
        // anyway) are unique but owed by nobody.
        for _ in 0..5 {
            stats.update(1, Some(SeqCheck::InOrder), &Update::Unique, 0);
        }
        assert!(!stats.counters().all_in(), "{:?}", stats.counters());
        stats.update(1, Some(SeqCheck::InOrder), &Update::Unique, 1);
        assert!(!stats.counters().all_in());
        stats.update(1, Some(SeqCheck::InOrder), &Update::Unique, 1);
        assert!(stats.counters().all_in());
    }

    #[test]
    fn updates_and_verdicts_add_up() {
        let stats = OrderStats::new(1, 0, true);
        stats.update(4, Some(SeqCheck::First), &Update::Unique, 0);
        stats.update(4, Some(SeqCheck::Gap(2)), &Update::Unique, 0);
        stats.update(5, Some(SeqCheck::Duplicate), &Update::Duplicate, 0);
        stats.update(5, None, &Update::Invalid("no seq"), 0);
        stats.update(5, Some(SeqCheck::InOrder), &Update::Invalid("bad row"), 0);
        let row = TraceRow {
            conn: 4,
            n: 0,
            order_id: "ord-1".into(),
            sent_us: 1,
            answer_us: 2,
            code: "ok".into(),
            new_ts_ms: 0,
            new_recv_us: 0,
            end_recv_us: 0,
        };
        stats.finished(4, &Final { unanswered: 1, missing: 2, orphans: 3, unexpected: 4 }, vec![row.clone()]);
        let c = stats.counters();
        assert_eq!((c.updates, c.updates_unique, c.duplicate_updates, c.invalid_updates), (5, 2, 1, 2));
        assert_eq!((c.seq_gaps, c.seq_duplicates), (2, 1));
        assert_eq!((c.unanswered, c.updates_missing, c.orphan_updates, c.unexpected_updates), (1, 2, 3, 4));
        assert_eq!(stats.take_trace(), (vec![row], 0));
    }

    #[test]
    fn steps_merge_across_processes() {
        let a = OrderStats::new(2, 1_000, false);
        let b = OrderStats::new(2, 1_000, false);
        a.start(1_000);
        b.start(1_000);
        a.answered(0, &first(1_000, None, 2), 1_500);
        b.answered(0, &first(9_000, None, 2), 2_500);
        b.answered(1, &first(3_000, None, 2), 2_500);
        let mut merged = a.steps();
        StepResult::merge_all(&mut merged, &b.steps());
        assert_eq!(merged.iter().map(|s| s.replied).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(merged[1].histogram().max(), b.steps()[1].histogram().max());
        let mut short = Vec::new();
        StepResult::merge_all(&mut short, &merged);
        assert_eq!(short, merged);
    }
}
