//! The commands both Redis backplanes send outside pub/sub: publishing
//! through the shared scripts (`redis_backplane::scripts`), snapshot and history
//! reads, order requests. Generic over the connection, so a pooled
//! connection to one Redis and the Redis Cluster connection run the same
//! code; the only difference is the publish command the scripts are
//! given (`PUBLISH` or `SPUBLISH`).

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis_backplane::scripts::{PublishCommand, Scripts, Update, UpdateError};
use wire::{Topic, TopicFamily, keys};

use super::BrokerError;

/// Order requests kept in the stream at most (trimmed approximately).
const ORDER_STREAM_MAXLEN: usize = 100_000;

/// The publish scripts (their calls are laid out in
/// `redis_backplane::scripts`, shared with the publisher).
pub struct ScriptPublisher {
    scripts: Scripts,
}

impl ScriptPublisher {
    /// `replicas` > 0 (behind Sentinel): an order update is published only
    /// once that many replicas have it (within half of `timeout`), as the
    /// publisher's are, so a failover cannot lose a delivered one.
    pub fn new(
        prefix: &str,
        command: PublishCommand,
        history_maxlen: usize,
        replicas: u32,
        timeout: Duration,
    ) -> Self {
        let mut scripts = Scripts::new(prefix, command, history_maxlen as u64);
        if replicas > 0 {
            scripts = scripts.replicated(replicas, (timeout / 2).as_millis() as u64);
        }
        ScriptPublisher { scripts }
    }

    /// Publishes `data_json` on `topic` and returns its `seq`. Every key
    /// and the channel share one cluster slot (`wire::keys`), so the call
    /// goes to the one node that owns the topic.
    pub async fn publish<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        topic: &Topic,
        data_json: &str,
        traceparent: Option<&str>,
        id: Option<&str>,
    ) -> Result<u64, BrokerError> {
        let (head, tail) =
            wire::envelope::encode_parts(topic.as_str(), wire::now_ms(), data_json, traceparent);
        let name = topic.as_str();
        let refused = |e: redis::RedisError| BrokerError::Refused(e.to_string());
        match topic.family() {
            // Order updates keep history (for `since`) and are written once.
            TopicFamily::Orders => {
                let update_id = id.map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned);
                if self.scripts.is_replicated() {
                    let update = Update { topic: name, id: &update_id, head: &head, tail: &tail, floor: 0 };
                    let written = self.scripts.write_updates(conn, &[update]).await;
                    // Too few replicas: try later; anything else as without Sentinel.
                    let written = written.map_err(|e| match e {
                        UpdateError::Unreplicated { .. } => BrokerError::Unavailable(e.to_string()),
                        UpdateError::Redis(e) => refused(e),
                        UpdateError::Reply(_) => BrokerError::Refused(e.to_string()),
                    })?;
                    return written
                        .first()
                        .map(|(seq, _)| *seq)
                        .ok_or_else(|| BrokerError::Refused("no reply".into()));
                }
                let call = self.scripts.update(name, &update_id, &head, &tail);
                let (seq, _duplicate): (u64, u64) = self.scripts.query(conn, &call).await.map_err(refused)?;
                Ok(seq)
            }
            // Quotes also become the topic's snapshot.
            family => {
                // No floor: this node keeps no per-topic state (docs/design.md).
                let call = self.scripts.batch(name, &head, family == TopicFamily::Quotes, 0, &tail);
                self.scripts.query::<_, u64>(conn, &call).await.map_err(refused)
            }
        }
    }
}

/// `GET` of a topic's snapshot key.
pub fn last_value_cmd(prefix: &str, topic: &Topic) -> redis::Cmd {
    let mut cmd = redis::cmd("GET");
    cmd.arg(keys::last_value(prefix, topic.as_str()));
    cmd
}

/// `XRANGE` of a topic's history after `since`, at most `limit` entries.
pub fn history_cmd(prefix: &str, topic: &Topic, since: u64, limit: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(keys::history(prefix, topic.as_str()))
        .arg(format!("({}", keys::history_id(since)))
        .arg("+")
        .arg("COUNT")
        .arg(limit);
    cmd
}

/// The envelopes of an `XRANGE` reply, oldest first; entries without an
/// envelope field (written by someone else) are skipped.
pub fn history_envelopes(reply: redis::streams::StreamRangeReply) -> Vec<Vec<u8>> {
    reply
        .ids
        .into_iter()
        .filter_map(|mut entry| match entry.map.remove(keys::HISTORY_FIELD) {
            Some(redis::Value::BulkString(bytes)) => Some(bytes),
            _ => None,
        })
        .collect()
}

/// A delivery probe: `payload` published on `channel` as a message is.
pub fn probe_cmd(command: PublishCommand, channel: &str, payload: &str) -> redis::Cmd {
    let mut cmd = redis::cmd(command.as_str());
    cmd.arg(channel).arg(payload);
    cmd
}

/// `XADD` of an order request to the order service's stream.
pub fn order_request_cmd(prefix: &str, request_json: String) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(keys::order_requests(prefix))
        .arg("MAXLEN")
        .arg("~")
        .arg(ORDER_STREAM_MAXLEN)
        .arg("*")
        .arg(wire::orders::REQUEST_FIELD)
        .arg(request_json);
    cmd
}
