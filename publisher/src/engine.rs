//! The publisher's producers, whatever reaches them: the quote feed, the
//! order simulator, the order service and the writer of order updates,
//! on one [`Backplane`]. On shutdown they drain in order: stop producing,
//! let running order lifecycles finish, flush the buffered updates, all
//! within `drain_ms`.
//!
//! The service ([`crate::server`]) runs an engine on Redis behind its HTTP
//! API; a gateway running the one-command demo runs one on its in-memory
//! backplane, with an in-process order desk.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backplane::Backplane;
use crate::config::Config;
use crate::feed::{self, Feed, Schedule};
use crate::market::Market;
use crate::metrics::Metrics;
use crate::order_desk::OrderDesk;
use crate::outage::Outage;
use crate::state::Shared;
use crate::{order_service, order_updates, simulator};

/// How often the backplane is PINGed when nothing else talks to it.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Running producers; [`Engine::stop`] drains them.
pub struct Engine {
    shared: Arc<Shared>,
    /// Feed, simulator, order service, probe: stopped by `shutdown`.
    producers: TaskTracker,
    /// Tells the update writer that producers are done: flush and end.
    flush: CancellationToken,
    update_writer: JoinHandle<()>,
}

impl Engine {
    /// Starts the producers `config` asks for on `backplane`; `desk` makes
    /// the order service's desk from the shared state (none: no service).
    /// The backplane need not be up: the tasks retry in the background.
    pub fn start(
        config: Config,
        backplane: Arc<dyn Backplane>,
        desk: impl FnOnce(&Shared) -> Option<Box<dyn OrderDesk>>,
    ) -> Engine {
        let metrics = Arc::new(Metrics::default());
        let outage = Arc::new(Outage::new(backplane.kind(), Arc::clone(&metrics)));
        let market = Arc::new(Market::new(config.symbol_list()));
        let replica_id = if config.replica_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            config.replica_id.clone()
        };
        let (updates, update_writer) = order_updates::channel(
            config.outage_buffer,
            Arc::clone(&backplane),
            Arc::clone(&metrics),
            Arc::clone(&outage),
            config.redis_backoff_max(),
        );
        let shared = Arc::new(Shared {
            config,
            replica_id,
            market,
            backplane,
            updates,
            metrics,
            outage,
            shutdown: CancellationToken::new(),
            lifecycles: TaskTracker::new(),
        });

        let flush = CancellationToken::new();
        let update_writer = tokio::spawn(update_writer.run(flush.clone()));
        let producers = TaskTracker::new();
        producers.spawn(probe(Arc::clone(&shared)));
        if let Some(desk) = desk(&shared) {
            producers.spawn(order_service::run(Arc::clone(&shared), desk));
        }
        let cfg = &shared.config;
        if cfg.quote_rate > 0 {
            let schedule = Schedule {
                rate: cfg.quote_rate,
                burst_factor: cfg.burst_factor,
                burst_every: Duration::from_millis(cfg.burst_every_ms),
                burst_len: Duration::from_millis(cfg.burst_len_ms),
            };
            producers.spawn(feed::run(
                Feed::new(Arc::clone(&shared.market)),
                schedule,
                Arc::clone(&shared.backplane),
                Arc::clone(&shared.metrics),
                Arc::clone(&shared.outage),
                cfg.redis_backoff_max(),
                shared.shutdown.clone(),
            ));
        }
        if cfg.order_rate > 0.0 {
            producers.spawn(simulator::run(Arc::clone(&shared)));
        }
        producers.close();
        Engine { shared, producers, flush, update_writer }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops producing, then flushes buffered order updates; everything
    /// within `drain_ms`. Returns how many updates could not be flushed.
    pub async fn stop(self) -> u64 {
        let shared = &self.shared;
        shared.shutdown.cancel();
        let deadline = Instant::now() + shared.config.drain();
        shared.lifecycles.close();
        let producers_done = async {
            self.producers.wait().await;
            shared.lifecycles.wait().await;
        };
        if tokio::time::timeout_at(deadline, producers_done).await.is_err() {
            tracing::warn!("drain window ended with producers still running");
        }
        self.flush.cancel();
        let mut writer = self.update_writer;
        let lost = match tokio::time::timeout_at(deadline, &mut writer).await {
            Ok(_) => 0,
            Err(_) => {
                writer.abort();
                shared.metrics.buffered_updates.get().max(0) as u64
            }
        };
        if lost > 0 {
            tracing::error!(lost, "drain window ended before buffered order updates were written");
        } else {
            tracing::info!("buffered order updates flushed");
        }
        lost
    }
}

/// Keeps the backplane's up/down state fresh even when no task is
/// writing, so `/readyz` answers truthfully on an idle publisher.
async fn probe(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match shared.backplane.ping().await {
            Ok(()) => shared.outage.succeeded(),
            Err(e) => shared.outage.failed("health probe", &e),
        }
    }
}
