//! The validated plan of one run, shared by the coordinator and every
//! worker process (it travels to workers as JSON on their stdin).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::book::{OrderShape, Pace};
use crate::publish::PublishSettings;
use crate::topics::{Dist, Sampler, TopicSpace};

/// Open files a process keeps for itself (stdio, publisher connections,
/// Redis, the runtime) on top of one per WebSocket.
pub const FD_RESERVE: u64 = 512;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Gateway WebSocket URLs; connection `i` goes to `urls[i % len]`.
    pub urls: Vec<String>,
    /// Subscriber connections (ids `0..connections`); order connections
    /// come after them (ids `connections + j`).
    pub connections: u64,
    /// Connections opened per second, over all workers.
    pub ramp: f64,
    pub topics_per_conn: u32,
    pub space: TopicSpace,
    pub dist: Dist,
    pub zipf_s: f64,
    pub seed: u64,
    /// Length of the measured phase (publishing, when closed-loop).
    pub duration: Duration,
    /// After the ramp, how long to wait for every subscription's answer.
    pub settle_timeout: Duration,
    /// After publishing stops, the longest wait for messages in flight.
    pub drain: Duration,
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Reconnect dropped connections (with `since` recovery).
    pub reconnect: bool,
    /// 127.0.0.x source addresses to spread loopback connections over.
    pub source_ips: u32,
    /// Client-side WebSocket read buffer, per connection.
    pub read_buffer: usize,
    /// JWT sent as `?token=` on every upgrade.
    pub token: Option<String>,
    /// Secret to sign a token per connection with (its account as `sub`).
    pub jwt_secret: Option<String>,
    /// Worker processes; 1 runs every connection in this process.
    pub workers: u32,
    pub publish: Option<PublishSettings>,
    /// Order mode: connections that place orders and check the answers.
    pub orders: Option<OrderSettings>,
    /// Highest tolerated loss ratio (lost / (received + lost)).
    pub max_loss: f64,
    pub allow_remote: bool,
    /// Print a status line every second on stderr.
    pub live: bool,
}

/// The request/reply half of a run: connections placing orders, each as
/// its own account, answers and lifecycle updates checked exactly once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderSettings {
    /// Order connections open when measuring begins.
    pub conns: u64,
    /// Order connections added every `step_every` while measuring (0: none).
    pub step: u64,
    pub step_every: Duration,
    /// `--order-rate`: orders per second over `conns` (the pace follows
    /// from it); `None` when the pace is per connection.
    pub rate: Option<f64>,
    /// Time between one connection's orders.
    pub pace: Pace,
    /// The pace as asked for, for people ("10000/s total", "50–250 ms").
    pub pace_text: String,
    pub shape: OrderShape,
    /// Order connection `j` acts for account `<account_prefix><j>`.
    pub account_prefix: String,
    /// How long an order may wait for its answer (bounds the drain).
    pub timeout: Duration,
    /// Highest tolerated ratio of error answers to orders sent.
    pub max_errors: f64,
    /// Write every order's times to this CSV file (`.<worker>` appended
    /// in worker processes).
    pub trace: Option<PathBuf>,
}

impl OrderSettings {
    /// The pace that spreads `rate` orders/s over `conns` connections:
    /// intervals uniform in 0.5–1.5× the mean, and how to say it.
    pub fn pace_for_rate(rate: f64, conns: u64) -> (Pace, String) {
        let mean_us = conns as f64 / rate.max(f64::MIN_POSITIVE) * 1e6;
        let pace = Pace { min_us: (mean_us * 0.5) as u64, max_us: (mean_us * 1.5).max(1.0) as u64 };
        let text = format!(
            "{rate}/s over {conns} connections ({:.1}/s each, every {:.1}-{:.1} ms)",
            pace.per_second(),
            pace.min_us as f64 / 1000.0,
            pace.max_us as f64 / 1000.0
        );
        (pace, text)
    }

    /// Sets the connections open from the start (a sweep step); with a
    /// total rate, the rate stays and each connection's pace follows.
    pub fn set_conns(&mut self, conns: u64) {
        self.conns = conns;
        if let Some(rate) = self.rate {
            (self.pace, self.pace_text) = Self::pace_for_rate(rate, conns.max(1));
        }
    }

    /// Windows of the measured phase: one, or one per connection step.
    pub fn steps(&self, duration: Duration) -> u64 {
        match (self.step, self.step_every.as_micros()) {
            (0, _) | (_, 0) => 1,
            (_, every) => duration.as_micros().div_ceil(every).max(1) as u64,
        }
    }

    /// Length of one step window.
    pub fn step_len(&self, duration: Duration) -> Duration {
        if self.steps(duration) > 1 { self.step_every } else { duration }
    }

    /// Order connections by the end of the run.
    pub fn total(&self, duration: Duration) -> u64 {
        self.conns + self.step * (self.steps(duration) - 1)
    }

    /// Order connections open during step `s`.
    pub fn conns_in_step(&self, s: u64) -> u64 {
        self.conns + self.step * s
    }

    /// The step in which order connection `j` opens (0: during the ramp).
    pub fn opens_in_step(&self, j: u64) -> u64 {
        if j < self.conns || self.step == 0 { 0 } else { (j - self.conns) / self.step + 1 }
    }

    pub fn account(&self, j: u64) -> String {
        format!("{}{j}", self.account_prefix)
    }
}

impl Settings {
    /// Order connections of the whole run (0 without order mode).
    pub fn order_conns(&self) -> u64 {
        self.orders.as_ref().map_or(0, |o| o.total(self.duration))
    }

    /// Order connections open from the start.
    pub fn initial_order_conns(&self) -> u64 {
        self.orders.as_ref().map_or(0, |o| o.conns)
    }

    /// Every socket the run opens, subscribers and order connections.
    pub fn total_connections(&self) -> u64 {
        self.connections + self.order_conns()
    }

    /// The order connections worker `index` runs: every `workers`-th, so
    /// each step's new ones spread over all workers.
    pub fn worker_traders(&self, index: u32) -> impl Iterator<Item = u64> + use<> {
        (u64::from(index)..self.order_conns()).step_by(self.workers.max(1) as usize)
    }

    pub fn sampler(&self) -> Sampler {
        Sampler::new(self.space, self.topics_per_conn, self.dist, self.zipf_s, self.seed)
    }

    /// Subscriptions the run asks for in all (an order connection holds
    /// its account's orders topic).
    pub fn subscriptions(&self) -> u64 {
        let per_conn = u64::from(self.topics_per_conn) + u64::from(self.space.orders > 0);
        self.connections * per_conn + self.order_conns()
    }

    /// How long opening every connection takes at the ramp rate.
    pub fn ramp_time(&self) -> Duration {
        let opened = self.connections + self.initial_order_conns();
        Duration::from_secs_f64(opened as f64 / self.ramp.max(f64::MIN_POSITIVE))
    }

    /// The longest any run phase may take before the measured one ends;
    /// worker processes stop by themselves after this plus some slack,
    /// should their parent vanish without telling them.
    pub fn longest_run(&self) -> Duration {
        self.ramp_time() + self.settle_timeout + self.duration + self.drain_bound() + Duration::from_secs(30)
    }

    /// The longest drain: order answers may take up to the order timeout.
    pub fn drain_bound(&self) -> Duration {
        match &self.orders {
            Some(o) => self.drain.max(o.timeout),
            None => self.drain,
        }
    }

    /// Connection ids handled by worker `index`: contiguous blocks, the
    /// first `connections % workers` one larger.
    pub fn worker_range(&self, index: u32) -> std::ops::Range<u64> {
        let n = u64::from(self.workers.max(1));
        let i = u64::from(index);
        let base = self.connections / n;
        let extra = self.connections % n;
        let start = i * base + i.min(extra);
        let len = base + u64::from(i < extra);
        start..start + len
    }

    /// Workers needed so none holds more sockets than `open_files` allows.
    pub fn workers_needed(connections: u64, open_files: u64) -> u32 {
        let per_worker = open_files.saturating_sub(FD_RESERVE).max(1);
        connections.div_ceil(per_worker).clamp(1, u64::from(u32::MAX)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ranges_cover_every_connection_once() {
        let mut s = crate::cli::parse_settings(["loadgen", "--connections", "10", "--workers", "3"]).unwrap();
        let ranges: Vec<_> = (0..3).map(|i| s.worker_range(i)).collect();
        assert_eq!(ranges, [0..4, 4..7, 7..10]);
        s.workers = 1;
        assert_eq!(s.worker_range(0), 0..10);
    }

    #[test]
    fn order_connections_open_in_steps_spread_over_workers() {
        let s = crate::cli::parse_settings([
            "loadgen",
            "--connections",
            "0",
            "--order-conns",
            "10",
            "--order-step",
            "4",
            "--order-step-every",
            "15s",
            "--duration",
            "40s",
            "--workers",
            "3",
        ])
        .unwrap();
        let o = s.orders.as_ref().unwrap();
        // Windows [0,15), [15,30), [30,40): 10, 14 and 18 connections.
        assert_eq!((o.steps(s.duration), o.total(s.duration), s.order_conns()), (3, 18, 18));
        assert_eq!((o.conns_in_step(0), o.conns_in_step(2)), (10, 18));
        assert_eq!(
            (o.opens_in_step(9), o.opens_in_step(10), o.opens_in_step(13), o.opens_in_step(14)),
            (0, 1, 1, 2)
        );
        assert_eq!(o.step_len(s.duration), Duration::from_secs(15));
        let mut all: Vec<u64> = (0..3).flat_map(|i| s.worker_traders(i)).collect();
        assert_eq!(s.worker_traders(1).collect::<Vec<_>>(), [1, 4, 7, 10, 13, 16]);
        all.sort_unstable();
        assert_eq!(all, (0..18).collect::<Vec<_>>(), "each order connection in exactly one worker");
        assert_eq!((s.total_connections(), s.subscriptions()), (18, 18));
        // 40 s exactly a multiple: [0,20), [20,40).
        let mut o = o.clone();
        o.step_every = Duration::from_secs(20);
        assert_eq!(o.steps(s.duration), 2);
        o.step = 0;
        assert_eq!((o.steps(s.duration), o.total(s.duration), o.step_len(s.duration)), (1, 10, s.duration));
    }

    #[test]
    fn a_sweep_step_keeps_the_total_order_rate() {
        let s = crate::cli::parse_settings([
            "loadgen",
            "-c",
            "0",
            "--order-conns",
            "100",
            "--order-rate",
            "2000",
        ])
        .unwrap();
        let mut o = s.orders.unwrap();
        assert_eq!(o.pace.per_second(), 20.0);
        o.set_conns(500);
        assert_eq!((o.conns, o.pace.per_second()), (500, 4.0));
        assert!(o.pace_text.starts_with("2000/s over 500 connections"), "{}", o.pace_text);
        let per_conn = crate::cli::parse_settings([
            "loadgen",
            "-c",
            "0",
            "--order-conns",
            "5",
            "--order-interval",
            "100ms-300ms",
        ])
        .unwrap();
        let mut o = per_conn.orders.unwrap();
        o.set_conns(50);
        assert_eq!(
            (o.conns, o.pace),
            (50, Pace { min_us: 100_000, max_us: 300_000 }),
            "a per-connection pace stays"
        );
    }

    #[test]
    fn enough_workers_for_the_file_limit() {
        assert_eq!(Settings::workers_needed(100, 20_000), 1);
        assert_eq!(Settings::workers_needed(50_000, 20_000), 3);
        assert_eq!(Settings::workers_needed(19_488, 20_000), 1);
        assert_eq!(Settings::workers_needed(19_489, 20_000), 2);
        assert_eq!(Settings::workers_needed(10, 2_000), 1);
        assert_eq!(Settings::workers_needed(10, 100), 10, "one connection per tiny process");
    }
}
