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
use wire::{Topic, TopicFamily, keys};

use super::redis_pubsub::{Shard, ShardSettings};
use super::{BoxFuture, Broker, BrokerError};
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::requests::Requests;

/// Order requests kept in the stream at most (trimmed approximately).
const ORDER_STREAM_MAXLEN: usize = 100_000;

pub struct RedisBroker {
    /// Pub/sub connections; a topic always goes to the same one, by hash.
    shards: Vec<Shard>,
    pool: deadpool_redis::Pool,
    prefix: String,
    timeout: Duration,
    /// The publisher's own scripts (`wire::scripts`), so `seq`, history and
    /// snapshots agree whoever publishes on a topic.
    batch_script: redis::Script,
    update_script: redis::Script,
    history_maxlen: usize,
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
            batch_script: redis::Script::new(wire::scripts::BATCH_SCRIPT),
            update_script: redis::Script::new(wire::scripts::UPDATE_SCRIPT),
            history_maxlen: config.history_maxlen,
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
            let (head, tail) =
                wire::envelope::encode_parts(topic.as_str(), wire::now_ms(), data_json, traceparent);
            let (prefix, name) = (self.prefix.as_str(), topic.as_str());
            let work = async {
                let mut conn = self.pool.get().await.map_err(|e| BrokerError::Unavailable(e.to_string()))?;
                let refused = |e: redis::RedisError| BrokerError::Refused(e.to_string());
                match topic.family() {
                    // Order updates keep history (for `since`) and are written once.
                    TopicFamily::Orders => {
                        let update_id =
                            id.map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned);
                        let (seq, _duplicate): (u64, u64) = self
                            .update_script
                            .key(keys::seq_counter(prefix, name))
                            .key(keys::history(prefix, name))
                            .key(keys::dedupe(prefix, name, &update_id))
                            .arg(keys::channel(prefix, name))
                            .arg(head)
                            .arg(tail)
                            .arg(self.history_maxlen)
                            .arg(wire::scripts::DEDUPE_TTL_SECS)
                            .invoke_async(&mut conn)
                            .await
                            .map_err(refused)?;
                        Ok(seq)
                    }
                    // Quotes also become the topic's snapshot.
                    family => {
                        let store_last = if family == TopicFamily::Quotes { "1" } else { "0" };
                        self.batch_script
                            .key(keys::seq_counter(prefix, name))
                            .key(keys::last_value(prefix, name))
                            .arg(keys::channel(prefix, name))
                            .arg(head)
                            .arg(store_last)
                            .arg(tail)
                            .invoke_async::<u64>(&mut conn)
                            .await
                            .map_err(refused)
                    }
                }
            };
            timeout(self.timeout, work).await.map_err(|_| BrokerError::Timeout)?
        })
    }

    fn last_value<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<Option<Vec<u8>>, BrokerError>> {
        Box::pin(async move {
            let key = keys::last_value(&self.prefix, topic.as_str());
            self.query(redis::cmd("GET").arg(key)).await
        })
    }

    fn history_after<'a>(
        &'a self,
        topic: &'a Topic,
        since: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Vec<u8>>, BrokerError>> {
        Box::pin(async move {
            let key = keys::history(&self.prefix, topic.as_str());
            let start = format!("({}", keys::history_id(since));
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(key).arg(start).arg("+").arg("COUNT").arg(limit);
            let reply: redis::streams::StreamRangeReply = self.query(&cmd).await?;
            Ok(reply
                .ids
                .into_iter()
                .filter_map(|mut entry| match entry.map.remove(keys::HISTORY_FIELD) {
                    Some(redis::Value::BulkString(bytes)) => Some(bytes),
                    _ => None,
                })
                .collect())
        })
    }

    fn submit_order<'a>(&'a self, request_json: String) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(keys::order_requests(&self.prefix))
                .arg("MAXLEN")
                .arg("~")
                .arg(ORDER_STREAM_MAXLEN)
                .arg("*")
                .arg(wire::orders::REQUEST_FIELD)
                .arg(request_json);
            let _id: String = self.query(&cmd).await?;
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
