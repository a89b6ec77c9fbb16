//! The path every order update takes to the backplane: a bounded
//! in-memory queue and one writer task that empties it in order.
//!
//! Order updates must not be lost or duplicated, and must keep their
//! order. Producers (order lifecycles) push into the queue; the writer
//! takes up to [`BATCH`] at a time and writes them in one call (on Redis,
//! one pipeline of update-script calls). When Redis is away the writer
//! retries the same batch with jittered backoff (the script's dedupe
//! marker makes a retry of an update that did land a no-op), while new
//! updates wait in the queue. When the queue (`outage_buffer`) is full, producers wait: the
//! simulated exchange pauses rather than dropping an update.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backplane::{Backplane, OrderUpdate};
use crate::metrics::Metrics;
use crate::outage::{self, Backoff, Outage};

/// Updates written per pipeline.
pub const BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
#[error("order update queue closed (shutting down)")]
pub struct QueueClosed;

/// The producers' end of the queue; cheap to clone.
#[derive(Clone)]
pub struct UpdateQueue {
    tx: mpsc::Sender<OrderUpdate>,
    metrics: Arc<Metrics>,
}

impl UpdateQueue {
    /// Queues an update, waiting while the buffer is full.
    pub async fn push(&self, update: OrderUpdate) -> Result<(), QueueClosed> {
        self.metrics.buffered_updates.inc();
        self.tx.send(update).await.map_err(|_| {
            self.metrics.buffered_updates.dec();
            QueueClosed
        })
    }
}

/// The writer's end: owns the receiving side and writes in order.
pub struct UpdateWriter {
    rx: mpsc::Receiver<OrderUpdate>,
    backplane: Arc<dyn Backplane>,
    metrics: Arc<Metrics>,
    outage: Arc<Outage>,
    backoff_max: Duration,
}

/// A queue of `capacity` updates and the writer that drains it.
pub fn channel(
    capacity: usize,
    backplane: Arc<dyn Backplane>,
    metrics: Arc<Metrics>,
    outage: Arc<Outage>,
    backoff_max: Duration,
) -> (UpdateQueue, UpdateWriter) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        UpdateQueue { tx, metrics: Arc::clone(&metrics) },
        UpdateWriter { rx, backplane, metrics, outage, backoff_max },
    )
}

impl UpdateWriter {
    /// Writes updates until `stop` is cancelled and the queue is empty
    /// (producers must have stopped by then), or every producer is gone.
    /// The caller bounds the final flush with a timeout.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut batch: Vec<OrderUpdate> = Vec::with_capacity(BATCH);
        let mut backoff = outage::backoff(self.backoff_max);
        loop {
            if stop.is_cancelled() {
                while batch.len() < BATCH {
                    match self.rx.try_recv() {
                        Ok(u) => batch.push(u),
                        Err(_) => break,
                    }
                }
                if batch.is_empty() {
                    return;
                }
            } else {
                tokio::select! {
                    n = self.rx.recv_many(&mut batch, BATCH) => if n == 0 { return },
                    _ = stop.cancelled() => continue,
                }
            }
            self.write_batch(&batch, &mut backoff).await;
            batch.clear();
        }
    }

    /// Writes one batch, retrying until the backplane takes it.
    async fn write_batch(&self, batch: &[OrderUpdate], backoff: &mut Backoff) {
        loop {
            match self.backplane.write_updates(batch).await {
                Ok(written) => {
                    for update in batch {
                        self.metrics.order_update_write_seconds.observe(update.created.elapsed());
                    }
                    let dups = written.iter().filter(|w| w.duplicate).count() as u64;
                    self.metrics.order_updates_published.inc_by(batch.len() as u64);
                    self.metrics.order_updates_deduplicated.inc_by(dups);
                    self.metrics.buffered_updates.dec_by(batch.len() as i64);
                    self.outage.succeeded();
                    backoff.reset();
                    return;
                }
                Err(e) => {
                    self.outage.failed("order updates", &e);
                    self.metrics.retries.inc();
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}
