//! The service: an [`Engine`] on Redis (the request stream as its order
//! desk) behind the HTTP server (health, readiness, metrics, publish
//! API). On shutdown the HTTP server stops with the engine's drain.

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

use crate::backplane::{Backplane, WriteError};
use crate::config::Config;
use crate::engine::Engine;
use crate::http;
use crate::order_desk::OrderDesk;
use crate::order_stream::StreamDesk;
use crate::redis_writer::RedisWriter;
use crate::state::Shared;

/// Largest `POST /publish` body.
const MAX_BODY: usize = 64 * 1024;

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
    engine: Engine,
    addr: SocketAddr,
    http: JoinHandle<Result<(), std::io::Error>>,
}

/// The producers on Redis, with the request stream as the order desk.
/// Redis need not be up: the tasks connect (and reconnect) in the
/// background.
pub fn start_on_redis(config: Config) -> Result<Engine, WriteError> {
    let writer = Arc::new(RedisWriter::new(&config)?);
    let backplane: Arc<dyn Backplane> = Arc::clone(&writer) as Arc<dyn Backplane>;
    Ok(Engine::start(config, backplane, move |shared| {
        let desk = StreamDesk::new(
            &shared.config,
            shared.replica_id.clone(),
            writer,
            Arc::clone(&shared.outage),
            Arc::clone(&shared.metrics),
        );
        Some(Box::new(desk) as Box<dyn OrderDesk>)
    }))
}

/// Builds everything and starts serving `listener`.
pub async fn start(config: Config, listener: TcpListener) -> Result<Running, ServerError> {
    let addr = listener.local_addr()?;
    let engine = start_on_redis(config)?;
    let shared = engine.shared();
    let cfg = &shared.config;
    tracing::info!(
        %addr,
        replica = %shared.replica_id,
        symbols = shared.market.len(),
        quote_rate = cfg.quote_rate,
        order_rate = cfg.order_rate,
        "publisher listening"
    );
    if cfg.publish_api_key.is_empty() && cfg.publish_insecure {
        tracing::warn!("POST /publish is open to anyone who reaches this port (publish_insecure)");
    }
    let app = router(Arc::clone(shared));
    let http = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(shared.shutdown.clone().cancelled_owned())
            .into_future(),
    );
    Ok(Running { engine, addr, http })
}

impl Running {
    pub fn shared(&self) -> &Arc<Shared> {
        self.engine.shared()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops producing, then flushes buffered order updates; everything
    /// within `drain_ms`. Returns how many updates could not be flushed.
    pub async fn stop(self) -> u64 {
        let deadline = Instant::now() + self.engine.shared().config.drain();
        let lost = self.engine.stop().await;
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
