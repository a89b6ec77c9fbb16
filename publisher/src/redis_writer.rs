//! Every write the publisher makes to Redis: the connection pool, the two
//! Lua scripts, and pipelines of their calls.
//!
//! `seq` is assigned inside Redis, atomically with the PUBLISH, by `INCR`
//! on the topic's shared counter (`keys::seq_counter`, the one the
//! gateway's `POST /publish` uses too). So `seq` never goes backwards on a
//! topic, across publisher restarts and whoever else publishes on it:
//! reserving a block of numbers and publishing them later would let
//! another publisher's higher number overtake ours on the wire.
//!
//! * Topic batches (quotes, other topics): one script call per topic per
//!   batch takes `n` numbers with `INCRBY`, publishes the `n` envelopes
//!   and, for quotes, stores the last one as the topic's snapshot.
//! * Order updates: one script call per update INCRs, XADDs to the
//!   history with id `0-<seq>`, PUBLISHes and records the update's id in
//!   a dedupe marker, so a retry after an ambiguous failure returns the
//!   original `seq` instead of writing the update twice.
//!
//! Every key a script touches carries the topic as its `{hash tag}`, so
//! each call stays within one Redis Cluster slot.

use std::time::Duration;

use deadpool_redis::{Pool, Runtime};
use redis::aio::ConnectionLike;
use redis::{AsyncConnectionConfig, Pipeline, Script, Value};
use wire::{Topic, keys};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("redis pool: {0}")]
    Pool(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
}

/// Messages of one topic published in one script call, in order.
#[derive(Debug)]
pub struct TopicBatch {
    pub topic: String,
    /// The envelope up to `"seq":`, the same for every message of a topic.
    pub head: String,
    /// Each message's envelope after its `seq`.
    pub tails: Vec<String>,
    /// Store the last envelope as the topic's snapshot (quotes).
    pub store_last: bool,
}

impl TopicBatch {
    pub fn new(topic: &str, store_last: bool) -> Self {
        TopicBatch { topic: topic.to_owned(), head: String::new(), tails: Vec::new(), store_last }
    }

    /// Adds a message; `data_json` must be a JSON object.
    pub fn push(&mut self, ts: u64, data_json: &str, traceparent: Option<&str>) {
        let (head, tail) = wire::envelope::encode_parts(&self.topic, ts, data_json, traceparent);
        if self.head.is_empty() {
            self.head = head;
        }
        self.tails.push(tail);
    }
}

/// One order update, ready to be written; kept as is across retries so a
/// retry sends the same bytes and the same dedupe id.
#[derive(Debug, Clone)]
pub struct OrderUpdate {
    pub topic: Topic,
    /// Unique per update; a retry with the same id is not written twice.
    pub id: String,
    pub head: String,
    pub tail: String,
}

impl OrderUpdate {
    pub fn new(topic: Topic, id: String, data_json: &str, traceparent: Option<&str>) -> Self {
        let (head, tail) =
            wire::envelope::encode_parts(topic.as_str(), wire::now_ms(), data_json, traceparent);
        OrderUpdate { topic, id, head, tail }
    }
}

/// What Redis did with one order update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub seq: u64,
    /// It had already been written by an earlier attempt.
    pub duplicate: bool,
}

pub use wire::keys::dedupe as dedupe_key;
pub use wire::scripts::DEDUPE_TTL_SECS;
use wire::scripts::{BATCH_SCRIPT, UPDATE_SCRIPT};

pub struct RedisWriter {
    pool: Pool,
    prefix: String,
    history_maxlen: u64,
    batch_script: Script,
    update_script: Script,
}

impl RedisWriter {
    pub fn new(config: &Config) -> Result<Self, WriteError> {
        let pool = pool(&config.redis_url, config.redis_timeout(), 16)?;
        Ok(Self::with_pool(pool, config.channel_prefix.clone(), config.history_maxlen))
    }

    pub fn with_pool(pool: Pool, prefix: String, history_maxlen: u64) -> Self {
        RedisWriter {
            pool,
            prefix,
            history_maxlen,
            batch_script: Script::new(BATCH_SCRIPT),
            update_script: Script::new(UPDATE_SCRIPT),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A pooled connection (commands time out after `redis_timeout`).
    pub async fn conn(&self) -> Result<deadpool_redis::Connection, WriteError> {
        self.pool.get().await.map_err(|e| WriteError::Pool(e.to_string()))
    }

    /// Publishes every batch in one pipeline; returns the last `seq` of each.
    pub async fn publish_batches(&self, batches: &[TopicBatch]) -> Result<Vec<u64>, WriteError> {
        let mut conn = self.conn().await?;
        self.publish_batches_on(&mut conn, batches).await
    }

    /// As [`RedisWriter::publish_batches`], on a connection the caller holds.
    pub async fn publish_batches_on<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        batches: &[TopicBatch],
    ) -> Result<Vec<u64>, WriteError> {
        let mut pipe = redis::pipe();
        let mut calls = 0;
        for b in batches.iter().filter(|b| !b.tails.is_empty()) {
            pipe.cmd("EVALSHA")
                .arg(self.batch_script.get_hash())
                .arg(2)
                .arg(keys::seq_counter(&self.prefix, &b.topic))
                .arg(keys::last_value(&self.prefix, &b.topic))
                .arg(keys::channel(&self.prefix, &b.topic))
                .arg(&b.head)
                .arg(if b.store_last { "1" } else { "0" })
                .arg(&b.tails);
            calls += 1;
        }
        if calls == 0 {
            return Ok(Vec::new());
        }
        let values = self.run(conn, &pipe).await?;
        values.iter().map(|v| as_u64(v).ok_or_else(|| WriteError::Reply(format!("{v:?}")))).collect()
    }

    /// Publishes one message on a topic that keeps no history; returns its `seq`.
    pub async fn publish_one(
        &self,
        topic: &str,
        data_json: &str,
        traceparent: Option<&str>,
        store_last: bool,
    ) -> Result<u64, WriteError> {
        let mut batch = TopicBatch::new(topic, store_last);
        batch.push(wire::now_ms(), data_json, traceparent);
        let seqs = self.publish_batches(std::slice::from_ref(&batch)).await?;
        seqs.first().copied().ok_or_else(|| WriteError::Reply("no reply".into()))
    }

    /// Writes order updates in one pipeline, in order. Safe to repeat with
    /// the same updates after any failure: each is written once.
    pub async fn write_updates(&self, updates: &[OrderUpdate]) -> Result<Vec<Written>, WriteError> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        for u in updates {
            let topic = u.topic.as_str();
            pipe.cmd("EVALSHA")
                .arg(self.update_script.get_hash())
                .arg(3)
                .arg(keys::seq_counter(&self.prefix, topic))
                .arg(keys::history(&self.prefix, topic))
                .arg(dedupe_key(&self.prefix, topic, &u.id))
                .arg(keys::channel(&self.prefix, topic))
                .arg(&u.head)
                .arg(&u.tail)
                .arg(self.history_maxlen)
                .arg(DEDUPE_TTL_SECS);
        }
        let values = self.run(&mut conn, &pipe).await?;
        values
            .iter()
            .map(|v| match v {
                Value::Array(items) if items.len() == 2 => match (as_u64(&items[0]), as_u64(&items[1])) {
                    (Some(seq), Some(dup)) => Ok(Written { seq, duplicate: dup == 1 }),
                    _ => Err(WriteError::Reply(format!("{v:?}"))),
                },
                other => Err(WriteError::Reply(format!("{other:?}"))),
            })
            .collect()
    }

    /// Runs a pipeline of EVALSHA calls, loading the scripts once if Redis
    /// lost them (a restart empties its script cache).
    async fn run<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        pipe: &Pipeline,
    ) -> Result<Vec<Value>, WriteError> {
        match pipe.query_async::<Vec<Value>>(conn).await {
            Err(e) if e.code() == Some("NOSCRIPT") => {
                self.batch_script.load_async(conn).await?;
                self.update_script.load_async(conn).await?;
                Ok(pipe.query_async(conn).await?)
            }
            other => Ok(other?),
        }
    }

    /// One PING round trip: is Redis there?
    pub async fn ping(&self) -> Result<(), WriteError> {
        let mut conn = self.conn().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok(())
    }
}

/// A connection pool whose commands fail after `timeout` instead of
/// hanging on a Redis that went away.
pub fn pool(url: &str, timeout: Duration, size: usize) -> Result<Pool, WriteError> {
    let conn_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let manager = deadpool_redis::Manager::new_with_config(url, conn_config)
        .map_err(|e| WriteError::Pool(format!("invalid redis_url: {e}")))?;
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()
        .map_err(|e| WriteError::Pool(e.to_string()))
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_shares_one_head() {
        let mut b = TopicBatch::new("quotes.A", true);
        b.push(5, r#"{"x":1}"#, None);
        b.push(6, r#"{"x":2}"#, None);
        assert_eq!(b.head, r#"{"topic":"quotes.A","seq":"#);
        let env = format!("{}{}{}", b.head, 9, b.tails[1]);
        let parsed = wire::Envelope::parse(env.as_bytes(), Some("quotes.A")).unwrap();
        assert_eq!((parsed.seq, parsed.ts, parsed.data.get()), (9, 6, r#"{"x":2}"#));
    }

    #[test]
    fn dedupe_key_carries_the_topic_hash_tag() {
        assert_eq!(dedupe_key("rt:", "orders.a", "u1"), "rt:dedupe:{orders.a}:u1");
    }
}
