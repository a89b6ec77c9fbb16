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
use std::time::Duration;

use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use wire::Topic;
use wire::scripts::PublishCommand;

use super::pubsub::link::LinkSettings;
use super::pubsub::{ManagerSettings, PubSub};
use super::redis_commands::{self, ScriptPublisher};
use super::redis_pubsub::{self, Delivery};
use super::{BoxFuture, Broker, BrokerError, Sink, Subscribed};
use crate::config::Config;
use crate::metrics::Metrics;

pub struct RedisBroker {
    /// The subscription manager over the pub/sub connections.
    pubsub: PubSub,
    pool: deadpool_redis::Pool,
    /// Order requests and snapshot reads; connects on first use and
    /// reconnects by itself (redis-rs's `ConnectionManager`).
    multiplexed: redis::aio::ConnectionManager,
    prefix: String,
    timeout: Duration,
    /// Publishes through the shared scripts, with `PUBLISH`.
    scripts: ScriptPublisher,
}

impl RedisBroker {
    /// Starts the pub/sub managers; they connect in the background, so a
    /// node whose Redis is not up yet starts anyway (and reports not ready).
    pub(crate) fn start(
        config: &Config,
        node_id: &str,
        sink: Arc<dyn Sink>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Self, BrokerError> {
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
        let settings = ManagerSettings::new(config, node_id, Arc::clone(&sink), metrics, shutdown.clone());
        let reply_channel = settings.reply_channel.clone();
        let (pubsub, inputs) = PubSub::start(settings);
        let delivery = Delivery { sink, prefix: config.channel_prefix.clone(), reply_channel };
        redis_pubsub::spawn_links(&client, config.pubsub_connections, delivery, &inputs, |id| LinkSettings {
            link: id,
            label: id.to_string(),
            timeout: config.redis_timeout(),
            backoff_max: config.redis_backoff_max(),
            shutdown: shutdown.clone(),
        });
        Ok(RedisBroker {
            pubsub,
            pool,
            multiplexed,
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

impl Broker for RedisBroker {
    fn subscribe<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<Subscribed, BrokerError>> {
        Box::pin(self.pubsub.subscribe(topic))
    }

    fn release(&self, topic: &Topic) {
        self.pubsub.release(topic);
    }

    fn publish<'a>(
        &'a self,
        topic: &'a Topic,
        data_json: &'a str,
        traceparent: Option<&'a str>,
        id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<u64, BrokerError>> {
        Box::pin(async move {
            let work = async {
                let mut conn = self.pool.get().await.map_err(|e| BrokerError::Unavailable(e.to_string()))?;
                self.scripts.publish(&mut conn, topic, data_json, traceparent, id).await
            };
            timeout(self.timeout, work).await.map_err(|_| BrokerError::Timeout)?
        })
    }

    fn last_value<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<Option<Vec<u8>>, BrokerError>> {
        Box::pin(async move { self.multiplexed(&redis_commands::last_value_cmd(&self.prefix, topic)).await })
    }

    fn history_after<'a>(
        &'a self,
        topic: &'a Topic,
        since: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Vec<u8>>, BrokerError>> {
        Box::pin(async move {
            let cmd = redis_commands::history_cmd(&self.prefix, topic, since, limit);
            Ok(redis_commands::history_envelopes(self.query(&cmd).await?))
        })
    }

    fn submit_order<'a>(&'a self, request_json: String) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let _id: String =
                self.multiplexed(&redis_commands::order_request_cmd(&self.prefix, request_json)).await?;
            Ok(())
        })
    }

    fn is_ready(&self) -> bool {
        self.pubsub.health().is_ready()
    }

    fn down_shards(&self) -> Vec<String> {
        self.pubsub.health().down()
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

impl RedisBroker {
    /// Runs one command on a pooled connection, bounded by the timeout.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BrokerError> {
        let work = async {
            let mut conn = self.pool.get().await.map_err(|e| BrokerError::Unavailable(e.to_string()))?;
            cmd.query_async::<T>(&mut conn).await.map_err(|e| BrokerError::Refused(e.to_string()))
        };
        timeout(self.timeout, work).await.map_err(|_| BrokerError::Timeout)?
    }

    /// Runs one command on the multiplexed connection, bounded by the
    /// timeout. A command that timed out may still have run.
    async fn multiplexed<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BrokerError> {
        let mut conn = self.multiplexed.clone();
        match timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await {
            Err(_) => Err(BrokerError::Timeout),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if e.is_timeout() => Err(BrokerError::Timeout),
            // Not sent, or the connection broke: the manager reconnects.
            Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() => {
                Err(BrokerError::Unavailable(e.to_string()))
            }
            Ok(Err(e)) => Err(BrokerError::Refused(e.to_string())),
        }
    }
}
