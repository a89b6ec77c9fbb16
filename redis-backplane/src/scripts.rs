//! The calls of the two publish scripts (their Lua text and what they do
//! are in `wire::scripts`): the only place that knows which key is
//! `KEYS[i]` and which value is `ARGV[i]`, so the gateway's
//! `POST /publish` and the publisher's feed and order writer cannot drift
//! apart in how they call them.
//!
//! A call is an `EVALSHA` command, so the publisher can pipeline many;
//! [`Scripts::query`] runs one call and loads the scripts if Redis lost
//! them (a restart empties its script cache).
//!
//! Order updates go in calls of many ([`Scripts::update_calls`]): each
//! topic's updates of a batch in one call, in order, and a call holds many
//! topics (on a cluster, only topics of one slot). What a call costs Redis
//! beyond its writes is then paid per call of up to [`UPDATES_PER_CALL`]
//! updates rather than per update.
//!
//! Behind Redis Sentinel, replication is asynchronous: a master killed
//! before its replicas had a write takes it along, and the promoted
//! replica's counter is behind `seq`s already delivered. So there
//! ([`Scripts::replicated`]) order updates are written without their
//! PUBLISH, `WAIT` for a replica, and only then published
//! ([`Scripts::write_updates`]): a delivered order update is on a
//! replica, and a retry on the new master finds its dedupe marker and
//! its `seq`. Writers also pass a floor (the highest `seq` they may have
//! handed out on the topic), below which no counter goes again.

use std::collections::HashMap;

use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue, RedisError, RedisResult, Script, ToRedisArgs, Value};
use wire::keys;
pub use wire::scripts::{DEDUPE_TTL_SECS, PublishCommand};

/// Updates one call of `UPDATES_SCRIPT` takes before it stops taking new
/// topics (a topic's updates stay in one call, so a call can exceed it).
/// It bounds how long one call holds Redis, which runs nothing else
/// meanwhile: 6–30 µs per update, so well under a millisecond at 32. One
/// call for a whole batch of 256 held Redis 7–10 ms on the loaded 2-core
/// bench machine, and every gateway's XADD and the order service's reads
/// waited behind it (Redis round trip median 5.8 ms instead of 2 ms,
/// bench/orders.md). 32 still spreads the cost of a call over 32 updates.
pub const UPDATES_PER_CALL: usize = 32;

/// The publish scripts with what every call of them needs.
pub struct Scripts {
    prefix: String,
    /// `PUBLISH` on a single Redis, `SPUBLISH` on a cluster.
    command: PublishCommand,
    /// `MAXLEN ~` of a topic's history stream.
    history_maxlen: u64,
    batch: Script,
    update: Script,
    updates: Script,
    /// Replicas that must have an order update before it is published
    /// (0: published by the script at once), and how long to wait for them.
    replicas: u32,
    wait_ms: u64,
}

/// One order update for [`Scripts::write_updates`].
pub struct Update<'a> {
    pub topic: &'a str,
    /// Unique per update: a retry with the same id is not written twice.
    pub id: &'a str,
    pub head: &'a str,
    pub tail: &'a str,
    /// No `seq` at or below it is handed out (0: none).
    pub floor: u64,
}

/// One call of `UPDATES_SCRIPT` ([`Scripts::update_calls`]).
pub struct UpdateCall {
    /// The cluster slot of its first topic: of every key of the call when
    /// grouped by slot.
    pub slot: u16,
    /// The indexes of its updates in the batch, in order.
    pub updates: Vec<usize>,
    pub cmd: Cmd,
}

/// Why [`Scripts::write_updates`] failed; every failure is safe to retry.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error("unexpected reply to an update: {0}")]
    Reply(String),
    #[error("{acked} of {wanted} replicas acknowledged the update in time")]
    Unreplicated { acked: u64, wanted: u32 },
}

impl Scripts {
    pub fn new(prefix: &str, command: PublishCommand, history_maxlen: u64) -> Self {
        Scripts {
            prefix: prefix.to_owned(),
            command,
            history_maxlen,
            batch: Script::new(wire::scripts::BATCH_SCRIPT),
            update: Script::new(wire::scripts::UPDATE_SCRIPT),
            updates: Script::new(wire::scripts::UPDATES_SCRIPT),
            replicas: 0,
            wait_ms: 0,
        }
    }

    /// Order updates are published only once `replicas` replicas have
    /// them (`WAIT`, up to `wait_ms`); for a master behind Sentinel.
    pub fn replicated(mut self, replicas: u32, wait_ms: u64) -> Self {
        self.replicas = replicas;
        self.wait_ms = wait_ms.max(1);
        self
    }

    /// Whether order updates wait for replicas before they are published.
    pub fn is_replicated(&self) -> bool {
        self.replicas > 0
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn command(&self) -> PublishCommand {
        self.command
    }

    /// A call of `BATCH_SCRIPT`: publishes one envelope per tail on
    /// `topic` (`head` + seq + tail), and stores the last one as the
    /// topic's snapshot if `store_last`; no `seq` at or below `floor`.
    /// Replies the last `seq`.
    pub fn batch(
        &self,
        topic: &str,
        head: &str,
        store_last: bool,
        floor: u64,
        tails: impl ToRedisArgs,
    ) -> Cmd {
        let prefix = self.prefix.as_str();
        let mut cmd = evalsha(&self.batch, 2);
        cmd.arg(keys::seq_counter(prefix, topic))
            .arg(keys::last_value(prefix, topic))
            .arg(self.command.as_str())
            .arg(keys::channel(prefix, topic))
            .arg(head)
            .arg(if store_last { "1" } else { "0" })
            .arg(floor)
            .arg(tails);
        cmd
    }

    /// A call of `UPDATE_SCRIPT`: writes the update `update_id` on `topic`
    /// once (history, then publish unless [`Scripts::replicated`]). Its
    /// reply is read by [`update_reply`].
    pub fn update(&self, topic: &str, update_id: &str, head: &str, tail: &str) -> Cmd {
        self.update_call(&Update { topic, id: update_id, head, tail, floor: 0 })
    }

    fn update_call(&self, u: &Update<'_>) -> Cmd {
        let (topic, update_id, head, tail) = (u.topic, u.id, u.head, u.tail);
        let prefix = self.prefix.as_str();
        let mut cmd = evalsha(&self.update, 3);
        cmd.arg(keys::seq_counter(prefix, topic))
            .arg(keys::history(prefix, topic))
            .arg(keys::dedupe(prefix, topic, update_id))
            .arg(self.command.as_str())
            .arg(keys::channel(prefix, topic))
            .arg(head)
            .arg(tail)
            .arg(self.history_maxlen)
            .arg(DEDUPE_TTL_SECS)
            .arg(u.floor)
            .arg(self.publish_flag());
        cmd
    }

    /// `1`: the script publishes; `0`: [`Scripts::write_updates`] does,
    /// once replicas have the writes.
    fn publish_flag(&self) -> &'static str {
        if self.is_replicated() { "0" } else { "1" }
    }

    /// The calls of `UPDATES_SCRIPT` that write `updates`: every update of
    /// a topic in the same call, in their order, and a call takes new
    /// topics until it holds [`UPDATES_PER_CALL`] updates. `by_slot` (a
    /// cluster): a call holds only topics of one slot, as a script may
    /// touch keys of one slot only. Replies are read by [`spread_replies`].
    pub fn update_calls(&self, updates: &[Update<'_>], by_slot: bool) -> Vec<UpdateCall> {
        let mut calls: Vec<(u16, Vec<usize>)> = Vec::new();
        let mut call_of_topic: HashMap<&str, usize> = HashMap::new();
        // Per slot (one for all without `by_slot`), the call new topics join.
        let mut open: HashMap<Option<u16>, usize> = HashMap::new();
        for (i, u) in updates.iter().enumerate() {
            let call = match call_of_topic.get(u.topic) {
                Some(&call) => call,
                None => {
                    let slot = self.slot(u.topic);
                    let group = by_slot.then_some(slot);
                    let call = match open.get(&group) {
                        Some(&call) if calls[call].1.len() < UPDATES_PER_CALL => call,
                        _ => {
                            calls.push((slot, Vec::new()));
                            open.insert(group, calls.len() - 1);
                            calls.len() - 1
                        }
                    };
                    call_of_topic.insert(u.topic, call);
                    call
                }
            };
            calls[call].1.push(i);
        }
        calls
            .into_iter()
            .map(|(slot, indexes)| {
                let cmd = self.updates_call(indexes.iter().map(|&i| &updates[i]));
                UpdateCall { slot, updates: indexes, cmd }
            })
            .collect()
    }

    /// One call of `UPDATES_SCRIPT` for `updates`, in order.
    fn updates_call<'u, 'a: 'u>(&self, updates: impl Iterator<Item = &'u Update<'a>> + Clone) -> Cmd {
        let prefix = self.prefix.as_str();
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.updates.get_hash()).arg(3 * updates.clone().count());
        for u in updates.clone() {
            cmd.arg(keys::seq_counter(prefix, u.topic))
                .arg(keys::history(prefix, u.topic))
                .arg(keys::dedupe(prefix, u.topic, u.id));
        }
        cmd.arg(self.command.as_str()).arg(self.history_maxlen).arg(DEDUPE_TTL_SECS).arg(self.publish_flag());
        for u in updates {
            cmd.arg(keys::channel(prefix, u.topic)).arg(u.head).arg(u.tail).arg(u.floor);
        }
        cmd
    }

    /// Writes `updates` in order on one server's connection; replies
    /// each one's `seq` and whether it had been written before. One
    /// pipeline of [`Scripts::update_calls`] (one call for a batch of up
    /// to [`UPDATES_PER_CALL`]). When [`Scripts::replicated`]: the calls
    /// and a `WAIT` in that pipeline, then, once enough replicas have
    /// them, one pipeline of their PUBLISHes (an update already written is
    /// published again: its first attempt may have failed before its
    /// PUBLISH; subscribers skip a `seq` twice).
    pub async fn write_updates<C: ConnectionLike>(
        &self,
        conn: &mut C,
        updates: &[Update<'_>],
    ) -> Result<Vec<(u64, bool)>, UpdateError> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let update_calls = self.update_calls(updates, false);
        let mut pipe = redis::pipe();
        for call in &update_calls {
            pipe.add_command(call.cmd.clone());
        }
        if self.is_replicated() {
            pipe.cmd("WAIT").arg(self.replicas).arg(self.wait_ms);
        }
        let values: Vec<Value> = match pipe.query_async(conn).await {
            Err(e) if is_noscript(&e) => {
                self.load(conn).await?;
                pipe.query_async(conn).await?
            }
            other => other?,
        };
        let (calls, wait) = values.split_at(update_calls.len().min(values.len()));
        let written = spread_replies(&update_calls, calls, updates.len())?;
        if let Some(acked) = wait.first() {
            let acked = as_u64(acked).ok_or_else(|| UpdateError::Reply(format!("WAIT: {acked:?}")))?;
            if acked < u64::from(self.replicas) {
                return Err(UpdateError::Unreplicated { acked, wanted: self.replicas });
            }
            let mut publish = redis::pipe();
            for (u, (seq, _)) in updates.iter().zip(&written) {
                let channel = keys::channel(&self.prefix, u.topic);
                publish
                    .cmd(self.command.as_str())
                    .arg(channel)
                    .arg(format!("{}{seq}{}", u.head, u.tail))
                    .ignore();
            }
            publish.query_async::<()>(conn).await?;
        }
        Ok(written)
    }

    /// The cluster slot of `topic`: every key of its calls and its channel
    /// are in it (`wire::keys`).
    pub fn slot(&self, topic: &str) -> u16 {
        keys::cluster_slot(&keys::channel(&self.prefix, topic))
    }

    /// Loads the scripts (through a cluster connection, on every master).
    pub async fn load<C: ConnectionLike>(&self, conn: &mut C) -> RedisResult<()> {
        self.batch.load_async(conn).await?;
        self.update.load_async(conn).await?;
        self.updates.load_async(conn).await?;
        Ok(())
    }

    /// Runs one call, loading the scripts and trying once more if Redis
    /// does not know them.
    pub async fn query<C: ConnectionLike, T: FromRedisValue>(
        &self,
        conn: &mut C,
        call: &Cmd,
    ) -> RedisResult<T> {
        match call.query_async(conn).await {
            Err(e) if is_noscript(&e) => {
                self.load(conn).await?;
                call.query_async(conn).await
            }
            other => other,
        }
    }
}

/// `EVALSHA <sha> <numkeys>`, the start of every call.
fn evalsha(script: &Script, keys: usize) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys);
    cmd
}

/// Redis lost the scripts (a restart, `SCRIPT FLUSH`): load them again.
pub fn is_noscript(e: &RedisError) -> bool {
    e.code() == Some("NOSCRIPT")
}

/// What an update call answered: its `seq`, and whether the update had
/// already been written (a retry). `None` for any other reply.
pub fn update_reply(reply: &Value) -> Option<(u64, bool)> {
    let Value::Array(items) = reply else { return None };
    match items.as_slice() {
        [seq, duplicate] => Some((as_u64(seq)?, as_u64(duplicate)? == 1)),
        _ => None,
    }
}

/// Each update's `seq` and duplicate flag, in the order of the batch, from
/// the replies to its `calls` (one reply per call, in their order; each a
/// list of [`update_reply`] pairs, one per update of the call).
pub fn spread_replies(
    calls: &[UpdateCall],
    replies: &[Value],
    updates: usize,
) -> Result<Vec<(u64, bool)>, UpdateError> {
    let unexpected = |v: &Value| UpdateError::Reply(format!("{v:?}"));
    if replies.len() != calls.len() {
        return Err(UpdateError::Reply(format!("{} replies to {} calls", replies.len(), calls.len())));
    }
    let mut written = vec![None; updates];
    for (call, reply) in calls.iter().zip(replies) {
        let Value::Array(items) = reply else { return Err(unexpected(reply)) };
        if items.len() != call.updates.len() {
            return Err(unexpected(reply));
        }
        for (&i, item) in call.updates.iter().zip(items) {
            let slot = written.get_mut(i).ok_or_else(|| unexpected(reply))?;
            *slot = Some(update_reply(item).ok_or_else(|| unexpected(item))?);
        }
    }
    written
        .into_iter()
        .map(|w| w.ok_or_else(|| UpdateError::Reply("an update no call wrote".into())))
        .collect()
}

/// An integer reply as `u64` (the scripts reply integers).
pub fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<other>".into(),
            })
            .collect()
    }

    #[test]
    fn batch_call_matches_the_script_layout() {
        let scripts = Scripts::new("rt:", PublishCommand::SPublish, 10);
        let cmd = scripts.batch("quotes.AAPL", "H", true, 41, &["t1", "t2"]);
        let a = args(&cmd);
        assert_eq!(a[0], "EVALSHA");
        assert_eq!(a[2], "2");
        assert_eq!(a[3], keys::seq_counter("rt:", "quotes.AAPL"));
        assert_eq!(a[4], keys::last_value("rt:", "quotes.AAPL"));
        assert_eq!(&a[5..], ["SPUBLISH", &keys::channel("rt:", "quotes.AAPL"), "H", "1", "41", "t1", "t2"]);
    }

    #[test]
    fn update_call_matches_the_script_layout() {
        let scripts = Scripts::new("rt:", PublishCommand::Publish, 500);
        let a = args(&scripts.update("orders.a", "u1", "H", "T"));
        assert_eq!(a[2], "3");
        assert_eq!(a[5], keys::dedupe("rt:", "orders.a", "u1"));
        assert_eq!(
            &a[6..],
            ["PUBLISH", &keys::channel("rt:", "orders.a"), "H", "T", "500", "3600", "0", "1"]
        );
        let replicated = Scripts::new("rt:", PublishCommand::Publish, 500).replicated(1, 100);
        let a = args(&replicated.update_call(&Update {
            topic: "orders.a",
            id: "u1",
            head: "H",
            tail: "T",
            floor: 9,
        }));
        assert_eq!(&a[12..], ["9", "0"]);
    }

    fn updates<'a>(topics: &[&'a str], ids: &'a [String]) -> Vec<Update<'a>> {
        topics
            .iter()
            .zip(ids)
            .map(|(topic, id)| Update { topic, id, head: "H", tail: "T", floor: 0 })
            .collect()
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("u{i}")).collect()
    }

    #[test]
    fn a_batch_on_one_server_is_one_call_in_order() {
        let scripts = Scripts::new("rt:", PublishCommand::Publish, 500);
        let ids = ids(5);
        let batch = updates(&["orders.a", "orders.b", "orders.a", "orders.c", "orders.b"], &ids);
        let calls = scripts.update_calls(&batch, false);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].updates, [0, 1, 2, 3, 4]);
        let a = args(&calls[0].cmd);
        assert_eq!(a[0], "EVALSHA");
        assert_eq!(a[2], "15", "three keys per update");
        assert_eq!(
            &a[3..6],
            [
                keys::seq_counter("rt:", "orders.a"),
                keys::history("rt:", "orders.a"),
                keys::dedupe("rt:", "orders.a", "u0")
            ]
        );
        assert_eq!(a[14], keys::dedupe("rt:", "orders.c", "u3"));
        assert_eq!(&a[18..22], ["PUBLISH", "500", "3600", "1"]);
        assert_eq!(&a[22..26], [keys::channel("rt:", "orders.a"), "H".into(), "T".into(), "0".into()]);
        assert_eq!(a.len(), 22 + 4 * 5);
        // Behind Sentinel the call writes without publishing.
        let replicated = Scripts::new("rt:", PublishCommand::Publish, 500).replicated(1, 100);
        assert_eq!(args(&replicated.update_calls(&batch, false)[0].cmd)[21], "0");
    }

    #[test]
    fn a_full_call_takes_no_new_topic_but_keeps_its_own() {
        let scripts = Scripts::new("rt:", PublishCommand::Publish, 500);
        let names: Vec<String> = (0..UPDATES_PER_CALL + 1).map(|i| format!("orders.t{i}")).collect();
        let mut topics: Vec<&str> = names.iter().map(String::as_str).collect();
        // After the first call is full: a topic it holds, then new ones.
        topics.push("orders.t0");
        topics.push("orders.new");
        let ids = ids(topics.len());
        let calls = scripts.update_calls(&updates(&topics, &ids), false);
        assert_eq!(calls.len(), 2);
        let mut first: Vec<usize> = (0..UPDATES_PER_CALL).collect();
        first.push(UPDATES_PER_CALL + 1);
        assert_eq!(calls[0].updates, first, "orders.t0 stays with its first update");
        assert_eq!(calls[1].updates, [UPDATES_PER_CALL, UPDATES_PER_CALL + 2]);
    }

    #[test]
    fn on_a_cluster_a_call_holds_one_slot() {
        let scripts = Scripts::new("rt:", PublishCommand::SPublish, 500);
        let names: Vec<String> = (0..40).map(|i| format!("orders.t{}", i % 20)).collect();
        let topics: Vec<&str> = names.iter().map(String::as_str).collect();
        let ids = ids(topics.len());
        let batch = updates(&topics, &ids);
        let calls = scripts.update_calls(&batch, true);
        let mut seen = vec![false; batch.len()];
        for call in &calls {
            assert!(call.updates.windows(2).all(|w| w[0] < w[1]), "in order");
            for &i in &call.updates {
                assert_eq!(scripts.slot(batch[i].topic), call.slot);
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|s| *s), "every update in a call");
        let slots: std::collections::HashSet<u16> = calls.iter().map(|c| c.slot).collect();
        assert_eq!(slots.len(), calls.len(), "one call per slot");
        assert_eq!(args(&calls[0].cmd)[3 + 3 * calls[0].updates.len()], "SPUBLISH");
    }

    #[test]
    fn spreads_call_replies_back_to_updates() {
        let scripts = Scripts::new("rt:", PublishCommand::SPublish, 500);
        let ids = ids(3);
        let batch = updates(&["orders.a", "orders.b", "orders.a"], &ids);
        let mut calls = scripts.update_calls(&batch, true);
        calls.sort_by_key(|c| c.updates[0]);
        let pair = |seq, dup| Value::Array(vec![Value::Int(seq), Value::Int(dup)]);
        let replies: Vec<Value> = calls
            .iter()
            .map(|c| match c.updates.as_slice() {
                [0, 2] => Value::Array(vec![pair(4, 1), pair(5, 0)]),
                [1] => Value::Array(vec![pair(9, 0)]),
                other => panic!("unexpected grouping {other:?}"),
            })
            .collect();
        assert_eq!(spread_replies(&calls, &replies, 3).unwrap(), [(4, true), (9, false), (5, false)]);
        let short = vec![Value::Array(vec![pair(4, 1)]), Value::Array(vec![pair(9, 0)])];
        assert!(spread_replies(&calls, &short, 3).is_err(), "a call answered fewer updates");
        assert!(spread_replies(&calls, &replies[..1], 3).is_err(), "a call missing");
    }

    #[test]
    fn reads_update_replies() {
        let reply = Value::Array(vec![Value::Int(7), Value::Int(1)]);
        assert_eq!(update_reply(&reply), Some((7, true)));
        assert_eq!(update_reply(&Value::Int(7)), None);
    }
}
