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

use std::sync::Arc;

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
    pool: deadpool_redis::Pool,
    /// Order requests and snapshot reads; connects on first use and
    /// reconnects by itself (redis-rs's `ConnectionManager`).
    multiplexed: redis::aio::ConnectionManager,
}

impl Commands for Single {
    type Bulk = deadpool_redis::Connection;
    type Quick = redis::aio::ConnectionManager;
    const KIND: &'static str = "redis";

    fn bulk<'a>(&'a self, _key: &'a str) -> Answer<'a, Self::Bulk> {
        Box::pin(async move { self.pool.get().await.map_err(|e| BrokerError::Unavailable(e.to_string())) })
    }

    fn quick<'a>(&'a self, _key: &'a str) -> Answer<'a, Self::Quick> {
        let conn = self.multiplexed.clone();
        Box::pin(async move { Ok(conn) })
    }
}

impl RedisBroker {
    /// Starts the pub/sub managers; they connect in the background, so a
    /// node whose Redis is not up yet starts anyway (and reports not ready).
    pub(crate) fn start(config: &Config, wiring: Wiring<'_>) -> Result<Self, BrokerError> {
        let client = redis::Client::open(config.redis_url.as_str())
            .map_err(|e| BrokerError::Unavailable(format!("invalid redis_url: {e}")))?;
        // Calls on the pool are bounded here (`query`, `publish`), which
        // answer `BrokerError::Timeout`: no second bound per command.
        let options =
            redis_backplane::PoolOptions { size: 16, timeout: config.redis_timeout(), command_timeout: None };
        let pool = redis_backplane::pool(&config.redis_url, options)
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.redis_timeout()))
            .set_response_timeout(Some(config.redis_timeout()))
            // Each command is bounded by `redis_timeout` here; a failed
            // connect is retried on the next command, not in a loop.
            .set_number_of_retries(1)
            .set_max_delay(config.redis_backoff_max())
            // Many connections' orders at once queue here, not in a pool.
            .set_pipeline_buffer_size(4096);
        let multiplexed = redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(|e| BrokerError::Unavailable(format!("redis: {e}")))?;
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
        redis_pubsub::spawn_links(&client, config.pubsub_connections, delivery, &inputs, |id| LinkSettings {
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
            ),
        })
    }
}
