//! The per-connection command rate limit: a token bucket.

use tokio::time::Instant;

/// A token bucket: `rate` commands per second, bursts up to `rate`.
pub(super) struct RateLimiter {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub(super) fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate);
        RateLimiter { rate, tokens: rate, last: now }
    }

    pub(super) fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rate_limiter_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(10, start);
        assert_eq!((0..20).filter(|_| limiter.allow(start)).count(), 10, "one burst");
        assert!(!limiter.allow(start));
        assert!(limiter.allow(start + Duration::from_millis(100)), "refills at the rate");
        assert!(!limiter.allow(start + Duration::from_millis(100)));
        let later = start + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| limiter.allow(later)).count(), 10, "never more than a burst");
    }
}
