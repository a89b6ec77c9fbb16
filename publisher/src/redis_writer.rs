//! The publisher's [`Backplane`] on Redis: the connection pool, the two
//! Lua scripts, pipelines of their calls, and the order replies.
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
//! * Order updates: for each update, the script INCRs, XADDs to the
//!   history with id `0-<seq>`, PUBLISHes and records the update's id in
//!   a dedupe marker, so a retry after an ambiguous failure returns the
//!   original `seq` instead of writing the update twice. A batch of
//!   updates takes a few script calls of up to 32 updates each (on a
//!   cluster, of one slot each), not one per update.
//!
//! Behind Redis Sentinel (replication is asynchronous, a failover can
//! lose the master's last writes) two more rules keep a `seq` from ever
//! naming two different updates (docs/design.md, "Redis Sentinel"):
//! order updates are published only once a replica has them
//! (`redis_backplane::scripts`), and every call passes the topic's floor,
//! the highest `seq` this writer may have handed out there ([`Floors`]).
//!
//! Every key a script touches carries the topic's channel as its
//! `{hash tag}`, so each call, its publish included, stays within one
//! Redis Cluster slot. On a cluster the scripts publish with SPUBLISH and
//! pipelines are split by slot (`redis_link`); on one server everything
//! goes in one pipeline, as before.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use redis::{Cmd, Pipeline, Value};
use redis_backplane::Pool;
use redis_backplane::scripts::{self, PublishCommand, Scripts, Update, UpdateError};
use wire::keys;

use crate::backplane::{Backplane, BoxFuture, OrderUpdate, TopicBatch, WriteError, Written};
use crate::config::Config;
pub use crate::redis_link::pool;
use crate::redis_link::{self, Conn, Link};

pub use redis_backplane::scripts::DEDUPE_TTL_SECS;
pub use wire::keys::dedupe as dedupe_key;

pub struct RedisWriter {
    link: Link,
    /// The publish scripts' calls, with `PUBLISH` on one server and
    /// `SPUBLISH` on a cluster.
    scripts: Scripts,
    /// A connection kept between [`Backplane::publish`] calls: taking one
    /// from the pool costs a PING (deadpool's recycle check), which would
    /// double the feed's round trips.
    kept: Mutex<Option<Conn>>,
    /// The same for [`RedisWriter::write_updates`] (the update writer's
    /// batches): without it, every batch cost a PING round trip too. It
    /// skips the pool's `ROLE` check behind Sentinel as `kept` does: a
    /// demoted master refuses the writes (or closes the connection), and
    /// a failed call drops the connection.
    kept_for_updates: Mutex<Option<Conn>>,
    /// Behind Sentinel: the floor of each topic this writer wrote.
    floors: Option<Floors>,
}

/// Per topic, the highest `seq` this writer may have handed out: every
/// `seq` a call returned, and for a quote call that failed (it may have
/// run and published before the master died) as many more as it asked
/// for. The scripts never hand out a `seq` at or below it, so a counter
/// a failover set back cannot give a delivered `seq` to other quotes.
/// Order updates count only what was published (after a replica had it):
/// an unpublished `seq` lost in a failover is handed to the same update
/// again when it is retried.
#[derive(Default)]
pub struct Floors(Mutex<HashMap<String, u64>>);

impl Floors {
    fn get(&self, topic: &str) -> u64 {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).get(topic).copied().unwrap_or(0)
    }

    fn raise(&self, topic: &str, seq: u64) {
        let mut floors = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let floor = floors.entry(topic.to_owned()).or_default();
        *floor = (*floor).max(seq);
    }

    fn add(&self, topic: &str, n: u64) {
        let mut floors = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let floor = floors.entry(topic.to_owned()).or_default();
        *floor = floor.saturating_add(n);
    }
}

impl RedisWriter {
    pub fn new(config: &Config) -> Result<Self, WriteError> {
        let mut writer =
            Self::with_link(Link::open(config)?, config.channel_prefix.clone(), config.history_maxlen);
        if let Some(sentinel) = config.sentinel() {
            // WAIT ends well within the command timeout.
            let wait = (config.redis_timeout() / 2).as_millis() as u64;
            writer.scripts = writer.scripts.replicated(sentinel.wait_replicas, wait);
            writer.floors = Some(Floors::default());
        }
        Ok(writer)
    }

    /// A writer on one server through `pool`.
    pub fn with_pool(pool: Pool, prefix: String, history_maxlen: u64) -> Self {
        Self::with_link(Link::Single(pool), prefix, history_maxlen)
    }

    fn with_link(link: Link, prefix: String, history_maxlen: u64) -> Self {
        let publish = PublishCommand::for_cluster(matches!(link, Link::Cluster(_)));
        RedisWriter {
            link,
            scripts: Scripts::new(&prefix, publish, history_maxlen),
            kept: Mutex::new(None),
            kept_for_updates: Mutex::new(None),
            floors: None,
        }
    }

    pub fn prefix(&self) -> &str {
        self.scripts.prefix()
    }

    /// A connection (commands time out after `redis_timeout`).
    pub async fn conn(&self) -> Result<Conn, WriteError> {
        self.link.conn().await
    }

    /// A connection no other task uses, for blocking reads.
    pub async fn dedicated_conn(&self) -> Result<Conn, WriteError> {
        self.link.dedicated().await
    }

    /// Publishes every batch in one pipeline on `conn`; returns the last
    /// `seq` of each.
    pub async fn publish_batches_on(
        &self,
        conn: &mut Conn,
        batches: &[TopicBatch],
    ) -> Result<Vec<u64>, WriteError> {
        let mut calls = Vec::new();
        let written: Vec<&TopicBatch> = batches.iter().filter(|b| !b.tails.is_empty()).collect();
        for b in &written {
            let floor = self.floors.as_ref().map_or(0, |f| f.get(&b.topic));
            let cmd = self.scripts.batch(&b.topic, &b.head, b.store_last, floor, &b.tails);
            calls.push((self.scripts.slot(&b.topic), cmd));
        }
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let seqs: Result<Vec<u64>, WriteError> = match self.run(conn, calls).await {
            Ok(values) => values
                .iter()
                .map(|v| scripts::as_u64(v).ok_or_else(|| WriteError::Reply(format!("{v:?}"))))
                .collect(),
            Err(e) => Err(e),
        };
        if let Some(floors) = &self.floors {
            match &seqs {
                Ok(seqs) => written.iter().zip(seqs).for_each(|(b, seq)| floors.raise(&b.topic, *seq)),
                Err(_) => written.iter().for_each(|b| floors.add(&b.topic, b.tails.len() as u64)),
            }
        }
        seqs
    }

    /// Takes the connection kept in `slot`, or one from the link.
    async fn take_kept(&self, slot: &Mutex<Option<Conn>>) -> Result<Conn, WriteError> {
        let kept = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        match kept {
            Some(conn) => Ok(conn),
            None => self.conn().await,
        }
    }

    /// Keeps `conn` in `slot` for the next call if `result` is a success:
    /// a connection that failed may be broken, so the next call takes a
    /// fresh one from the pool.
    fn keep<T>(&self, slot: &Mutex<Option<Conn>>, conn: Conn, result: &Result<T, WriteError>) {
        if result.is_ok() {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn);
        }
    }

    /// Writes order updates in one pipeline, in order. Safe to repeat with
    /// the same updates after any failure: each is written once.
    pub async fn write_updates(&self, updates: &[OrderUpdate]) -> Result<Vec<Written>, WriteError> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.take_kept(&self.kept_for_updates).await?;
        let result = self.write_updates_with(&mut conn, updates).await;
        self.keep(&self.kept_for_updates, conn, &result);
        result
    }

    async fn write_updates_with(
        &self,
        conn: &mut Conn,
        updates: &[OrderUpdate],
    ) -> Result<Vec<Written>, WriteError> {
        if let Conn::Single(c) = conn {
            return self.write_updates_on(c, updates).await;
        }
        // A cluster: one call per slot's topics, each call on its node.
        let calls = self.scripts.update_calls(&self.update_args(updates), true);
        let cmds = calls.iter().map(|c| (c.slot, c.cmd.clone())).collect();
        let values = self.run(conn, cmds).await?;
        let written = scripts::spread_replies(&calls, &values, updates.len()).map_err(update_error)?;
        Ok(written.into_iter().map(|(seq, duplicate)| Written { seq, duplicate }).collect())
    }

    /// The script arguments of `updates`, with each topic's floor.
    fn update_args<'u>(&self, updates: &'u [OrderUpdate]) -> Vec<Update<'u>> {
        let floor = |topic: &str| self.floors.as_ref().map_or(0, |f| f.get(topic));
        updates
            .iter()
            .map(|u| Update {
                topic: u.topic.as_str(),
                id: &u.id,
                head: &u.head,
                tail: &u.tail,
                floor: floor(u.topic.as_str()),
            })
            .collect()
    }

    /// [`RedisWriter::write_updates`] on one server (fixed or Sentinel's).
    async fn write_updates_on(
        &self,
        conn: &mut redis_backplane::pool::Connection,
        updates: &[OrderUpdate],
    ) -> Result<Vec<Written>, WriteError> {
        let calls = self.update_args(updates);
        let written = self.scripts.write_updates(&mut **conn, &calls).await.map_err(update_error)?;
        if let Some(floors) = &self.floors {
            updates.iter().zip(&written).for_each(|(u, (seq, _))| floors.raise(u.topic.as_str(), *seq));
        }
        Ok(written.into_iter().map(|(seq, duplicate)| Written { seq, duplicate }).collect())
    }

    /// Sends order replies (JSON on each asking node's reply channel),
    /// then acknowledges the requests `ids` on `stream`: in one pipeline on
    /// one server; on a cluster the replies first (one pipeline per slot),
    /// then the acknowledgement, so no request is acknowledged unless its
    /// reply went out.
    pub async fn reply_and_ack(
        &self,
        conn: &mut Conn,
        replies: &[(String, String)],
        stream: &str,
        group: &str,
        ids: &[&str],
    ) -> Result<(), WriteError> {
        let mut ack = redis::cmd("XACK");
        ack.arg(stream).arg(group).arg(ids);
        match conn {
            Conn::Single(c) => {
                let mut pipe = redis::pipe();
                for (channel, json) in replies {
                    pipe.cmd(self.scripts.command().as_str()).arg(channel).arg(json).ignore();
                }
                pipe.add_command(ack).ignore();
                pipe.query_async::<()>(&mut **c).await?;
            }
            Conn::Cluster(c) => {
                let sends = replies
                    .iter()
                    .map(|(channel, json)| {
                        let mut cmd = redis::cmd(self.scripts.command().as_str());
                        cmd.arg(channel).arg(json);
                        (keys::cluster_slot(channel), cmd)
                    })
                    .collect();
                redis_link::run_by_slot(c, sends).await?;
                ack.query_async::<()>(c).await?;
            }
        }
        Ok(())
    }

    /// Runs EVALSHA calls (each with its slot), loading the scripts once
    /// if Redis lost them (a restart empties its script cache).
    async fn run(&self, conn: &mut Conn, calls: Vec<(u16, Cmd)>) -> Result<Vec<Value>, WriteError> {
        match self.run_once(conn, &calls).await {
            Err(WriteError::Redis(e)) if scripts::is_noscript(&e) => {
                // SCRIPT LOAD goes to every node of a cluster.
                self.scripts.load(conn).await?;
                self.run_once(conn, &calls).await
            }
            other => other,
        }
    }

    async fn run_once(&self, conn: &mut Conn, calls: &[(u16, Cmd)]) -> Result<Vec<Value>, WriteError> {
        match conn {
            Conn::Single(c) => {
                let mut pipe = Pipeline::with_capacity(calls.len());
                for (_, cmd) in calls {
                    pipe.add_command(cmd.clone());
                }
                Ok(pipe.query_async::<Vec<Value>>(&mut **c).await?)
            }
            Conn::Cluster(c) => redis_link::run_by_slot(c, calls.to_vec()).await,
        }
    }
}

fn update_error(e: UpdateError) -> WriteError {
    match e {
        UpdateError::Redis(e) => WriteError::Redis(e),
        other => WriteError::Reply(other.to_string()),
    }
}

impl Backplane for RedisWriter {
    fn publish<'a>(&'a self, batches: &'a [TopicBatch]) -> BoxFuture<'a, Result<Vec<u64>, WriteError>> {
        Box::pin(async move {
            let mut conn = self.take_kept(&self.kept).await?;
            let result = self.publish_batches_on(&mut conn, batches).await;
            self.keep(&self.kept, conn, &result);
            result
        })
    }

    fn write_updates<'a>(
        &'a self,
        updates: &'a [OrderUpdate],
    ) -> BoxFuture<'a, Result<Vec<Written>, WriteError>> {
        Box::pin(self.write_updates(updates))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), WriteError>> {
        Box::pin(self.link.ping())
    }

    fn kind(&self) -> &'static str {
        match self.link {
            Link::Single(_) => "redis",
            Link::Cluster(_) => "redis-cluster",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_key_carries_the_channel_hash_tag() {
        assert_eq!(dedupe_key("rt:", "orders.a", "u1"), "rt:dedupe:{rt:orders.a}:u1");
        assert_eq!(
            keys::cluster_slot(&dedupe_key("rt:", "orders.a", "u1")),
            keys::cluster_slot("rt:orders.a")
        );
    }
}
