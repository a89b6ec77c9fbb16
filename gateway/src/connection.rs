//! One client's WebSocket: a single task that reads commands, writes
//! replies and queued frames, keeps the heartbeat and closes on shutdown.
//!
//! Frames for the client wait in its [`Outbox`]; the task takes them all
//! at once and writes them with one flush, so a busy socket gets many
//! frames per syscall. Replies to commands go out through the same
//! buffered writer, before any frame queued after them. The
//! [`Subscriptions`] guard releases every hub entry when the task ends,
//! however it ends.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use rand::Rng;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;
use tracing::Instrument;
use wire::client::{Command, Refusal};
use wire::{CloseCode, ErrorCode, Topic};

use crate::broker::Broker;
use crate::hub::{ConnId, Hub, Subscriber};
use crate::metrics::Metrics;
use crate::node::{Admission, Node};
use crate::outbox::{Delivery, Outbox};

/// How long to wait for the client's close frame after sending ours.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(1);

/// Runs one upgraded connection to its end.
pub async fn serve(socket: WebSocket, node: Arc<Node>, peer: SocketAddr, admission: Admission) {
    let id = node.next_conn_id();
    let span = tracing::debug_span!("conn", conn.id = id.0, client.addr = %peer);
    node.metrics.connections.inc();
    node.metrics.connections_accepted.inc();
    let outbox = Arc::new(Outbox::new(node.config.outbound_queue));
    let now = Instant::now();
    let conn = Connection {
        subs: Subscriptions {
            conn: id,
            topics: HashSet::new(),
            outbox: Arc::clone(&outbox),
            hub: Arc::clone(&node.hub),
            broker: Arc::clone(&node.broker),
            metrics: Arc::clone(&node.metrics),
        },
        outbox,
        socket,
        batch: VecDeque::new(),
        next_ping: now + node.config.ping_interval(),
        pong_deadline: None,
        close_at: None,
        node,
    };
    let metrics = Arc::clone(&conn.node.metrics);
    conn.run().instrument(span).await;
    metrics.connections.dec();
    drop(admission);
}

struct Connection {
    node: Arc<Node>,
    socket: WebSocket,
    outbox: Arc<Outbox>,
    subs: Subscriptions,
    /// Reused buffer the outbox is swapped into.
    batch: VecDeque<Arc<Delivery>>,
    next_ping: Instant,
    /// Set when a ping is out; cleared by any frame from the client.
    pong_deadline: Option<Instant>,
    /// When draining, the moment this connection's turn to close comes.
    close_at: Option<Instant>,
}

/// How the task ends: with a close frame of ours, or with the socket gone.
enum End {
    Close(CloseCode),
    Gone,
}

impl Connection {
    async fn run(mut self) {
        let session = uuid::Uuid::new_v4().to_string();
        tracing::debug!(session, "connected");
        let welcome = wire::server::welcome(&self.node.id, &session);
        let end = match self.send_now(welcome).await {
            Ok(()) => self.serve().await,
            Err(()) => End::Gone,
        };
        if let End::Close(code) = end {
            self.close(code).await;
        }
        tracing::debug!("disconnected");
    }

    async fn serve(&mut self) -> End {
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                _ = self.node.shutdown.cancelled(), if self.close_at.is_none() => {
                    // Spread closes over the first half of the drain window so
                    // clients do not all reconnect elsewhere at the same instant.
                    let spread = self.node.config.drain() / 2;
                    let delay = spread.mul_f64(rand::rng().random_range(0.0..1.0));
                    self.close_at = Some(Instant::now() + delay);
                }
                _ = self.outbox.ready() => {
                    if let Some(end) = self.write_queued().await {
                        return end;
                    }
                }
                msg = self.socket.recv() => {
                    self.pong_deadline = None;
                    if let Some(end) = self.on_frame(msg).await {
                        return end;
                    }
                    if self.socket.flush().await.is_err() {
                        return End::Gone;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if let Some(end) = self.on_timer().await {
                        return end;
                    }
                }
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        let mut at = self.next_ping;
        if let Some(d) = self.pong_deadline {
            at = at.min(d);
        }
        if let Some(c) = self.close_at {
            at = at.min(c);
        }
        at
    }

    async fn on_timer(&mut self) -> Option<End> {
        let now = Instant::now();
        if self.close_at.is_some_and(|c| c <= now) {
            return Some(End::Close(CloseCode::ServiceRestart));
        }
        if self.pong_deadline.is_some_and(|d| d <= now) {
            tracing::debug!("heartbeat timeout");
            return Some(End::Close(CloseCode::HeartbeatTimeout));
        }
        if self.next_ping <= now {
            self.next_ping = now + self.node.config.ping_interval();
            if self.pong_deadline.is_none() {
                self.pong_deadline = Some(now + self.node.config.ping_timeout());
            }
            if self.socket.send(Message::Ping(bytes::Bytes::new())).await.is_err() {
                return Some(End::Gone);
            }
        }
        None
    }

    /// Writes every queued frame with one flush.
    async fn write_queued(&mut self) -> Option<End> {
        let overflowed = self.outbox.take(&mut self.batch);
        let mut sent = 0;
        let mut failed = false;
        for delivery in self.batch.drain(..) {
            // Frames queued before an unsubscribe are not sent after its reply.
            if failed || !self.subs.topics.contains(delivery.topic.as_str()) {
                continue;
            }
            if self.socket.feed(Message::Text(delivery.text.clone())).await.is_err() {
                failed = true;
            }
            sent += 1;
        }
        // Keep the spare buffer from growing without bound after a burst.
        if self.batch.capacity() > 256 {
            self.batch.shrink_to(64);
        }
        if failed || self.socket.flush().await.is_err() {
            return Some(End::Gone);
        }
        self.node.metrics.frames_sent.inc_by(sent);
        self.node.metrics.socket_writes.inc();
        if overflowed {
            tracing::debug!("outbound queue overflowed; closing slow consumer");
            return Some(End::Close(CloseCode::SlowConsumer));
        }
        None
    }

    async fn on_frame(&mut self, msg: Option<Result<Message, axum::Error>>) -> Option<End> {
        let msg = match msg {
            None => return Some(End::Gone),
            Some(Ok(msg)) => msg,
            Some(Err(e)) => return Some(read_error(e)),
        };
        match msg {
            Message::Text(text) => self.on_text(&text).await,
            Message::Binary(_) => {
                let message = "binary frames are not supported; send JSON text frames";
                self.refuse(ErrorCode::BinaryNotSupported, message, None).await;
                None
            }
            Message::Ping(_) | Message::Pong(_) => None,
            Message::Close(_) => Some(End::Gone),
        }
    }

    async fn on_text(&mut self, text: &str) -> Option<End> {
        match wire::client::parse(text) {
            Err(Refusal { code, message, topic, id }) => {
                self.node.metrics.client_error(code);
                self.reply(wire::server::error(code, &message, topic.as_deref(), id.as_deref())).await
            }
            Ok(Command::Ping) => self.reply(wire::server::pong()).await,
            Ok(Command::Subscribe { topic, since: _ }) => self.subscribe(topic).await,
            Ok(Command::Unsubscribe { topic }) => {
                if self.subs.remove(topic.as_str()) {
                    self.reply(wire::server::unsubscribed(topic.as_str())).await
                } else {
                    self.refuse(
                        ErrorCode::NotSubscribed,
                        "not subscribed to this topic",
                        Some(topic.as_str()),
                    )
                    .await
                }
            }
            Ok(Command::Order { id, .. }) => {
                let frame = wire::server::error(
                    ErrorCode::NotSupported,
                    "this node has no order service configured",
                    None,
                    Some(&id),
                );
                self.node.metrics.client_error(ErrorCode::NotSupported);
                self.reply(frame).await
            }
        }
    }

    async fn subscribe(&mut self, topic: Topic) -> Option<End> {
        if self.subs.topics.contains(topic.as_str()) {
            return self
                .refuse(
                    ErrorCode::AlreadySubscribed,
                    "already subscribed to this topic",
                    Some(topic.as_str()),
                )
                .await;
        }
        if self.subs.topics.len() >= self.node.config.max_subscriptions {
            let message =
                format!("at most {} subscriptions per connection", self.node.config.max_subscriptions);
            return self.refuse(ErrorCode::TooManySubscriptions, &message, Some(topic.as_str())).await;
        }
        // Into the hub first, so nothing published after the backplane
        // confirms can slip past this connection.
        self.subs.add(topic.clone());
        if let Err(e) = self.node.broker.subscribe(&topic).await {
            tracing::debug!(%topic, error = %e, "backplane subscribe failed");
            self.subs.remove(topic.as_str());
            return self.refuse(ErrorCode::BackplaneUnavailable, &e.to_string(), Some(topic.as_str())).await;
        }
        self.reply(wire::server::subscribed(topic.as_str())).await
    }

    /// Queues a reply in the socket's write buffer (flushed by the loop).
    async fn reply(&mut self, frame: String) -> Option<End> {
        match self.socket.feed(Message::Text(Utf8Bytes::from(frame))).await {
            Ok(()) => None,
            Err(_) => Some(End::Gone),
        }
    }

    async fn refuse(&mut self, code: ErrorCode, message: &str, topic: Option<&str>) -> Option<End> {
        self.node.metrics.client_error(code);
        self.reply(wire::server::error(code, message, topic, None)).await
    }

    async fn send_now(&mut self, frame: String) -> Result<(), ()> {
        self.socket.send(Message::Text(Utf8Bytes::from(frame))).await.map_err(|_| ())
    }

    /// Sends our close frame and waits briefly for the client's.
    async fn close(&mut self, code: CloseCode) {
        self.node.metrics.closed(code);
        let frame = CloseFrame { code: code.code(), reason: Utf8Bytes::from_static(code.reason()) };
        if self.socket.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
            while let Some(Ok(msg)) = self.socket.recv().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// Maps a read error to how the connection ends.
fn read_error(e: axum::Error) -> End {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => End::Close(CloseCode::MessageTooBig),
        Some(tungstenite::Error::Utf8(_)) => End::Close(CloseCode::InvalidPayload),
        _ => End::Gone,
    }
}

/// The topics one connection holds, mirrored in the hub. Dropping it
/// removes every hub entry and releases topics left empty.
struct Subscriptions {
    conn: ConnId,
    topics: HashSet<Topic>,
    outbox: Arc<Outbox>,
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
}

impl Subscriptions {
    fn add(&mut self, topic: Topic) {
        self.hub.subscribe(&topic, Subscriber { conn: self.conn, outbox: Arc::clone(&self.outbox) });
        self.topics.insert(topic);
        self.metrics.subscriptions.inc();
    }

    fn remove(&mut self, topic: &str) -> bool {
        let Some(topic) = self.topics.take(topic) else {
            return false;
        };
        self.leave(&topic);
        true
    }

    fn leave(&self, topic: &Topic) {
        if self.hub.unsubscribe(topic.as_str(), self.conn) {
            self.broker.release(topic);
        }
        self.metrics.subscriptions.dec();
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        self.outbox.close();
        for topic in std::mem::take(&mut self.topics) {
            self.leave(&topic);
        }
    }
}
