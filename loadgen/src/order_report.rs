//! What order mode tells people and machines: the [`OrderSummary`] of a
//! run (part of the JSON summary and the table), its per-step table, the
//! verdict (every order answered exactly once, every lifecycle update
//! exactly once and in seq, error answers within `--max-order-errors`),
//! and the request/reply sweep's CSV row.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::order_stats::{OrderCounters, StepResult};
use crate::report::{LatencySummary, n};
use crate::settings::Settings;
use crate::stats::ErrorTally;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderSummary {
    /// How orders were paced.
    pub pace: String,
    /// Order connections by the end of the run (steps included).
    pub connections: u64,
    /// Order connections holding their orders topic when measuring began.
    pub ready_at_start: u64,
    pub sent: u64,
    /// Orders sent per second of the measured phase.
    pub asked_per_second: f64,
    /// Orders whose first answer was a reply.
    pub replied: u64,
    /// Replies per second of the measured phase, drain included (as the
    /// pub/sub `msg/s`).
    pub per_second: f64,
    /// Orders that went out more than 10 ms after their slot: loadgen
    /// itself fell behind, and the asked rate was not offered.
    pub late_sends: u64,
    /// Orders whose first answer was an error, by code below.
    pub errors: u64,
    pub timeouts: u64,
    pub codes: BTreeMap<String, u64>,
    /// Orders with no answer at all (lost).
    pub unanswered: u64,
    /// Answers beyond an order's first.
    pub duplicate_replies: u64,
    /// Answers for ids never sent, or replies without an order id.
    pub unknown_replies: u64,
    /// Send → `reply` (successful replies only).
    pub latency_ms: LatencySummary,
    pub updates: UpdateSummary,
    /// One row per connection step (one row without `--order-step`).
    pub steps: Vec<OrderStep>,
    /// The tolerated ratio of error answers to orders sent.
    pub max_errors: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateSummary {
    /// `message` frames on the order connections' topics.
    pub received: u64,
    /// Lifecycle updates the accepted orders owed.
    pub owed: u64,
    /// Of those, arrived (first arrivals of an order's status).
    pub arrived: u64,
    pub missing: u64,
    pub duplicates: u64,
    /// Updates of orders no reply named.
    pub orphans: u64,
    /// Statuses an order cannot have, or rows that are not lifecycle rows.
    pub invalid: u64,
    pub seq_gaps: u64,
    pub seq_duplicates: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderStep {
    /// Order connections open in this step (as planned).
    pub connections: u64,
    /// Length of the step's window (the last one includes the drain).
    pub seconds: f64,
    pub sent: u64,
    pub replied: u64,
    /// Replies that arrived in this window, per second.
    pub per_second: f64,
    pub errors: u64,
    pub timeouts: u64,
    /// Replies that arrived in this window: send → reply.
    pub latency_ms: LatencySummary,
}

impl OrderSummary {
    /// From the merged counters and steps of every process.
    pub fn build(
        settings: &Settings,
        counters: &OrderCounters,
        at_go: &OrderCounters,
        steps: &[StepResult],
        codes: &ErrorTally,
        measure_s: f64,
    ) -> Option<OrderSummary> {
        let o = settings.orders.as_ref()?;
        let c = counters;
        let mut all = crate::stats::new_histogram();
        for s in steps {
            s.latency_us.add_to(&mut all);
        }
        let step_len = o.step_len(settings.duration).as_secs_f64();
        let last = steps.len().saturating_sub(1);
        let rows = steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let seconds =
                    if i == last { (measure_s - step_len * last as f64).max(1e-9) } else { step_len };
                OrderStep {
                    connections: o.conns_in_step(i as u64),
                    seconds,
                    sent: s.sent,
                    replied: s.replied,
                    per_second: s.replied as f64 / seconds,
                    errors: s.errors,
                    timeouts: s.timeouts,
                    latency_ms: LatencySummary::of(&s.histogram()),
                }
            })
            .collect();
        Some(OrderSummary {
            pace: o.pace_text.clone(),
            connections: o.total(settings.duration),
            ready_at_start: at_go.ready,
            sent: c.sent,
            asked_per_second: c.sent as f64 / settings.duration.as_secs_f64().max(1e-9),
            replied: c.replied,
            per_second: c.replied as f64 / measure_s.max(1e-9),
            late_sends: c.late,
            errors: c.errors,
            timeouts: c.timeouts,
            codes: codes.0.clone(),
            unanswered: c.unanswered,
            duplicate_replies: c.duplicate_replies,
            unknown_replies: c.unknown_replies,
            latency_ms: LatencySummary::of(&all),
            updates: UpdateSummary {
                received: c.updates,
                owed: c.updates_owed,
                arrived: c.updates_owed.saturating_sub(c.updates_missing),
                missing: c.updates_missing,
                duplicates: c.duplicate_updates,
                orphans: c.orphan_updates,
                invalid: c.invalid_updates + c.unexpected_updates,
                seq_gaps: c.seq_gaps,
                seq_duplicates: c.seq_duplicates,
            },
            steps: rows,
            max_errors: o.max_errors,
        })
    }

    /// Orders lost or updates lost: no answer, a missing update, a seq gap.
    pub fn lost(&self) -> u64 {
        self.unanswered + self.updates.missing + self.updates.seq_gaps
    }

    /// Anything that came more than once.
    pub fn duplicates(&self) -> u64 {
        self.duplicate_replies + self.updates.duplicates + self.updates.seq_duplicates
    }

    /// Every way the run failed the exactly-once contract, or the error
    /// budget; empty when it passed.
    pub fn failures(&self) -> Vec<String> {
        let mut why = Vec::new();
        let mut check = |count: u64, what: &str| {
            if count > 0 {
                why.push(format!("{} {what}", n(count)));
            }
        };
        check(self.unanswered, "orders got no answer");
        check(self.duplicate_replies, "answers were duplicates (an order answered twice)");
        check(self.unknown_replies, "answers named no order loadgen sent");
        let u = &self.updates;
        check(u.missing, "lifecycle updates never arrived");
        check(u.duplicates, "lifecycle updates arrived twice");
        check(u.orphans, "updates belong to orders no reply named");
        check(u.invalid, "updates were not a lifecycle step the order can have");
        check(u.seq_gaps, "seq numbers were skipped on orders topics");
        check(u.seq_duplicates, "updates repeated or went back in seq");
        if self.sent == 0 {
            why.push("no order was placed".into());
        } else {
            let ratio = self.errors as f64 / self.sent as f64;
            if ratio > self.max_errors {
                why.push(format!(
                    "{} error answers ({:.3}% of orders, {}) are above --max-order-errors {:.3}%",
                    n(self.errors),
                    ratio * 100.0,
                    codes_text(&self.codes),
                    self.max_errors * 100.0
                ));
            }
        }
        why
    }

    /// The order part of the readable table.
    pub fn table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "  orders         connections {}  ready at start {}  pace {}",
            n(self.connections),
            n(self.ready_at_start),
            self.pace
        );
        let _ = writeln!(
            out,
            "                 sent {} ({:.1}/s asked)  replied {} ({:.1}/s)  late sends {}",
            n(self.sent),
            self.asked_per_second,
            n(self.replied),
            self.per_second,
            n(self.late_sends)
        );
        let _ = writeln!(out, "  reply (ms)     {}", self.latency_ms.line());
        let _ = writeln!(
            out,
            "  answers        errors {}  timeouts {}  unanswered {}  duplicates {}  unknown {}{}",
            n(self.errors),
            n(self.timeouts),
            n(self.unanswered),
            n(self.duplicate_replies),
            n(self.unknown_replies),
            if self.codes.is_empty() { String::new() } else { format!("  ({})", codes_text(&self.codes)) }
        );
        let u = &self.updates;
        let _ = writeln!(
            out,
            "  updates        received {}  owed {}  missing {}  duplicates {}  orphans {}  invalid {}  seq gaps {}  seq repeats {}",
            n(u.received),
            n(u.owed),
            n(u.missing),
            n(u.duplicates),
            n(u.orphans),
            n(u.invalid),
            n(u.seq_gaps),
            n(u.seq_duplicates)
        );
        if self.steps.len() > 1 {
            let _ = writeln!(out, "  order steps    {STEP_HEADER}");
            for s in &self.steps {
                let _ = writeln!(out, "                 {}", step_row(s));
            }
        }
    }
}

/// `timeout × 3, rate_limited × 1`.
fn codes_text(codes: &BTreeMap<String, u64>) -> String {
    let mut v: Vec<(&String, &u64)> = codes.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter().map(|(code, count)| format!("{code} × {}", n(**count))).collect::<Vec<_>>().join(", ")
}

const STEP_HEADER: &str =
    "connections  seconds       sent   orders/s     p50     p90     p99   p99.9      max  errors  timeouts";

fn step_row(s: &OrderStep) -> String {
    let l = &s.latency_ms;
    format!(
        "{:>11}  {:>7.1}  {:>9}  {:>9.1}  {:>6.2}  {:>6.2}  {:>6.2}  {:>6.2}  {:>7.2}  {:>6}  {:>8}",
        n(s.connections),
        s.seconds,
        n(s.sent),
        s.per_second,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max,
        n(s.errors),
        n(s.timeouts)
    )
}

/// The request/reply sweep's columns: the original benchmark's per-step
/// table (connections, orders/s, reply latency, timeouts and errors),
/// laid out like the pub/sub one.
pub const CSV_HEADER: &str = "connections,connected,average response (ms),orders,orders/sec,walltime,p50 (ms),p90 (ms),p99 (ms),p99.9 (ms),max (ms),timeouts,errors,lost,duplicates";

/// One finished step of a request/reply sweep; walltime in seconds.
pub fn csv_row(connections: u64, o: &OrderSummary, walltime_s: f64) -> String {
    let l = &o.latency_ms;
    format!(
        "{},{},{:.3},{},{:.1},{:.2},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{},{}",
        connections,
        o.ready_at_start,
        l.mean,
        o.replied,
        o.per_second,
        walltime_s,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max,
        o.timeouts,
        o.errors,
        o.lost(),
        o.duplicates()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{LatencyBuckets, new_histogram};

    fn settings(args: &[&str]) -> Settings {
        let base = ["loadgen", "--connections", "0", "--order-conns", "10", "--duration", "10s"];
        crate::cli::parse_settings(base.iter().chain(args)).unwrap()
    }

    fn step(sent: u64, latencies_ms: &[u64]) -> StepResult {
        let mut h = new_histogram();
        for &ms in latencies_ms {
            h.record(ms * 1000).unwrap();
        }
        StepResult {
            sent,
            replied: latencies_ms.len() as u64,
            errors: 0,
            timeouts: 0,
            latency_us: LatencyBuckets::from_histogram(&h),
        }
    }

    fn clean(sent: u64) -> OrderCounters {
        OrderCounters {
            sent,
            answered: sent,
            replied: sent,
            updates: 3 * sent,
            updates_owed: 3 * sent,
            updates_unique: 3 * sent,
            updates_arrived: 3 * sent,
            ..OrderCounters::default()
        }
    }

    #[test]
    fn a_clean_run_passes_and_its_row_matches_the_header() {
        let s = settings(&["--order-rate", "100"]);
        let at_go = OrderCounters { ready: 10, ..OrderCounters::default() };
        let o = OrderSummary::build(
            &s,
            &clean(4),
            &at_go,
            &[step(4, &[1, 2, 3, 40])],
            &ErrorTally::default(),
            8.0,
        )
        .unwrap();
        assert!(o.failures().is_empty(), "{:?}", o.failures());
        assert_eq!((o.connections, o.ready_at_start, o.per_second), (10, 10, 0.5));
        assert_eq!(o.asked_per_second, 0.4);
        assert!((o.latency_ms.max - 40.0).abs() < 0.1);
        assert_eq!(o.steps.len(), 1);
        let row = csv_row(10, &o, 12.5);
        assert_eq!(row.split(',').count(), CSV_HEADER.split(',').count());
        assert!(row.starts_with("10,10,"), "{row}");
        assert!(row.ends_with(",0,0,0,0"), "{row}");
        let mut table = String::new();
        o.table(&mut table);
        assert!(table.contains("replied 4"), "{table}");
    }

    #[test]
    fn every_kind_of_failure_is_named() {
        let s = settings(&[]);
        let c = OrderCounters {
            unanswered: 1,
            duplicate_replies: 2,
            unknown_replies: 3,
            updates_missing: 4,
            duplicate_updates: 5,
            orphan_updates: 6,
            invalid_updates: 7,
            seq_gaps: 8,
            seq_duplicates: 9,
            errors: 1,
            timeouts: 1,
            ..clean(10)
        };
        let codes = ErrorTally([("timeout".to_owned(), 1)].into());
        let o =
            OrderSummary::build(&s, &c, &OrderCounters::default(), &[step(10, &[1])], &codes, 10.0).unwrap();
        let f = o.failures();
        assert_eq!(f.len(), 10, "{f:?}");
        assert!(f[1].contains("answered twice"), "{f:?}");
        assert!(f[9].contains("timeout × 1"), "{f:?}");
        assert_eq!((o.lost(), o.duplicates()), (1 + 4 + 8, 2 + 5 + 9));
        // Errors within the budget pass.
        let s = settings(&["--max-order-errors", "0.2"]);
        let o = OrderSummary::build(
            &s,
            &OrderCounters { errors: 1, ..clean(10) },
            &OrderCounters::default(),
            &[],
            &codes,
            1.0,
        )
        .unwrap();
        assert!(o.failures().is_empty(), "{:?}", o.failures());
        let none =
            OrderSummary::build(&s, &OrderCounters::default(), &OrderCounters::default(), &[], &codes, 1.0)
                .unwrap();
        assert_eq!(none.failures(), ["no order was placed"]);
    }

    #[test]
    fn steps_get_their_connections_and_windows() {
        let s = settings(&["--order-step", "5", "--order-step-every", "4s"]);
        // Windows [0,4), [4,8), [8,10) + 0.5 s of drain.
        let steps = [step(4, &[1]), step(6, &[2, 2]), step(3, &[50, 60, 70])];
        let o = OrderSummary::build(
            &s,
            &clean(13),
            &OrderCounters::default(),
            &steps,
            &ErrorTally::default(),
            10.5,
        )
        .unwrap();
        let conns: Vec<u64> = o.steps.iter().map(|s| s.connections).collect();
        assert_eq!(conns, [10, 15, 20]);
        assert_eq!(o.connections, 20);
        assert_eq!((o.steps[0].seconds, o.steps[2].seconds), (4.0, 2.5));
        assert_eq!(o.steps[1].per_second, 0.5);
        assert!(o.steps[2].latency_ms.p50 >= 59.0, "{:?}", o.steps[2].latency_ms);
        let mut table = String::new();
        o.table(&mut table);
        assert_eq!(table.matches('\n').count(), 5 + 1 + 3, "{table}");
    }
}
