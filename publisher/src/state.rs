//! What every task of one publisher shares: config, market, backplane,
//! the order-update queue, metrics, the backplane's outage state and the
//! shutdown signal.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backplane::Backplane;
use crate::config::Config;
use crate::market::Market;
use crate::metrics::Metrics;
use crate::order_updates::UpdateQueue;
use crate::outage::Outage;

pub struct Shared {
    pub config: Config,
    /// Consumer name in the order-request group; unique per process so a
    /// crashed replica's pending requests can be told apart and claimed.
    pub replica_id: String,
    pub market: Arc<Market>,
    /// Where quotes, order updates and `POST /publish` go.
    pub backplane: Arc<dyn Backplane>,
    /// Where order lifecycles put their updates (buffered across outages).
    pub updates: UpdateQueue,
    pub metrics: Arc<Metrics>,
    /// Drives `/readyz` and the once-per-outage logging.
    pub outage: Arc<Outage>,
    /// Cancelled on SIGTERM: producers stop, then queued updates flush.
    pub shutdown: CancellationToken,
    /// Running order lifecycles; shutdown lets them finish (bounded) so
    /// their last updates are flushed too.
    pub lifecycles: TaskTracker,
}

impl Shared {
    /// Ready for traffic: Redis answers and not shutting down.
    pub fn is_ready(&self) -> bool {
        !self.shutdown.is_cancelled() && self.outage.is_up()
    }

    pub fn prefix(&self) -> &str {
        &self.config.channel_prefix
    }
}
