//! Jittered exponential backoff, the one schedule of every retry loop
//! (Redis reconnects, WebSocket reconnects): each step doubles up to a
//! cap, and each delay is drawn from [½, 1) of its step, so many clients
//! that lost the same server do not come back at the same instant.

use std::time::Duration;

use rand::Rng;

/// The delays of one retry loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    start: Duration,
    max: Duration,
    /// The step the next delay is drawn from.
    next: Duration,
}

impl Backoff {
    /// Steps from `start` (at most `max`) doubling up to `max`.
    pub fn new(start: Duration, max: Duration) -> Self {
        Backoff { start, max, next: start.min(max) }
    }

    /// The delay before the next attempt; the step then doubles.
    pub fn next_delay(&mut self) -> Duration {
        let delay = jitter(self.next, &mut rand::rng());
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// After a success: the next outage starts from the first step.
    pub fn reset(&mut self) {
        self.next = self.start.min(self.max);
    }
}

/// The step after `failures` doublings of `start`, at most `max`.
pub fn step(failures: u32, start: Duration, max: Duration) -> Duration {
    start.saturating_mul(1u32.checked_shl(failures.min(20)).unwrap_or(u32::MAX)).min(max)
}

/// `step` scaled by a random factor in [0.5, 1).
pub fn jitter(step: Duration, rng: &mut impl Rng) -> Duration {
    step.mul_f64(rng.random_range(0.5..1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_its_cap_with_jitter() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(50), ms(400));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= ms(25) && delays[0] < ms(50), "{delays:?}");
        assert!(delays[1] >= ms(50) && delays[1] < ms(100), "{delays:?}");
        assert!(delays.iter().all(|d| *d < ms(400)));
        assert!(delays[7] >= ms(200));
        b.reset();
        assert!(b.next_delay() < ms(50));
        assert_eq!(step(3, ms(100), ms(5000)), ms(800));
        assert_eq!(step(40, ms(100), ms(5000)), ms(5000));
    }
}
