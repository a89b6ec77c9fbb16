//! The Redis backplane: pub/sub connection(s) subscribed to
//! `<prefix><topic>` for exactly the topics that have local subscribers,
//! a small deadpool pool for publishing and history, and one multiplexed
//! connection for order requests and snapshots.
//!
//! Order requests do not take a pooled connection: deadpool checks every
//! connection it hands out with a PING (its recycle), so each XADD cost
//! two round trips on a connection held for both, and 16 connections
//! capped a node near 900 orders/s (bench/orders.md). On the multiplexed
//! connection concurrent XADDs share round trips (redis-rs pipelines
//! them), with no checkout. Scripts and history reads stay on the pool,
//! so a long history reply never delays an order.
//!
//! Subscriptions are kept by the shared manager (`pubsub`) on
//! `pubsub_connections` links spread by channel hash (`redis_pubsub`).
//!
//! Behind Redis Sentinel every one of these connections asks the
//! sentinels for the master each time it connects
//! (`redis_backplane::Target`), so after a failover the pool, the
//! order connection and the links all land on the new master; the links
//! report down meanwhile (`/readyz` not ready) and re-subscribe there.

use std::sync::Arc;

use redis::RedisFuture;
use redis::aio::{ConnectionLike, MultiplexedConnection};

use wire::scripts::PublishCommand;

use super::pubsub::link::LinkSettings;
use super::pubsub::{ManagerSettings, PubSub};
use super::redis_commands::ScriptPublisher;
use super::redis_pubsub::{self, Delivery};
use super::redis_shared::{self, Commands, Redis};
use super::{Answer, BrokerError, Wiring};
use crate::config::Config;

/// The single-Redis backplane (its `Broker` is [`Redis`]'s).
pub type RedisBroker = Redis<Single>;

/// Where the single Redis runs commands.
pub struct Single {
    pool: redis_backplane::Pool,
    /// Order requests and snapshot reads; connects on first use and
    /// again after it broke (or its server stopped being master).
    multiplexed: Arc<redis_backplane::SharedConnection>,
}

impl Commands for Single {
    type Bulk = Pooled;
    type Quick = Checked;
    const KIND: &'static str = "redis";

    fn bulk<'a>(&'a self, _key: &'a str) -> Answer<'a, Self::Bulk> {
        Box::pin(async move {
            self.pool.get().await.map(Pooled).map_err(|e| BrokerError::Unavailable(e.to_string()))
        })
    }

    fn quick<'a>(&'a self, _key: &'a str) -> Answer<'a, Self::Quick> {
        Box::pin(async move {
            let conn = self.multiplexed.get().await.map_err(|e| BrokerError::Unavailable(e.to_string()))?;
            Ok(Checked { conn, owner: Arc::clone(&self.multiplexed) })
        })
    }
}

/// A connection taken from the pool, back in it when dropped.
pub struct Pooled(redis_backplane::pool::Connection);

impl ConnectionLike for Pooled {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        (*self.0).req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        (*self.0).req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// The shared order connection for one call: a failure that means it is
/// broken or no longer on the master (`-READONLY`) drops it, so the next
/// call connects again (after a Sentinel failover: to the new master).
pub struct Checked {
    conn: MultiplexedConnection,
    owner: Arc<redis_backplane::SharedConnection>,
}

impl Checked {
    /// Passes `result` on, dropping the shared connection if it failed.
    fn seen<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(e) = &result {
            self.owner.failed(e);
        }
        result
    }
}

impl ConnectionLike for Checked {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let result = self.conn.req_packed_command(cmd).await;
            self.seen(result)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let result = self.conn.req_packed_commands(pipeline, offset, count).await;
            self.seen(result)
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

impl RedisBroker {
    /// Starts the pub/sub managers; they connect in the background, so a
    /// node whose Redis is not up yet starts anyway (and reports not ready).
    pub(crate) fn start(config: &Config, wiring: Wiring<'_>) -> Result<Self, BrokerError> {
        let target =
            redis_backplane::Target::open(&config.redis_url, config.sentinel(), config.redis_timeout())
                .map_err(|e| BrokerError::Unavailable(format!("invalid redis_url: {e}")))?;
        // Calls on the pool are bounded here (`query`, `publish`), which
        // answer `BrokerError::Timeout`: no second bound per command.
        let options =
            redis_backplane::PoolOptions { size: 16, timeout: config.redis_timeout(), command_timeout: None };
        let pool = redis_backplane::pool(target.clone(), options)
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let shared_config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.redis_timeout()))
            .set_response_timeout(Some(config.redis_timeout()))
            // Many connections' orders at once queue here, not in a pool.
            .set_pipeline_buffer_size(4096);
        // A failed connect is retried on the next command, not in a loop.
        let multiplexed = Arc::new(redis_backplane::SharedConnection::new(target.clone(), shared_config));
        let commands = Arc::new(Single { pool, multiplexed });
        let mut settings = ManagerSettings::new(config, &wiring);
        let probe = redis_shared::probe_publish(
            Arc::clone(&commands),
            PublishCommand::Publish,
            config.redis_timeout(),
        );
        settings.probe.publish = Some(probe);
        let Wiring { sink, shutdown, .. } = wiring;
        let reply_channel = settings.reply_channel.clone();
        let (pubsub, inputs) = PubSub::start(settings);
        let delivery = Delivery::new(sink, &config.channel_prefix, reply_channel, &inputs);
        redis_pubsub::spawn_links(&target, config.pubsub_connections, delivery, &inputs, |id| LinkSettings {
            link: id,
            label: id.to_string(),
            timeout: config.redis_timeout(),
            backoff_max: config.redis_backoff_max(),
            shutdown: shutdown.clone(),
        });
        Ok(Redis {
            pubsub,
            commands,
            prefix: config.channel_prefix.clone(),
            timeout: config.redis_timeout(),
            scripts: ScriptPublisher::new(
                &config.channel_prefix,
                PublishCommand::Publish,
                config.history_maxlen,
                config.sentinel().map_or(0, |s| s.wait_replicas),
                config.redis_timeout(),
            ),
        })
    }
}
