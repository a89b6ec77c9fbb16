//! One cluster master's pub/sub link: a plain RESP3 connection of its
//! own (not redis-rs's cluster connection, whose repair of one node's
//! link rebuilds the healthy ones too and drops their pushes), carrying
//! the sharded subscriptions of the slots that master serves. Pushes are
//! read by a reader task: `smessage` to the node's sink (messages and
//! order replies), a `sunsubscribe` the server sent (a slot it gave up)
//! and a dropped socket to the link as notices.

use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value,
};
use tokio::sync::mpsc;

use crate::broker::BoxFuture;
use crate::broker::pubsub::link::{Connected, Connector, Notice};
use crate::broker::pubsub::table::Outcome;
use crate::broker::redis_pubsub::{Delivery, ReaderGuard, connection_gone};

pub(super) struct ShardConnector {
    client: redis::Client,
    delivery: Delivery,
    timeout: Duration,
}

impl ShardConnector {
    /// A connector to `host:port` with the seed's credentials and TLS settings.
    pub(super) fn new(
        seed: &ConnectionInfo,
        (host, port): (String, u16),
        delivery: Delivery,
        timeout: Duration,
    ) -> Result<Self, String> {
        let info = at(seed, host, port);
        let redis = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(redis);
        let client = redis::Client::open(info).map_err(|e| e.to_string())?;
        Ok(ShardConnector { client, delivery, timeout })
    }
}

/// The seed's connection settings (credentials, TLS) at another node's address.
pub(super) fn at(seed: &ConnectionInfo, host: String, port: u16) -> ConnectionInfo {
    let addr = match seed.addr() {
        ConnectionAddr::TcpTls { insecure, tls_params, .. } => {
            ConnectionAddr::TcpTls { host, port, insecure: *insecure, tls_params: tls_params.clone() }
        }
        _ => ConnectionAddr::Tcp(host, port),
    };
    seed.clone().set_addr(addr)
}

/// What one sharded (un)subscribe command's error means for its channel.
fn outcome(result: redis::RedisResult<Value>) -> Outcome {
    match result {
        Ok(_) => Outcome::Held,
        Err(e) if connection_gone(&e) => Outcome::Lost,
        // MOVED, ASK, TRYAGAIN, CLUSTERDOWN: the slot map is stale.
        Err(e) if e.is_cluster_error() => Outcome::Moved,
        Err(e) => Outcome::Refused(e.to_string()),
    }
}

/// Sends `command` for each channel on its own: every SSUBSCRIBE of one
/// channel gets exactly one confirmation, which redis-rs takes as its
/// reply (several channels in one command would confirm several times).
/// The multiplexed connection pipelines them in one round trip.
async fn per_channel(conn: &MultiplexedConnection, command: &str, channels: &[String]) -> Vec<Outcome> {
    let calls = channels.iter().map(|channel| {
        let mut conn = conn.clone();
        let cmd = redis::cmd(command).arg(channel).clone();
        async move { outcome(cmd.query_async::<Value>(&mut conn).await) }
    });
    join_all(calls).await
}

impl Connector for ShardConnector {
    type Conn = (MultiplexedConnection, ReaderGuard);

    fn connect(&self) -> BoxFuture<'_, Result<Connected<Self::Conn>, String>> {
        Box::pin(async move {
            let (push_tx, mut push_rx) = mpsc::unbounded_channel::<PushInfo>();
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout))
                .set_push_sender(push_tx);
            let conn = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| e.to_string())?;
            let (tx, rx) = mpsc::unbounded_channel();
            let delivery = self.delivery.clone();
            let reader = tokio::spawn(async move {
                while let Some(push) = push_rx.recv().await {
                    match (push.kind, push.data.as_slice()) {
                        (PushKind::SMessage, [Value::BulkString(channel), Value::BulkString(payload)]) => {
                            if let Ok(channel) = std::str::from_utf8(channel) {
                                delivery.deliver(channel, payload);
                            }
                        }
                        // Also the echo of our own SUNSUBSCRIBE: the table
                        // ignores drops of channels it no longer wants.
                        (PushKind::SUnsubscribe, [Value::BulkString(channel), ..]) => {
                            let _ = tx.send(Notice::Dropped(String::from_utf8_lossy(channel).into_owned()));
                        }
                        (PushKind::Disconnection, _) => break,
                        _ => {}
                    }
                }
                let _ = tx.send(Notice::Lost("connection to the master closed".into()));
            });
            Ok(((conn, ReaderGuard(reader)), rx))
        })
    }

    fn subscribe<'a>(
        &'a self,
        conn: &'a mut Self::Conn,
        channels: &'a [String],
    ) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(per_channel(&conn.0, "SSUBSCRIBE", channels))
    }

    fn unsubscribe<'a>(
        &'a self,
        conn: &'a mut Self::Conn,
        channels: &'a [String],
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            // A refusal (the slot moved on) leaves nothing to unsubscribe.
            match per_channel(&conn.0, "SUNSUBSCRIBE", channels).await.contains(&Outcome::Lost) {
                true => Err("sunsubscribe: connection lost".into()),
                false => Ok(()),
            }
        })
    }

    fn ping<'a>(&'a self, conn: &'a mut Self::Conn) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            redis::cmd("PING").query_async::<Value>(&mut conn.0).await.map(|_| ()).map_err(|e| e.to_string())
        })
    }
}
