//! Connections built one way for every user: pools to one Redis server,
//! whose connects, checkouts and recycle checks are bounded by one
//! timeout, and Redis Cluster clients, whose connects and replies are; so
//! a Redis that went away fails calls instead of hanging them.

use std::time::Duration;

use deadpool_redis::{Pool, Runtime};
use redis::AsyncConnectionConfig;
use redis::cluster::ClusterClientBuilder;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("invalid redis_url: {0}")]
    InvalidUrl(String),
    #[error("redis pool: {0}")]
    Build(String),
}

/// What a pool is built with.
#[derive(Debug, Clone, Copy)]
pub struct PoolOptions {
    /// Connections at most.
    pub size: usize,
    /// Bounds each connect, checkout and recycle check (deadpool PINGs a
    /// connection before handing it out).
    pub timeout: Duration,
    /// Bounds each command's reply on a connection. `None` where the
    /// caller bounds the whole call itself and answers its own timeout
    /// (the gateway), so the two bounds never race.
    pub command_timeout: Option<Duration>,
}

/// A pool of connections to `url`, as `options` say.
pub fn pool(url: &str, options: PoolOptions) -> Result<Pool, PoolError> {
    let conn_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(options.timeout))
        .set_response_timeout(options.command_timeout);
    let manager = deadpool_redis::Manager::new_with_config(url, conn_config)
        .map_err(|e| PoolError::InvalidUrl(e.to_string()))?;
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
