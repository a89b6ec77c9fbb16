//! `publisher bench`: the sustained quote publish rate this publisher
//! reaches against a Redis, through the same code the feed runs (batch
//! generation, one script call per topic per batch, pipelined).
//!
//! Symbols are split between `writers` tasks, each with its own
//! connection and one pipeline in flight, so one writer builds its next
//! batch while Redis works on another's. A short warm-up run loads the
//! script and fills the connection buffers; the figure reported is the
//! median of the timed runs. The bench's keys live under their own prefix
//! and are deleted at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wire::keys;

use crate::backplane::WriteError;
use crate::feed::Feed;
use crate::market::Market;
use crate::redis_writer::{self, RedisWriter};

#[derive(Debug, Clone)]
pub struct Options {
    pub redis_url: String,
    pub prefix: String,
    pub messages: u64,
    pub symbols: usize,
    pub runs: usize,
    /// Quotes per pipeline.
    pub batch: usize,
    /// Concurrent writer tasks (connections).
    pub writers: usize,
}

#[derive(Debug, Clone)]
pub struct Report {
    /// Messages per second of each timed run.
    pub rates: Vec<f64>,
    pub median: f64,
}

/// Runs the benchmark and returns each run's rate and the median.
pub async fn run(opts: &Options) -> Result<Report, WriteError> {
    let writers = opts.writers.clamp(1, opts.symbols.max(1));
    let pool = redis_writer::pool(&opts.redis_url, Duration::from_secs(10), writers + 1)?;
    let writer = Arc::new(RedisWriter::with_pool(pool, opts.prefix.clone(), 1));
    let symbols: Vec<String> = (1..=opts.symbols).map(|i| format!("BENCH{i:05}")).collect();
    let market = Arc::new(Market::new(symbols));

    one_run(&writer, &market, writers, (opts.messages / 10).max(1), opts.batch).await?;
    let mut rates = Vec::with_capacity(opts.runs);
    for i in 1..=opts.runs.max(1) {
        let elapsed = one_run(&writer, &market, writers, opts.messages, opts.batch).await?;
        let rate = opts.messages as f64 / elapsed.as_secs_f64();
        eprintln!("run {i}: {} messages in {:.3} s = {rate:.0} msgs/s", opts.messages, elapsed.as_secs_f64());
        rates.push(rate);
    }
    cleanup(&writer, &market).await?;
    let mut sorted = rates.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    Ok(Report { rates, median })
}

/// Publishes `messages` quotes spread over `writers` tasks; returns the
/// wall time until the last one was acknowledged by Redis.
async fn one_run(
    writer: &Arc<RedisWriter>,
    market: &Arc<Market>,
    writers: usize,
    messages: u64,
    batch: usize,
) -> Result<Duration, WriteError> {
    let mut conns = Vec::with_capacity(writers);
    for _ in 0..writers {
        conns.push(writer.conn().await?);
    }
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(writers);
    for (w, mut conn) in conns.into_iter().enumerate() {
        let owned: Vec<usize> = (w..market.len()).step_by(writers).collect();
        let mut feed = Feed::for_symbols(Arc::clone(market), owned);
        let writer = Arc::clone(writer);
        let share = messages / writers as u64 + u64::from((w as u64) < messages % writers as u64);
        tasks.push(tokio::spawn(async move {
            let mut left = share;
            while left > 0 {
                let n = left.min(batch.max(1) as u64);
                let batches = feed.next_batch(n as usize, wire::now_ms());
                writer.publish_batches_on(&mut conn, &batches).await?;
                left -= n;
            }
            Ok::<(), WriteError>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| WriteError::Reply(format!("bench task failed: {e}")))??;
    }
    Ok(start.elapsed())
}

async fn cleanup(writer: &RedisWriter, market: &Market) -> Result<(), WriteError> {
    let mut conn = writer.conn().await?;
    let prefix = writer.prefix();
    let mut pipe = redis::pipe();
    for i in 0..market.len() {
        let topic = market.topic(i);
        pipe.cmd("DEL").arg(keys::seq_counter(prefix, topic)).arg(keys::last_value(prefix, topic)).ignore();
    }
    pipe.query_async::<()>(&mut conn).await?;
    Ok(())
}
