//! One multiplexed connection shared by many concurrent callers (redis-rs
//! pipelines their commands on it), made on first use, and dropped after
//! a failure that means it is broken or no longer on the master
//! (`-READONLY`), so the next call connects again through its
//! [`Target`]: after a Sentinel failover, to the new master.
//!
//! It stands where redis-rs's `ConnectionManager` stood: that one
//! reconnects to the one address its client was built with.

use std::sync::{PoisonError, RwLock};

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

use crate::sentinel::{ConnectError, Target, is_readonly};

pub struct SharedConnection {
    target: Target,
    config: AsyncConnectionConfig,
    /// The connection, once made; cloned for each call.
    current: RwLock<Option<MultiplexedConnection>>,
    /// Held while connecting, so concurrent callers make one connection.
    connecting: tokio::sync::Mutex<()>,
}

impl SharedConnection {
    /// Nothing connects until the first [`SharedConnection::get`].
    pub fn new(target: Target, config: AsyncConnectionConfig) -> Self {
        SharedConnection {
            target,
            config,
            current: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// The connection, connecting first if there is none.
    pub async fn get(&self) -> Result<MultiplexedConnection, ConnectError> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let _one = self.connecting.lock().await;
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let client = self.target.client().await?;
        let conn = client.get_multiplexed_async_connection_with_config(&self.config).await?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }

    /// A call on the connection failed with `e`: drop the connection if
    /// `e` says it is broken or not on the master (a timeout too when
    /// the master may move: a master cut off by a partition times out).
    pub fn failed(&self, e: &redis::RedisError) {
        let broken = e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error();
        if broken || is_readonly(e) || (e.is_timeout() && self.target.moves()) {
            *self.current.write().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }

    fn current(&self) -> Option<MultiplexedConnection> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}
