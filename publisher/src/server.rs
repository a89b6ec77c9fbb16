//! The glue: builds the shared state from the config, starts the tasks
//! (health probe, quote feed, order simulator, order service, update
//! writer) and the HTTP server, and on shutdown drains in order: stop
//! producing, let running order lifecycles finish, flush the buffered
//! updates, all within `drain_ms`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::feed::{self, Feed, Schedule};
use crate::market::Market;
use crate::metrics::Metrics;
use crate::outage::Outage;
use crate::redis_writer::{RedisWriter, WriteError};
use crate::state::Shared;
use crate::{http, order_service, order_updates, simulator};

/// Largest `POST /publish` body.
const MAX_BODY: usize = 64 * 1024;
/// How often Redis is PINGed when nothing else talks to it.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Redis(#[from] WriteError),
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/metrics", get(http::metrics))
        .route("/publish", post(http::publish).layer(DefaultBodyLimit::max(MAX_BODY)))
        .with_state(shared)
}

/// A started publisher; [`Running::stop`] drains it.
pub struct Running {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// Feed, simulator, order service, probe: stopped by `shutdown`.
    producers: TaskTracker,
    /// Tells the update writer that producers are done: flush and end.
    flush: CancellationToken,
    update_writer: JoinHandle<()>,
    http: JoinHandle<Result<(), std::io::Error>>,
}

/// Builds everything and starts serving `listener`. Redis need not be up:
/// the tasks connect (and reconnect) in the background.
pub async fn start(config: Config, listener: TcpListener) -> Result<Running, ServerError> {
    let metrics = Arc::new(Metrics::default());
    let outage = Arc::new(Outage::new(Arc::clone(&metrics)));
    let writer = Arc::new(RedisWriter::new(&config)?);
    let market = Arc::new(Market::new(config.symbol_list()));
    let replica_id = if config.replica_id.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        config.replica_id.clone()
    };
    let (updates, update_writer) = order_updates::channel(
        config.outage_buffer,
        Arc::clone(&writer),
        Arc::clone(&metrics),
        Arc::clone(&outage),
        config.redis_backoff_max(),
    );
    let shared = Arc::new(Shared {
        config,
        replica_id,
        market,
        writer,
        updates,
        metrics,
        outage,
        shutdown: CancellationToken::new(),
        lifecycles: TaskTracker::new(),
    });
    let addr = listener.local_addr()?;
    let cfg = &shared.config;
    tracing::info!(
        %addr,
        replica = %shared.replica_id,
        symbols = shared.market.len(),
        quote_rate = cfg.quote_rate,
        order_rate = cfg.order_rate,
        "publisher listening"
    );
    if cfg.publish_api_key.is_empty() {
        tracing::warn!("POST /publish is open to anyone who reaches this port; set publish_api_key");
    }

    let flush = CancellationToken::new();
    let update_writer = tokio::spawn(update_writer.run(flush.clone()));
    let producers = TaskTracker::new();
    producers.spawn(probe(Arc::clone(&shared)));
    producers.spawn(order_service::run(Arc::clone(&shared)));
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
            Arc::clone(&shared.writer),
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

    let app = router(Arc::clone(&shared));
    let http = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(shared.shutdown.clone().cancelled_owned())
            .into_future(),
    );
    Ok(Running { shared, addr, producers, flush, update_writer, http })
}

impl Running {
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
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
            tracing::error!(lost, "drain window ended before buffered order updates reached Redis");
        } else {
            tracing::info!("buffered order updates flushed");
        }
        let mut http = self.http;
        match tokio::time::timeout_at(deadline + Duration::from_secs(1), &mut http).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
            Ok(_) => {}
            Err(_) => http.abort(),
        }
        lost
    }
}

/// Serves `listener` until `shutdown` resolves, then drains.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let running = start(config, listener).await?;
    shutdown.await;
    tracing::info!("shutting down: flushing buffered order updates");
    running.stop().await;
    Ok(())
}

/// Keeps the Redis up/down state fresh even when no task is writing, so
/// `/readyz` answers truthfully on an idle publisher.
async fn probe(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match shared.writer.ping().await {
            Ok(()) => shared.outage.succeeded(),
            Err(e) => shared.outage.failed("health probe", &e),
        }
    }
}
