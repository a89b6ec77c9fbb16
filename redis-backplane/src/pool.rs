//! Connections built one way for every user: pools to one Redis server
//! (fixed, or the master Sentinel names: [`crate::sentinel::Target`]),
//! whose connects, checkouts and recycle checks are bounded by one
//! timeout, and Redis Cluster clients, whose connects and replies are; so
//! a Redis that went away fails calls instead of hanging them.
//!
//! The pool's manager is ours rather than deadpool-redis's, so that each
//! new connection asks its target where to go (after a failover: the new
//! master), and a connection kept across a failover is checked with
//! `ROLE` before reuse (a demoted master still answers `PING`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool::Runtime;
use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClientBuilder;

use crate::sentinel::{ConnectError, Target, is_master};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("redis pool: {0}")]
    Build(String),
}

/// A pool of connections to a [`Target`].
pub type Pool = managed::Pool<Manager>;
/// A connection taken from a [`Pool`] (derefs to the connection).
pub type Connection = managed::Object<Manager>;
/// Why a connection could not be taken from a [`Pool`].
pub type CheckoutError = managed::PoolError<ConnectError>;

/// What a pool is built with.
#[derive(Debug, Clone, Copy)]
pub struct PoolOptions {
    /// Connections at most.
    pub size: usize,
    /// Bounds each connect, checkout and recycle check (a connection is
    /// checked with a round trip before it is handed out).
    pub timeout: Duration,
    /// Bounds each command's reply on a connection. `None` where the
    /// caller bounds the whole call itself and answers its own timeout
    /// (the gateway), so the two bounds never race.
    pub command_timeout: Option<Duration>,
}

/// Makes and checks a pool's connections.
pub struct Manager {
    target: Target,
    config: AsyncConnectionConfig,
    pings: AtomicUsize,
}

impl managed::Manager for Manager {
    type Type = MultiplexedConnection;
    type Error = ConnectError;

    async fn create(&self) -> Result<MultiplexedConnection, ConnectError> {
        let client = self.target.client().await?;
        Ok(client.get_multiplexed_async_connection_with_config(&self.config).await?)
    }

    async fn recycle(&self, conn: &mut MultiplexedConnection, _: &Metrics) -> RecycleResult<ConnectError> {
        let fail = |e: redis::RedisError| RecycleError::Backend(ConnectError::Redis(e));
        if self.target.moves() {
            // UNWATCH in the same round trip, as deadpool-redis does.
            let (role,): (redis::Value,) =
                redis::pipe().cmd("UNWATCH").ignore().cmd("ROLE").query_async(conn).await.map_err(fail)?;
            return if is_master(&role) { Ok(()) } else { Err(RecycleError::message("no longer master")) };
        }
        let n = self.pings.fetch_add(1, Ordering::Relaxed).to_string();
        let (pong,): (String,) = redis::pipe()
            .cmd("UNWATCH")
            .ignore()
            .cmd("PING")
            .arg(&n)
            .query_async(conn)
            .await
            .map_err(fail)?;
        if pong == n { Ok(()) } else { Err(RecycleError::message("invalid PING reply")) }
    }
}

/// A pool of connections to `target`, as `options` say.
pub fn pool(target: Target, options: PoolOptions) -> Result<Pool, PoolError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(options.timeout))
        .set_response_timeout(options.command_timeout);
    let manager = Manager { target, config, pings: AtomicUsize::new(0) };
    Pool::builder(manager)
        .max_size(options.size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(options.timeout))
        .create_timeout(Some(options.timeout))
        .recycle_timeout(Some(options.timeout))
        .build()
        .map_err(|e| PoolError::Build(e.to_string()))
}

/// A Redis Cluster client on `seeds` whose connects and replies fail after
/// `timeout`; the caller adds what it needs more (RESP3 and a push
/// sender for sharded subscriptions) and builds it.
pub fn cluster_client<'a>(
    seeds: impl IntoIterator<Item = &'a str>,
    timeout: Duration,
) -> ClusterClientBuilder {
    ClusterClientBuilder::new(seeds).connection_timeout(timeout).response_timeout(timeout)
}
