//! One cluster shard's pub/sub link: plain RESP3 connections of its own
//! (not redis-rs's cluster connection, whose repair of one node's link
//! rebuilds the healthy ones too and drops their pushes), carrying the
//! sharded subscriptions of the slots that shard serves. Pushes are read
//! by a reader task per connection: `smessage` to the node's sink
//! (messages and order replies), a `sunsubscribe` the server sent (a slot
//! it gave up) and a dropped socket to the link as notices.
//!
//! With `redis_cluster_standby` (the default) the link holds two
//! connections: the *primary* to the shard's master and a *standby* to
//! one of its replicas, and subscribes every channel on both. Redis hands
//! a `SPUBLISH` to the subscribers of every node of the shard, and a replica
//! promoted by a planned `CLUSTER FAILOVER` keeps its subscriptions while
//! the old master ends ours (`sunsubscribe`) as it turns replica: pub/sub
//! keeps nothing, so without the standby whatever is published between
//! that and our SSUBSCRIBE on the new master reaches no one. Each message
//! then arrives twice; [`Dedup`] passes the first copy of each `seq` and
//! fans out under one lock, so one topic's messages are never handed on
//! by the two readers at once.
//!
//! The primary decides what the manager hears: its outcomes, its loss
//! (a master gone: the shard is down, as readiness and fail-fast commands
//! must say). The standby is best effort: a replica that cannot be
//! reached or dies just leaves the link without one, and each health
//! check (the link's PING) tends it: connects one when the slot map
//! names a replica, subscribes there what it lacks. When the slot map
//! names the standby's node master (after a planned switch), the roles
//! swap at the next health check, so a later loss of the old master, now
//! a replica, costs nothing. `gateway_backplane_standby_up{shard}` shows
//! which shards have one.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::join_all;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value,
};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

use super::slot_map::{self, Addr};
use crate::broker::pubsub::link::{CHUNK, Connected, Connector, Notice};
use crate::broker::pubsub::table::Outcome;
use crate::broker::redis_pubsub::{Delivery, ReaderGuard, connection_gone};
use crate::broker::{BoxFuture, Pace, Pacing};

/// The nodes of one shard as the slot map last named them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Nodes {
    pub(super) master: Addr,
    pub(super) replicas: Vec<Addr>,
}

pub(super) struct ShardConnector {
    opener: Opener,
    /// Updated by the topology; read at each connect.
    nodes: watch::Receiver<Nodes>,
    /// The nodes as of the last connect, so [`Connector::changed`] wakes
    /// only for what came after.
    seen: Mutex<watch::Receiver<Nodes>>,
    standby: bool,
    /// `gateway_backplane_standby_up` of this shard.
    gauge: Gauge,
}

/// Opens connections to the shard's nodes (also from the task that
/// attaches a standby).
#[derive(Clone)]
struct Opener {
    /// Credentials and TLS settings, used at every node's address.
    seed: ConnectionInfo,
    dedup: Arc<Dedup>,
    timeout: Duration,
}

impl ShardConnector {
    /// A connector for the shard `nodes` names, with the seed's
    /// credentials and TLS settings; `standby`: also subscribe on a replica.
    pub(super) fn new(
        seed: &ConnectionInfo,
        nodes: watch::Receiver<Nodes>,
        delivery: Delivery,
        timeout: Duration,
        standby: bool,
        gauge: Gauge,
    ) -> Self {
        let dedup = Arc::new(Dedup::new(delivery));
        ShardConnector {
            opener: Opener { seed: seed.clone(), dedup, timeout },
            seen: Mutex::new(nodes.clone()),
            nodes,
            standby,
            gauge,
        }
    }
}

impl Opener {
    /// A connection to the first of `nodes` that takes one in time.
    async fn open_any(&self, nodes: &[Addr], ended: &mpsc::UnboundedSender<u64>) -> Option<Side> {
        for node in nodes {
            match timeout(self.timeout, self.open(node, ended.clone())).await {
                Ok(Ok(side)) => return Some(side),
                Ok(Err(e)) => tracing::debug!(error = %e, "cannot connect a standby to a replica"),
                Err(_) => tracing::debug!("connecting a standby to a replica timed out"),
            }
        }
        None
    }

    /// Connects to `addr` with a reader delivering what it pushes; the
    /// reader's end is told on `ended`.
    async fn open(&self, addr: &Addr, ended: mpsc::UnboundedSender<u64>) -> Result<Side, String> {
        let info = at(&self.seed, addr.0.clone(), addr.1);
        let redis = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(redis)).map_err(|e| e.to_string())?;
        let (push_tx, mut push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_push_sender(push_tx);
        let conn =
            client.get_multiplexed_async_connection_with_config(&config).await.map_err(|e| e.to_string())?;
        let id = NEXT_SIDE.fetch_add(1, Ordering::Relaxed);
        let dedup = Arc::clone(&self.dedup);
        let reader = tokio::spawn(async move {
            let mut pacing = Pacing::default();
            loop {
                let push = match push_rx.try_recv() {
                    Ok(push) => push,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        let Some(push) = pacing.wait(push_rx.recv()).await else { break };
                        push
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                };
                match (push.kind, push.data.as_slice()) {
                    (PushKind::SMessage, [Value::BulkString(channel), Value::BulkString(payload)]) => {
                        if let Ok(channel) = std::str::from_utf8(channel) {
                            // More pushes waiting, over a run: behind the link.
                            let pace = pacing.next(!push_rx.is_empty());
                            dedup.deliver(channel, payload, id, pace);
                        }
                    }
                    // Also the echo of our own SUNSUBSCRIBE: the table
                    // ignores drops of channels it no longer wants.
                    (PushKind::SUnsubscribe, [Value::BulkString(channel), ..]) => {
                        dedup.dropped(String::from_utf8_lossy(channel).into_owned());
                    }
                    (PushKind::Disconnection, _) => break,
                    _ => {}
                }
            }
            let _ = ended.send(id);
        });
        Ok(Side { id, addr: addr.clone(), conn, _reader: ReaderGuard(reader) })
    }
}

impl ShardConnector {
    /// Keeps the link's standby: connects one to a replica of `nodes` when
    /// the link has none (and the shard has a replica), and subscribes on
    /// it what it does not hold yet. Nothing with standbys off, or while
    /// an earlier round is at work. In a task of its own: subscribing a
    /// large set must not hold up the link (or time out its health check).
    fn tend_standby(&self, conn: &ShardConn, nodes: &Nodes) {
        let (primary, existing) = {
            let mut sides = conn.lock();
            let Some(primary) = sides.primary.as_ref().map(|s| s.addr.clone()) else { return };
            if !self.standby || sides.busy {
                return;
            }
            let existing = match sides.standby.as_ref() {
                Some(_) if sides.missing.is_empty() => return,
                Some(standby) => Some(standby.conn.clone()),
                None if nodes.replicas.iter().all(|r| *r == primary) => return,
                None => None,
            };
            sides.busy = true;
            (primary, existing)
        };
        let replicas: Vec<Addr> = nodes.replicas.iter().filter(|r| **r != primary).cloned().collect();
        let opener = self.opener.clone();
        let (sides, ended) = (Arc::downgrade(&conn.sides), conn.ended.clone());
        tokio::spawn(async move {
            let _busy = Busy(sides.clone());
            let standby = match existing {
                Some(standby) => standby,
                None => {
                    let Some(side) = opener.open_any(&replicas, &ended).await else { return };
                    let Some(sides) = sides.upgrade() else { return };
                    let mut sides = lock(&sides);
                    if sides.primary.is_none() {
                        return;
                    }
                    let standby = side.conn.clone();
                    sides.install_standby(side);
                    standby
                }
            };
            let Some(shared) = sides.upgrade() else { return };
            let channels: Vec<String> = lock(&shared).missing.iter().cloned().collect();
            drop(shared);
            for chunk in channels.chunks(CHUNK) {
                let outcomes = per_channel(Some(standby.clone()), "SSUBSCRIBE", chunk).await;
                let Some(shared) = sides.upgrade() else { return };
                let mut guard = lock(&shared);
                for (channel, outcome) in chunk.iter().zip(outcomes) {
                    if outcome == Outcome::Held {
                        guard.missing.remove(channel);
                    }
                }
            }
            // Left meanwhile: not wanted on the standby either.
            let Some(shared) = sides.upgrade() else { return };
            let gone: Vec<String> = {
                let guard = lock(&shared);
                channels.into_iter().filter(|c| !guard.held.contains(c)).collect()
            };
            drop(shared);
            if !gone.is_empty() {
                per_channel(Some(standby), "SUNSUBSCRIBE", &gone).await;
            }
        });
    }
}

/// Lets the next health check tend the standby again.
struct Busy(std::sync::Weak<Mutex<Sides>>);

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(sides) = self.0.upgrade() {
            lock(&sides).busy = false;
        }
    }
}

/// Names each connection, for the reader's notices and for [`Dedup`].
static NEXT_SIDE: AtomicU64 = AtomicU64::new(1);

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

/// One connection of a link.
struct Side {
    id: u64,
    addr: Addr,
    conn: MultiplexedConnection,
    _reader: ReaderGuard,
}

/// A link's connections and what they hold. Shared with the task that
/// hears readers end and with the one attaching a standby.
struct Sides {
    primary: Option<Side>,
    standby: Option<Side>,
    /// Channels the link holds (confirmed on the primary).
    held: HashSet<String>,
    /// Of those, the ones the standby does not hold (yet): the roles do
    /// not swap while there are any.
    missing: HashSet<String>,
    /// A standby is being connected or subscribed.
    busy: bool,
    /// `gateway_backplane_standby_up` of this shard.
    gauge: Gauge,
    /// Told when a standby comes and goes.
    dedup: Arc<Dedup>,
}

impl Sides {
    /// `side` is the standby; it holds nothing yet.
    fn install_standby(&mut self, side: Side) {
        tracing::info!(replica = %slot_map::host_port(&side.addr), channels = self.held.len(),
            "standby subscriptions on a replica");
        self.standby = Some(side);
        self.missing = self.held.clone();
        self.gauge.set(1);
        self.dedup.start();
    }

    fn end_standby(&mut self, why: &str) {
        if let Some(side) = self.standby.take() {
            self.missing.clear();
            self.gauge.set(0);
            self.dedup.stop();
            tracing::info!(replica = %slot_map::host_port(&side.addr), reason = why,
                "standby subscriptions on a replica ended; the shard goes on from its master");
        }
    }
}

/// What the link's task holds: dropping it closes both connections.
pub(super) struct ShardConn {
    sides: Arc<Mutex<Sides>>,
    /// Where a standby's reader tells its end.
    ended: mpsc::UnboundedSender<u64>,
    _watcher: ReaderGuard,
}

impl ShardConn {
    fn lock(&self) -> std::sync::MutexGuard<'_, Sides> {
        lock(&self.sides)
    }

    /// Handles on both connections (the standby's may be None).
    fn conns(&self) -> (Option<MultiplexedConnection>, Option<MultiplexedConnection>) {
        let sides = self.lock();
        (sides.primary.as_ref().map(|s| s.conn.clone()), sides.standby.as_ref().map(|s| s.conn.clone()))
    }
}

impl Drop for ShardConn {
    fn drop(&mut self) {
        self.lock().gauge.set(0);
    }
}

fn lock(sides: &Mutex<Sides>) -> std::sync::MutexGuard<'_, Sides> {
    sides.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Passes the first copy of each message on: a shard read from two
/// servers delivers everything twice.
pub(super) struct Dedup {
    delivery: Delivery,
    /// Per channel: the highest `seq` passed on and the connection it
    /// came from.
    last: Mutex<HashMap<String, (u64, u64)>>,
    /// A standby is installed. Without one every message is passed on
    /// at once: no seq read, no lock (a cluster without replicas, or
    /// standbys off, pays nothing for them).
    active: AtomicBool,
    /// Where the readers' `sunsubscribe`s go (set at each connect).
    notices: Mutex<Option<mpsc::UnboundedSender<Notice>>>,
}

impl Dedup {
    fn new(delivery: Delivery) -> Self {
        Dedup { delivery, active: AtomicBool::new(false), last: Mutex::default(), notices: Mutex::default() }
    }

    /// A standby was installed: from now on each message may come twice.
    /// Before its SSUBSCRIBEs, so every message it will bring is recorded
    /// on its first copy.
    fn start(&self) {
        self.active.store(true, Ordering::SeqCst);
    }

    /// The standby is gone: one copy of each message again.
    fn stop(&self) {
        self.active.store(false, Ordering::SeqCst);
        self.last.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// Delivers `payload` unless it is the other connection's copy of a
    /// message passed on already. A `seq` lower than the last from the
    /// *same* connection is a stream that started again (its counter
    /// reset) and passes.
    fn deliver(&self, channel: &str, payload: &[u8], side: u64, pace: Pace) {
        if !self.active.load(Ordering::SeqCst)
            || channel == self.delivery.reply_channel
            || self.delivery.probes.is_probe(channel)
        {
            // A second reply finds no waiting request (dropped there); a
            // second probe finds its nonce answered already.
            self.delivery.deliver(channel, payload, pace);
            return;
        }
        let Some(seq) = wire::envelope::peek_seq(payload) else {
            // Refused and counted by the hub, once per copy.
            self.delivery.deliver(channel, payload, pace);
            return;
        };
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if first_copy(&mut last, channel, seq, side) {
            // Under the lock: the other reader's copy must not overtake it.
            self.delivery.deliver(channel, payload, pace);
        }
    }

    /// A server ended `channel`'s subscription on one of the connections:
    /// the manager subscribes it again (on both).
    fn dropped(&self, channel: String) {
        if let Some(tx) = self.notices.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            let _ = tx.send(Notice::Dropped(channel));
        }
    }

    /// A new connection: nothing it brings was passed on before. (Also
    /// forgets channels let go while the link was down.)
    fn restart(&self, notices: mpsc::UnboundedSender<Notice>) {
        self.stop();
        *self.notices.lock().unwrap_or_else(PoisonError::into_inner) = Some(notices);
    }

    fn forget(&self, channels: &[String]) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        for channel in channels {
            last.remove(channel);
        }
    }
}

/// Whether message `seq` of `channel`, read on connection `side`, is the
/// first copy (and records it).
fn first_copy(last: &mut HashMap<String, (u64, u64)>, channel: &str, seq: u64, side: u64) -> bool {
    match last.get_mut(channel) {
        Some((s, from)) if seq <= *s && *from != side => false,
        Some(entry) => {
            *entry = (seq, side);
            true
        }
        None => {
            last.insert(channel.to_owned(), (seq, side));
            true
        }
    }
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
async fn per_channel(
    conn: Option<MultiplexedConnection>,
    command: &str,
    channels: &[String],
) -> Vec<Outcome> {
    let Some(conn) = conn else { return vec![Outcome::Lost; channels.len()] };
    let calls = channels.iter().map(|channel| {
        let mut conn = conn.clone();
        let cmd = redis::cmd(command).arg(channel).clone();
        async move { outcome(cmd.query_async::<Value>(&mut conn).await) }
    });
    join_all(calls).await
}

impl Connector for ShardConnector {
    type Conn = ShardConn;

    fn connect(&self) -> BoxFuture<'_, Result<Connected<Self::Conn>, String>> {
        Box::pin(async move {
            let nodes = {
                let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
                *seen = self.nodes.clone();
                seen.borrow_and_update().clone()
            };
            let (ended, mut ended_rx) = mpsc::unbounded_channel();
            let primary = self.opener.open(&nodes.master, ended.clone()).await?;
            let sides = Arc::new(Mutex::new(Sides {
                primary: Some(primary),
                standby: None,
                held: HashSet::new(),
                missing: HashSet::new(),
                busy: false,
                gauge: self.gauge.clone(),
                dedup: Arc::clone(&self.opener.dedup),
            }));
            let (tx, rx) = mpsc::unbounded_channel();
            self.opener.dedup.restart(tx.clone());
            // A reader that ended: the primary's end is the link's loss,
            // the standby's only the standby's.
            let watched = Arc::downgrade(&sides);
            let watcher = tokio::spawn(async move {
                while let Some(id) = ended_rx.recv().await {
                    let Some(sides) = watched.upgrade() else { return };
                    let mut sides = lock(&sides);
                    if sides.primary.as_ref().is_some_and(|s| s.id == id) {
                        sides.primary = None;
                        let _ = tx.send(Notice::Lost("connection to the master closed".into()));
                        return;
                    }
                    if sides.standby.as_ref().is_some_and(|s| s.id == id) {
                        sides.end_standby("connection closed");
                    }
                }
            });
            let conn = ShardConn { sides, ended, _watcher: ReaderGuard(watcher) };
            self.tend_standby(&conn, &nodes);
            Ok((conn, rx))
        })
    }

    fn subscribe<'a>(
        &'a self,
        conn: &'a mut Self::Conn,
        channels: &'a [String],
    ) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            let (primary, standby) = conn.conns();
            let has_standby = standby.is_some();
            let (outcomes, backup) = tokio::join!(
                per_channel(primary, "SSUBSCRIBE", channels),
                per_channel(standby, "SSUBSCRIBE", channels)
            );
            let mut sides = conn.lock();
            // A standby installed meanwhile did not get these: the next
            // health check subscribes them there.
            let standby_now = sides.standby.is_some();
            for ((channel, outcome), backup) in channels.iter().zip(&outcomes).zip(&backup) {
                if *outcome == Outcome::Held {
                    sides.held.insert(channel.clone());
                }
                if has_standby && *backup == Outcome::Held {
                    sides.missing.remove(channel);
                } else if standby_now {
                    sides.missing.insert(channel.clone());
                }
            }
            outcomes
        })
    }

    fn unsubscribe<'a>(
        &'a self,
        conn: &'a mut Self::Conn,
        channels: &'a [String],
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let (primary, standby) = conn.conns();
            let (outcomes, _) = tokio::join!(
                per_channel(primary, "SUNSUBSCRIBE", channels),
                per_channel(standby, "SUNSUBSCRIBE", channels)
            );
            {
                let mut sides = conn.lock();
                for channel in channels {
                    sides.held.remove(channel);
                    sides.missing.remove(channel);
                }
            }
            self.opener.dedup.forget(channels);
            // A refusal (the slot moved on) leaves nothing to unsubscribe.
            match outcomes.contains(&Outcome::Lost) {
                true => Err("sunsubscribe: connection lost".into()),
                false => Ok(()),
            }
        })
    }

    fn ping<'a>(&'a self, conn: &'a mut Self::Conn) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let (primary, standby) = conn.conns();
            let Some(mut primary) = primary else { return Err("connection to the master closed".into()) };
            redis::cmd("PING").query_async::<Value>(&mut primary).await.map_err(|e| e.to_string())?;
            if let Some(mut standby) = standby {
                let ping = redis::cmd("PING");
                let pinged = timeout(self.opener.timeout / 2, ping.query_async::<Value>(&mut standby)).await;
                if !matches!(pinged, Ok(Ok(_))) {
                    conn.lock().end_standby("ping failed");
                }
            }
            // After a planned switch the standby's node is the master:
            // it becomes the primary, whose loss is the shard's.
            let nodes = self.nodes.borrow().clone();
            {
                let mut sides = conn.lock();
                if sides.missing.is_empty()
                    && sides.standby.as_ref().is_some_and(|s| s.addr == nodes.master)
                    && sides.primary.as_ref().is_some_and(|s| s.addr != nodes.master)
                {
                    let Sides { primary, standby, .. } = &mut *sides;
                    std::mem::swap(primary, standby);
                }
            }
            // A replica that joined (or came back) since: standby again.
            self.tend_standby(conn, &nodes);
            Ok(())
        })
    }

    fn changed(&self) -> BoxFuture<'_, ()> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Box::pin(async move {
            if seen.changed().await.is_err() {
                // The topology is gone (shutdown): never.
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_message_passes_once_whichever_connection_brings_it_first() {
        let mut last = HashMap::new();
        let passed = |last: &mut HashMap<_, _>, seqs: &[(u64, u64)]| -> Vec<u64> {
            seqs.iter()
                .filter(|(seq, side)| first_copy(last, "rt:q", *seq, *side))
                .map(|(seq, _)| *seq)
                .collect()
        };
        // The master's copy first, the replica's a little later.
        assert_eq!(passed(&mut last, &[(1, 1), (2, 1), (1, 2), (3, 1), (2, 2), (3, 2)]), [1, 2, 3]);
        // The master's connection misses 4 and 5 (a switch): the replica's pass.
        assert_eq!(passed(&mut last, &[(4, 2), (5, 2), (6, 1), (6, 2), (7, 2), (7, 1)]), [4, 5, 6, 7]);
        // A publisher whose counter started again: its stream goes back
        // on one connection, and the other's copies of the new numbers
        // are still dropped.
        assert_eq!(passed(&mut last, &[(1, 1), (1, 2), (2, 2), (2, 1)]), [1, 2]);
        assert!(first_copy(&mut last, "rt:other", 9, 2), "channels are apart");
    }
}
