//! The commands both Redis backplanes send outside pub/sub: publishing
//! through the shared scripts (`redis_backplane::scripts`), snapshot and history
//! reads, order requests. Generic over the connection, so a pooled
//! connection to one Redis and the Redis Cluster connection run the same
//! code; the only difference is the publish command the scripts are
//! given (`PUBLISH` or `SPUBLISH`).

use redis::aio::ConnectionLike;
use redis_backplane::scripts::{PublishCommand, Scripts};
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
    pub fn new(prefix: &str, command: PublishCommand, history_maxlen: usize) -> Self {
        ScriptPublisher { scripts: Scripts::new(prefix, command, history_maxlen as u64) }
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
                let call = self.scripts.update(name, &update_id, &head, &tail);
                let (seq, _duplicate): (u64, u64) = self.scripts.query(conn, &call).await.map_err(refused)?;
                Ok(seq)
            }
            // Quotes also become the topic's snapshot.
            family => {
                let call = self.scripts.batch(name, &head, family == TopicFamily::Quotes, &tail);
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
