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
//! Behind Redis Sentinel, replication is asynchronous: a master killed
//! before its replicas had a write takes it along, and the promoted
//! replica's counter is behind `seq`s already delivered. So there
//! ([`Scripts::replicated`]) order updates are written without their
//! PUBLISH, `WAIT` for a replica, and only then published
//! ([`Scripts::write_updates`]): a delivered order update is on a
//! replica, and a retry on the new master finds its dedupe marker and
//! its `seq`. Writers also pass a floor (the highest `seq` they may have
//! handed out on the topic), below which no counter goes again.

use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue, RedisError, RedisResult, Script, ToRedisArgs, Value};
use wire::keys;
pub use wire::scripts::{DEDUPE_TTL_SECS, PublishCommand};

/// The publish scripts with what every call of them needs.
pub struct Scripts {
    prefix: String,
    /// `PUBLISH` on a single Redis, `SPUBLISH` on a cluster.
    command: PublishCommand,
    /// `MAXLEN ~` of a topic's history stream.
    history_maxlen: u64,
    batch: Script,
    update: Script,
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
            .arg(if self.is_replicated() { "0" } else { "1" });
        cmd
    }

    /// Writes `updates` in order on one server's connection; replies
    /// each one's `seq` and whether it had been written before. When
    /// [`Scripts::replicated`]: one pipeline of the calls and a `WAIT`,
    /// then, once enough replicas have them, one of their PUBLISHes (an
    /// update already written is published again: its first attempt may
    /// have failed before its PUBLISH; subscribers skip a `seq` twice).
    pub async fn write_updates<C: ConnectionLike>(
        &self,
        conn: &mut C,
        updates: &[Update<'_>],
    ) -> Result<Vec<(u64, bool)>, UpdateError> {
        let mut pipe = redis::pipe();
        for u in updates {
            pipe.add_command(self.update_call(u));
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
        let (calls, wait) = values.split_at(updates.len());
        let written = calls
            .iter()
            .map(|v| update_reply(v).ok_or_else(|| UpdateError::Reply(format!("{v:?}"))))
            .collect::<Result<Vec<_>, _>>()?;
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

    /// Loads both scripts (through a cluster connection, on every master).
    pub async fn load<C: ConnectionLike>(&self, conn: &mut C) -> RedisResult<()> {
        self.batch.load_async(conn).await?;
        self.update.load_async(conn).await?;
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

    #[test]
    fn reads_update_replies() {
        let reply = Value::Array(vec![Value::Int(7), Value::Int(1)]);
        assert_eq!(update_reply(&reply), Some((7, true)));
        assert_eq!(update_reply(&Value::Int(7)), None);
    }
}
