//! The validated plan of one run, shared by the coordinator and every
//! worker process (it travels to workers as JSON on their stdin).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::publish::PublishSettings;
use crate::topics::{Dist, Sampler, TopicSpace};

/// Open files a process keeps for itself (stdio, publisher connections,
/// Redis, the runtime) on top of one per WebSocket.
pub const FD_RESERVE: u64 = 512;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Gateway WebSocket URLs; connection `i` goes to `urls[i % len]`.
    pub urls: Vec<String>,
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
    /// Highest tolerated loss ratio (lost / (received + lost)).
    pub max_loss: f64,
    pub allow_remote: bool,
    /// Print a status line every second on stderr.
    pub live: bool,
}

impl Settings {
    pub fn sampler(&self) -> Sampler {
        Sampler::new(self.space, self.topics_per_conn, self.dist, self.zipf_s, self.seed)
    }

    /// Subscriptions the run asks for in all.
    pub fn subscriptions(&self) -> u64 {
        let per_conn = u64::from(self.topics_per_conn) + u64::from(self.space.orders > 0);
        self.connections * per_conn
    }

    /// How long opening every connection takes at the ramp rate.
    pub fn ramp_time(&self) -> Duration {
        Duration::from_secs_f64(self.connections as f64 / self.ramp.max(f64::MIN_POSITIVE))
    }

    /// The longest any run phase may take before the measured one ends;
    /// worker processes stop by themselves after this plus some slack,
    /// should their parent vanish without telling them.
    pub fn longest_run(&self) -> Duration {
        self.ramp_time() + self.settle_timeout + self.duration + self.drain + Duration::from_secs(30)
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
    fn enough_workers_for_the_file_limit() {
        assert_eq!(Settings::workers_needed(100, 20_000), 1);
        assert_eq!(Settings::workers_needed(50_000, 20_000), 3);
        assert_eq!(Settings::workers_needed(19_488, 20_000), 1);
        assert_eq!(Settings::workers_needed(19_489, 20_000), 2);
        assert_eq!(Settings::workers_needed(10, 2_000), 1);
        assert_eq!(Settings::workers_needed(10, 100), 10, "one connection per tiny process");
    }
}
