//! The one [`Broker`] both Redis backplanes are: subscriptions through
//! the shared manager ([`PubSub`]), commands (the publish scripts,
//! snapshot and history reads, order requests, `redis_commands`) on a
//! connection the backplane's [`Commands`] hands out for the command's
//! key. What differs between one Redis and a Redis Cluster is only that:
//! which connection a command takes (`redis.rs`: a pooled one or the
//! multiplexed one; `redis_cluster.rs`: the cluster connection, refused
//! at once for a shard that is down) and how links are made.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use tokio::time::timeout;
use wire::{Topic, keys};

use super::pubsub::{ProbePublish, PubSub};
use super::redis_commands::{self, ScriptPublisher};
use super::{Answer, Broker, BrokerError, Publish, Subscribed};
use wire::scripts::PublishCommand;

/// How one Redis backplane reaches its servers for commands. `key` is
/// the command's key (a cluster routes by its slot).
pub(crate) trait Commands: Send + Sync + 'static {
    /// For scripts and history reads: a long reply must never delay an order.
    type Bulk: ConnectionLike + Send;
    /// For order requests and snapshot reads: short, many at once.
    type Quick: ConnectionLike + Send;

    /// `redis` or `redis-cluster`, for logs and `/readyz`.
    const KIND: &'static str;

    fn bulk<'a>(&'a self, key: &'a str) -> Answer<'a, Self::Bulk>;

    fn quick<'a>(&'a self, key: &'a str) -> Answer<'a, Self::Quick>;
}

/// A Redis backplane: the subscription manager and `C`'s connections.
pub struct Redis<C> {
    pub(crate) pubsub: PubSub,
    /// Shared with the delivery probe, which publishes through it.
    pub(crate) commands: Arc<C>,
    pub(crate) prefix: String,
    /// Bounds every command, connection checkout included.
    pub(crate) timeout: Duration,
    /// Publishes through the shared scripts (`PUBLISH` or `SPUBLISH`).
    pub(crate) scripts: ScriptPublisher,
}

impl<C: Commands> Redis<C> {
    /// Runs one command, bounded by the timeout.
    async fn query<K: ConnectionLike + Send, T: redis::FromRedisValue>(
        &self,
        conn: impl Future<Output = Result<K, BrokerError>>,
        cmd: &redis::Cmd,
    ) -> Result<T, BrokerError> {
        run(conn, self.timeout, cmd).await
    }
}

/// Runs one command on the connection `conn` resolves to, bounded by
/// `limit` (the checkout included). A command that timed out may still
/// have run.
async fn run<K: ConnectionLike + Send, T: redis::FromRedisValue>(
    conn: impl Future<Output = Result<K, BrokerError>>,
    limit: Duration,
    cmd: &redis::Cmd,
) -> Result<T, BrokerError> {
    let work = async {
        let mut conn = conn.await?;
        cmd.query_async::<T>(&mut conn).await.map_err(failed)
    };
    timeout(limit, work).await.map_err(|_| BrokerError::Timeout)?
}

/// Delivery probes are published as messages are: with `command` on the
/// bulk connection for their channel (routed by its slot on a cluster).
pub(crate) fn probe_publish<C: Commands>(
    commands: Arc<C>,
    command: PublishCommand,
    limit: Duration,
) -> ProbePublish {
    Arc::new(move |channel, payload| {
        let commands = Arc::clone(&commands);
        Box::pin(async move {
            let cmd = redis_commands::probe_cmd(command, &channel, &payload);
            run::<_, i64>(commands.bulk(&channel), limit, &cmd).await.map(|_| ())
        })
    })
}

/// What a failed command means to its caller.
fn failed(e: redis::RedisError) -> BrokerError {
    if e.is_timeout() {
        BrokerError::Timeout
    } else if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || redis_backplane::sentinel::is_readonly(&e)
    {
        // Not sent, the connection broke, or a demoted master refused: it
        // is repaired by itself (the next call reconnects, through
        // Sentinel to the new master).
        BrokerError::Unavailable(e.to_string())
    } else {
        BrokerError::Refused(e.to_string())
    }
}

impl<C: Commands> Broker for Redis<C> {
    fn subscribe<'a>(&'a self, topic: &'a Topic) -> Answer<'a, Subscribed> {
        Box::pin(self.pubsub.subscribe(topic))
    }

    fn release(&self, topic: &Topic) {
        self.pubsub.release(topic);
    }

    fn publish<'a>(&'a self, message: Publish<'a>) -> Answer<'a, u64> {
        Box::pin(async move {
            let Publish { topic, data_json, traceparent, id } = message;
            let work = async {
                let channel = keys::channel(&self.prefix, topic.as_str());
                let mut conn = self.commands.bulk(&channel).await?;
                self.scripts.publish(&mut conn, topic, data_json, traceparent, id).await
            };
            timeout(self.timeout, work).await.map_err(|_| BrokerError::Timeout)?
        })
    }

    fn last_value<'a>(&'a self, topic: &'a Topic) -> Answer<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let channel = keys::channel(&self.prefix, topic.as_str());
            self.query(self.commands.quick(&channel), &redis_commands::last_value_cmd(&self.prefix, topic))
                .await
        })
    }

    fn history_after<'a>(&'a self, topic: &'a Topic, since: u64, limit: usize) -> Answer<'a, Vec<Vec<u8>>> {
        Box::pin(async move {
            let channel = keys::channel(&self.prefix, topic.as_str());
            let cmd = redis_commands::history_cmd(&self.prefix, topic, since, limit);
            Ok(redis_commands::history_envelopes(self.query(self.commands.bulk(&channel), &cmd).await?))
        })
    }

    fn submit_order<'a>(&'a self, request_json: String) -> Answer<'a, ()> {
        Box::pin(async move {
            let key = keys::order_requests(&self.prefix);
            let cmd = redis_commands::order_request_cmd(&self.prefix, request_json);
            let _id: String = self.query(self.commands.quick(&key), &cmd).await?;
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
        C::KIND
    }
}
