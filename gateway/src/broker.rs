//! The backplane: how messages cross nodes.
//!
//! One small trait with three implementations: [`memory::MemoryBroker`]
//! (embedded, one node, nothing to install), [`redis::RedisBroker`]
//! (a Redis pub/sub backplane shared by any number of stateless nodes)
//! and [`redis_cluster::RedisClusterBroker`] (the same on a Redis Cluster,
//! with sharded pub/sub).
//! The node decides when a topic gets its first or loses its last local
//! subscriber ([`crate::topics`]) and asks the broker to subscribe or
//! release it; the broker delivers what it receives into a [`Sink`] and
//! knows nothing of hubs, connections or order requests.

#[cfg(test)]
pub(crate) mod fake;
pub mod memory;
mod pubsub;
pub mod redis;
pub mod redis_cluster;
mod redis_commands;
mod redis_pubsub;
mod redis_shared;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use wire::Topic;

use crate::metrics::Metrics;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a broker call resolves to.
pub type Answer<'a, T> = BoxFuture<'a, Result<T, BrokerError>>;

/// One message to publish: `data_json` (a JSON object) on `topic`, with
/// the publisher's trace context and, for an order update, its `id`.
#[derive(Debug, Clone, Copy)]
pub struct Publish<'a> {
    pub topic: &'a Topic,
    pub data_json: &'a str,
    pub traceparent: Option<&'a str>,
    pub id: Option<&'a str>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    #[error("backplane unavailable: {0}")]
    Unavailable(String),
    #[error("backplane did not answer in time")]
    Timeout,
    #[error("backplane refused the request: {0}")]
    Refused(String),
    #[error("{0}")]
    NotSupported(&'static str),
    /// `since` is beyond the topic's last `seq`: the backplane lost the
    /// topic's past (an in-memory node restarted) and numbers it anew.
    #[error(
        "the topic is at seq {0}, before the seq asked for: its history was lost (the backplane restarted)"
    )]
    Behind(u64),
}

/// How a message arrived from the backplane: alone, or in a burst, with
/// more already waiting behind it on the same link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Nothing else was waiting, or only a short run ([`Pacing`]): the
    /// fan-out may write the frame to idle sockets itself (one write
    /// each, no task woken).
    Alone,
    /// Part of a long run of messages each with another already waiting
    /// (this node is behind its backplane), or of a batch such as a gap
    /// fill: the frame goes to the connections' queues, which their tasks
    /// write many frames per write. Writing each frame from the fan-out
    /// would cost a syscall per frame per subscriber exactly when the
    /// node has least time for it (measured, bench/ws.md: at 1M
    /// deliveries/s asked, 1.0 frames per write and the node fell seconds
    /// behind its link, against 33-38 frames per write through the queues).
    Burst,
}

/// A reader's [`Pace`], with hysteresis: the node is *behind* from the
/// moment [`Pacing::ENTER`] messages came back to back (each with another
/// already waiting) until the reader has to wait [`Pacing::IDLE`] or more
/// for its next one.
///
/// Not behind at the first message waiting: at ordinary rates a few
/// messages often arrive together (measured at 50,000 deliveries/s: 85 %
/// of them had another behind), each connection gets at most one frame of
/// such a group, and queueing them batches nothing but costs a task
/// wake-up per frame (9.0 against 6.3 µs of CPU per delivery). And not
/// back to *alone* whenever the reader finds nothing waiting: under
/// overload the client library hands messages over a read at a time, so
/// short gaps come every few dozen messages (a run of 64 without
/// hysteresis left the node at 3 frames per write, losing 63 % at 1M
/// deliveries/s asked).
#[derive(Debug, Default)]
pub(crate) struct Pacing {
    run: u32,
    behind: bool,
}

impl Pacing {
    /// Messages back to back, each with another waiting, that make the
    /// node behind.
    pub(crate) const ENTER: u32 = 16;
    /// A wait for the next message this long means the node caught up.
    pub(crate) const IDLE: std::time::Duration = std::time::Duration::from_micros(200);

    /// The pace of the message about to be delivered; `more_waiting`:
    /// another one is already received behind it.
    pub(crate) fn next(&mut self, more_waiting: bool) -> Pace {
        if more_waiting {
            self.run = self.run.saturating_add(1);
            if self.run >= Self::ENTER {
                self.behind = true;
            }
        } else {
            self.run = 0;
        }
        if self.behind { Pace::Burst } else { Pace::Alone }
    }

    /// The reader found nothing waiting: awaits `next` (its next message),
    /// timing the wait.
    pub(crate) async fn wait<T>(&mut self, next: impl std::future::Future<Output = T>) -> T {
        let from = std::time::Instant::now();
        let got = next.await;
        self.waited(from.elapsed());
        got
    }

    /// The reader found nothing waiting and waited `waited` for the next
    /// message.
    fn waited(&mut self, waited: std::time::Duration) {
        if waited >= Self::IDLE {
            self.behind = false;
        }
    }
}

#[cfg(test)]
mod pacing_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn behind_after_a_run_until_a_real_wait() {
        let mut p = Pacing::default();
        for _ in 0..Pacing::ENTER - 1 {
            assert_eq!(p.next(true), Pace::Alone, "a short run is no backlog");
        }
        assert_eq!(p.next(false), Pace::Alone);
        p.waited(Duration::from_micros(10));
        for _ in 0..Pacing::ENTER - 1 {
            assert_eq!(p.next(true), Pace::Alone, "the run started again");
        }
        assert_eq!(p.next(true), Pace::Burst, "ENTER back to back: behind");
        assert_eq!(p.next(false), Pace::Burst, "the last of the run too");
        p.waited(Duration::from_micros(20));
        assert_eq!(p.next(true), Pace::Burst, "a short gap does not end it");
        assert_eq!(p.next(false), Pace::Burst);
        p.waited(Pacing::IDLE);
        assert_eq!(p.next(true), Pace::Alone, "a real wait: caught up");
    }
}

/// Where a backplane delivers what it receives: implemented by the node
/// ([`crate::inbound::Inbound`]), by a test sink in unit tests.
pub(crate) trait Sink: Send + Sync + 'static {
    /// One envelope received on `topic`'s channel (not parsed yet).
    fn message(&self, topic: &str, envelope: &[u8], pace: Pace);

    /// One order reply received on this node's reply channel.
    fn reply(&self, payload: &[u8]);

    /// Whether `topic` still has local subscribers: asked when a released
    /// topic's grace delay runs out, so a subscriber that came back
    /// meanwhile keeps the backplane subscription.
    fn wanted(&self, topic: &str) -> bool;
}

/// How the backplane answered a subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribed {
    /// The server confirmed: everything published from now on arrives.
    Confirmed,
    /// The backplane is away: the topic is recorded and subscribed when
    /// it returns (what is published meanwhile is not delivered live).
    Recorded,
}

/// What a Redis backplane is started with besides its config.
pub(crate) struct Wiring<'a> {
    /// Names this node's reply channel.
    pub(crate) node_id: &'a str,
    /// Where it delivers what it receives.
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) metrics: Arc<Metrics>,
    /// Stops its tasks.
    pub(crate) shutdown: CancellationToken,
}

pub trait Broker: Send + Sync + 'static {
    /// Makes sure `topic`'s messages reach this node's sink. Resolves once
    /// the backplane confirmed, so a client told `subscribed` misses
    /// nothing published after. While the backplane is away the topic is
    /// recorded and subscribed when it returns.
    fn subscribe<'a>(&'a self, topic: &'a Topic) -> Answer<'a, Subscribed>;

    /// `topic` lost its last local subscriber; the backplane subscription
    /// goes after a grace delay unless someone subscribes again.
    fn release(&self, topic: &Topic);

    /// Publishes `message` to every node, assigning the next `seq`;
    /// returns that `seq`. An order update with an `id` already published
    /// is not published again (its `seq` is returned).
    fn publish<'a>(&'a self, message: Publish<'a>) -> Answer<'a, u64>;

    /// The latest envelope published on `topic`, if the backplane keeps
    /// one (quotes: the snapshot a new subscriber gets at once).
    fn last_value<'a>(&'a self, topic: &'a Topic) -> Answer<'a, Option<Vec<u8>>>;

    /// Up to `limit` envelopes of `topic` with `seq > since`, oldest first,
    /// from the topic's history (empty when it keeps none). `Behind` when
    /// the backplane knows `since` is ahead of anything it numbered.
    fn history_after<'a>(&'a self, topic: &'a Topic, since: u64, limit: usize) -> Answer<'a, Vec<Vec<u8>>>;

    /// Hands an order request (JSON [`wire::orders::OrderRequest`]) to the
    /// order service; its reply comes back through [`crate::requests`].
    fn submit_order<'a>(&'a self, request_json: String) -> Answer<'a, ()>;

    /// Whether the backplane is connected (drives `/readyz`).
    fn is_ready(&self) -> bool;

    /// The backplane links (pub/sub connections, cluster shards) not up,
    /// for `/readyz`.
    fn down_shards(&self) -> Vec<String> {
        Vec::new()
    }

    /// `memory`, `redis` or `redis-cluster`, for logs and `/readyz`.
    fn kind(&self) -> &'static str;
}

/// Sleeps until `at`, or forever when there is nothing to wait for (a
/// `select!` branch for the next grace-delayed release).
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
