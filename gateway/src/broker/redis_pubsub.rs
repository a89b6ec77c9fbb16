//! One Redis pub/sub connection and the topics it carries for this node.
//!
//! A manager task owns the connection and the set of topics wanted on it,
//! so hub and Redis never disagree: subscribe requests are batched into
//! one SUBSCRIBE, releases wait a grace delay and re-check the hub before
//! UNSUBSCRIBE, and after a lost connection the manager reconnects with
//! jittered backoff and re-subscribes the whole set while client sockets
//! stay open. A separate reader task feeds received messages into the
//! hub (and order replies into the request table), so message flow never
//! waits for a subscribe round trip.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use wire::{Topic, keys};

use super::BrokerError;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::requests::Requests;

/// Channels per SUBSCRIBE when re-subscribing a large set.
const RESUBSCRIBE_CHUNK: usize = 1000;
/// Commands gathered into one batch.
const BATCH: usize = 512;
const BACKOFF_START: Duration = Duration::from_millis(100);

enum Command {
    Subscribe(Topic, oneshot::Sender<Result<(), BrokerError>>),
    Release(Topic),
    /// The reader of connection `generation` saw its stream end.
    Lost(u64),
}

/// What one pub/sub connection is set up with.
pub struct ShardSettings {
    pub client: redis::Client,
    pub hub: Arc<Hub>,
    pub requests: Arc<Requests>,
    /// Set on exactly one shard of the node.
    pub reply_channel: Option<String>,
    pub metrics: Arc<Metrics>,
    pub prefix: String,
    pub grace: Duration,
    pub timeout: Duration,
    pub backoff_max: Duration,
    pub shutdown: CancellationToken,
}

/// Handle to one pub/sub connection's manager task.
pub struct Shard {
    commands: mpsc::UnboundedSender<Command>,
    ready: Arc<AtomicBool>,
}

impl Shard {
    /// Starts the manager; it connects in the background.
    pub fn spawn(settings: ShardSettings) -> Shard {
        let (tx, rx) = mpsc::unbounded_channel();
        let ready = Arc::new(AtomicBool::new(false));
        let manager = Manager {
            client: settings.client,
            hub: settings.hub,
            requests: settings.requests,
            reply_channel: settings.reply_channel,
            metrics: settings.metrics,
            prefix: settings.prefix,
            ready: Arc::clone(&ready),
            commands: rx,
            lost_tx: tx.clone(),
            grace: settings.grace,
            timeout: settings.timeout,
            backoff_max: settings.backoff_max,
            shutdown: settings.shutdown,
            wanted: HashSet::new(),
            releasing: HashMap::new(),
            generation: 0,
        };
        tokio::spawn(manager.run());
        Shard { commands: tx, ready }
    }

    /// Resolves once Redis confirmed the subscription (or, while Redis is
    /// away, once the topic is recorded for the reconnect).
    pub async fn subscribe(&self, topic: &Topic) -> Result<(), BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Subscribe(topic.clone(), tx))
            .map_err(|_| BrokerError::Unavailable("backplane stopped".into()))?;
        rx.await.map_err(|_| BrokerError::Unavailable("backplane stopped".into()))?
    }

    pub fn release(&self, topic: &Topic) {
        // Fails only once the manager stopped at shutdown; nothing to release then.
        let _ = self.commands.send(Command::Release(topic.clone()));
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Owns the pub/sub connection and the node's wanted-topic set.
struct Manager {
    client: redis::Client,
    hub: Arc<Hub>,
    /// Where replies to this node's order requests go.
    requests: Arc<Requests>,
    /// This node's reply channel, on the first connection only: subscribed
    /// on every (re)connect, never released.
    reply_channel: Option<String>,
    metrics: Arc<Metrics>,
    prefix: String,
    ready: Arc<AtomicBool>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Handed to each reader so it can report its connection's end.
    lost_tx: mpsc::UnboundedSender<Command>,
    grace: Duration,
    timeout: Duration,
    backoff_max: Duration,
    shutdown: CancellationToken,
    /// Topics this node wants from Redis: subscribed while connected,
    /// re-subscribed on every reconnect.
    wanted: HashSet<Topic>,
    /// Wanted topics whose last local subscriber left, with the time at
    /// which they are unsubscribed unless someone came back.
    releasing: HashMap<Topic, Instant>,
    /// Numbers connections so a late "lost" from an old reader is ignored.
    generation: u64,
}

/// Why a connected session ended.
enum Ended {
    Shutdown,
    Lost(String),
}

impl Manager {
    async fn run(mut self) {
        let mut backoff = BACKOFF_START;
        let mut connected_before = false;
        let mut outage_logged = false;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            match self.connect().await {
                Ok((sink, stream)) => {
                    self.generation += 1;
                    let reader = tokio::spawn(read_messages(
                        stream,
                        Reader {
                            hub: Arc::clone(&self.hub),
                            requests: Arc::clone(&self.requests),
                            prefix: self.prefix.clone(),
                            reply_channel: self.reply_channel.clone(),
                        },
                        self.lost_tx.clone(),
                        self.generation,
                    ));
                    let ended = self.serve(sink, connected_before).await;
                    reader.abort();
                    self.ready.store(false, Ordering::Relaxed);
                    self.metrics.backplane_up.dec();
                    match ended {
                        Ended::Shutdown => return,
                        Ended::Lost(why) => {
                            tracing::warn!(error = %why, "redis backplane connection lost; reconnecting");
                            outage_logged = true;
                        }
                    }
                    connected_before = true;
                    backoff = BACKOFF_START;
                }
                Err(e) => {
                    // Once per outage at warn; every retry at debug.
                    if !outage_logged {
                        tracing::warn!(error = %e, "redis backplane unavailable; retrying with backoff");
                        outage_logged = true;
                    } else {
                        tracing::debug!(error = %e, "redis backplane still unavailable");
                    }
                }
            }
            let jittered = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
            if !self.wait_offline(jittered).await {
                return;
            }
            backoff = (backoff * 2).min(self.backoff_max);
        }
    }

    async fn connect(&mut self) -> Result<(PubSubSink, PubSubStream), String> {
        let pubsub = timeout(self.timeout, self.client.get_async_pubsub())
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let (mut sink, stream) = pubsub.split();
        // Before declaring readiness, subscribe everything still wanted.
        self.drop_unwanted();
        let mut channels: Vec<String> =
            self.wanted.iter().map(|t| keys::channel(&self.prefix, t.as_str())).collect();
        channels.extend(self.reply_channel.clone());
        for chunk in channels.chunks(RESUBSCRIBE_CHUNK) {
            timeout(self.timeout, sink.subscribe(chunk))
                .await
                .map_err(|_| "re-subscribe timed out".to_string())?
                .map_err(|e| e.to_string())?;
        }
        Ok((sink, stream))
    }

    /// Forgets wanted topics that no longer have local subscribers.
    fn drop_unwanted(&mut self) {
        let hub = &self.hub;
        self.wanted.retain(|t| hub.has_subscribers(t.as_str()));
        self.releasing.retain(|t, _| hub.has_subscribers(t.as_str()));
    }

    /// Serves subscribe/release requests on a live connection.
    async fn serve(&mut self, mut sink: PubSubSink, reconnected: bool) -> Ended {
        self.ready.store(true, Ordering::Relaxed);
        self.metrics.backplane_up.inc();
        if reconnected {
            self.metrics.backplane_reconnects.inc();
            tracing::info!(topics = self.wanted.len(), "redis backplane reconnected; topics re-subscribed");
        } else {
            tracing::info!("redis backplane connected");
        }
        // PING as often as the timeout allows, so a peer that vanished
        // without closing the socket is noticed within two timeouts.
        let mut health = tokio::time::interval(self.timeout.max(Duration::from_millis(500)));
        health.reset();
        loop {
            let next_release = self.releasing.values().min().copied();
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ended::Shutdown,
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { return Ended::Shutdown };
                    let mut batch = vec![cmd];
                    while batch.len() < BATCH {
                        match self.commands.try_recv() {
                            Ok(cmd) => batch.push(cmd),
                            Err(_) => break,
                        }
                    }
                    if let Err(why) = self.apply(&mut sink, batch).await {
                        return Ended::Lost(why);
                    }
                }
                _ = super::sleep_until_opt(next_release) => {
                    if let Err(why) = self.expire(&mut sink).await {
                        return Ended::Lost(why);
                    }
                }
                _ = health.tick() => {
                    // In subscribed mode (RESP2) PING answers ["pong", ""], not +PONG.
                    match timeout(self.timeout, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Ended::Lost(e.to_string()),
                        Err(_) => return Ended::Lost("ping timed out".into()),
                    }
                }
            }
        }
    }

    /// Applies a batch of commands with at most one SUBSCRIBE.
    async fn apply(&mut self, sink: &mut PubSubSink, batch: Vec<Command>) -> Result<(), String> {
        let mut new_topics: Vec<Topic> = Vec::new();
        let mut waiting: Vec<oneshot::Sender<Result<(), BrokerError>>> = Vec::new();
        let mut lost = None;
        for cmd in batch {
            match cmd {
                Command::Subscribe(topic, reply) => {
                    self.releasing.remove(&topic);
                    if self.wanted.contains(&topic) {
                        let _ = reply.send(Ok(()));
                    } else {
                        if !new_topics.contains(&topic) {
                            new_topics.push(topic);
                        }
                        waiting.push(reply);
                    }
                }
                Command::Release(topic) => {
                    if self.wanted.contains(&topic) || new_topics.contains(&topic) {
                        self.releasing.insert(topic, Instant::now() + self.grace);
                    }
                }
                Command::Lost(generation) if generation == self.generation => {
                    lost = Some("pub/sub stream ended".to_string());
                }
                Command::Lost(_) => {}
            }
        }
        if !new_topics.is_empty() {
            let channels: Vec<String> =
                new_topics.iter().map(|t| keys::channel(&self.prefix, t.as_str())).collect();
            let result = timeout(self.timeout, sink.subscribe(&channels)).await;
            match result {
                Ok(Ok(())) => {
                    self.wanted.extend(new_topics);
                    for reply in waiting {
                        let _ = reply.send(Ok(()));
                    }
                }
                Ok(Err(e)) => {
                    let connection_gone =
                        e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error();
                    for reply in waiting {
                        let _ = reply.send(Err(BrokerError::Refused(e.to_string())));
                    }
                    if connection_gone {
                        return Err(e.to_string());
                    }
                }
                Err(_) => {
                    for reply in waiting {
                        let _ = reply.send(Err(BrokerError::Timeout));
                    }
                    return Err("subscribe timed out".into());
                }
            }
        }
        match lost {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// Unsubscribes released topics whose grace delay ran out and that
    /// still have no local subscriber.
    async fn expire(&mut self, sink: &mut PubSubSink) -> Result<(), String> {
        let now = Instant::now();
        let due: Vec<Topic> =
            self.releasing.iter().filter(|(_, at)| **at <= now).map(|(t, _)| t.clone()).collect();
        let mut gone = Vec::new();
        for topic in due {
            self.releasing.remove(&topic);
            if !self.hub.has_subscribers(topic.as_str()) {
                self.wanted.remove(&topic);
                gone.push(keys::channel(&self.prefix, topic.as_str()));
            }
        }
        if gone.is_empty() {
            return Ok(());
        }
        match timeout(self.timeout, sink.unsubscribe(&gone)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("unsubscribe timed out".into()),
        }
    }

    /// Waits out a backoff delay while Redis is away, still answering
    /// requests: subscribes are recorded (and made on reconnect), releases
    /// forget topics nobody here wants. Returns false on shutdown.
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
                        self.wanted.insert(topic);
                        let _ = reply.send(Ok(()));
                    }
                    Some(Command::Release(topic)) => {
                        if !self.hub.has_subscribers(topic.as_str()) {
                            self.wanted.remove(&topic);
                            self.releasing.remove(&topic);
                        }
                    }
                    Some(Command::Lost(_)) => {}
                },
            }
        }
    }
}

/// Where a reader delivers what it receives.
struct Reader {
    hub: Arc<Hub>,
    requests: Arc<Requests>,
    prefix: String,
    reply_channel: Option<String>,
}

/// Feeds one connection's messages into the hub (topics) and the
/// request table (replies) until it ends.
async fn read_messages(
    mut stream: PubSubStream,
    reader: Reader,
    lost: mpsc::UnboundedSender<Command>,
    generation: u64,
) {
    while let Some(msg) = stream.next().await {
        let channel = msg.get_channel_name();
        if reader.reply_channel.as_deref() == Some(channel) {
            reader.requests.resolve(msg.get_payload_bytes());
        } else if let Some(topic) = keys::topic_of_channel(&reader.prefix, channel) {
            reader.hub.ingest(topic, msg.get_payload_bytes());
        }
    }
    let _ = lost.send(Command::Lost(generation));
}
