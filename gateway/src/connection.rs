//! One client's WebSocket: a single task that reads commands, writes
//! replies and queued frames, keeps the heartbeat and closes on shutdown.
//!
//! Frames for the client wait in its [`Outbox`]; the task takes them all
//! at once and writes them with one flush (one `writev` of headers and
//! shared payloads, see [`crate::ws`]), so a busy socket gets many frames
//! per syscall. Replies to commands go out through the same queue,
//! before any frame queued after them. The
//! [`Subscriptions`] guard releases every hub entry when the task ends,
//! however it ends.
//!
//! Each time the task is about to wait with its socket buffer empty it
//! parks the outbox, so the hub writes the next frame to the socket
//! itself, without waking the task ([`crate::outbox`], the direct path);
//! whatever branch wakes the task then claims the socket back before it
//! writes anything, and writes first the rest of a frame the hub could
//! only write in part.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use rand::Rng;
use serde_json::value::RawValue;
use service::telemetry::trace::{self, Kind, Role};
use tokio::time::Instant;
use tracing::field::Empty;
use tracing::{Instrument, Span};
use wire::client::{Command, Refusal};
use wire::orders::{OrderReply, OrderRequest};
use wire::{CloseCode, ErrorCode, Topic};

use crate::auth::{AuthError, Identity};
use crate::broker::{BoxFuture, BrokerError};
use crate::metrics::OrderOutcome;
use crate::node::{Admission, Node};
use crate::outbox::{Delivery, Limits, Outbox};
use crate::ws::{Message, Socket, Violation};

mod rate_limit;
mod recovery;
mod subscriptions;

use rate_limit::RateLimiter;
use subscriptions::Subscriptions;

/// How long to wait for the client's close frame after sending ours.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(1);

/// Orders in flight. Boxed, and so are their answers: the set's 24 B and
/// an answer's ~130 B (the `select!`'s output in every connection's
/// task is as large as its largest branch's) are only paid by
/// connections that place orders.
type Orders = Box<FuturesUnordered<BoxFuture<'static, Box<OrderDone>>>>;

/// An order's answer, ready to write, and what is measured when it is.
struct OrderDone {
    frame: String,
    outcome: OrderOutcome,
    /// When the `order` frame was read.
    received: std::time::Instant,
    /// The order's traced span and its reply-delivery child; the frame's
    /// write runs in both, so both end with it.
    spans: Option<(Span, Span)>,
}

/// Runs one upgraded connection to its end.
///
/// A plain function returning a future, not an `async fn`: the task then
/// holds the connection's state once (an `async fn` keeps its arguments
/// and locals beside the futures they are moved into: ~1.8 KB per
/// connection more).
pub fn serve(
    socket: Socket,
    node: Arc<Node>,
    peer: SocketAddr,
    identity: Result<Identity, AuthError>,
    admission: Admission,
) -> impl Future<Output = ()> + Send {
    let id = node.next_conn_id();
    let span = tracing::debug_span!("conn", conn.id = id.0, client.addr = %peer);
    node.metrics.connections.inc();
    node.metrics.connections_accepted.inc();
    let limits = Limits { frames: node.config.outbound_queue, bytes: node.config.max_pending_bytes };
    let direct = if node.config.ws_direct_writes { socket.shared_tcp() } else { None };
    let outbox = Arc::new(Outbox::new(limits, direct));
    let now = Instant::now();
    let (identity, refused) = match identity {
        Ok(identity) => (identity, None),
        Err(e) => (Identity::default(), Some(e)),
    };
    // A token's expiry, as a point on this process's monotonic clock.
    let expires_at = identity.expires_at.map(|exp| {
        let left = exp.saturating_sub(wire::now_ms() / 1000);
        now + Duration::from_secs(left)
    });
    let mut conn = Connection {
        identity,
        expires_at,
        subs: Subscriptions {
            conn: id,
            outbox: Arc::clone(&outbox),
            lifecycle: Arc::clone(&node.topics),
            metrics: Arc::clone(&node.metrics),
        },
        outbox,
        socket,
        batch: VecDeque::new(),
        orders: None,
        next_ping: now + node.config.ping_interval(),
        pong_deadline: None,
        close_at: None,
        limiter: RateLimiter::new(node.config.max_commands_per_sec, now),
        strikes: 0,
        node,
    };
    let metrics = Arc::clone(&conn.node.metrics);
    // `conn` is used in place through `&mut` (a `self` taken by value is
    // stored twice in an async fn's state).
    let session = async move {
        match refused {
            None => conn.run().await,
            // Rare: boxed, so it adds nothing to every connection's task.
            Some(e) => Box::pin(conn.refuse_token(e.to_string())).await,
        }
        drop(conn);
        metrics.connections.dec();
        drop(admission);
    };
    session.instrument(span)
}

struct Connection {
    node: Arc<Node>,
    /// Who is on the other end (anonymous when no token was given).
    identity: Identity,
    /// The token's expiry: the connection is closed (1008) then.
    expires_at: Option<Instant>,
    socket: Socket,
    outbox: Arc<Outbox>,
    subs: Subscriptions,
    /// Reused buffer the outbox is swapped into.
    batch: VecDeque<Arc<Delivery>>,
    /// Orders waiting for their reply; each yields the frame to send.
    /// Created at the first order, so connections that never place one
    /// do not carry it.
    orders: Option<Orders>,
    next_ping: Instant,
    /// Set when a ping is out; cleared by any frame from the client.
    pong_deadline: Option<Instant>,
    /// When draining, the moment this connection's turn to close comes.
    close_at: Option<Instant>,
    /// Command rate limit.
    limiter: RateLimiter,
    /// Malformed or rate-limited commands so far.
    strikes: u32,
}

/// How the task ends: with a close frame of ours, or with the socket gone.
enum End {
    Close(CloseCode),
    /// The client broke RFC 6455: closed with the RFC's code and the rule.
    Violation(Violation),
    Gone,
}

impl Connection {
    async fn run(&mut self) {
        let welcome = {
            let session = uuid::Uuid::new_v4().to_string();
            tracing::debug!(session, "connected");
            wire::server::welcome(&self.node.id, &session)
        };
        let end = match Box::pin(self.send_now(welcome)).await {
            Ok(()) => self.serve().await,
            Err(()) => End::Gone,
        };
        match end {
            End::Close(code) => Box::pin(self.close(code, code.reason())).await,
            End::Violation(v) => {
                tracing::debug!(error = %v, "websocket protocol violation; closing");
                Box::pin(self.close(v.code, v.reason)).await;
            }
            End::Gone => {}
        }
        tracing::debug!("disconnected");
    }

    /// A client whose token was refused: say why, then close with 1008.
    async fn refuse_token(&mut self, why: String) {
        tracing::debug!(error = why, "token refused");
        self.node.metrics.client_error(ErrorCode::Unauthorized);
        let frame = wire::server::error(ErrorCode::Unauthorized, &why, None, None);
        if self.send_now(frame).await.is_ok() {
            self.close(CloseCode::PolicyViolation, CloseCode::PolicyViolation.reason()).await;
        }
    }

    async fn serve(&mut self) -> End {
        loop {
            let deadline = self.next_deadline();
            // Hands the socket to the hub's direct writes while this waits
            // (when nothing is queued and nothing of ours is unwritten).
            // Not while an order is in flight: its reply must precede the
            // updates the backplane brings after it, and only this task
            // sees the reply arrive, so those updates queue behind it.
            let no_orders = self.orders.as_ref().is_none_or(|o| o.is_empty());
            self.outbox.park(self.socket.is_drained() && no_orders);
            // Not `biased`: under a constant stream the outbox is always
            // ready, and reads (pongs, unsubscribes) must still get turns.
            tokio::select! {
                _ = self.node.shutdown.cancelled(), if self.close_at.is_none() => {
                    // Spread closes over the first half of the drain window so
                    // clients do not all reconnect elsewhere at the same instant.
                    let spread = self.node.config.drain() / 2;
                    let delay = spread.mul_f64(rand::rng().random_range(0.0..1.0));
                    self.close_at = Some(Instant::now() + delay);
                }
                _ = self.outbox.ready() => {
                    self.claim();
                    // Replies already answered go out before the frames
                    // queued after them: an order's reply precedes its
                    // updates, which the backplane delivered later.
                    while let Some(done) = ready_reply(&mut self.orders) {
                        if Box::pin(self.send_reply(done)).await.is_err() {
                            return End::Gone;
                        }
                    }
                    if let Some(end) = self.write_queued().await {
                        return end;
                    }
                }
                Some(done) = next_reply(&mut self.orders), if self.orders.as_ref().is_some_and(|o| !o.is_empty()) => {
                    self.claim();
                    // Boxed, as a rare path: idle connections do not carry it.
                    if Box::pin(self.send_reply(done)).await.is_err() {
                        return End::Gone;
                    }
                }
                msg = self.socket.recv() => {
                    self.claim();
                    self.pong_deadline = None;
                    // Boxed: a command's handling (subscribe, order,
                    // refusals) is the largest branch, and rare next to
                    // the writes; every idle task would carry its state.
                    if let Some(end) = Box::pin(self.on_frame(msg)).await {
                        return end;
                    }
                    if self.socket.flush().await.is_err() {
                        return End::Gone;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.claim();
                    if let Some(end) = self.on_timer().await {
                        return end;
                    }
                }
            }
        }
    }

    /// Takes the socket back from the outbox's direct path before this
    /// task writes anything: the rest of a frame the hub wrote in part
    /// goes out first.
    fn claim(&mut self) {
        if let Some((text, written)) = self.outbox.claim() {
            self.socket.resume(text, written);
        }
    }

    fn next_deadline(&self) -> Instant {
        let mut at = self.next_ping;
        if let Some(d) = self.pong_deadline {
            at = at.min(d);
        }
        for t in [self.close_at, self.expires_at].into_iter().flatten() {
            at = at.min(t);
        }
        at
    }

    async fn on_timer(&mut self) -> Option<End> {
        let now = Instant::now();
        if self.close_at.is_some_and(|c| c <= now) {
            return Some(End::Close(CloseCode::ServiceRestart));
        }
        if self.expires_at.is_some_and(|e| e <= now) {
            self.refuse(ErrorCode::Unauthorized, "token expired; reconnect with a fresh one", None).await;
            return Some(End::Close(CloseCode::PolicyViolation));
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
            if self.socket.ping().await.is_err() {
                return Some(End::Gone);
            }
        }
        None
    }

    /// Writes an order's reply; its spans (a span ends when last exited)
    /// and its round trip end once the reply is on the wire.
    async fn send_reply(&mut self, done: Box<OrderDone>) -> Result<(), ()> {
        let OrderDone { frame, outcome, received, spans } = *done;
        let sent = match spans {
            Some((order, delivery)) => self.send_now(frame).instrument(delivery).instrument(order).await,
            None => self.send_now(frame).await,
        };
        self.node.metrics.order_done(outcome, received.elapsed().as_secs_f64());
        sent
    }

    /// Writes every queued frame with one flush.
    async fn write_queued(&mut self) -> Option<End> {
        let (sent, overflowed) = self.feed_queued();
        if self.socket.flush().await.is_err() {
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

    /// Moves every queued frame to the socket's buffer, each gap notice
    /// before the frame after the hole; returns how many frames and
    /// whether the queue had overflowed. Not async, so nothing of it is
    /// held in the task's state across the flush.
    fn feed_queued(&mut self) -> (u64, bool) {
        // Admitted as taken: frames queued before an unsubscribe, or
        // covered by a snapshot or replay, are not in the batch.
        let taken = self.outbox.take(&mut self.batch);
        let mut gaps = taken.gaps.into_iter().peekable();
        let mut batch = std::mem::take(&mut self.batch);
        let mut sent = 0;
        for (i, delivery) in batch.drain(..).enumerate() {
            // Measured here, as the frame leaves its queue for the socket.
            if let Some(at) = delivery.fanned_out {
                self.node.metrics.queue_wait.get(delivery.topic.family()).observe(at.elapsed().as_secs_f64());
            }
            if let Some((_, after)) = gaps.next_if(|&(at, _)| at == i) {
                self.missed(&delivery.topic, after, delivery.seq);
            }
            self.socket.feed(delivery.text.clone());
            sent += 1;
        }
        // Keep the spare buffer from growing without bound after a burst.
        if batch.capacity() > 256 {
            batch.shrink_to(64);
        }
        self.batch = batch;
        (sent, taken.overflowed)
    }

    async fn on_frame(&mut self, msg: Option<Result<Message, Violation>>) -> Option<End> {
        let msg = match msg {
            None => return Some(End::Gone),
            Some(Ok(msg)) => msg,
            Some(Err(violation)) => return Some(End::Violation(violation)),
        };
        if matches!(msg, Message::Text(_) | Message::Binary) && !self.limiter.allow(Instant::now()) {
            let message = format!("at most {} commands per second", self.node.config.max_commands_per_sec);
            self.refuse(ErrorCode::RateLimited, &message, None).await;
            return self.strike();
        }
        match msg {
            Message::Text(text) => self.on_text(&text).await,
            Message::Binary => {
                let message = "binary frames are not supported; send JSON text frames";
                if let Some(end) = self.refuse(ErrorCode::BinaryNotSupported, message, None).await {
                    return Some(end);
                }
                self.strike()
            }
            // Answered with the next flush (the loop's, after this frame).
            Message::Ping(payload) => {
                self.socket.pong(payload);
                None
            }
            Message::Pong => None,
            Message::Close(code) => {
                // The client closes: echo its code (RFC 6455 §5.5.1).
                let _ = self.socket.close_reply(code).await;
                Some(End::Gone)
            }
        }
    }

    async fn on_text(&mut self, text: &str) -> Option<End> {
        match wire::client::parse(text) {
            Err(Refusal { code, message, topic, id }) => {
                self.node.metrics.client_error(code);
                let frame = wire::server::error(code, &message, topic.as_deref(), id.as_deref());
                if let Some(end) = self.reply(frame).await {
                    return Some(end);
                }
                self.strike()
            }
            Ok(Command::Ping) => self.reply(wire::server::pong()).await,
            Ok(Command::Subscribe { topic, since }) => self.subscribe(topic, since).await,
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
            Ok(Command::Order { id, order, traceparent }) => {
                Box::pin(self.order(id, order, traceparent)).await
            }
        }
    }

    /// Sends an order to the order service without blocking this loop:
    /// the reply (or `timeout`) arrives through `self.orders`.
    ///
    /// When the order is traced (the client's `traceparent` is sampled, or
    /// the order ratio picks it), a `gateway.order` span runs from here to
    /// the reply's write, the request carries its context to the order
    /// service, and a `gateway.order.reply` child covers the reply's
    /// delivery. Untraced, a valid client `traceparent` is handed on as is.
    async fn order(
        &mut self,
        id: Box<RawValue>,
        order: Box<RawValue>,
        traceparent: Option<String>,
    ) -> Option<End> {
        let received = std::time::Instant::now();
        let node = &self.node;
        if self.orders.as_ref().map_or(0, |o| o.len()) >= node.config.max_pending_orders {
            node.metrics.client_error(ErrorCode::RateLimited);
            let message =
                format!("at most {} orders in flight per connection", node.config.max_pending_orders);
            return self.reply(wire::server::error(ErrorCode::RateLimited, &message, None, Some(&id))).await;
        }
        let account = match node.auth.order_account(&self.identity) {
            Ok(account) => account,
            Err(code) => return self.refuse_id(code, "orders need a token", &id).await,
        };
        let mut pending = node.requests.register();
        let span = trace::sample(Kind::Order, traceparent.as_deref()).map(|sampled| {
            let span = tracing::info_span!(
                target: trace::TARGET,
                "gateway.order",
                otel.kind = "server",
                order.corr = %pending.corr,
                node.id = %node.id,
                outcome = Empty,
            );
            sampled.attach(&span);
            span
        });
        let traceparent = trace::hand_on(span.as_ref(), traceparent.as_deref());
        let request = OrderRequest {
            corr: pending.corr.clone(),
            node: node.id.clone(),
            account,
            order,
            ts: wire::now_ms(),
            traceparent,
        };
        let request_json = match serde_json::to_string(&request) {
            Ok(json) => json,
            Err(e) => return self.refuse_id(ErrorCode::Internal, &e.to_string(), &id).await,
        };
        let broker = Arc::clone(&node.broker);
        let metrics = Arc::clone(&node.metrics);
        let wait = node.config.order_timeout();
        let within = span.clone().unwrap_or_else(Span::none);
        let round_trip = async move {
            let error = |code: ErrorCode, message: &str| {
                metrics.client_error(code);
                wire::server::error(code, message, None, Some(&id))
            };
            let submitted = broker.submit_order(request_json).await;
            let (frame, outcome) = match submitted {
                Err(e @ BrokerError::NotSupported(_)) => {
                    (error(ErrorCode::NotSupported, &e.to_string()), OrderOutcome::Unavailable)
                }
                // A request that timed out may have reached the stream and
                // be served: wait for its reply as for any other, so the
                // client is told `timeout` (outcome unknown) only if none
                // comes, never `backplane_unavailable` for an order that
                // then fills.
                Err(e) if !matches!(e, BrokerError::Timeout) => {
                    (error(ErrorCode::BackplaneUnavailable, &e.to_string()), OrderOutcome::Unavailable)
                }
                Ok(()) | Err(_) => {
                    if submitted.is_ok() {
                        metrics.orders_submitted.inc();
                        tracing::debug!(corr = %pending.corr, "order submitted");
                    }
                    let left = wait.saturating_sub(received.elapsed());
                    match tokio::time::timeout(left, &mut pending.reply).await {
                        Ok(Ok(OrderReply { data: Some(data), error: None, .. })) => {
                            (wire::server::reply(&id, &data), OrderOutcome::Ok)
                        }
                        Ok(Ok(OrderReply { error: Some(e), .. })) => {
                            let code = ErrorCode::parse(&e.code).unwrap_or(ErrorCode::InvalidOrder);
                            (error(code, &e.message), OrderOutcome::Refused)
                        }
                        Ok(Ok(_)) | Ok(Err(_)) => (
                            error(ErrorCode::Internal, "the order service sent an empty reply"),
                            OrderOutcome::Refused,
                        ),
                        Err(_) => {
                            metrics.order_timeouts.inc();
                            let frame = error(ErrorCode::Timeout, "no reply from the order service in time");
                            (frame, OrderOutcome::Timeout)
                        }
                    }
                }
            };
            let spans = span.map(|span| {
                span.record("outcome", outcome.label());
                let delivery = trace::child("gateway.order.reply", Role::Internal, &span);
                (span, delivery)
            });
            Box::new(OrderDone { frame, outcome, received, spans })
        };
        self.orders.get_or_insert_default().push(Box::pin(round_trip.instrument(within)));
        None
    }

    async fn subscribe(&mut self, topic: Topic, since: Option<u64>) -> Option<End> {
        if self.subs.contains(topic.as_str()) {
            return self
                .refuse(
                    ErrorCode::AlreadySubscribed,
                    "already subscribed to this topic",
                    Some(topic.as_str()),
                )
                .await;
        }
        if let Err(code) = self.node.auth.may_subscribe(&self.identity, &topic) {
            let message = match code {
                ErrorCode::Forbidden => "this token does not grant that topic",
                _ => "this topic needs a token",
            };
            return self.refuse(code, message, Some(topic.as_str())).await;
        }
        if self.subs.len() >= self.node.config.max_subscriptions {
            let message =
                format!("at most {} subscriptions per connection", self.node.config.max_subscriptions);
            return self.refuse(ErrorCode::TooManySubscriptions, &message, Some(topic.as_str())).await;
        }
        // Into the hub before the backplane confirms, so nothing
        // published after it can slip past this connection.
        if let Err(e) = self.subs.add(topic.clone()).await {
            tracing::debug!(%topic, error = %e, "backplane subscribe failed");
            return self.refuse(ErrorCode::BackplaneUnavailable, &e.to_string(), Some(topic.as_str())).await;
        }
        if let Some(end) = self.reply(wire::server::subscribed(topic.as_str())).await {
            return Some(end);
        }
        Box::pin(self.recover(topic, since)).await
    }

    /// Queues a reply in the socket's write buffer (flushed by the loop).
    async fn reply(&mut self, frame: String) -> Option<End> {
        self.socket.feed(Bytes::from(frame));
        None
    }

    /// Counts one malformed or rate-limited command; past the budget the
    /// connection is closed (4003) rather than served forever.
    fn strike(&mut self) -> Option<End> {
        self.strikes += 1;
        if self.strikes >= self.node.config.max_client_errors {
            tracing::debug!(strikes = self.strikes, "too many client errors; closing");
            return Some(End::Close(CloseCode::TooManyErrors));
        }
        None
    }

    async fn refuse_id(&mut self, code: ErrorCode, message: &str, id: &RawValue) -> Option<End> {
        self.node.metrics.client_error(code);
        self.reply(wire::server::error(code, message, None, Some(id))).await
    }

    async fn refuse(&mut self, code: ErrorCode, message: &str, topic: Option<&str>) -> Option<End> {
        self.node.metrics.client_error(code);
        self.reply(wire::server::error(code, message, topic, None)).await
    }

    async fn send_now(&mut self, frame: String) -> Result<(), ()> {
        self.socket.send(Bytes::from(frame)).await.map_err(|_| ())
    }

    /// Sends our close frame and waits briefly for the client's.
    async fn close(&mut self, code: CloseCode, reason: &str) {
        self.node.metrics.closed(code);
        if self.socket.close(code.code(), reason).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE, self.socket.linger()).await;
    }
}

/// The next order reply, once there are orders in flight.
async fn next_reply(orders: &mut Option<Orders>) -> Option<Box<OrderDone>> {
    match orders {
        Some(orders) => orders.next().await,
        None => None,
    }
}

/// An order round trip that has finished, without waiting for one.
fn ready_reply(orders: &mut Option<Orders>) -> Option<Box<OrderDone>> {
    let orders = orders.as_mut().filter(|o| !o.is_empty())?;
    orders.next().now_or_never().flatten()
}
