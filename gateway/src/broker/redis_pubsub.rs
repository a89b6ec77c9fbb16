//! The single-Redis links: `pubsub_connections` plain pub/sub
//! connections, each a [`link`](super::pubsub::link) of the shared
//! manager, with channels spread over them by hash so one connection's
//! reader is never the node's bottleneck. Each connection's reader hands
//! messages and order replies to the node's [`Sink`].

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{FutureExt, StreamExt};
use redis::aio::PubSubSink;
use tokio::sync::mpsc;
use wire::keys;

use super::pubsub::link::{self, Connected, Connector, LinkSettings, Notice};
use super::pubsub::table::Outcome;
use super::pubsub::{Inputs, Layout, LinkSpec, ProbeReturns};
use super::{BoxFuture, Pace, Pacing, Sink};

/// Where a reader delivers what it receives.
#[derive(Clone)]
pub(crate) struct Delivery {
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) prefix: String,
    pub(crate) reply_channel: String,
    /// This node's delivery probes, taken before the sink sees them.
    pub(crate) probes: ProbeReturns,
    /// Messages of every kind this link's readers received: a link whose
    /// probe is late but which keeps receiving is behind, not dead
    /// ([`super::pubsub::probe`]). One counter per link ([`Delivery::for_link`]).
    pub(crate) received: Arc<AtomicU64>,
}

impl Delivery {
    /// Delivers into `sink`, with the probes of `inputs`'s manager.
    pub(crate) fn new(sink: Arc<dyn Sink>, prefix: &str, reply_channel: String, inputs: &Inputs) -> Self {
        Delivery {
            sink,
            prefix: prefix.to_owned(),
            reply_channel,
            probes: inputs.probes.clone(),
            received: Arc::default(),
        }
    }

    /// The same delivery with a received counter of its own, for one link.
    pub(crate) fn for_link(&self) -> Delivery {
        Delivery { received: Arc::default(), ..self.clone() }
    }

    /// One received message: a delivery probe, an order reply or a
    /// topic's envelope; `pace` tells whether more were waiting behind it.
    pub(crate) fn deliver(&self, channel: &str, payload: &[u8], pace: Pace) {
        self.received.fetch_add(1, Ordering::Relaxed);
        if self.probes.take(channel, payload) {
            return;
        }
        if channel == self.reply_channel {
            self.sink.reply(payload);
        } else if let Some(topic) = keys::topic_of_channel(&self.prefix, channel) {
            self.sink.message(topic, payload, pace);
        }
    }
}

/// Aborts a reader task when its connection is dropped.
pub(crate) struct ReaderGuard(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens plain (RESP2) pub/sub connections to the one Redis (behind
/// Sentinel: to the master the sentinels name at each connect).
struct PlainConnector {
    target: redis_backplane::Target,
    delivery: Delivery,
    /// Bounds asking the sentinels at each PING (half the link's
    /// timeout, so sentinels that do not answer never fail the PING).
    sentinel_check: std::time::Duration,
}

/// A pub/sub connection: its sink, its reader, and the server it went to.
pub(crate) struct PlainConn {
    sink: PubSubSink,
    _reader: ReaderGuard,
    server: redis::ConnectionAddr,
}

impl Connector for PlainConnector {
    type Conn = PlainConn;

    fn connect(&self) -> BoxFuture<'_, Result<Connected<Self::Conn>, String>> {
        Box::pin(async move {
            let client = self.target.client().await.map_err(|e| e.to_string())?;
            let server = client.get_connection_info().addr().clone();
            let pubsub = client.get_async_pubsub().await.map_err(|e| e.to_string())?;
            let (sink, mut stream) = pubsub.split();
            let (tx, rx) = mpsc::unbounded_channel();
            let delivery = self.delivery.clone();
            let reader = tokio::spawn(async move {
                // One message of lookahead: whether the next one is
                // already parsed and waiting, over a run of messages, and
                // how long the reader waits when none is, say if this node
                // is behind its link (`Pacing`). Polling `next()` once
                // and dropping it when pending loses nothing (a stream's
                // `next` is cancel safe).
                let mut pacing = Pacing::default();
                let mut next = stream.next().await;
                while let Some(msg) = next {
                    let after = stream.next().now_or_never();
                    let pace = pacing.next(matches!(after, Some(Some(_))));
                    delivery.deliver(msg.get_channel_name(), msg.get_payload_bytes(), pace);
                    next = match after {
                        Some(after) => after,
                        None => pacing.wait(stream.next()).await,
                    };
                }
                let _ = tx.send(Notice::Lost("pub/sub stream ended".into()));
            });
            Ok((PlainConn { sink, _reader: ReaderGuard(reader), server }, rx))
        })
    }

    fn subscribe<'a>(
        &'a self,
        conn: &'a mut Self::Conn,
        channels: &'a [String],
    ) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            match conn.sink.subscribe(channels).await {
                Ok(()) => vec![Outcome::Held; channels.len()],
                Err(e) if connection_gone(&e) => vec![Outcome::Lost; channels.len()],
                // One channel may be refused (an ACL): find which, one by one.
                Err(e) if channels.len() > 1 => {
                    tracing::debug!(error = %e, "SUBSCRIBE refused; trying channels one by one");
                    let mut outcomes = Vec::with_capacity(channels.len());
                    for channel in channels {
                        outcomes.push(match conn.sink.subscribe(channel).await {
                            Ok(()) => Outcome::Held,
                            Err(e) if connection_gone(&e) => Outcome::Lost,
                            Err(e) => Outcome::Refused(e.to_string()),
                        });
                    }
                    outcomes
                }
                Err(e) => vec![Outcome::Refused(e.to_string())],
            }
        })
    }

    fn unsubscribe<'a>(
        &'a self,
        conn: &'a mut Self::Conn,
        channels: &'a [String],
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { conn.sink.unsubscribe(channels).await.map_err(|e| e.to_string()) })
    }

    fn ping<'a>(&'a self, conn: &'a mut Self::Conn) -> BoxFuture<'a, Result<(), String>> {
        // In subscribed mode (RESP2) PING answers ["pong", ""], not +PONG.
        Box::pin(async move {
            conn.sink.ping::<redis::Value>().await.map_err(|e| e.to_string())?;
            // Behind Sentinel: a master demoted or cut off while this
            // connection stayed up (a sentinel usually closes our
            // connections as it demotes it, but a partition does not);
            // ROLE cannot be asked in subscribed mode, the sentinels can.
            let moved = tokio::time::timeout(self.sentinel_check, self.target.moved_from(&conn.server));
            if moved.await.unwrap_or(false) {
                return Err("the sentinels name another master".into());
            }
            Ok(())
        })
    }
}

/// Whether an error means the connection is gone (not a refusal).
pub(crate) fn connection_gone(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_timeout()
}

/// Spawns `count` links to `target` and hands the manager their layout.
pub(crate) fn spawn_links(
    target: &redis_backplane::Target,
    count: usize,
    delivery: Delivery,
    inputs: &Inputs,
    settings: impl Fn(usize) -> LinkSettings,
) {
    let mut added = Vec::with_capacity(count);
    for id in 0..count {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let settings = settings(id);
        let delivery = delivery.for_link();
        let received = Arc::clone(&delivery.received);
        let connector =
            PlainConnector { target: target.clone(), delivery, sentinel_check: settings.timeout / 2 };
        added.push(LinkSpec { id, label: settings.label.clone(), slots: Vec::new(), commands, received });
        tokio::spawn(link::run(connector, settings, commands_rx, inputs.events.clone()));
    }
    // SipHash with fixed keys: a channel's link is the same for the node's whole life.
    let route = move |channel: &str| {
        let mut hasher = std::hash::DefaultHasher::new();
        channel.hash(&mut hasher);
        Some((hasher.finish() % count as u64) as usize)
    };
    // Fails only if the manager already stopped (shutdown).
    let _ = inputs.layouts.send(Layout {
        route: Box::new(route),
        added,
        removed: Vec::new(),
        slots: Vec::new(),
        complete: true,
    });
}
