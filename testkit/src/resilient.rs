//! A resilient WebSocket client, written as an application should write
//! one against the contract: on any close or drop it reconnects with
//! jittered exponential backoff (through whatever URL it was given,
//! usually a load balancer), resubscribes each topic with `since` = the
//! last `seq` it saw, and counts what it received per topic: duplicates,
//! gaps, and the first `seq` of each session (the snapshot or replay that
//! follows `subscribed`).
//!
//! It runs as a background task; tests read its [`Record`] while it runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use service::Backoff;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use wire::server::Frame;

/// What to connect to and subscribe.
#[derive(Debug, Clone)]
pub struct Options {
    pub url: String,
    /// Each topic with the `since` of its very first subscribe
    /// (`Some(0)`: the whole history; `None`: live only). Later
    /// subscribes use the last `seq` received.
    pub topics: Vec<(String, Option<u64>)>,
    /// First reconnect delay; doubled per failed attempt up to
    /// `backoff_max`, each delay drawn from [½, 1) of its value
    /// (`service::Backoff`).
    pub backoff_start: Duration,
    pub backoff_max: Duration,
}

impl Options {
    pub fn new(url: &str) -> Options {
        Options {
            url: url.to_string(),
            topics: Vec::new(),
            backoff_start: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
        }
    }

    pub fn topic(mut self, topic: &str, since: Option<u64>) -> Options {
        self.topics.push((topic.to_string(), since));
        self
    }
}

/// One connection, from `welcome` to its end.
#[derive(Debug, Clone)]
pub struct Session {
    /// The node id in `welcome`.
    pub node: String,
    pub opened: Instant,
    /// When the connection ended (close frame received, or dropped).
    pub ended: Option<Instant>,
    /// The close code, when the gateway sent a close frame.
    pub close_code: Option<u16>,
    /// Topics confirmed with `subscribed` in this session.
    pub subscribed: usize,
    /// Per topic, the first `seq` received in this session.
    pub first_seq: HashMap<String, u64>,
}

/// What one topic delivered over all sessions.
#[derive(Debug, Clone, Default)]
pub struct Stream {
    pub first: Option<u64>,
    pub last: Option<u64>,
    /// `message` frames received.
    pub received: u64,
    /// Messages whose `seq` was not above the last one seen.
    pub duplicates: u64,
    /// Jumps over one or more `seq`s …
    pub gaps: u64,
    /// … and how many `seq`s they skipped in all.
    pub skipped: u64,
}

/// Everything a client saw, readable while it runs.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub sessions: Vec<Session>,
    pub streams: HashMap<String, Stream>,
    /// Connect attempts that got no `welcome` (refused, HTTP 503, timeout).
    pub failed_connects: u64,
    /// `error` frames, as `code: message`.
    pub errors: Vec<String>,
}

impl Record {
    /// The open session, if connected.
    pub fn current(&self) -> Option<&Session> {
        self.sessions.last().filter(|s| s.ended.is_none())
    }

    /// Connected, with every topic confirmed.
    pub fn is_streaming(&self, topics: usize) -> bool {
        self.current().is_some_and(|s| s.subscribed == topics)
    }

    pub fn last_seq(&self, topic: &str) -> Option<u64> {
        self.streams.get(topic).and_then(|s| s.last)
    }
}

/// A running resilient client; stopped when dropped.
pub struct ResilientClient {
    record: Arc<Mutex<Record>>,
    topics: usize,
    task: JoinHandle<()>,
}

impl ResilientClient {
    pub fn spawn(options: Options) -> ResilientClient {
        let record = Arc::new(Mutex::new(Record::default()));
        let topics = options.topics.len();
        let task = tokio::spawn(run(options, Arc::clone(&record)));
        ResilientClient { record, topics, task }
    }

    /// Reads the record under its lock (keep `f` short).
    pub fn with<R>(&self, f: impl FnOnce(&Record) -> R) -> R {
        f(&self.record.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A copy of the record.
    pub fn record(&self) -> Record {
        self.with(Record::clone)
    }

    /// Connected with every topic confirmed.
    pub fn is_streaming(&self) -> bool {
        self.with(|r| r.is_streaming(self.topics))
    }

    /// The node of the open session.
    pub fn node(&self) -> Option<String> {
        self.with(|r| r.current().map(|s| s.node.clone()))
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for ResilientClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(options: Options, record: Arc<Mutex<Record>>) {
    let mut backoff = Backoff::new(options.backoff_start, options.backoff_max);
    loop {
        match session(&options, &record).await {
            // Got in: the next outage starts from the shortest delay again.
            Ok(()) => backoff.reset(),
            Err(()) => lock(&record).failed_connects += 1,
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

fn lock(record: &Mutex<Record>) -> std::sync::MutexGuard<'_, Record> {
    record.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One connection: `Err` when it never got to `welcome`.
async fn session(options: &Options, record: &Mutex<Record>) -> Result<(), ()> {
    let connect = tokio_tungstenite::connect_async(options.url.as_str());
    let (mut ws, _) = match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(ok)) => ok,
        _ => return Err(()),
    };
    let welcome = match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => Frame::parse(&t).ok().filter(|f| f.kind == "welcome"),
        _ => None,
    };
    let Some(welcome) = welcome else { return Err(()) };
    let subscribes: Vec<String> = {
        let mut r = lock(record);
        r.sessions.push(Session {
            node: welcome.node.unwrap_or_default(),
            opened: Instant::now(),
            ended: None,
            close_code: None,
            subscribed: 0,
            first_seq: HashMap::new(),
        });
        options
            .topics
            .iter()
            .map(|(topic, initial)| {
                let since = r.last_seq(topic).or(*initial);
                match since {
                    Some(s) => format!(r#"{{"action":"subscribe","topic":"{topic}","since":{s}}}"#),
                    None => format!(r#"{{"action":"subscribe","topic":"{topic}"}}"#),
                }
            })
            .collect()
    };
    let close_code = match send_all(&mut ws, subscribes).await {
        Ok(()) => read_until_closed(&mut ws, record).await,
        Err(()) => None,
    };
    let mut r = lock(record);
    if let Some(s) = r.sessions.last_mut() {
        s.ended = Some(Instant::now());
        s.close_code = close_code;
    }
    Ok(())
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send_all(ws: &mut Socket, frames: Vec<String>) -> Result<(), ()> {
    for f in frames {
        ws.send(Message::text(f)).await.map_err(|_| ())?;
    }
    Ok(())
}

/// Records every frame until the connection ends; the close code, if the
/// gateway sent a close frame.
async fn read_until_closed(ws: &mut Socket, record: &Mutex<Record>) -> Option<u16> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                if let Ok(frame) = Frame::parse(&text) {
                    on_frame(&mut lock(record), frame);
                }
            }
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return None,
        }
    }
}

fn on_frame(r: &mut Record, frame: Frame) {
    match frame.kind.as_str() {
        "subscribed" => {
            if let Some(s) = r.sessions.last_mut() {
                s.subscribed += 1;
            }
        }
        "error" => {
            r.errors.push(format!(
                "{}: {}",
                frame.code.unwrap_or_default(),
                frame.message.unwrap_or_default()
            ));
        }
        "message" => {
            let (Some(topic), Some(seq)) = (frame.topic, frame.seq) else { return };
            if let Some(s) = r.sessions.last_mut() {
                s.first_seq.entry(topic.clone()).or_insert(seq);
            }
            let stream = r.streams.entry(topic).or_default();
            stream.received += 1;
            stream.first.get_or_insert(seq);
            match stream.last {
                Some(last) if seq <= last => stream.duplicates += 1,
                Some(last) => {
                    if seq > last + 1 {
                        stream.gaps += 1;
                        stream.skipped += seq - last - 1;
                    }
                    stream.last = Some(seq);
                }
                None => stream.last = Some(seq),
            }
        }
        _ => {}
    }
}
