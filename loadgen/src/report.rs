//! What a run tells people and machines: the live status line on stderr,
//! the final [`Summary`] (a table on stdout, JSON with `--json`), and
//! the verdict against `--max-loss` (and, in order mode, the order
//! side's, from [`crate::order_report`]).

use std::collections::BTreeMap;
use std::fmt::Write;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::order_report::OrderSummary;
use crate::order_stats::StepResult;
use crate::publish::PublishReport;
use crate::settings::Settings;
use crate::stats::{Counters, ErrorTally, new_histogram};
use crate::swarm::{GoSnapshot, SwarmResult};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub targets: Vec<String>,
    pub workers: u32,
    pub connections: ConnectionSummary,
    pub subscriptions: SubscriptionSummary,
    pub messages: MessageSummary,
    /// End-to-end latency: receive time − `ts`. `ts` has millisecond
    /// resolution, so each sample reads up to 1 ms high.
    pub latency_ms: LatencySummary,
    pub publish: Option<PublishReport>,
    /// Order mode: the request/reply half.
    #[serde(default)]
    pub orders: Option<OrderSummary>,
    /// Distinct errors and how often each happened.
    pub errors: BTreeMap<String, u64>,
    pub timing: Timing,
    /// Ctrl-C ended the run early.
    pub interrupted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionSummary {
    pub requested: u64,
    pub attempted: u64,
    pub established: u64,
    pub failed: u64,
    pub dropped: u64,
    pub reconnects: u64,
    /// Open when measuring began (the benchmark table's "connected").
    pub connected: u64,
    pub closed_clean: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionSummary {
    pub requested: u64,
    /// `subscribed` answers (counted again after each reconnect).
    pub acknowledged: u64,
    pub errors: u64,
    /// Acknowledged and held when measuring began.
    pub held_at_start: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageSummary {
    /// `message` frames received over the whole run, duplicates included.
    pub received: u64,
    /// Of those, received after measuring began.
    pub received_measured: u64,
    /// Snapshots and replays the gateway sent after `subscribed` for
    /// messages published earlier (counted in `received`, not in latency).
    pub recovered: u64,
    pub bytes: u64,
    pub average_size: f64,
    /// `received_measured` per second of the measured phase (drain included).
    pub per_second: f64,
    /// `seq` numbers skipped, per (connection, topic), from the first seen.
    pub lost: u64,
    pub duplicates: u64,
    /// Closed loop: Σ over topics of messages published × subscribers.
    pub expected: Option<u64>,
    /// Closed loop: expected deliveries that never arrived.
    pub missing: Option<u64>,
    /// max(lost, missing) / (unique received + max(lost, missing)).
    pub loss_ratio: f64,
    pub invalid_frames: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// From start until every subscription was answered (or the wait ended).
    pub ramp_s: f64,
    /// Measured phase, drain included.
    pub measure_s: f64,
    /// The measured phase asked for (`--duration`), drain excluded.
    #[serde(default)]
    pub duration_s: f64,
    /// Start to finish, sockets closed.
    pub walltime_s: f64,
    pub started_unix_ms: u64,
}

/// Everything the run coordinator gathered.
pub struct Gathered<'a> {
    pub settings: &'a Settings,
    pub results: Vec<SwarmResult>,
    pub go: GoSnapshot,
    pub publish: Option<PublishReport>,
    pub timing: Timing,
    pub interrupted: bool,
}

impl Summary {
    pub fn build(g: Gathered<'_>) -> Summary {
        let mut c = Counters::default();
        let mut latency = new_histogram();
        let mut errors = ErrorTally::default();
        let mut order_steps: Vec<StepResult> = Vec::new();
        let mut order_codes = ErrorTally::default();
        for r in &g.results {
            c.add(&r.counters);
            r.latency_us.add_to(&mut latency);
            errors.merge(&r.errors);
            StepResult::merge_all(&mut order_steps, &r.order_steps);
            order_codes.merge(&r.order_codes);
        }
        if let Some(p) = &g.publish {
            errors.merge(&p.error_messages);
        }
        let expected = g.publish.as_ref().map(|p| expected_deliveries(&p.per_topic, &g.go.subscribers));
        let measured = c.messages.saturating_sub(g.go.counters.messages);
        let missing = expected.map(|e| e.saturating_sub(measured.saturating_sub(c.duplicates)));
        let lost_any = c.lost.max(missing.unwrap_or(0));
        let unique = c.messages.saturating_sub(c.duplicates);
        let loss_ratio = if lost_any == 0 { 0.0 } else { lost_any as f64 / (unique + lost_any) as f64 };
        let secs = g.timing.measure_s.max(1e-9);
        let orders = OrderSummary::build(
            g.settings,
            &c.orders,
            &g.go.counters.orders,
            &order_steps,
            &order_codes,
            g.timing.measure_s,
        );
        Summary {
            targets: g.settings.urls.clone(),
            workers: g.settings.workers,
            connections: ConnectionSummary {
                requested: g.settings.total_connections(),
                attempted: c.attempted,
                established: c.established,
                failed: c.failed,
                dropped: c.dropped,
                reconnects: c.reconnects,
                connected: g.go.counters.open,
                closed_clean: c.closed_clean,
            },
            subscriptions: SubscriptionSummary {
                requested: g.settings.subscriptions(),
                acknowledged: c.subs_acked,
                errors: c.sub_errors,
                held_at_start: g.go.subscribers.values().sum(),
            },
            messages: MessageSummary {
                received: c.messages,
                received_measured: measured,
                recovered: c.recovered,
                bytes: c.bytes,
                average_size: if c.messages == 0 { 0.0 } else { c.bytes as f64 / c.messages as f64 },
                per_second: measured as f64 / secs,
                lost: c.lost,
                duplicates: c.duplicates,
                expected,
                missing,
                loss_ratio,
                invalid_frames: c.invalid_frames,
            },
            latency_ms: LatencySummary::of(&latency),
            publish: g.publish,
            orders,
            errors: errors.0,
            timing: g.timing,
            interrupted: g.interrupted,
        }
    }

    /// `Err` with a message when loss is above the tolerated ratio, or
    /// the order side failed.
    pub fn verdict(&self, max_loss: f64) -> Result<(), String> {
        if let Some(o) = &self.orders {
            let failures = o.failures();
            if !failures.is_empty() {
                return Err(format!("order mode failed: {}", failures.join("; ")));
            }
        }
        let m = &self.messages;
        if m.loss_ratio > max_loss {
            let lost = m.lost.max(m.missing.unwrap_or(0));
            return Err(format!(
                "loss ratio {:.4}% is above --max-loss {:.4}%: {} lost (seq gaps {}, missing {}) of {} expected",
                m.loss_ratio * 100.0,
                max_loss * 100.0,
                lost,
                m.lost,
                m.missing.map_or("n/a".to_string(), |n| n.to_string()),
                m.expected.unwrap_or(m.received.saturating_sub(m.duplicates) + m.lost),
            ));
        }
        Ok(())
    }

    /// The readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let c = &self.connections;
        let s = &self.subscriptions;
        let m = &self.messages;
        let l = &self.latency_ms;
        let workers =
            if self.workers == 1 { "1 process".to_string() } else { format!("{} workers", self.workers) };
        let _ = writeln!(out, "loadgen summary: {} ({workers})", self.targets.join(", "));
        if self.interrupted {
            let _ = writeln!(out, "  (interrupted: numbers cover the run until Ctrl-C)");
        }
        let _ = writeln!(
            out,
            "  connections    requested {}  established {}  connected {}  failed {}  dropped {}  reconnects {}  closed cleanly {}",
            n(c.requested),
            n(c.established),
            n(c.connected),
            n(c.failed),
            n(c.dropped),
            n(c.reconnects),
            n(c.closed_clean)
        );
        let _ = writeln!(
            out,
            "  subscriptions  requested {}  acknowledged {}  errors {}",
            n(s.requested),
            n(s.acknowledged),
            n(s.errors)
        );
        // A run of order connections alone has no pub/sub side to show.
        let pubsub = self.orders.is_none() || self.publish.is_some() || m.received > 0;
        if pubsub {
            let expected = match (m.expected, m.missing) {
                (Some(e), Some(miss)) => format!("  expected {}  missing {}", n(e), n(miss)),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  messages       received {}{expected}  lost {}  duplicates {}  loss {:.3}%",
                n(m.received),
                n(m.lost),
                n(m.duplicates),
                m.loss_ratio * 100.0
            );
            let _ = writeln!(
                out,
                "                 {:.0} msg/s  {} bytes  average size {:.0} B  recovered on subscribe {}",
                m.per_second,
                n(m.bytes),
                m.average_size,
                n(m.recovered)
            );
            let _ = writeln!(out, "  latency (ms)   {}", l.line());
        }
        if let Some(o) = &self.orders {
            o.table(&mut out);
        }
        if let Some(p) = &self.publish {
            let _ = writeln!(
                out,
                "  publish        {}  target {:.0}/s  achieved {:.1}/s  published {}  errors {}  skipped {}",
                p.mode,
                p.target_rate,
                p.achieved_rate,
                n(p.published),
                n(p.errors),
                n(p.skipped)
            );
        }
        let t = &self.timing;
        let _ = writeln!(
            out,
            "  time           ramp {:.1} s  measured {:.1} s  wall {:.1} s",
            t.ramp_s, t.measure_s, t.walltime_s
        );
        let mut errors: Vec<(&String, &u64)> = self.errors.iter().collect();
        errors.sort_by(|a, b| b.1.cmp(a.1));
        for (i, (message, count)) in errors.iter().take(8).enumerate() {
            let label = if i == 0 { "  errors         " } else { "                 " };
            let _ = writeln!(out, "{label}{} × {message}", n(**count));
        }
        out
    }
}

impl LatencySummary {
    /// `p50 … p90 … p99 … p99.9 … max … mean … (n samples)`, in ms.
    pub fn line(&self) -> String {
        format!(
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}  ({} samples)",
            self.p50,
            self.p90,
            self.p99,
            self.p999,
            self.max,
            self.mean,
            n(self.samples)
        )
    }

    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return LatencySummary {
                samples: 0,
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
            };
        }
        LatencySummary {
            samples: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Deliveries a publish owes: each topic's accepted messages times the
/// connections holding it when measuring began.
pub fn expected_deliveries(published: &BTreeMap<u32, u64>, subscribers: &BTreeMap<u32, u64>) -> u64 {
    published.iter().map(|(t, &count)| count * subscribers.get(t).copied().unwrap_or(0)).sum()
}

/// The live line printed every second on stderr.
pub struct StatusLine {
    last_messages: u64,
    last_replied: u64,
    last_at: Option<std::time::Instant>,
}

impl Default for StatusLine {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusLine {
    pub fn new() -> Self {
        StatusLine { last_messages: 0, last_replied: 0, last_at: None }
    }

    /// `reply_p99_us` is given in order mode (and adds the order part).
    #[allow(clippy::too_many_arguments, reason = "one call site; each is a figure of the line")]
    pub fn render(
        &mut self,
        elapsed_s: f64,
        phase: &str,
        requested: u64,
        c: &Counters,
        p99_us: u64,
        published: Option<(u64, u64)>,
        reply_p99_us: Option<u64>,
    ) -> String {
        let now = std::time::Instant::now();
        let secs = self.last_at.map(|at| now.duration_since(at).as_secs_f64().max(1e-3));
        let per_s = |now: u64, before: u64| secs.map_or(0.0, |s| now.saturating_sub(before) as f64 / s);
        let rate = per_s(c.messages, self.last_messages);
        let reply_rate = per_s(c.orders.replied, self.last_replied);
        self.last_messages = c.messages;
        self.last_replied = c.orders.replied;
        self.last_at = Some(now);
        let mut line = format!(
            "[{elapsed_s:6.1}s] {phase:<7} open {}/{} fail {} drop {} subs {} msgs {} ({:.0}/s) p99 {:.1}ms lost {} dup {}",
            n(c.open),
            n(requested),
            n(c.failed),
            n(c.dropped),
            n(c.subs_acked),
            n(c.messages),
            rate,
            p99_us as f64 / 1000.0,
            n(c.lost),
            n(c.duplicates)
        );
        if let Some((published, errors)) = published {
            let _ = write!(line, " pub {} err {}", n(published), n(errors));
        }
        if let Some(reply_p99_us) = reply_p99_us {
            let o = &c.orders;
            let _ = write!(
                line,
                " | orders ready {} sent {} replied {} ({:.0}/s) rp99 {:.1}ms err {} to {} dup {} upd {}/{}",
                n(o.ready),
                n(o.sent),
                n(o.replied),
                reply_rate,
                reply_p99_us as f64 / 1000.0,
                n(o.errors),
                n(o.timeouts),
                n(o.duplicate_replies + o.duplicate_updates),
                n(o.updates_arrived),
                n(o.updates_owed)
            );
        }
        line
    }
}

/// 1234567 → "1,234,567".
pub fn n(v: u64) -> String {
    let digits = v.to_string();
    let first = match digits.len() % 3 {
        0 => 3.min(digits.len()),
        r => r,
    };
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    out.push_str(&digits[..first]);
    let mut i = first;
    while i < digits.len() {
        out.push(',');
        out.push_str(&digits[i..i + 3]);
        i += 3;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::LatencyBuckets;

    fn settings() -> Settings {
        crate::cli::parse_settings(["loadgen", "--connections", "4", "--topics-per-conn", "2"]).unwrap()
    }

    fn result(messages: u64, lost: u64, duplicates: u64) -> SwarmResult {
        let mut h = new_histogram();
        for v in 1..=100u64 {
            h.record(v * 1000).unwrap();
        }
        SwarmResult {
            connections: 4,
            counters: Counters {
                established: 4,
                open: 0,
                subs_acked: 8,
                messages,
                bytes: messages * 100,
                lost,
                duplicates,
                ..Counters::default()
            },
            latency_us: LatencyBuckets::from_histogram(&h),
            errors: ErrorTally::default(),
            at_go: GoSnapshot::default(),
            ..SwarmResult::default()
        }
    }

    fn gathered(s: &Settings, r: SwarmResult, publish: Option<PublishReport>) -> Gathered<'_> {
        Gathered {
            settings: s,
            results: vec![r],
            go: GoSnapshot {
                counters: Counters { open: 4, ..Counters::default() },
                subscribers: BTreeMap::from([(0, 3), (1, 5)]),
            },
            publish,
            timing: Timing {
                ramp_s: 0.1,
                measure_s: 2.0,
                duration_s: 2.0,
                walltime_s: 3.0,
                started_unix_ms: 0,
            },
            interrupted: false,
        }
    }

    #[test]
    fn closed_loop_loss_counts_missing_deliveries() {
        let s = settings();
        let publish =
            PublishReport { per_topic: BTreeMap::from([(0, 10), (1, 4), (2, 7)]), ..Default::default() };
        // Expected: 10·3 + 4·5 + 7·0 = 50.
        let full = Summary::build(gathered(&s, result(50, 0, 0), Some(publish.clone())));
        assert_eq!((full.messages.expected, full.messages.missing), (Some(50), Some(0)));
        assert_eq!(full.messages.loss_ratio, 0.0);
        assert!(full.verdict(0.0).is_ok());
        assert_eq!(full.messages.per_second, 25.0);
        assert!((full.latency_ms.p50 - 50.0).abs() < 0.1, "{}", full.latency_ms.p50);
        assert_eq!(full.subscriptions.requested, 8);

        let short = Summary::build(gathered(&s, result(45, 2, 0), Some(publish)));
        assert_eq!(short.messages.missing, Some(5));
        assert_eq!(short.messages.loss_ratio, 5.0 / 50.0);
        let err = short.verdict(0.01).unwrap_err();
        assert!(err.contains("--max-loss"), "{err}");
        assert!(short.verdict(0.2).is_ok());
    }

    #[test]
    fn open_loop_loss_is_seq_gaps() {
        let s = settings();
        let sum = Summary::build(gathered(&s, result(98, 2, 3), None));
        assert_eq!(sum.messages.expected, None);
        assert_eq!(sum.messages.loss_ratio, 2.0 / 97.0);
        assert!(sum.verdict(0.0).is_err());
        let table = sum.table();
        assert!(table.contains("lost 2  duplicates 3"), "{table}");
        let json = serde_json::to_string(&sum).unwrap();
        assert_eq!(serde_json::from_str::<Summary>(&json).unwrap(), sum);
    }

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(n(0), "0");
        assert_eq!(n(999), "999");
        assert_eq!(n(1000), "1,000");
        assert_eq!(n(1234567), "1,234,567");
    }
}
