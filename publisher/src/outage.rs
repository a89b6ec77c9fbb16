//! Whether the backplane (Redis) is reachable, as every task sees it, and
//! how long to wait before trying again.
//!
//! Many tasks talk to Redis (feed, order writer, request reader, health
//! probe); when it goes away they all fail at once, many times a second.
//! [`Outage`] turns that into one `warn` when the outage starts, one
//! `info` when it ends and one count in `/metrics`, and drives `/readyz`.
//! [`backoff`] spaces retries with jitter (`service::Backoff`) so replicas
//! do not stampede a restarting Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use service::Backoff;

use crate::metrics::Metrics;

pub struct Outage {
    /// Starts false: nothing is known about Redis until the first answer.
    up: AtomicBool,
    /// Set once Redis has answered, so the first connection is logged as
    /// "connected" rather than as a recovery.
    seen: AtomicBool,
    /// The backplane's kind, in the log lines (`redis`, `memory`).
    backplane: &'static str,
    metrics: Arc<Metrics>,
}

impl Outage {
    pub fn new(backplane: &'static str, metrics: Arc<Metrics>) -> Self {
        Outage { up: AtomicBool::new(false), seen: AtomicBool::new(false), backplane, metrics }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records a successful round trip.
    pub fn succeeded(&self) {
        if self.up.swap(true, Ordering::AcqRel) {
            return;
        }
        self.metrics.redis_up.set(1);
        if self.seen.swap(true, Ordering::AcqRel) {
            tracing::info!(backplane = self.backplane, "backplane reachable again; resuming");
        } else {
            tracing::info!(backplane = self.backplane, "backplane connected");
        }
    }

    /// Records a failed round trip by `task`.
    pub fn failed(&self, task: &str, error: &dyn std::fmt::Display) {
        self.metrics.publish_failures.inc();
        let was_up = self.up.swap(false, Ordering::AcqRel);
        let first_ever = !self.seen.swap(true, Ordering::AcqRel);
        if was_up || first_ever {
            self.metrics.redis_up.set(0);
            self.metrics.redis_outages.inc();
            tracing::warn!(
                backplane = self.backplane,
                task,
                %error,
                "backplane unavailable; retrying with backoff (logged once per outage)"
            );
        } else {
            tracing::debug!(backplane = self.backplane, task, %error, "backplane still unavailable");
        }
    }
}

/// First step of every retry loop's backoff while Redis is away.
const BACKOFF_START: Duration = Duration::from_millis(50);

/// The backoff of a retry loop: jittered, from 50 ms up to `max`.
pub fn backoff(max: Duration) -> Backoff {
    Backoff::new(BACKOFF_START, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_one_outage_per_loss() {
        let metrics = Arc::new(Metrics::default());
        let outage = Outage::new("redis", Arc::clone(&metrics));
        outage.succeeded();
        for _ in 0..5 {
            outage.failed("test", &"refused");
        }
        assert!(!outage.is_up());
        outage.succeeded();
        outage.failed("test", &"refused");
        assert_eq!(metrics.redis_outages.get(), 2);
        assert_eq!(metrics.publish_failures.get(), 6);
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = backoff(Duration::from_millis(400));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] < Duration::from_millis(50));
        assert!(delays.iter().all(|d| *d < Duration::from_millis(400)));
        assert!(delays[7] >= Duration::from_millis(200));
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(50));
    }
}
