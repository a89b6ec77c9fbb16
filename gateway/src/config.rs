//! The gateway's configuration: one typed struct, loaded as defaults <
//! file (`--config PATH`) < environment (`GATEWAY_<KEY>`), then validated
//! so a bad value stops the node at start with the key named.
//!
//! `gateway.example.toml` at the repository root documents every key.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use service::Layers;
use service::telemetry::LogFormat;

/// Environment variables are `GATEWAY_` + the key in upper case.
pub const ENV_PREFIX: &str = "GATEWAY";

/// Names a config file; read by the binary, not a config key itself.
pub const CONFIG_FILE_ENV: &str = "GATEWAY_CONFIG";

#[derive(Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP/WebSocket server listens on.
    pub listen: String,
    /// This node's id in `welcome` frames and its reply channel; empty
    /// means a random UUID at each start (nodes are stateless).
    pub node_id: String,
    /// Redis URL of the backplane (`redis://`, `rediss://`); empty means
    /// the embedded in-memory backplane (one node, nothing to install).
    /// With `redis_cluster`, a comma-separated list of seed nodes.
    pub redis_url: String,
    /// The backplane is a Redis Cluster (Redis 7+): topics travel on
    /// sharded pub/sub (SSUBSCRIBE / SPUBLISH), so each message only
    /// crosses the shard that owns its channel's slot.
    pub redis_cluster: bool,
    /// With `redis_cluster`: each shard's topics are also subscribed on
    /// one of its master's replicas, so a planned `CLUSTER FAILOVER`
    /// loses no message (the promoted replica keeps those subscriptions
    /// while the old master ends them); duplicates are dropped by `seq`.
    /// Costs a second copy of every message from Redis to this node.
    pub redis_cluster_standby: bool,
    /// Redis Sentinel: `host:port` of each sentinel, comma-separated
    /// (asked in this order); the backplane is the master they name, and
    /// `redis_url` then gives only scheme, user, password and database.
    pub redis_sentinels: String,
    /// The master's name in the sentinels' configuration.
    pub redis_sentinel_master: String,
    /// The sentinels' own password (their `requirepass`); empty: none.
    pub redis_sentinel_password: Secret,
    /// Behind Sentinel, replicas that must have an order update before it
    /// is published (`WAIT`): 1 survives a master's crash; all of them
    /// also a planned failover or a partition, but then one replica
    /// down stops order updates.
    pub redis_sentinel_wait_replicas: u32,
    /// Prefix of every Redis channel and key (the contract's default `rt:`).
    pub channel_prefix: String,
    /// Largest client frame accepted; larger ones close the socket (1009).
    pub max_frame_bytes: usize,
    /// Subscriptions one connection may hold at once.
    pub max_subscriptions: usize,
    /// Frames that may wait for one slow socket before it is closed (4001).
    pub outbound_queue: usize,
    /// Bytes that may wait for one slow socket before it is closed (4001).
    pub max_pending_bytes: usize,
    /// Connections this node holds at once, counted from accept (WebSocket,
    /// handshaking or plain HTTP); 0 means automatic: the open-file limit
    /// less a reserve for Redis and logs.
    pub max_connections: usize,
    /// Connections one client IP may hold; 0 means no limit (behind a load
    /// balancer every client may share its address).
    pub max_connections_per_ip: usize,
    /// Connections one client IP may hold that have not upgraded to a
    /// WebSocket (plain HTTP, or a handshake under way); 0 means automatic:
    /// a sixteenth of `max_connections`, at least 32. Half-open sockets
    /// from one address then cannot take the node's files.
    pub max_pending_per_ip: usize,
    /// An HTTP request (the WebSocket handshake included) must arrive whole
    /// within this; a connection that sends less, or sits idle between
    /// requests this long, is closed. The `/publish` body too.
    pub request_timeout_ms: u64,
    /// Browser origins allowed to connect (exact `Origin` values, or `*`);
    /// empty allows any. Clients that send no Origin are not browsers and
    /// are not checked.
    pub allowed_origins: Vec<String>,
    /// Commands a connection may send per second (burst of the same size);
    /// more get `rate_limited`.
    pub max_commands_per_sec: u32,
    /// Malformed or rate-limited commands after which a connection is
    /// closed (4003).
    pub max_client_errors: u32,
    /// Interval between server pings.
    pub ping_interval_ms: u64,
    /// A client that sends nothing (not even a pong) this long after a
    /// ping is dropped (4002) and its subscriptions released.
    pub ping_timeout_ms: u64,
    /// On SIGTERM, clients are closed (1012) spread over the first half of
    /// this window; the node exits when all are gone or the window ends.
    pub drain_ms: u64,
    /// A topic's last local subscriber leaving keeps the Redis
    /// subscription this long, so quick resubscribes do not flap.
    pub unsubscribe_grace_ms: u64,
    /// Bytes read from a socket per call, at most 16 KiB. The buffer is on
    /// the thread's stack, used only while a socket is readable: an idle
    /// connection holds none (see `ws::socket`).
    pub ws_read_buffer_bytes: usize,
    /// Frames queued for a socket are gathered up to this many bytes and
    /// written with one syscall.
    pub ws_write_buffer_bytes: usize,
    /// While a connection's task waits with nothing to write, the fan-out
    /// writes a frame to its socket itself (one non-blocking `writev`),
    /// instead of queueing it and waking the task; see `outbox`.
    pub ws_direct_writes: bool,
    /// Redis pub/sub connections; topics are spread over them by hash.
    pub pubsub_connections: usize,
    /// Backoff cap between Redis reconnect attempts.
    pub redis_backoff_max_ms: u64,
    /// Timeout of one Redis connect or subscribe round trip.
    pub redis_timeout_ms: u64,
    /// Every this often each Redis pub/sub link is sent a delivery probe
    /// (a message on a channel of this node, published like any other);
    /// 0 turns the probe off.
    pub probe_interval_ms: u64,
    /// A probe not back this long after Redis accepted its publish
    /// reconnects its link (which is not ready meanwhile).
    pub probe_timeout_ms: u64,
    /// How long an `order` waits for the order service's reply before the
    /// client gets `timeout`.
    pub order_timeout_ms: u64,
    /// Orders one connection may have waiting at once (more: `rate_limited`).
    pub max_pending_orders: usize,
    /// History kept per topic for updates published through this node
    /// (`XADD … MAXLEN ~`), as the publisher's `history_maxlen`.
    pub history_maxlen: usize,
    /// Envelopes replayed at most for one `subscribe` with `since`.
    pub replay_limit: usize,
    /// Bearer key that `POST /publish` requires. Empty: the endpoint is
    /// closed, unless `publish_insecure` opens it (or the demo runs: then
    /// it is open to loopback clients).
    pub publish_api_key: Secret,
    /// Opens `POST /publish` without a key to anyone who reaches the port.
    pub publish_insecure: bool,
    /// HS256 secret that client JWTs are signed with; empty turns
    /// authentication off (every topic open: development only).
    pub jwt_secret: Secret,
    /// Clock skew tolerated on `exp`, in seconds.
    pub jwt_leeway_secs: u64,
    /// Whether topics other than `orders.*` may be read without a token.
    pub public_topics: bool,
    /// Log lines: "text", "json", or "" for `LOG_FORMAT` (else text).
    pub log_format: LogFormat,
    /// Share of feed messages (quotes, other non-order topics) arriving
    /// without a sampled `traceparent` that this node starts a trace for
    /// (when an OTLP endpoint is configured).
    pub trace_quote_ratio: f64,
    /// Share of order round trips without a client `traceparent` (and of
    /// `orders.*` updates without one) that start a trace.
    pub trace_order_ratio: f64,
    /// Run the publisher's quote feed, order simulator and order service
    /// inside this node (the one-command demo): `auto` runs them on the
    /// in-memory backplane only, `on` also on Redis, `off` never.
    pub demo: Switch,
    /// Quotes per second the demo feed publishes over all its symbols.
    pub demo_quote_rate: u64,
    /// Simulated orders per second the demo places over `acct-1` … `acct-10`.
    pub demo_order_rate: f64,
    /// Symbols the demo quotes and trades; empty means the publisher's
    /// first 20 tickers (AAPL, MSFT, …).
    pub demo_symbols: Vec<String>,
    /// `GET /demo/token` hands out short-lived tokens for the account
    /// `demo`, so the page can place orders: `auto` only when the demo
    /// runs and no `jwt_secret` is set (a signing key is then made at each
    /// start), `on` also with the operator's `jwt_secret`, `off` never.
    pub demo_token: Switch,
}

/// A feature that is on, off, or decided from the rest of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    Auto,
    On,
    Off,
}

/// As a derived `Debug`, with the password of `redis_url` replaced (the
/// secrets are [`Secret`]s). Destructured, so a new field cannot be left out.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Config {
            listen,
            node_id,
            redis_url,
            redis_cluster,
            redis_cluster_standby,
            redis_sentinels,
            redis_sentinel_master,
            redis_sentinel_password,
            redis_sentinel_wait_replicas,
            channel_prefix,
            max_frame_bytes,
            max_subscriptions,
            outbound_queue,
            max_pending_bytes,
            max_connections,
            max_connections_per_ip,
            max_pending_per_ip,
            request_timeout_ms,
            allowed_origins,
            max_commands_per_sec,
            max_client_errors,
            ping_interval_ms,
            ping_timeout_ms,
            drain_ms,
            unsubscribe_grace_ms,
            ws_read_buffer_bytes,
            ws_write_buffer_bytes,
            ws_direct_writes,
            pubsub_connections,
            redis_backoff_max_ms,
            redis_timeout_ms,
            probe_interval_ms,
            probe_timeout_ms,
            order_timeout_ms,
            max_pending_orders,
            history_maxlen,
            replay_limit,
            publish_api_key,
            publish_insecure,
            jwt_secret,
            jwt_leeway_secs,
            public_topics,
            log_format,
            trace_quote_ratio,
            trace_order_ratio,
            demo,
            demo_quote_rate,
            demo_order_rate,
            demo_symbols,
            demo_token,
        } = self;
        f.debug_struct("Config")
            .field("listen", listen)
            .field("node_id", node_id)
            .field("redis_url", &redis_backplane::settings::redacted_url(redis_url))
            .field("redis_cluster", redis_cluster)
            .field("redis_cluster_standby", redis_cluster_standby)
            .field("redis_sentinels", redis_sentinels)
            .field("redis_sentinel_master", redis_sentinel_master)
            .field("redis_sentinel_password", redis_sentinel_password)
            .field("redis_sentinel_wait_replicas", redis_sentinel_wait_replicas)
            .field("channel_prefix", channel_prefix)
            .field("max_frame_bytes", max_frame_bytes)
            .field("max_subscriptions", max_subscriptions)
            .field("outbound_queue", outbound_queue)
            .field("max_pending_bytes", max_pending_bytes)
            .field("max_connections", max_connections)
            .field("max_connections_per_ip", max_connections_per_ip)
            .field("max_pending_per_ip", max_pending_per_ip)
            .field("request_timeout_ms", request_timeout_ms)
            .field("allowed_origins", allowed_origins)
            .field("max_commands_per_sec", max_commands_per_sec)
            .field("max_client_errors", max_client_errors)
            .field("ping_interval_ms", ping_interval_ms)
            .field("ping_timeout_ms", ping_timeout_ms)
            .field("drain_ms", drain_ms)
            .field("unsubscribe_grace_ms", unsubscribe_grace_ms)
            .field("ws_read_buffer_bytes", ws_read_buffer_bytes)
            .field("ws_write_buffer_bytes", ws_write_buffer_bytes)
            .field("ws_direct_writes", ws_direct_writes)
            .field("pubsub_connections", pubsub_connections)
            .field("redis_backoff_max_ms", redis_backoff_max_ms)
            .field("redis_timeout_ms", redis_timeout_ms)
            .field("probe_interval_ms", probe_interval_ms)
            .field("probe_timeout_ms", probe_timeout_ms)
            .field("order_timeout_ms", order_timeout_ms)
            .field("max_pending_orders", max_pending_orders)
            .field("history_maxlen", history_maxlen)
            .field("replay_limit", replay_limit)
            .field("publish_api_key", publish_api_key)
            .field("publish_insecure", publish_insecure)
            .field("jwt_secret", jwt_secret)
            .field("jwt_leeway_secs", jwt_leeway_secs)
            .field("public_topics", public_topics)
            .field("log_format", log_format)
            .field("trace_quote_ratio", trace_quote_ratio)
            .field("trace_order_ratio", trace_order_ratio)
            .field("demo", demo)
            .field("demo_quote_rate", demo_quote_rate)
            .field("demo_order_rate", demo_order_rate)
            .field("demo_symbols", demo_symbols)
            .field("demo_token", demo_token)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:8080".into(),
            node_id: String::new(),
            redis_url: String::new(),
            redis_cluster: false,
            redis_cluster_standby: true,
            redis_sentinels: String::new(),
            redis_sentinel_master: String::new(),
            redis_sentinel_password: Secret::default(),
            redis_sentinel_wait_replicas: 1,
            channel_prefix: "rt:".into(),
            max_frame_bytes: 64 * 1024,
            max_subscriptions: 1024,
            outbound_queue: 1024,
            max_pending_bytes: 4 << 20,
            max_connections: 0,
            max_connections_per_ip: 0,
            max_pending_per_ip: 0,
            request_timeout_ms: 10_000,
            allowed_origins: Vec::new(),
            max_commands_per_sec: 100,
            max_client_errors: 100,
            ping_interval_ms: 25_000,
            ping_timeout_ms: 10_000,
            drain_ms: 10_000,
            unsubscribe_grace_ms: 2_000,
            ws_read_buffer_bytes: 256,
            ws_write_buffer_bytes: 16 * 1024,
            ws_direct_writes: true,
            pubsub_connections: 1,
            redis_backoff_max_ms: 5_000,
            redis_timeout_ms: 3_000,
            probe_interval_ms: 3_000,
            probe_timeout_ms: 5_000,
            order_timeout_ms: 5_000,
            max_pending_orders: 32,
            replay_limit: 10_000,
            history_maxlen: 10_000,
            publish_api_key: Secret::default(),
            publish_insecure: false,
            jwt_secret: Secret::default(),
            jwt_leeway_secs: 30,
            public_topics: true,
            demo: Switch::Auto,
            demo_quote_rate: 100,
            demo_order_rate: 2.0,
            demo_symbols: Vec::new(),
            demo_token: Switch::Auto,
            log_format: LogFormat::Auto,
            trace_quote_ratio: 0.01,
            trace_order_ratio: 1.0,
        }
    }
}

pub use service::Secret;

pub use service::ConfigError;

impl Config {
    /// Loads defaults < `file` < the process environment, then validates.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Config::load`], with the environment given (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let layers = Layers {
            env_prefix: ENV_PREFIX,
            file_env: CONFIG_FILE_ENV,
            list_keys: &["allowed_origins", "demo_symbols"],
        };
        let cfg: Config = layers.load(file, env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value that deserialised but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, reason: String| ConfigError::invalid(ENV_PREFIX, key, reason);
        self.listen_addr().map_err(|e| bad("listen", e))?;
        // Empty without a cluster or Sentinel: the in-memory backplane.
        self.redis_keys().check(false).map_err(|(key, e)| bad(key, e))?;
        redis_backplane::settings::check_prefix(&self.channel_prefix, self.redis_cluster)
            .map_err(|e| bad("channel_prefix", e))?;
        if self.node_id.chars().any(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(c))) {
            return Err(bad("node_id", "may only contain A-Z a-z 0-9 - _ .".into()));
        }
        let ranges: [(&'static str, u64, u64, u64); 24] = [
            ("max_pending_per_ip", self.max_pending_per_ip as u64, 0, 10_000_000),
            ("request_timeout_ms", self.request_timeout_ms, 10, 3_600_000),
            ("history_maxlen", self.history_maxlen as u64, 1, 100_000_000),
            ("max_connections_per_ip", self.max_connections_per_ip as u64, 0, 10_000_000),
            ("max_commands_per_sec", u64::from(self.max_commands_per_sec), 1, 1_000_000),
            ("max_client_errors", u64::from(self.max_client_errors), 1, 1_000_000),
            ("jwt_leeway_secs", self.jwt_leeway_secs, 0, 3_600),
            ("pubsub_connections", self.pubsub_connections as u64, 1, 64),
            ("order_timeout_ms", self.order_timeout_ms, 10, 600_000),
            ("max_pending_orders", self.max_pending_orders as u64, 1, 100_000),
            ("replay_limit", self.replay_limit as u64, 1, 1_000_000),
            ("max_frame_bytes", self.max_frame_bytes as u64, 128, 16 << 20),
            ("max_subscriptions", self.max_subscriptions as u64, 1, 1_000_000),
            ("outbound_queue", self.outbound_queue as u64, 1, 1_000_000),
            ("max_pending_bytes", self.max_pending_bytes as u64, 1024, 1 << 32),
            ("max_connections", self.max_connections as u64, 0, 10_000_000),
            ("ping_interval_ms", self.ping_interval_ms, 10, 3_600_000),
            ("ping_timeout_ms", self.ping_timeout_ms, 10, 3_600_000),
            ("drain_ms", self.drain_ms, 0, 3_600_000),
            ("unsubscribe_grace_ms", self.unsubscribe_grace_ms, 0, 3_600_000),
            (
                "ws_read_buffer_bytes",
                self.ws_read_buffer_bytes as u64,
                64,
                crate::ws::socket::READ_CHUNK_MAX as u64,
            ),
            ("ws_write_buffer_bytes", self.ws_write_buffer_bytes as u64, 0, 16 << 20),
            ("redis_timeout_ms", self.redis_timeout_ms, 10, 600_000),
            ("probe_timeout_ms", self.probe_timeout_ms, 50, 600_000),
        ];
        for (key, value, min, max) in ranges {
            if value < min || value > max {
                return Err(bad(key, format!("{value} is outside {min}..={max}")));
            }
        }
        if self.probe_interval_ms != 0 && !(50..=3_600_000).contains(&self.probe_interval_ms) {
            let reason =
                format!("{} is outside 50..=3600000 (0 turns the probe off)", self.probe_interval_ms);
            return Err(bad("probe_interval_ms", reason));
        }
        if self.redis_backoff_max_ms < 10 {
            return Err(bad("redis_backoff_max_ms", "must be at least 10".into()));
        }
        if self.demo_quote_rate > 1_000_000 {
            return Err(bad("demo_quote_rate", format!("{} is outside 0..=1000000", self.demo_quote_rate)));
        }
        if !(self.demo_order_rate.is_finite() && (0.0..=100_000.0).contains(&self.demo_order_rate)) {
            return Err(bad("demo_order_rate", format!("{} is outside 0..=100000", self.demo_order_rate)));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.demo_symbols {
            wire::topic::validate(&format!("quotes.{s}"))
                .map_err(|e| bad("demo_symbols", format!("{s:?} does not make a valid topic: {e}")))?;
            if !seen.insert(s) {
                return Err(bad("demo_symbols", format!("{s:?} is listed twice")));
            }
        }
        self.telemetry().validate().map_err(|(key, reason)| bad(key, reason))?;
        Ok(())
    }

    /// Whether this node runs the publisher's producers in process.
    pub fn demo_enabled(&self) -> bool {
        match self.demo {
            Switch::Auto => !self.uses_redis(),
            Switch::On => true,
            Switch::Off => false,
        }
    }

    /// Whether this node hands out demo tokens at `GET /demo/token`.
    pub fn demo_token_enabled(&self) -> bool {
        match self.demo_token {
            Switch::Auto => self.demo_enabled() && self.jwt_secret.is_empty(),
            Switch::On => true,
            Switch::Off => false,
        }
    }

    /// What `service::telemetry` takes from this config.
    pub fn telemetry(&self) -> service::telemetry::Settings {
        service::telemetry::Settings {
            log_format: self.log_format,
            quote_ratio: self.trace_quote_ratio,
            order_ratio: self.trace_order_ratio,
        }
    }

    /// Whether the backplane is Redis (else the in-memory one).
    pub fn uses_redis(&self) -> bool {
        !self.redis_url.is_empty() || self.sentinel().is_some()
    }

    /// The Sentinel keys, when the master is found through Sentinel.
    pub fn sentinel(&self) -> Option<redis_backplane::SentinelConfig<'_>> {
        self.redis_keys().sentinel()
    }

    fn redis_keys(&self) -> redis_backplane::settings::RedisKeys<'_> {
        redis_backplane::settings::RedisKeys {
            url: &self.redis_url,
            cluster: self.redis_cluster,
            sentinels: &self.redis_sentinels,
            sentinel_master: &self.redis_sentinel_master,
            sentinel_password: self.redis_sentinel_password.expose(),
            sentinel_wait_replicas: self.redis_sentinel_wait_replicas,
        }
    }

    /// The seed nodes of a Redis Cluster (`redis_url` split at commas).
    pub fn redis_seeds(&self) -> impl Iterator<Item = &str> {
        redis_backplane::settings::seeds(&self.redis_url)
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.listen.parse().map_err(|e| format!("{:?} is not HOST:PORT: {e}", self.listen))
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }
    pub fn ping_timeout(&self) -> Duration {
        Duration::from_millis(self.ping_timeout_ms)
    }
    pub fn drain(&self) -> Duration {
        Duration::from_millis(self.drain_ms)
    }
    pub fn unsubscribe_grace(&self) -> Duration {
        Duration::from_millis(self.unsubscribe_grace_ms)
    }
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }
    pub fn order_timeout(&self) -> Duration {
        Duration::from_millis(self.order_timeout_ms)
    }
    /// Zero when the probe is off.
    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms)
    }
    pub fn probe_timeout(&self) -> Duration {
        Duration::from_millis(self.probe_timeout_ms)
    }
    pub fn redis_backoff_max(&self) -> Duration {
        Duration::from_millis(self.redis_backoff_max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_valid() {
        let cfg = Config::load_from(None, env(&[("PATH", "/bin"), ("GATEWAY_CONFIG", "x")])).unwrap();
        assert_eq!(cfg.channel_prefix, "rt:");
        assert!(cfg.redis_url.is_empty());
    }

    #[test]
    fn environment_overrides_file() {
        let dir = std::env::temp_dir().join(format!("gw-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("gateway.toml");
        std::fs::write(&file, "max_subscriptions = 7\nchannel_prefix = \"file:\"\n").unwrap();
        let vars = env(&[
            ("GATEWAY_CHANNEL_PREFIX", "env:"),
            ("GATEWAY_ALLOWED_ORIGINS", "https://a.example,https://b.example"),
        ]);
        let cfg = Config::load_from(Some(&file), vars).unwrap();
        assert_eq!(cfg.max_subscriptions, 7);
        assert_eq!(cfg.channel_prefix, "env:");
        assert_eq!(cfg.allowed_origins, vec!["https://a.example", "https://b.example"]);
    }

    #[test]
    fn example_file_is_the_defaults() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway.example.toml");
        let from_file = Config::load_from(Some(&file), Vec::new()).unwrap();
        assert_eq!(format!("{from_file:?}"), format!("{:?}", Config::default()));
        let text = std::fs::read_to_string(&file).unwrap();
        let keys = serde_json::to_value(Config::default()).unwrap();
        for key in keys.as_object().unwrap().keys() {
            let env = format!("GATEWAY_{}", key.to_uppercase());
            assert!(text.contains(&env), "example file names {env}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let cfg = Config { jwt_secret: "hunter2".into(), publish_api_key: "k3y".into(), ..Config::default() };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("k3y"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases = [
            ("GATEWAY_MAX_FRAME_BYTES", "abc", "max_frame_bytes"),
            ("GATEWAY_MAX_FRAME_BYTES", "1", "max_frame_bytes"),
            ("GATEWAY_LISTEN", "nowhere", "listen"),
            ("GATEWAY_REDIS_URL", "http://x", "redis_url"),
            ("GATEWAY_NO_SUCH_KEY", "1", "no_such_key"),
            ("GATEWAY_REDIS_CLUSTER", "maybe", "redis_cluster"),
            ("GATEWAY_REDIS_CLUSTER_STANDBY", "perhaps", "redis_cluster_standby"),
            ("GATEWAY_LOG_FORMAT", "xml", "log_format"),
            ("GATEWAY_TRACE_QUOTE_RATIO", "1.5", "trace_quote_ratio"),
            ("GATEWAY_TRACE_ORDER_RATIO", "-0.1", "trace_order_ratio"),
            ("GATEWAY_PROBE_INTERVAL_MS", "10", "probe_interval_ms"),
            ("GATEWAY_PROBE_TIMEOUT_MS", "0", "probe_timeout_ms"),
        ];
        for (k, v, key) in cases {
            let err = Config::load_from(None, env(&[(k, v)])).unwrap_err().to_string();
            assert!(err.contains(key), "{k}={v}: {err}");
        }
    }

    #[test]
    fn cluster_seeds_are_a_comma_separated_list() {
        let vars = env(&[
            ("GATEWAY_REDIS_CLUSTER", "true"),
            ("GATEWAY_REDIS_URL", "redis://10.0.0.1:7000, redis://10.0.0.2:7000,"),
        ]);
        let cfg = Config::load_from(None, vars).unwrap();
        assert!(cfg.redis_cluster);
        assert_eq!(cfg.redis_seeds().collect::<Vec<_>>(), ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]);
        let refused = [
            [("GATEWAY_REDIS_CLUSTER", "true"), ("GATEWAY_REDIS_URL", "")],
            [("GATEWAY_REDIS_CLUSTER", "true"), ("GATEWAY_REDIS_URL", "redis://a:1,unix:///tmp/r.sock")],
        ];
        for vars in refused {
            let err = Config::load_from(None, env(&vars)).unwrap_err().to_string();
            assert!(err.contains("redis_url"), "{vars:?}: {err}");
        }
        let braces = env(&[
            ("GATEWAY_REDIS_CLUSTER", "true"),
            ("GATEWAY_REDIS_URL", "redis://a:1"),
            ("GATEWAY_CHANNEL_PREFIX", "rt{x}:"),
        ]);
        let err = Config::load_from(None, braces).unwrap_err().to_string();
        assert!(err.contains("channel_prefix"), "{err}");
    }

    #[test]
    fn cluster_without_a_seed_is_refused_at_start() {
        // Once accepted (it is not empty), then failed later at connect.
        for url in [",", " , ,"] {
            let vars = env(&[("GATEWAY_REDIS_CLUSTER", "true"), ("GATEWAY_REDIS_URL", url)]);
            let err = Config::load_from(None, vars).unwrap_err().to_string();
            assert!(err.contains("redis_url") && err.contains("seed"), "{url:?}: {err}");
        }
    }

    #[test]
    fn sentinel_keys_are_checked() {
        let vars = env(&[
            ("GATEWAY_REDIS_SENTINELS", "127.0.0.1:26379,127.0.0.1:26380"),
            ("GATEWAY_REDIS_SENTINEL_MASTER", "mymaster"),
            ("GATEWAY_REDIS_SENTINEL_PASSWORD", "s3cret"),
        ]);
        let cfg = Config::load_from(None, vars).unwrap();
        assert!(cfg.uses_redis() && !cfg.demo_enabled());
        assert!(!format!("{cfg:?}").contains("s3cret"));
        for (k, v, key) in [
            ("GATEWAY_REDIS_SENTINELS", "127.0.0.1", "redis_sentinels"),
            ("GATEWAY_REDIS_SENTINEL_MASTER", "", "redis_sentinel_master"),
            ("GATEWAY_REDIS_CLUSTER", "true", "redis_sentinels"),
            ("GATEWAY_REDIS_SENTINEL_WAIT_REPLICAS", "65", "redis_sentinel_wait_replicas"),
            ("GATEWAY_REDIS_URL", "unix:///tmp/r.sock", "redis_url"),
        ] {
            let mut vars = env(&[("GATEWAY_REDIS_SENTINELS", "a:1"), ("GATEWAY_REDIS_SENTINEL_MASTER", "m")]);
            vars.push((k.to_string(), v.to_string()));
            let err = Config::load_from(None, vars).unwrap_err().to_string();
            assert!(err.contains(key), "{k}={v}: {err}");
        }
    }

    #[test]
    fn redis_passwords_never_show_in_debug_output() {
        let cfg = Config { redis_url: "redis://app:hunter2@10.0.0.1:6379/0".into(), ..Config::default() };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redis://app:<redacted>@10.0.0.1:6379/0"), "{shown}");
    }
}
