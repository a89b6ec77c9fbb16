//! The one-command demo: the publisher's engine (quote feed, order
//! simulator, order service, the very code of the `publisher` service)
//! running inside this node, and short-lived tokens for the account
//! [`ACCOUNT`] so the page can place orders.
//!
//! On the in-memory backplane the engine publishes through
//! [`InMemory`] (the memory broker, doing what the Redis scripts do) and
//! serves orders from an in-process desk; with `demo = "on"` on Redis it
//! runs exactly as a publisher replica would, on the node's Redis.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use publisher::Engine;
use publisher::backplane::{Backplane, BoxFuture, OrderUpdate, TopicBatch, WriteError, Written};
use publisher::order_desk::{self, Answer, OrderDesk, RequestSender};
use rand::Rng;
use serde::Serialize;
use wire::Topic;

use crate::broker::memory::MemoryBroker;
use crate::config::{Config, Secret};
use crate::requests::Requests;

/// The account demo tokens act for (`orders.demo`).
pub const ACCOUNT: &str = "demo";
/// How long a demo token is valid; the page fetches a new one at each
/// (re)connect.
pub const TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// Delay between an order's lifecycle steps: slow enough to watch the
/// fills stream in on the page.
const FILL_DELAY_MS: u64 = 300;
/// Simulated accounts (`acct-1` … `acct-10`).
const ACCOUNTS: usize = 10;
/// Order requests waiting for the in-process order service at most.
const DESK_CAPACITY: usize = 1024;

/// The publisher settings the demo runs with, from the node's.
pub fn publisher_config(config: &Config, node_id: &str) -> publisher::Config {
    let defaults = publisher::Config::default();
    publisher::Config {
        redis_url: if config.redis_url.is_empty() { defaults.redis_url } else { config.redis_url.clone() },
        redis_cluster: config.redis_cluster,
        redis_sentinels: config.redis_sentinels.clone(),
        redis_sentinel_master: config.redis_sentinel_master.clone(),
        redis_sentinel_password: config.redis_sentinel_password.clone(),
        redis_sentinel_wait_replicas: config.redis_sentinel_wait_replicas,
        channel_prefix: config.channel_prefix.clone(),
        symbols: config.demo_symbols.join(","),
        symbol_count: 20,
        quote_rate: config.demo_quote_rate,
        order_rate: config.demo_order_rate,
        accounts: ACCOUNTS,
        fill_delay_ms: FILL_DELAY_MS,
        history_maxlen: config.history_maxlen as u64,
        replica_id: format!("demo-{node_id}"),
        redis_timeout_ms: config.redis_timeout_ms.max(100),
        redis_backoff_max_ms: config.redis_backoff_max_ms,
        // Updates still buffered when the node's own drain ends are lost
        // anyway (in memory): flush for at most a second beyond it.
        drain_ms: 1_000,
        ..defaults
    }
}

/// An in-process order desk whose replies go straight to `requests`.
pub fn order_desk(requests: &Arc<Requests>) -> (RequestSender, Box<dyn OrderDesk>) {
    let requests = Arc::clone(requests);
    let deliver: order_desk::Deliver = Arc::new(move |answer: Answer| requests.deliver(answer.reply));
    let (sender, desk) = order_desk::in_process(DESK_CAPACITY, deliver);
    (sender, Box::new(desk))
}

/// Starts the engine on the in-memory backplane.
pub fn start_in_memory(
    config: publisher::Config,
    memory: Arc<MemoryBroker>,
    desk: Box<dyn OrderDesk>,
) -> Engine {
    log_start(&config, "memory");
    Engine::start(config, Arc::new(InMemory(memory)), move |_| Some(desk))
}

/// Starts the engine on Redis, as a publisher replica.
pub fn start_on_redis(config: publisher::Config) -> Result<Engine, WriteError> {
    log_start(&config, if config.redis_cluster { "redis-cluster" } else { "redis" });
    publisher::server::start_on_redis(config)
}

fn log_start(config: &publisher::Config, backplane: &str) {
    tracing::info!(
        backplane,
        symbols = config.symbol_list().len(),
        quote_rate = config.quote_rate,
        order_rate = config.order_rate,
        "demo: running the publisher's feed, simulator and order service in this node"
    );
}

/// The memory broker as the publisher's backplane.
struct InMemory(Arc<MemoryBroker>);

impl Backplane for InMemory {
    fn publish<'a>(&'a self, batches: &'a [TopicBatch]) -> BoxFuture<'a, Result<Vec<u64>, WriteError>> {
        let published = batches
            .iter()
            .map(|b| {
                let topic = Topic::parse(&b.topic).map_err(|e| WriteError::Reply(e.to_string()))?;
                Ok(self.0.append(&topic, &b.head, b.tails.iter().map(String::as_str), None).0)
            })
            .collect();
        Box::pin(async move { published })
    }

    fn write_updates<'a>(
        &'a self,
        updates: &'a [OrderUpdate],
    ) -> BoxFuture<'a, Result<Vec<Written>, WriteError>> {
        let written = updates
            .iter()
            .map(|u| {
                let (seq, duplicate) = self.0.append(&u.topic, &u.head, [u.tail.as_str()], Some(&u.id));
                Written { seq, duplicate }
            })
            .collect();
        Box::pin(async move { Ok(written) })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), WriteError>> {
        Box::pin(async { Ok(()) })
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

/// Signs demo tokens.
pub struct Tokens {
    key: EncodingKey,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

/// What `GET /demo/token` answers.
#[derive(Serialize)]
pub struct Issued {
    pub token: String,
    pub account: &'static str,
    pub expires_in: u64,
}

impl Tokens {
    pub fn new(secret: &Secret) -> Result<Tokens, jsonwebtoken::errors::Error> {
        Ok(Tokens { key: EncodingKey::from_secret(secret.expose().as_bytes())? })
    }

    pub fn issue(&self) -> Result<Issued, jsonwebtoken::errors::Error> {
        let exp = wire::now_ms() / 1000 + TOKEN_TTL.as_secs();
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &Claims { sub: ACCOUNT, exp }, &self.key)?;
        Ok(Issued { token, account: ACCOUNT, expires_in: TOKEN_TTL.as_secs() })
    }
}

/// A signing key made at start, for demo tokens when no `jwt_secret` is
/// set: it never leaves the process, so the tokens are valid here only.
pub fn ephemeral_secret() -> Secret {
    let bytes: [u8; 32] = rand::rng().random();
    Secret::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>().as_str())
}
