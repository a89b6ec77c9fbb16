//! One simulated client: connect (from its 127.0.0.x source address),
//! subscribe to its topics, account for every frame, and on a drop
//! reconnect with jittered exponential backoff and resubscribe with
//! `since` = the last `seq` it saw per topic. At the end it sends a close
//! frame and waits briefly for the gateway's.
//!
//! An order connection (order mode) is the same machine holding one
//! topic, its account's `orders.<account>`, and a [`Book`]: once that
//! topic is acknowledged and measuring has begun it places orders on the
//! book's schedule until the measured time is over, and hands every
//! answer and update to the book.
//!
//! The per-topic `seq` state (and the book) live for the client's whole
//! life, not one socket's, so messages missed across a reconnect count
//! as lost unless the gateway replays them.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use wire::client::Outgoing;
use wire::server::Frame;

use crate::book::{Answer, Book, OrderShape, Pace, Update};
use crate::stats::{Stats, check_seq};
use crate::target;
use crate::topics::TopicSpace;

type Ws = WebSocketStream<TcpStream>;

/// How long to wait for the gateway's close frame after ours; generous,
/// since tens of thousands of sockets close at the same moment.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// What every client of one process shares.
pub struct Shared {
    pub stats: Stats,
    pub space: TopicSpace,
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub reconnect: bool,
    pub ws_config: WebSocketConfig,
    /// Cancelled when the run ends: clients close their sockets and stop.
    pub stop: CancellationToken,
    /// Unix µs when measuring began in this process; `None` before.
    pub go: tokio::sync::watch::Sender<Option<u64>>,
    /// Order mode: what every order connection shares.
    pub orders: Option<OrderPlan>,
}

/// What the order connections of a process share.
pub struct OrderPlan {
    pub pace: Pace,
    pub shape: Arc<OrderShape>,
    pub seed: u64,
    /// No order goes out later than this after measuring began, µs.
    pub duration_us: u64,
    /// Keep every order's times for `--order-trace`.
    pub trace: bool,
}

/// The order side of an order connection.
pub struct Trader {
    /// Index among the run's order connections.
    pub index: u64,
    pub account: String,
    /// `orders.<account>`.
    pub topic: String,
}

/// Where one client connects.
#[derive(Debug, Clone)]
pub struct Dest {
    /// The upgrade URL.
    pub url: Arc<str>,
    pub addr: SocketAddr,
}

/// One client's fixed plan.
pub struct Client {
    pub id: u64,
    pub dest: Dest,
    /// JWT sent as `?token=` on every upgrade.
    pub token: Option<Arc<str>>,
    pub source: Option<Ipv4Addr>,
    /// Topic indices, sorted.
    pub topics: Box<[u32]>,
    /// Set on order connections.
    pub trader: Option<Trader>,
}

/// An order connection's state that outlives sockets.
struct Orders<'a> {
    trader: &'a Trader,
    plan: &'a OrderPlan,
    book: Book,
    /// Its topic is acknowledged on the current socket.
    acked: bool,
}

/// Per-topic state that outlives sockets.
struct TopicState {
    last_seq: Option<u64>,
    /// Acknowledged on the current socket.
    acked: bool,
}

/// How a socket's life ended.
enum End {
    /// loadgen closed it; `clean` when the close handshake completed.
    Closed { clean: bool },
    /// The gateway closed it or the connection broke.
    Dropped(String),
}

impl Client {
    /// Runs until the stop signal (or, without reconnects, a drop).
    pub async fn run(self, shared: Arc<Shared>) {
        let mut topics: Vec<TopicState> =
            self.topics.iter().map(|_| TopicState { last_seq: None, acked: false }).collect();
        let mut settled = false;
        let mut settle = |stats: &Stats| {
            if !settled {
                settled = true;
                stats.settled();
            }
        };
        let mut failures: u32 = 0;
        let mut connected_before = false;
        let stats = &shared.stats;
        let mut orders = match (&self.trader, &shared.orders) {
            (Some(trader), Some(plan)) => Some(Orders {
                trader,
                plan,
                book: Book::new(trader.index, &trader.account, plan.pace, Arc::clone(&plan.shape), plan.seed),
                acked: false,
            }),
            _ => None,
        };
        while !shared.stop.is_cancelled() {
            stats.attempt();
            let attempt = tokio::time::timeout(shared.connect_timeout, self.connect(&shared.ws_config));
            let ws = tokio::select! {
                _ = shared.stop.cancelled() => break,
                r = attempt => match r {
                    Ok(Ok(ws)) => Some(ws),
                    Ok(Err(why)) => {
                        stats.connect_failed(&why);
                        None
                    }
                    Err(_) => {
                        stats.connect_failed(&format!("connect: no upgrade within {:?}", shared.connect_timeout));
                        None
                    }
                },
            };
            match ws {
                None => settle(stats),
                Some(mut ws) => {
                    stats.established(connected_before);
                    connected_before = true;
                    let (end, all_acked) =
                        self.session(&mut ws, &shared, &mut topics, orders.as_mut(), &mut settle).await;
                    for (state, &topic) in topics.iter_mut().zip(self.topics.iter()) {
                        if std::mem::take(&mut state.acked) {
                            stats.unsubscribed(topic);
                        }
                    }
                    if let Some(o) = orders.as_mut() {
                        // No orders while the account's topic is not held:
                        // their updates could not be checked.
                        o.book.disarm();
                        if std::mem::take(&mut o.acked) {
                            stats.orders.ready(o.trader.index, false);
                        }
                    }
                    match end {
                        End::Closed { clean } => {
                            stats.closed(None, clean);
                            break;
                        }
                        End::Dropped(why) => {
                            stats.closed(Some(&why), false);
                            settle(stats);
                        }
                    }
                    if all_acked {
                        failures = 0;
                    }
                }
            }
            if !shared.reconnect {
                break;
            }
            let delay = backoff(failures, shared.backoff_initial, shared.backoff_max, &mut rand::rng());
            failures = failures.saturating_add(1);
            tokio::select! {
                _ = shared.stop.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        settle(stats);
        if let Some(o) = &orders {
            let (verdict, rows) = o.book.finish(o.plan.trace);
            stats.orders.finished(o.trader.index, &verdict, rows);
        }
    }

    async fn connect(&self, config: &WebSocketConfig) -> Result<Ws, String> {
        // The source address stays out of the message so the error tally
        // groups the same failure from every address.
        let stream = target::connect_from(self.source, self.dest.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.dest.addr))?;
        let url = match &self.token {
            Some(token) => with_token(&self.dest.url, token),
            None => self.dest.url.to_string(),
        };
        let request = url.into_client_request().map_err(|e| format!("upgrade request: {e}"))?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(*config))
            .await
            .map_err(|e| match e {
                tungstenite::Error::Http(resp) => format!("upgrade refused: HTTP {}", resp.status()),
                e => format!("upgrade: {e}"),
            })?;
        Ok(ws)
    }

    /// Subscribes and reads until the end; also says whether every topic
    /// was acknowledged on this socket.
    async fn session(
        &self,
        ws: &mut Ws,
        shared: &Shared,
        topics: &mut [TopicState],
        mut orders: Option<&mut Orders<'_>>,
        settle: &mut impl FnMut(&Stats),
    ) -> (End, bool) {
        let mut acked = 0;
        let mut all_acked = false;
        let wanted = topics.len() + usize::from(orders.is_some());
        // Anything published before this instant that arrives now is the
        // gateway's snapshot or replay, not a live delivery.
        let subscribed_at_ms = wire::now_ms();
        let mut frames: Vec<String> = topics
            .iter()
            .zip(self.topics.iter())
            .map(|(state, &topic)| {
                let name = shared.space.name(topic);
                Outgoing::Subscribe { topic: &name, since: state.last_seq }.to_json()
            })
            .collect();
        if let Some(o) = orders.as_deref() {
            frames.push(Outgoing::Subscribe { topic: &o.trader.topic, since: o.book.last_seq() }.to_json());
        }
        for frame in frames {
            if let Err(e) = ws.feed(Message::text(frame)).await {
                return (End::Dropped(format!("subscribe: {e}")), false);
            }
        }
        if let Err(e) = ws.flush().await {
            return (End::Dropped(format!("subscribe: {e}")), false);
        }
        let mut go = shared.go.subscribe();
        loop {
            let (wait_go, due) = match orders.as_deref_mut() {
                Some(o) => o.schedule(*go.borrow()),
                None => (false, None),
            };
            let msg = tokio::select! {
                biased;
                _ = shared.stop.cancelled() => {
                    let end = self.close(ws, subscribed_at_ms, shared, topics, orders).await;
                    return (end, all_acked);
                }
                changed = go.changed(), if wait_go => {
                    if changed.is_err() {
                        return (End::Dropped("the run ended".into()), all_acked);
                    }
                    continue;
                }
                _ = sleep_until_us(due.unwrap_or(0)), if due.is_some() => {
                    if let Some(o) = orders.as_deref_mut()
                        && let Err(e) = o.place_due(ws, &shared.stats).await
                    {
                        return (End::Dropped(format!("order: {e}")), all_acked);
                    }
                    continue;
                }
                msg = ws.next() => msg,
            };
            match msg {
                Some(Ok(Message::Text(text))) => {
                    match self.on_text(&text, subscribed_at_ms, shared, topics, orders.as_deref_mut()) {
                        Event::Acked => {
                            acked += 1;
                            if acked == wanted {
                                all_acked = true;
                                settle(&shared.stats);
                            }
                        }
                        Event::Refused => settle(&shared.stats),
                        Event::Other => {}
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let why = match frame {
                        Some(f) => format!("closed by gateway: {} {}", u16::from(f.code), f.reason),
                        None => "closed by gateway without a code".to_owned(),
                    };
                    return (End::Dropped(why), all_acked);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return (End::Dropped(format!("read: {e}")), all_acked),
                None => return (End::Dropped("connection ended without a close frame".into()), all_acked),
            }
        }
    }

    /// Accounts for one text frame.
    fn on_text(
        &self,
        text: &str,
        subscribed_at_ms: u64,
        shared: &Shared,
        topics: &mut [TopicState],
        orders: Option<&mut Orders<'_>>,
    ) -> Event {
        let stats = &shared.stats;
        let frame = match Frame::parse(text) {
            Ok(f) => f,
            Err(_) => {
                stats.invalid_frame("frame is not a JSON object with a type");
                return Event::Other;
            }
        };
        if let Some(o) = orders {
            let ours = frame.topic.as_deref() == Some(o.trader.topic.as_str());
            if ours || frame.kind == "reply" || (frame.kind == "error" && frame.id.is_some()) {
                return o.on_frame(&frame, ours, stats);
            }
        }
        let position = frame
            .topic
            .as_deref()
            .and_then(|name| shared.space.index_of(name))
            .and_then(|index| self.topics.binary_search(&index).ok().map(|pos| (pos, index)));
        match frame.kind.as_str() {
            "message" => {
                let Some((pos, _)) = position else {
                    stats.invalid_frame("message for a topic this connection does not hold");
                    return Event::Other;
                };
                let Some(seq) = frame.seq else {
                    stats.invalid_frame("message without seq");
                    return Event::Other;
                };
                let recovered = frame.ts.is_some_and(|ts| ts < subscribed_at_ms);
                let latency_us = frame
                    .ts
                    .filter(|_| !recovered)
                    .map(|ts| now_us().saturating_sub(ts.saturating_mul(1000)));
                let check = check_seq(&mut topics[pos].last_seq, seq);
                stats.message(self.id, text.len(), latency_us, recovered, check);
                Event::Other
            }
            "subscribed" => match position {
                Some((pos, index)) if !topics[pos].acked => {
                    topics[pos].acked = true;
                    stats.subscribed(index);
                    Event::Acked
                }
                _ => Event::Other,
            },
            "error" => {
                let code = frame.code.as_deref().unwrap_or("?");
                let message = frame.message.as_deref().unwrap_or("");
                let why = format!("error frame {code}: {message}");
                if position.is_some() {
                    stats.sub_error(&why);
                    Event::Refused
                } else {
                    stats.error(&why);
                    Event::Other
                }
            }
            _ => Event::Other,
        }
    }

    /// Sends our close frame and reads (still accounting) until the
    /// gateway's arrives or the wait ends.
    async fn close(
        &self,
        ws: &mut Ws,
        subscribed_at_ms: u64,
        shared: &Shared,
        topics: &mut [TopicState],
        mut orders: Option<&mut Orders<'_>>,
    ) -> End {
        let frame = CloseFrame { code: CloseCode::Normal, reason: "loadgen finished".into() };
        if ws.close(Some(frame)).await.is_err() {
            return End::Closed { clean: false };
        }
        let handshake = async {
            while let Some(msg) = ws.next().await {
                match msg {
                    Ok(Message::Text(text)) => {
                        self.on_text(&text, subscribed_at_ms, shared, topics, orders.as_deref_mut());
                    }
                    Ok(Message::Close(_)) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
            false
        };
        let clean = tokio::time::timeout(CLOSE_WAIT, handshake).await.unwrap_or(false);
        End::Closed { clean }
    }
}

enum Event {
    Acked,
    Refused,
    Other,
}

impl Orders<'_> {
    /// Arms the book once measuring began and the topic is held, disarms
    /// it past the measured time; says whether to wait for measuring to
    /// begin and when the next order is due (Unix µs).
    fn schedule(&mut self, go_us: Option<u64>) -> (bool, Option<u64>) {
        if !self.acked {
            return (false, None);
        }
        let Some(go) = go_us else { return (true, None) };
        let end = go + self.plan.duration_us;
        let now = now_us();
        if now < end {
            self.book.arm(now);
        }
        match self.book.due_us() {
            Some(due) if due < end => (false, Some(due)),
            Some(_) => {
                self.book.disarm();
                (false, None)
            }
            None => (false, None),
        }
    }

    /// Sends every order due by now.
    async fn place_due(&mut self, ws: &mut Ws, stats: &Stats) -> Result<(), tungstenite::Error> {
        let now = now_us();
        while self.book.due_us().is_some_and(|due| due <= now) {
            let Some(placed) = self.book.place(now) else { break };
            stats.orders.placed(self.trader.index, now, placed.late_us);
            ws.feed(Message::text(placed.frame)).await?;
        }
        ws.flush().await
    }

    /// A frame for the order side: an answer, or a frame on its topic.
    fn on_frame(&mut self, frame: &Frame, ours: bool, stats: &Stats) -> Event {
        let now = now_us();
        let conn = self.trader.index;
        match frame.kind.as_str() {
            "reply" => {
                let answer = self.book.on_reply(frame.id.as_deref(), frame.data.as_deref(), now);
                self.answered(&answer, now, stats);
            }
            "error" if !ours => {
                let Some(id) = frame.id.as_deref() else { return Event::Other };
                let code = frame.code.as_deref().unwrap_or("?");
                let answer = self.book.on_error(id, code, now);
                if matches!(answer, Answer::First { .. }) {
                    // The message says why (which the code alone may not).
                    stats
                        .error(&format!("order answered {code}: {}", frame.message.as_deref().unwrap_or("")));
                }
                self.answered(&answer, now, stats);
            }
            "error" => {
                let code = frame.code.as_deref().unwrap_or("?");
                let message = frame.message.as_deref().unwrap_or("");
                stats.sub_error(&format!("error frame {code}: {message}"));
                return Event::Refused;
            }
            "subscribed" if !self.acked => {
                self.acked = true;
                stats.subscribed(u32::MAX);
                stats.orders.ready(conn, true);
                return Event::Acked;
            }
            "message" => {
                let (check, update, arrived) =
                    self.book.on_update(frame.seq, frame.ts, frame.data.as_deref(), now);
                if let Update::Invalid(why) = update {
                    stats.error(why);
                }
                stats.orders.update(conn, check, &update, arrived);
            }
            _ => {}
        }
        Event::Other
    }

    fn answered(&self, answer: &Answer, now_us: u64, stats: &Stats) {
        if let Answer::Unknown(why) = answer {
            stats.error(why);
        }
        stats.orders.answered(self.trader.index, answer, now_us);
    }
}

/// Sleeps until the Unix time `at_us` (µs).
async fn sleep_until_us(at_us: u64) {
    let wait = Duration::from_micros(at_us.saturating_sub(now_us()));
    tokio::time::sleep(wait).await;
}

/// Delay before reconnect attempt number `failures` (0-based): doubling
/// from `initial` up to `max`, then a random half to all of it, so a
/// gateway restart is not met by every client at the same instant.
/// (`service::backoff`, the schedule of every retry loop.)
pub fn backoff(failures: u32, initial: Duration, max: Duration, rng: &mut impl Rng) -> Duration {
    service::backoff::jitter(service::backoff::step(failures, initial, max), rng)
}

/// Appends `token=…` (percent-encoded) to the upgrade URL's query.
pub fn with_token(url: &str, token: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut out = format!("{url}{sep}token=");
    for b in token.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_goes_into_the_query() {
        assert_eq!(with_token("ws://h/ws", "a.b-c"), "ws://h/ws?token=a.b-c");
        assert_eq!(with_token("ws://h/ws?x=1", "a+b"), "ws://h/ws?x=1&token=a%2Bb");
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut rng = rand::rng();
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..100 {
            let d0 = backoff(0, initial, max, &mut rng);
            assert!(d0 >= Duration::from_millis(50) && d0 <= initial, "{d0:?}");
            let d3 = backoff(3, initial, max, &mut rng);
            assert!(d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800), "{d3:?}");
            let big = backoff(40, initial, max, &mut rng);
            assert!(big >= max / 2 && big <= max, "{big:?}");
        }
    }
}
