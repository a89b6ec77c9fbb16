//! The Redis backplane: pub/sub connection(s) subscribed to
//! `<prefix><topic>` for exactly the topics that have local subscribers,
//! plus a small deadpool pool for publishing, snapshots, history and
//! order requests.
//!
//! Subscriptions spread over `pubsub_connections` connections by topic
//! hash (see `redis_pubsub`), so one connection's reader is never the
//! node's bottleneck.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use wire::scripts::PublishCommand;
use wire::{Topic, keys};

use super::redis_commands::{self, ScriptPublisher};
use super::redis_pubsub::{Shard, ShardSettings};
use super::{BoxFuture, Broker, BrokerError};
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::requests::Requests;

pub struct RedisBroker {
    /// Pub/sub connections; a topic always goes to the same one, by hash.
    shards: Vec<Shard>,
    pool: deadpool_redis::Pool,
    prefix: String,
    timeout: Duration,
    /// Publishes through the shared scripts, with `PUBLISH`.
    scripts: ScriptPublisher,
}

impl RedisBroker {
    /// Starts the pub/sub managers; they connect in the background, so a
    /// node whose Redis is not up yet starts anyway (and reports not ready).
    pub fn start(
        config: &Config,
        node_id: &str,
        hub: Arc<Hub>,
        requests: Arc<Requests>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Self, BrokerError> {
        let client = redis::Client::open(config.redis_url.as_str())
            .map_err(|e| BrokerError::Unavailable(format!("invalid redis_url: {e}")))?;
        let pool = deadpool_redis::Config::from_url(config.redis_url.clone())
            .builder()
            .map_err(|e| BrokerError::Unavailable(format!("redis pool: {e}")))?
            .max_size(16)
            .runtime(deadpool_redis::Runtime::Tokio1)
            .wait_timeout(Some(config.redis_timeout()))
            .create_timeout(Some(config.redis_timeout()))
            .build()
            .map_err(|e| BrokerError::Unavailable(format!("redis pool: {e}")))?;
        let shards = (0..config.pubsub_connections)
            .map(|i| {
                Shard::spawn(ShardSettings {
                    client: client.clone(),
                    hub: Arc::clone(&hub),
                    requests: Arc::clone(&requests),
                    reply_channel: (i == 0).then(|| keys::node_replies(&config.channel_prefix, node_id)),
                    metrics: Arc::clone(&metrics),
                    prefix: config.channel_prefix.clone(),
                    grace: config.unsubscribe_grace(),
                    timeout: config.redis_timeout(),
                    backoff_max: config.redis_backoff_max(),
                    shutdown: shutdown.clone(),
                })
            })
            .collect();
        Ok(RedisBroker {
            shards,
            pool,
            prefix: config.channel_prefix.clone(),
            timeout: config.redis_timeout(),
            scripts: ScriptPublisher::new(
                &config.channel_prefix,
                PublishCommand::Publish,
                config.history_maxlen,
            ),
        })
    }

    /// The pub/sub connection that carries `topic`. SipHash with fixed keys,
    /// so a topic's shard is the same for the node's whole life.
    fn shard(&self, topic: &Topic) -> &Shard {
        let mut hasher = std::hash::DefaultHasher::new();
        topic.as_str().hash(&mut hasher);
        let i = (hasher.finish() % self.shards.len() as u64) as usize;
        &self.shards[i]
    }
}

impl Broker for RedisBroker {
    fn subscribe<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.shard(topic).subscribe(topic))
    }

    fn release(&self, topic: &Topic) {
        self.shard(topic).release(topic);
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
        Box::pin(async move { self.query(&redis_commands::last_value_cmd(&self.prefix, topic)).await })
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
                self.query(&redis_commands::order_request_cmd(&self.prefix, request_json)).await?;
            Ok(())
        })
    }

    fn is_ready(&self) -> bool {
        self.shards.iter().all(Shard::is_ready)
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
}
