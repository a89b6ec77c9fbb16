//! The quote feed: random-walk quotes for the configured symbols at the
//! configured total rate (with optional bursts), published in pipelined
//! batches on `quotes.<SYMBOL>`.
//!
//! Every few milliseconds the feed owes `rate × elapsed` quotes; it builds
//! them (random symbols, each quote one step of that symbol's walk),
//! groups them by topic and sends the whole batch in one round trip.
//! Quotes are "latest value wins": when the backplane is away or a round trip ran
//! late, the quotes owed meanwhile are skipped and counted, never queued.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use service::telemetry::trace;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::backplane::{Backplane, TopicBatch};
use crate::market::{Market, Quote};
use crate::metrics::Metrics;
use crate::outage::{self, Outage};

/// How often the feed wakes up to send what it owes.
const TICK: Duration = Duration::from_millis(5);
/// Largest batch (one pipeline), about 5 MB of envelopes.
const MAX_BATCH: f64 = 50_000.0;

/// Generates quote batches for a set of symbols.
pub struct Feed {
    market: Arc<Market>,
    /// Symbols this feed quotes (indices into the market), so a benchmark
    /// can split them between writers.
    owned: Vec<usize>,
    quotes: Vec<Quote>,
    rng: SmallRng,
    /// Per market symbol: its batch's position while a batch is built.
    slot: Vec<Option<usize>>,
    scratch: String,
    /// Publish spans of the sampled quotes of the batch in flight; they
    /// end when it has been written ([`Feed::end_spans`]).
    spans: Vec<tracing::Span>,
}

impl Feed {
    /// A feed for every symbol of the market.
    pub fn new(market: Arc<Market>) -> Self {
        let all = (0..market.len()).collect();
        Self::for_symbols(market, all)
    }

    /// A feed for the given symbol indices.
    pub fn for_symbols(market: Arc<Market>, owned: Vec<usize>) -> Self {
        let quotes = owned.iter().map(|&i| Quote::new(market.price(i))).collect();
        let slot = vec![None; market.len()];
        Feed {
            market,
            owned,
            quotes,
            rng: SmallRng::from_rng(&mut rand::rng()),
            slot,
            scratch: String::new(),
            spans: Vec::new(),
        }
    }

    /// `n` quotes on random symbols, grouped by topic, in the order each
    /// symbol's walk produced them.
    pub fn next_batch(&mut self, n: usize, ts: u64) -> Vec<TopicBatch> {
        let mut batches: Vec<TopicBatch> = Vec::new();
        if self.owned.is_empty() {
            return batches;
        }
        let mut used: Vec<usize> = Vec::new();
        for _ in 0..n {
            let k = self.rng.random_range(0..self.owned.len());
            let sym = self.owned[k];
            let q = &mut self.quotes[k];
            q.step(&mut self.rng);
            self.scratch.clear();
            q.write_json(&self.market.symbols()[sym], &mut self.scratch);
            let pos = match self.slot[sym] {
                Some(pos) => pos,
                None => {
                    batches.push(TopicBatch::new(self.market.topic(sym), true));
                    self.slot[sym] = Some(batches.len() - 1);
                    used.push(k);
                    batches.len() - 1
                }
            };
            // One atomic load per quote when export is off.
            let traced = trace::publish(self.market.topic(sym), None);
            batches[pos].push(ts, &self.scratch, traced.as_ref().map(|t| t.traceparent.as_str()));
            if let Some(traced) = traced {
                self.spans.push(traced.span);
            }
        }
        for k in used {
            let sym = self.owned[k];
            self.slot[sym] = None;
            self.market.set_price(sym, self.quotes[k].last);
        }
        batches
    }
}

impl Feed {
    /// Ends the publish spans of the last batch (call once it is written
    /// or given up).
    pub fn end_spans(&mut self) {
        self.spans.clear();
    }
}

/// The feed's rate over time.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Quotes per second outside bursts.
    pub rate: u64,
    pub burst_factor: f64,
    pub burst_every: Duration,
    pub burst_len: Duration,
}

impl Schedule {
    /// Quotes per second `elapsed` after the feed started.
    pub fn rate_at(&self, elapsed: Duration) -> f64 {
        let base = self.rate as f64;
        if self.burst_every.is_zero() || self.burst_len.is_zero() {
            return base;
        }
        let into_cycle = elapsed.as_nanos() % self.burst_every.as_nanos();
        if into_cycle < self.burst_len.as_nanos() { base * self.burst_factor } else { base }
    }

    /// The most quotes one batch may carry: a quarter second at peak rate,
    /// and never a pipeline of more than a few megabytes. Owing more means
    /// the feed fell behind, and stale quotes are skipped.
    fn max_batch(&self) -> f64 {
        (self.rate as f64 * self.burst_factor / 4.0).clamp(1.0, MAX_BATCH)
    }
}

/// Runs the feed until `shutdown`.
pub async fn run(
    mut feed: Feed,
    schedule: Schedule,
    backplane: Arc<dyn Backplane>,
    metrics: Arc<Metrics>,
    outage: Arc<Outage>,
    backoff_max: Duration,
    shutdown: CancellationToken,
) {
    tracing::info!(rate = schedule.rate, symbols = feed.owned.len(), "quote feed started");
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let start = Instant::now();
    let mut last = start;
    let mut owed = 0.0f64;
    let mut backoff = outage::backoff(backoff_max);
    let mut resume_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        owed += schedule.rate_at(now - start) * (now - last).as_secs_f64();
        last = now;
        let max = schedule.max_batch();
        if owed > max {
            metrics.quotes_skipped.inc_by((owed - max) as u64);
            owed = max;
        }
        let n = owed.floor();
        if n < 1.0 {
            continue;
        }
        owed -= n;
        let n = n as u64;
        if resume_at.is_some_and(|t| now < t) {
            metrics.quotes_skipped.inc_by(n);
            continue;
        }
        let batch = feed.next_batch(n as usize, wire::now_ms());
        let sent = Instant::now();
        let written = backplane.publish(&batch).await;
        metrics.feed_write_seconds.observe(sent.elapsed());
        feed.end_spans();
        match written {
            Ok(_) => {
                metrics.quotes_published.inc_by(n);
                outage.succeeded();
                backoff.reset();
                resume_at = None;
            }
            Err(e) => {
                outage.failed("quote feed", &e);
                metrics.quotes_skipped.inc_by(n);
                resume_at = Some(Instant::now() + backoff.next_delay());
            }
        }
    }
    tracing::info!("quote feed stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_group_quotes_by_topic() {
        let market = Arc::new(Market::new(vec!["A".into(), "B".into(), "C".into()]));
        let mut feed = Feed::new(Arc::clone(&market));
        let batches = feed.next_batch(300, 7);
        assert_eq!(batches.iter().map(|b| b.tails.len()).sum::<usize>(), 300);
        assert_eq!(batches.len(), 3);
        for b in &batches {
            assert!(b.store_last);
            let env = format!("{}1{}", b.head, b.tails[0]);
            let parsed = wire::Envelope::parse(env.as_bytes(), Some(&b.topic)).unwrap();
            assert_eq!(parsed.ts, 7);
        }
        // The next batch starts from clean slots.
        assert_eq!(feed.next_batch(1, 8).len(), 1);
    }

    #[test]
    fn split_feeds_quote_only_their_symbols() {
        let market = Arc::new(Market::new(vec!["A".into(), "B".into(), "C".into()]));
        let mut feed = Feed::for_symbols(market, vec![2]);
        let batches = feed.next_batch(10, 1);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].topic, "quotes.C");
    }

    #[test]
    fn bursts_multiply_the_rate() {
        let s = Schedule {
            rate: 100,
            burst_factor: 5.0,
            burst_every: Duration::from_secs(10),
            burst_len: Duration::from_secs(1),
        };
        assert_eq!(s.rate_at(Duration::from_millis(500)), 500.0);
        assert_eq!(s.rate_at(Duration::from_millis(1500)), 100.0);
        assert_eq!(s.rate_at(Duration::from_millis(10_200)), 500.0);
        let flat = Schedule { burst_every: Duration::ZERO, ..s };
        assert_eq!(flat.rate_at(Duration::from_millis(500)), 100.0);
    }
}
