//! The Redis Cluster backplane (Redis 7+): topics travel on sharded
//! pub/sub, so a message only crosses the shard that owns its channel's
//! slot instead of being broadcast to every node of the cluster.
//!
//! One RESP3 cluster connection (a multiplexed link per cluster node,
//! routed by slot) carries everything: SSUBSCRIBE / SUNSUBSCRIBE,
//! publishing (`SPUBLISH` inside the shared scripts), snapshot and history
//! reads, order requests. Pushes arrive on one channel, read by a reader
//! task that feeds messages into the hub and order replies into the
//! request table.
//!
//! A manager task owns the wanted-topic set exactly as `redis_pubsub`
//! does: SSUBSCRIBE on a topic's first local subscriber (the client hears
//! `subscribed` once the shard confirmed), SUNSUBSCRIBE after a grace
//! delay if the hub still has nobody, requests batched. A topic whose
//! shard is down is recorded and subscribed when the shard answers again,
//! as the single-Redis backplane does while Redis is away.
//!
//! redis-rs re-subscribes confirmed channels by itself after a node link
//! drops and when slots move, but not always (a link reinstalled by a
//! redirected request during a topology refresh starts empty). So the
//! periodic health check asks every master, on the link to it, for
//! `CLIENT INFO`: an answer means the shard is up (readiness), and its
//! `ssub=` count tells whether the link still holds every channel this
//! node wants there; a link holding fewer gets them subscribed again.

use std::collections::{HashMap, HashSet};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures_util::future::join_all;
use rand::Rng;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use wire::scripts::PublishCommand;
use wire::{Topic, keys};

use super::redis_commands::{self, ScriptPublisher};
use super::{BoxFuture, Broker, BrokerError};
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::requests::Requests;

mod health;

use health::cluster_health;

/// Commands gathered into one batch.
const BATCH: usize = 512;
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Health check period while the cluster is not wholly up.
const DEGRADED_CHECK: Duration = Duration::from_millis(500);

/// The cluster connection, once the manager has one. Everyone else clones
/// it from here: it is multiplexed, and a clone is a handle, not a link.
type ConnSlot = Arc<RwLock<Option<ClusterConnection>>>;

pub struct RedisClusterBroker {
    /// Requests to the manager task.
    commands: mpsc::UnboundedSender<Command>,
    conn: ConnSlot,
    ready: Arc<AtomicBool>,
    prefix: String,
    timeout: Duration,
    /// Publishes through the shared scripts, with `SPUBLISH`.
    scripts: ScriptPublisher,
}

impl RedisClusterBroker {
    /// Starts the manager and the push reader; they connect in the
    /// background, so a node whose cluster is not up yet starts anyway
    /// (and reports not ready).
    pub fn start(
        config: &Config,
        node_id: &str,
        hub: Arc<Hub>,
        requests: Arc<Requests>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Self, BrokerError> {
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let client = ClusterClientBuilder::new(config.redis_seeds())
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(push_tx)
            .connection_timeout(config.redis_timeout())
            .response_timeout(config.redis_timeout())
            .build()
            .map_err(|e| BrokerError::Unavailable(format!("invalid redis_url: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let conn: ConnSlot = Arc::default();
        let ready = Arc::new(AtomicBool::new(false));
        let reply_channel = keys::node_replies(&config.channel_prefix, node_id);
        let reader = Reader {
            hub: Arc::clone(&hub),
            requests,
            prefix: config.channel_prefix.clone(),
            reply_channel: reply_channel.clone(),
        };
        tokio::spawn(read_pushes(push_rx, reader, tx.clone(), shutdown.clone()));
        let manager = Manager {
            client,
            conn: Arc::clone(&conn),
            hub,
            metrics,
            prefix: config.channel_prefix.clone(),
            reply_channel,
            reply_confirmed: false,
            ready: Arc::clone(&ready),
            commands: rx,
            grace: config.unsubscribe_grace(),
            timeout: config.redis_timeout(),
            backoff_max: config.redis_backoff_max(),
            shutdown,
            wanted: HashSet::new(),
            unconfirmed: HashSet::new(),
            releasing: HashMap::new(),
            leftover: HashSet::new(),
            down: Vec::new(),
            slot_map: Vec::new(),
            up: false,
            connected_before: false,
            outage_logged: false,
        };
        tokio::spawn(manager.run());
        Ok(RedisClusterBroker {
            commands: tx,
            conn,
            ready,
            prefix: config.channel_prefix.clone(),
            timeout: config.redis_timeout(),
            scripts: ScriptPublisher::new(
                &config.channel_prefix,
                PublishCommand::SPublish,
                config.history_maxlen,
            ),
        })
    }

    fn conn(&self) -> Result<ClusterConnection, BrokerError> {
        let slot = self.conn.read().unwrap_or_else(PoisonError::into_inner);
        slot.clone().ok_or_else(|| BrokerError::Unavailable("not connected to the Redis Cluster yet".into()))
    }

    /// Runs one command through the cluster connection (routed by its
    /// key), bounded by the timeout.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BrokerError> {
        let mut conn = self.conn()?;
        timeout(self.timeout, cmd.query_async::<T>(&mut conn))
            .await
            .map_err(|_| BrokerError::Timeout)?
            .map_err(|e| BrokerError::Refused(e.to_string()))
    }
}

impl Broker for RedisClusterBroker {
    fn subscribe<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.commands
                .send(Command::Subscribe(topic.clone(), tx))
                .map_err(|_| BrokerError::Unavailable("backplane stopped".into()))?;
            rx.await.map_err(|_| BrokerError::Unavailable("backplane stopped".into()))?
        })
    }

    fn release(&self, topic: &Topic) {
        // Fails only once the manager stopped at shutdown; nothing to release then.
        let _ = self.commands.send(Command::Release(topic.clone()));
    }

    fn publish<'a>(
        &'a self,
        topic: &'a Topic,
        data_json: &'a str,
        traceparent: Option<&'a str>,
        id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<u64, BrokerError>> {
        Box::pin(async move {
            let mut conn = self.conn()?;
            let work = self.scripts.publish(&mut conn, topic, data_json, traceparent, id);
            timeout(self.timeout, work).await.map_err(|_| BrokerError::Timeout)?
        })
    }

    fn last_value<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<Option<Vec<u8>>, BrokerError>> {
        Box::pin(async move { self.query(&redis_commands::last_value_cmd(&self.prefix, topic)).await })
    }

    fn history_after<'a>(
        &'a self,
        topic: &'a Topic,
        since: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Vec<u8>>, BrokerError>> {
        Box::pin(async move {
            let cmd = redis_commands::history_cmd(&self.prefix, topic, since, limit);
            Ok(redis_commands::history_envelopes(self.query(&cmd).await?))
        })
    }

    fn submit_order<'a>(&'a self, request_json: String) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let _id: String =
                self.query(&redis_commands::order_request_cmd(&self.prefix, request_json)).await?;
            Ok(())
        })
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn kind(&self) -> &'static str {
        "redis-cluster"
    }
}

enum Command {
    Subscribe(Topic, oneshot::Sender<Result<(), BrokerError>>),
    Release(Topic),
    /// A node link dropped (redis-rs's disconnection push): check now
    /// rather than at the next health tick.
    LinkLost,
    /// A shard ended a subscription on this channel (our own SUNSUBSCRIBE,
    /// or a slot that moved away); subscribe again if it is still wanted.
    Dropped(String),
}

/// Owns the cluster connection's subscriptions and the node's
/// wanted-topic set.
struct Manager {
    client: ClusterClient,
    conn: ConnSlot,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    prefix: String,
    /// This node's reply channel: subscribed from the start, never released.
    reply_channel: String,
    reply_confirmed: bool,
    ready: Arc<AtomicBool>,
    commands: mpsc::UnboundedReceiver<Command>,
    grace: Duration,
    timeout: Duration,
    backoff_max: Duration,
    shutdown: CancellationToken,
    /// Topics this node wants from the cluster.
    wanted: HashSet<Topic>,
    /// Wanted topics to SSUBSCRIBE (again): asked for while their shard
    /// was down, dropped by a shard, or missing from a link. Subscribed at
    /// the next health check that finds their shard up.
    unconfirmed: HashSet<Topic>,
    /// Wanted topics whose last local subscriber left, with the time at
    /// which they are unsubscribed unless someone came back.
    releasing: HashMap<Topic, Instant>,
    /// Released topics whose SUNSUBSCRIBE could not be sent; retried once
    /// the cluster answers, unless wanted again by then.
    leftover: HashSet<Topic>,
    /// Slot ranges whose master did not answer at the last check (all
    /// of them when the cluster could not even be asked): topics there
    /// are recorded, not subscribed, until it answers.
    down: Vec<RangeInclusive<u16>>,
    /// The last slot map read, to know which masters to ask when the node
    /// asked for it does not answer.
    slot_map: Vec<(RangeInclusive<u16>, (String, u16))>,
    /// The backplane answered at the last check (drives readiness).
    up: bool,
    /// It was up once: coming back counts as a reconnect.
    connected_before: bool,
    outage_logged: bool,
}

impl Manager {
    async fn run(mut self) {
        let Some(conn) = self.connect().await else {
            return;
        };
        *self.conn.write().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
        self.serve(conn).await;
        self.set_up(false);
        // Dropping the last handle ends redis-rs's tasks, and with them the
        // push channel the reader waits on.
        *self.conn.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Makes the first connection (learning the slot map from a seed),
    /// retrying with jittered backoff; None on shutdown. Later losses are
    /// repaired by redis-rs inside the connection.
    async fn connect(&mut self) -> Option<ClusterConnection> {
        let mut backoff = BACKOFF_START;
        loop {
            if self.shutdown.is_cancelled() {
                return None;
            }
            // Each seed may take a connect timeout before the next is tried.
            let attempt = timeout(self.timeout * 2, self.client.get_async_connection()).await;
            let why = match attempt {
                Ok(Ok(conn)) => return Some(conn),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "connect timed out".to_string(),
            };
            if !self.outage_logged {
                tracing::warn!(error = %why, "redis cluster backplane unavailable; retrying with backoff");
                self.outage_logged = true;
            } else {
                tracing::debug!(error = %why, "redis cluster backplane still unavailable");
            }
            let jittered = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
            if !self.wait_offline(jittered).await {
                return None;
            }
            backoff = (backoff * 2).min(self.backoff_max);
        }
    }

    /// Serves subscribe/release requests until shutdown.
    async fn serve(&mut self, mut conn: ClusterConnection) {
        self.check(&mut conn).await;
        // Check as often as the timeout allows, so a master that vanished
        // without closing its socket is noticed within two timeouts; more
        // often while the cluster is degraded, when redis-rs swaps links
        // and a lost subscription is found (and made again) sooner.
        let healthy_every = self.timeout.max(DEGRADED_CHECK);
        let mut next_check = Instant::now() + healthy_every;
        loop {
            let next_release = self.releasing.values().min().copied();
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    let mut batch = vec![cmd];
                    while batch.len() < BATCH {
                        match self.commands.try_recv() {
                            Ok(cmd) => batch.push(cmd),
                            Err(_) => break,
                        }
                    }
                    self.apply(&mut conn, batch).await;
                }
                _ = super::sleep_until_opt(next_release) => self.expire(&mut conn).await,
                _ = tokio::time::sleep_until(next_check) => {
                    self.check(&mut conn).await;
                    next_check = Instant::now() + if self.up { healthy_every } else { DEGRADED_CHECK };
                }
            }
        }
    }

    /// Asks every master for `CLIENT INFO` on its link, re-subscribes what
    /// a link lost, then catches up, on the shards that answered, with
    /// what could not be done while they did not (reply channel, recorded
    /// topics, leftover releases). The backplane is up when every master
    /// answered and nothing is left to catch up on.
    async fn check(&mut self, conn: &mut ClusterConnection) {
        let health = cluster_health(conn, self.timeout, &mut self.slot_map).await;
        self.down = health.down;
        self.verify(&health.held);
        let caught_up = self.catch_up(conn).await;
        match health.problem.map_or(caught_up, Err) {
            Ok(()) => {
                self.outage_logged = false;
                self.set_up(true);
            }
            Err(why) => {
                // Once per outage at warn; every failed check at debug.
                if !self.outage_logged {
                    tracing::warn!(error = %why, "redis cluster backplane unreachable; clients stay connected");
                    self.outage_logged = true;
                } else {
                    tracing::debug!(error = %why, "redis cluster backplane still unreachable");
                }
                self.set_up(false);
            }
        }
    }

    /// Compares what each master's link holds (`ssub`) with what this
    /// node wants there, and marks the shard's topics for a fresh
    /// SSUBSCRIBE when the link holds fewer. redis-rs re-subscribes a link
    /// it repaired, but a request redirected during a topology refresh can
    /// install a fresh link first, and then nothing is re-subscribed on it.
    /// SSUBSCRIBE of a channel a link already holds is a no-op.
    fn verify(&mut self, held: &[(Vec<RangeInclusive<u16>>, usize)]) {
        if held.is_empty() {
            return;
        }
        let slots: Vec<(Topic, u16)> = self
            .wanted
            .iter()
            .filter(|t| !self.unconfirmed.contains(*t))
            .map(|t| (t.clone(), keys::cluster_slot(&keys::channel(&self.prefix, t.as_str()))))
            .collect();
        let reply_slot = keys::cluster_slot(&self.reply_channel);
        for (ranges, subscriptions) in held {
            let on = |slot: u16| ranges.iter().any(|r| r.contains(&slot));
            let mine: Vec<Topic> =
                slots.iter().filter(|(_, slot)| on(*slot)).map(|(t, _)| t.clone()).collect();
            let reply_here = self.reply_confirmed && on(reply_slot);
            let expected = mine.len() + usize::from(reply_here);
            if *subscriptions < expected {
                tracing::info!(
                    held = subscriptions,
                    expected,
                    "a shard link holds fewer subscriptions than wanted; subscribing again"
                );
                self.unconfirmed.extend(mine);
                if reply_here {
                    self.reply_confirmed = false;
                }
            }
        }
    }

    /// Whether `channel`'s shard did not answer at the last check.
    fn is_down(&self, channel: &str) -> bool {
        let slot = keys::cluster_slot(channel);
        self.down.iter().any(|range| range.contains(&slot))
    }

    fn topic_down(&self, topic: &Topic) -> bool {
        self.is_down(&keys::channel(&self.prefix, topic.as_str()))
    }

    async fn catch_up(&mut self, conn: &mut ClusterConnection) -> Result<(), String> {
        let mut problem = None;
        if !self.reply_confirmed && !self.is_down(&self.reply_channel) {
            match timeout(self.timeout, conn.ssubscribe(&self.reply_channel)).await {
                Ok(Ok(())) => self.reply_confirmed = true,
                Ok(Err(e)) => problem = Some(format!("reply channel: {e}")),
                Err(_) => problem = Some("reply channel subscribe timed out".into()),
            }
        }
        // Recorded topics whose subscribers left meanwhile are forgotten.
        let hub = Arc::clone(&self.hub);
        let gone: Vec<Topic> =
            self.unconfirmed.iter().filter(|t| !hub.has_subscribers(t.as_str())).cloned().collect();
        for topic in gone {
            self.unconfirmed.remove(&topic);
            self.wanted.remove(&topic);
            self.releasing.remove(&topic);
        }
        let due: Vec<Topic> = self.unconfirmed.iter().filter(|t| !self.topic_down(t)).cloned().collect();
        if !due.is_empty() {
            for (group, result) in self.shard_command(conn, due, Sharded::Subscribe).await {
                match result {
                    Ok(()) => group.iter().for_each(|t| {
                        self.unconfirmed.remove(t);
                    }),
                    Err(e) => problem = Some(format!("re-subscribe: {e}")),
                }
            }
        }
        if problem.is_none() && !(self.reply_confirmed && self.unconfirmed.is_empty()) {
            problem = Some("subscriptions wait for their shard".into());
        }
        let wanted = &self.wanted;
        self.leftover.retain(|t| !wanted.contains(t));
        let due: Vec<Topic> = self.leftover.iter().filter(|t| !self.topic_down(t)).cloned().collect();
        if !due.is_empty() {
            for (group, result) in self.shard_command(conn, due, Sharded::Unsubscribe).await {
                match result {
                    // Not worth readiness: at worst messages nobody here wants arrive.
                    Err(e) => {
                        tracing::debug!(error = %e, "sunsubscribe of released topics failed; retrying later")
                    }
                    Ok(()) => group.iter().for_each(|t| {
                        self.leftover.remove(t);
                    }),
                }
            }
        }
        match problem {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    fn set_up(&mut self, up: bool) {
        if up == self.up {
            return;
        }
        self.up = up;
        self.ready.store(up, Ordering::Relaxed);
        if up {
            self.metrics.backplane_up.inc();
            if self.connected_before {
                self.metrics.backplane_reconnects.inc();
                tracing::info!(
                    topics = self.wanted.len(),
                    "redis cluster backplane back; topics re-subscribed"
                );
            } else {
                tracing::info!("redis cluster backplane connected");
            }
            self.connected_before = true;
        } else {
            self.metrics.backplane_up.dec();
        }
    }

    /// Applies a batch of commands with one SSUBSCRIBE per slot involved.
    async fn apply(&mut self, conn: &mut ClusterConnection, batch: Vec<Command>) {
        let mut new_topics: Vec<Topic> = Vec::new();
        let mut waiting: Vec<(Topic, oneshot::Sender<Result<(), BrokerError>>)> = Vec::new();
        let mut check_now = false;
        for cmd in batch {
            match cmd {
                Command::Subscribe(topic, reply) => {
                    self.releasing.remove(&topic);
                    self.leftover.remove(&topic);
                    if self.wanted.contains(&topic) {
                        let _ = reply.send(Ok(()));
                    } else if self.topic_down(&topic) {
                        // Recorded, and subscribed once its shard answers
                        // (as the single-Redis backplane does while away).
                        self.wanted.insert(topic.clone());
                        self.unconfirmed.insert(topic);
                        let _ = reply.send(Ok(()));
                    } else {
                        if !new_topics.contains(&topic) {
                            new_topics.push(topic.clone());
                        }
                        waiting.push((topic, reply));
                    }
                }
                Command::Release(topic) => {
                    if self.wanted.contains(&topic) || new_topics.contains(&topic) {
                        self.releasing.insert(topic, Instant::now() + self.grace);
                    }
                }
                Command::LinkLost => check_now = true,
                Command::Dropped(channel) => {
                    if channel == self.reply_channel {
                        self.reply_confirmed = false;
                        check_now = true;
                    } else if let Some(topic) = keys::topic_of_channel(&self.prefix, &channel)
                        && let Some(topic) = self.wanted.get(topic).cloned()
                    {
                        // Harmless if it was our own SUNSUBSCRIBE racing a
                        // resubscribe: SSUBSCRIBE twice is a no-op.
                        self.unconfirmed.insert(topic);
                        check_now = true;
                    }
                }
            }
        }
        if !new_topics.is_empty() {
            let mut failed: HashMap<Topic, BrokerError> = HashMap::new();
            for (group, result) in self.shard_command(conn, new_topics, Sharded::Subscribe).await {
                match result {
                    Ok(()) => self.wanted.extend(group),
                    Err(e) => {
                        for topic in group {
                            failed.insert(topic, e.clone());
                        }
                    }
                }
            }
            for (topic, reply) in waiting {
                let _ = reply.send(match failed.get(&topic) {
                    Some(e) => Err(e.clone()),
                    None => Ok(()),
                });
            }
        }
        if check_now {
            self.check(conn).await;
        }
    }

    /// Unsubscribes released topics whose grace delay ran out and that
    /// still have no local subscriber.
    async fn expire(&mut self, conn: &mut ClusterConnection) {
        let now = Instant::now();
        let due: Vec<Topic> =
            self.releasing.iter().filter(|(_, at)| **at <= now).map(|(t, _)| t.clone()).collect();
        let mut gone = Vec::new();
        for topic in due {
            self.releasing.remove(&topic);
            if !self.hub.has_subscribers(topic.as_str()) {
                self.wanted.remove(&topic);
                // Unsubscribed even if not confirmed (it may be held after
                // all): SUNSUBSCRIBE of a channel not held is a no-op.
                self.unconfirmed.remove(&topic);
                gone.push(topic);
            }
        }
        let (gone, later): (Vec<Topic>, Vec<Topic>) = gone.into_iter().partition(|t| !self.topic_down(t));
        self.leftover.extend(later);
        if gone.is_empty() {
            return;
        }
        for (group, result) in self.shard_command(conn, gone, Sharded::Unsubscribe).await {
            if let Err(e) = result {
                tracing::debug!(error = %e, "sunsubscribe failed; retrying once the cluster answers");
                self.leftover.extend(group);
            }
        }
    }

    /// Sends SSUBSCRIBE or SUNSUBSCRIBE for `topics`, one command per slot
    /// (a sharded subscription command must stay within one slot), all in
    /// flight at once. Returns each slot's topics with its outcome.
    async fn shard_command(
        &self,
        conn: &ClusterConnection,
        topics: Vec<Topic>,
        command: Sharded,
    ) -> Vec<(Vec<Topic>, Result<(), BrokerError>)> {
        let mut by_slot: HashMap<u16, Vec<Topic>> = HashMap::new();
        for topic in topics {
            let slot = keys::cluster_slot(&keys::channel(&self.prefix, topic.as_str()));
            by_slot.entry(slot).or_default().push(topic);
        }
        let calls = by_slot.into_values().map(|group| {
            let mut conn = conn.clone();
            let channels: Vec<String> =
                group.iter().map(|t| keys::channel(&self.prefix, t.as_str())).collect();
            async move {
                let sent = match command {
                    Sharded::Subscribe => timeout(self.timeout, conn.ssubscribe(&channels)).await,
                    Sharded::Unsubscribe => timeout(self.timeout, conn.sunsubscribe(&channels)).await,
                };
                let result = match sent {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(BrokerError::Refused(e.to_string())),
                    Err(_) => Err(BrokerError::Timeout),
                };
                (group, result)
            }
        });
        join_all(calls).await
    }

    /// Waits out a backoff delay before the first connection, still
    /// answering requests: subscribes are recorded (and made once
    /// connected), releases forget topics nobody here wants. Returns false
    /// on shutdown.
    async fn wait_offline(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                _ = tokio::time::sleep_until(until) => return true,
                cmd = self.commands.recv() => match cmd {
                    None => return false,
                    Some(Command::Subscribe(topic, reply)) => {
                        self.releasing.remove(&topic);
                        self.wanted.insert(topic.clone());
                        self.unconfirmed.insert(topic);
                        let _ = reply.send(Ok(()));
                    }
                    Some(Command::Release(topic)) => {
                        if !self.hub.has_subscribers(topic.as_str()) {
                            self.wanted.remove(&topic);
                            self.unconfirmed.remove(&topic);
                            self.releasing.remove(&topic);
                        }
                    }
                    Some(Command::LinkLost | Command::Dropped(_)) => {}
                },
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Sharded {
    Subscribe,
    Unsubscribe,
}

/// Where the reader delivers what it receives.
struct Reader {
    hub: Arc<Hub>,
    requests: Arc<Requests>,
    prefix: String,
    reply_channel: String,
}

/// Turns the cluster connection's pushes into hub deliveries (topic
/// messages), resolved requests (order replies) and manager notices
/// (dropped links and subscriptions), until shutdown.
async fn read_pushes(
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    reader: Reader,
    manager: mpsc::UnboundedSender<Command>,
    shutdown: CancellationToken,
) {
    loop {
        let push = tokio::select! {
            _ = shutdown.cancelled() => return,
            push = pushes.recv() => match push {
                Some(push) => push,
                None => return,
            },
        };
        match push.kind {
            PushKind::SMessage => {
                let [Value::BulkString(channel), Value::BulkString(payload)] = push.data.as_slice() else {
                    continue;
                };
                let Ok(channel) = std::str::from_utf8(channel) else {
                    continue;
                };
                if channel == reader.reply_channel {
                    reader.requests.resolve(payload);
                } else if let Some(topic) = keys::topic_of_channel(&reader.prefix, channel) {
                    reader.hub.ingest(topic, payload);
                }
            }
            PushKind::SUnsubscribe => {
                if let Some(Value::BulkString(channel)) = push.data.first() {
                    let _ = manager.send(Command::Dropped(String::from_utf8_lossy(channel).into_owned()));
                }
            }
            PushKind::Disconnection => {
                let _ = manager.send(Command::LinkLost);
            }
            _ => {}
        }
    }
}
