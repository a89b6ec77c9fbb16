//! The publisher's configuration: one typed struct, loaded as defaults <
//! file (`--config PATH`) < environment (`PUBLISHER_<KEY>`), then
//! validated so a bad value stops the service at start with the key named.
//!
//! `publisher.example.toml` at the repository root documents every key.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use service::telemetry::LogFormat;
use service::{Layers, Secret};

/// Environment variables are `PUBLISHER_` + the key in upper case.
pub const ENV_PREFIX: &str = "PUBLISHER";

/// Names a config file; read by the binary, not a config key itself.
pub const CONFIG_FILE_ENV: &str = "PUBLISHER_CONFIG";

/// Well-known tickers used first when symbols are generated from
/// `symbol_count`, so the contract's examples (`quotes.AAPL`) just work.
const TICKERS: [&str; 20] = [
    "AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META", "TSLA", "BRK.B", "JPM", "V", "UNH", "XOM", "JNJ", "WMT",
    "MA", "PG", "HD", "CVX", "KO", "PEP",
];

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the HTTP server (publish API, health, metrics).
    pub listen: String,
    /// Redis URL of the backplane (`redis://`, `rediss://`, `unix://`);
    /// with `redis_cluster`, a comma-separated list of seed nodes.
    pub redis_url: String,
    /// The backplane is a Redis Cluster (Redis 7+): messages are published
    /// with SPUBLISH (sharded pub/sub), as the gateways then subscribe.
    pub redis_cluster: bool,
    /// Redis Sentinel: `host:port` of each sentinel, comma-separated
    /// (asked in this order); the master is the one they name, and
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
    /// Comma-separated symbols to quote and trade; empty means
    /// `symbol_count` generated ones.
    pub symbols: String,
    /// How many symbols to generate when `symbols` is empty.
    pub symbol_count: usize,
    /// Quotes per second over all symbols; 0 turns the feed off.
    pub quote_rate: u64,
    /// During a burst the quote rate is multiplied by this (1 = no bursts).
    pub burst_factor: f64,
    /// A burst starts every this many ms; 0 turns bursts off.
    pub burst_every_ms: u64,
    /// How long each burst lasts.
    pub burst_len_ms: u64,
    /// Simulated accounts, named `acct-1` … `acct-<n>`.
    pub accounts: usize,
    /// Simulated orders per second over all accounts; 0 means none.
    pub order_rate: f64,
    /// Delay between two steps of an order's lifecycle.
    pub fill_delay_ms: u64,
    /// Share of simulated orders cancelled after a partial fill.
    pub cancel_ratio: f64,
    /// Approximate length a topic's history stream is trimmed to.
    pub history_maxlen: u64,
    /// This replica's consumer name in the order-request group; empty
    /// means a random UUID at each start.
    pub replica_id: String,
    /// Order requests pending this long with another (crashed) replica
    /// are claimed and served here.
    pub request_claim_idle_ms: u64,
    /// Requests older than this are acknowledged without a reply: the
    /// gateway that asked has given up on them.
    pub request_max_age_ms: u64,
    /// Order updates kept in memory while Redis is away; when full,
    /// producers wait (nothing is dropped).
    pub outage_buffer: usize,
    /// Timeout of one Redis connect or command round trip.
    pub redis_timeout_ms: u64,
    /// Backoff cap between retries while Redis is away.
    pub redis_backoff_max_ms: u64,
    /// On SIGTERM, buffered order updates are flushed for at most this long.
    pub drain_ms: u64,
    /// Bearer key that `POST /publish` requires; empty closes the endpoint
    /// unless `publish_insecure` opens it.
    pub publish_api_key: Secret,
    /// Opens `POST /publish` without a key to anyone who reaches the port.
    pub publish_insecure: bool,
    /// Log lines: "text", "json", or "" for `LOG_FORMAT` (else text).
    pub log_format: LogFormat,
    /// Share of quotes (and other non-order messages published without a
    /// sampled `traceparent`) that start a trace, when an OTLP endpoint is
    /// configured.
    pub trace_quote_ratio: f64,
    /// Share of order requests arriving without a sampled context, and of
    /// simulated orders, that start a trace.
    pub trace_order_ratio: f64,
}

/// As a derived `Debug`, with the password of `redis_url` replaced (the
/// secrets are [`Secret`]s). Destructured, so a new field cannot be left out.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Config {
            listen,
            redis_url,
            redis_cluster,
            redis_sentinels,
            redis_sentinel_master,
            redis_sentinel_password,
            redis_sentinel_wait_replicas,
            channel_prefix,
            symbols,
            symbol_count,
            quote_rate,
            burst_factor,
            burst_every_ms,
            burst_len_ms,
            accounts,
            order_rate,
            fill_delay_ms,
            cancel_ratio,
            history_maxlen,
            replica_id,
            request_claim_idle_ms,
            request_max_age_ms,
            outage_buffer,
            redis_timeout_ms,
            redis_backoff_max_ms,
            drain_ms,
            publish_api_key,
            publish_insecure,
            log_format,
            trace_quote_ratio,
            trace_order_ratio,
        } = self;
        f.debug_struct("Config")
            .field("listen", listen)
            .field("redis_url", &redis_backplane::settings::redacted_url(redis_url))
            .field("redis_cluster", redis_cluster)
            .field("redis_sentinels", redis_sentinels)
            .field("redis_sentinel_master", redis_sentinel_master)
            .field("redis_sentinel_password", redis_sentinel_password)
            .field("redis_sentinel_wait_replicas", redis_sentinel_wait_replicas)
            .field("channel_prefix", channel_prefix)
            .field("symbols", symbols)
            .field("symbol_count", symbol_count)
            .field("quote_rate", quote_rate)
            .field("burst_factor", burst_factor)
            .field("burst_every_ms", burst_every_ms)
            .field("burst_len_ms", burst_len_ms)
            .field("accounts", accounts)
            .field("order_rate", order_rate)
            .field("fill_delay_ms", fill_delay_ms)
            .field("cancel_ratio", cancel_ratio)
            .field("history_maxlen", history_maxlen)
            .field("replica_id", replica_id)
            .field("request_claim_idle_ms", request_claim_idle_ms)
            .field("request_max_age_ms", request_max_age_ms)
            .field("outage_buffer", outage_buffer)
            .field("redis_timeout_ms", redis_timeout_ms)
            .field("redis_backoff_max_ms", redis_backoff_max_ms)
            .field("drain_ms", drain_ms)
            .field("publish_api_key", publish_api_key)
            .field("publish_insecure", publish_insecure)
            .field("log_format", log_format)
            .field("trace_quote_ratio", trace_quote_ratio)
            .field("trace_order_ratio", trace_order_ratio)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:8090".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_cluster: false,
            redis_sentinels: String::new(),
            redis_sentinel_master: String::new(),
            redis_sentinel_password: Secret::default(),
            redis_sentinel_wait_replicas: 1,
            channel_prefix: "rt:".into(),
            symbols: String::new(),
            symbol_count: 100,
            quote_rate: 1_000,
            burst_factor: 1.0,
            burst_every_ms: 0,
            burst_len_ms: 0,
            accounts: 100,
            order_rate: 10.0,
            fill_delay_ms: 50,
            cancel_ratio: 0.1,
            history_maxlen: 10_000,
            replica_id: String::new(),
            request_claim_idle_ms: 5_000,
            request_max_age_ms: 30_000,
            outage_buffer: 100_000,
            redis_timeout_ms: 3_000,
            redis_backoff_max_ms: 2_000,
            drain_ms: 5_000,
            publish_api_key: Secret::default(),
            publish_insecure: false,
            log_format: LogFormat::Auto,
            trace_quote_ratio: 0.01,
            trace_order_ratio: 1.0,
        }
    }
}

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
        let layers = Layers { env_prefix: ENV_PREFIX, file_env: CONFIG_FILE_ENV, list_keys: &[] };
        let cfg: Config = layers.load(file, env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value that deserialised but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, reason: String| ConfigError::invalid(ENV_PREFIX, key, reason);
        self.listen_addr().map_err(|e| bad("listen", e))?;
        self.redis_keys().check(true).map_err(|(key, e)| bad(key, e))?;
        redis_backplane::settings::check_prefix(&self.channel_prefix, self.redis_cluster)
            .map_err(|e| bad("channel_prefix", e))?;
        if self.replica_id.chars().any(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(c))) {
            return Err(bad("replica_id", "may only contain A-Z a-z 0-9 - _ .".into()));
        }
        if self.symbols.trim().is_empty() {
            if !(1..=100_000).contains(&self.symbol_count) {
                return Err(bad("symbol_count", format!("{} is outside 1..=100000", self.symbol_count)));
            }
        } else {
            let mut seen = HashSet::new();
            for s in self.symbol_list() {
                wire::topic::validate(&format!("quotes.{s}"))
                    .map_err(|e| bad("symbols", format!("{s:?} does not make a valid topic: {e}")))?;
                if !seen.insert(s.clone()) {
                    return Err(bad("symbols", format!("{s:?} is listed twice")));
                }
            }
        }
        let ranges: [(&'static str, u64, u64, u64); 12] = [
            ("quote_rate", self.quote_rate, 0, 100_000_000),
            ("burst_every_ms", self.burst_every_ms, 0, 86_400_000),
            ("accounts", self.accounts as u64, 1, 10_000_000),
            ("fill_delay_ms", self.fill_delay_ms, 0, 600_000),
            ("history_maxlen", self.history_maxlen, 1, 1_000_000_000),
            ("request_claim_idle_ms", self.request_claim_idle_ms, 10, 86_400_000),
            ("request_max_age_ms", self.request_max_age_ms, 10, 86_400_000),
            ("outage_buffer", self.outage_buffer as u64, 1, 100_000_000),
            ("redis_timeout_ms", self.redis_timeout_ms, 100, 600_000),
            ("redis_backoff_max_ms", self.redis_backoff_max_ms, 10, 600_000),
            ("drain_ms", self.drain_ms, 0, 3_600_000),
            ("burst_len_ms", self.burst_len_ms, 0, self.burst_every_ms),
        ];
        for (key, value, min, max) in ranges {
            if value < min || value > max {
                return Err(bad(key, format!("{value} is outside {min}..={max}")));
            }
        }
        if !(self.burst_factor.is_finite() && (1.0..=1000.0).contains(&self.burst_factor)) {
            return Err(bad("burst_factor", format!("{} is outside 1..=1000", self.burst_factor)));
        }
        if !(self.order_rate.is_finite() && (0.0..=1_000_000.0).contains(&self.order_rate)) {
            return Err(bad("order_rate", format!("{} is outside 0..=1000000", self.order_rate)));
        }
        if !(self.cancel_ratio.is_finite() && (0.0..=1.0).contains(&self.cancel_ratio)) {
            return Err(bad("cancel_ratio", format!("{} is outside 0..=1", self.cancel_ratio)));
        }
        self.telemetry().validate().map_err(|(key, reason)| bad(key, reason))?;
        Ok(())
    }

    /// What `service::telemetry` takes from this config.
    pub fn telemetry(&self) -> service::telemetry::Settings {
        service::telemetry::Settings {
            log_format: self.log_format,
            quote_ratio: self.trace_quote_ratio,
            order_ratio: self.trace_order_ratio,
        }
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

    /// The symbols this service quotes and accepts orders for.
    pub fn symbol_list(&self) -> Vec<String> {
        if !self.symbols.trim().is_empty() {
            return self
                .symbols
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        (0..self.symbol_count)
            .map(|i| match TICKERS.get(i) {
                Some(t) => (*t).to_string(),
                None => format!("SYM{:04}", i + 1),
            })
            .collect()
    }

    pub fn fill_delay(&self) -> Duration {
        Duration::from_millis(self.fill_delay_ms)
    }
    pub fn request_claim_idle(&self) -> Duration {
        Duration::from_millis(self.request_claim_idle_ms)
    }
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }
    pub fn redis_backoff_max(&self) -> Duration {
        Duration::from_millis(self.redis_backoff_max_ms)
    }
    pub fn drain(&self) -> Duration {
        Duration::from_millis(self.drain_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_valid() {
        let cfg = Config::load_from(None, env(&[("PATH", "/bin"), ("PUBLISHER_CONFIG", "x")])).unwrap();
        assert_eq!(cfg.channel_prefix, "rt:");
        assert_eq!(cfg.listen, "0.0.0.0:8090");
        let symbols = cfg.symbol_list();
        assert_eq!(symbols.len(), 100);
        assert_eq!(symbols[0], "AAPL");
        assert_eq!(symbols[99], "SYM0100");
    }

    #[test]
    fn environment_overrides_file() {
        let dir = std::env::temp_dir().join(format!("pub-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("publisher.toml");
        std::fs::write(&file, "quote_rate = 7\nsymbols = \"A,B\"\nchannel_prefix = \"file:\"\n").unwrap();
        let cfg = Config::load_from(
            Some(&file),
            env(&[("PUBLISHER_CHANNEL_PREFIX", "env:"), ("PUBLISHER_ORDER_RATE", "2.5")]),
        )
        .unwrap();
        assert_eq!(cfg.quote_rate, 7);
        assert_eq!(cfg.order_rate, 2.5);
        assert_eq!(cfg.channel_prefix, "env:");
        assert_eq!(cfg.symbol_list(), ["A", "B"]);
    }

    #[test]
    fn example_file_loads_and_documents_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../publisher.example.toml");
        let cfg = Config::load_from(Some(&path), env(&[])).unwrap();
        assert_eq!(cfg.quote_rate, Config::default().quote_rate);
        let text = std::fs::read_to_string(&path).unwrap();
        let table: HashMap<String, serde::de::IgnoredAny> = config::Config::builder()
            .add_source(config::File::from(path.as_path()))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        for key in table.keys() {
            let env = format!("# env {ENV_PREFIX}_{}", key.to_uppercase());
            assert!(text.contains(&env), "{key} lacks its env var comment");
        }
        assert_eq!(table.len(), 31, "every key of Config is in the example");
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases = [
            ("PUBLISHER_QUOTE_RATE", "abc", "quote_rate"),
            ("PUBLISHER_LISTEN", "nowhere", "listen"),
            ("PUBLISHER_REDIS_URL", "http://x", "redis_url"),
            ("PUBLISHER_SYMBOLS", "AAPL,a b", "symbols"),
            ("PUBLISHER_SYMBOLS", "AAPL,AAPL", "symbols"),
            ("PUBLISHER_ACCOUNTS", "0", "accounts"),
            ("PUBLISHER_BURST_LEN_MS", "5", "burst_len_ms"),
            ("PUBLISHER_BURST_FACTOR", "0.5", "burst_factor"),
            ("PUBLISHER_CANCEL_RATIO", "2", "cancel_ratio"),
            ("PUBLISHER_OUTAGE_BUFFER", "0", "outage_buffer"),
            ("PUBLISHER_NO_SUCH_KEY", "1", "no_such_key"),
            ("PUBLISHER_REDIS_CLUSTER", "maybe", "redis_cluster"),
            ("PUBLISHER_LOG_FORMAT", "xml", "log_format"),
            ("PUBLISHER_TRACE_QUOTE_RATIO", "1.5", "trace_quote_ratio"),
            ("PUBLISHER_TRACE_ORDER_RATIO", "-0.1", "trace_order_ratio"),
        ];
        for (k, v, key) in cases {
            let err = Config::load_from(None, env(&[(k, v)])).unwrap_err().to_string();
            assert!(err.contains(key), "{k}={v}: {err}");
        }
    }

    #[test]
    fn cluster_seeds_are_a_comma_separated_list() {
        let vars = env(&[
            ("PUBLISHER_REDIS_CLUSTER", "true"),
            ("PUBLISHER_REDIS_URL", "redis://10.0.0.1:7000, redis://10.0.0.2:7000"),
        ]);
        let cfg = Config::load_from(None, vars).unwrap();
        assert!(cfg.redis_cluster);
        assert_eq!(cfg.redis_seeds().collect::<Vec<_>>(), ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]);
        for (url, prefix, key) in [
            (",", "rt:", "redis_url"),
            ("redis://a:1,unix:///tmp/r.sock", "rt:", "redis_url"),
            ("redis://a:1", "rt{x}:", "channel_prefix"),
        ] {
            let vars = env(&[
                ("PUBLISHER_REDIS_CLUSTER", "true"),
                ("PUBLISHER_REDIS_URL", url),
                ("PUBLISHER_CHANNEL_PREFIX", prefix),
            ]);
            let err = Config::load_from(None, vars).unwrap_err().to_string();
            assert!(err.contains(key), "{url} {prefix}: {err}");
        }
    }

    #[test]
    fn sentinel_keys_are_checked() {
        let vars = env(&[
            ("PUBLISHER_REDIS_SENTINELS", "127.0.0.1:26379, 127.0.0.1:26380"),
            ("PUBLISHER_REDIS_SENTINEL_MASTER", "mymaster"),
            ("PUBLISHER_REDIS_SENTINEL_PASSWORD", "s3cret"),
            ("PUBLISHER_REDIS_URL", ""),
        ]);
        let cfg = Config::load_from(None, vars).unwrap();
        assert_eq!(cfg.sentinel().map(|s| s.master), Some("mymaster"));
        assert!(!format!("{cfg:?}").contains("s3cret"));
        for (k, v, key) in [
            ("PUBLISHER_REDIS_SENTINELS", "nohost", "redis_sentinels"),
            ("PUBLISHER_REDIS_SENTINEL_MASTER", "", "redis_sentinel_master"),
            ("PUBLISHER_REDIS_CLUSTER", "true", "redis_sentinels"),
            ("PUBLISHER_REDIS_SENTINEL_WAIT_REPLICAS", "0", "redis_sentinel_wait_replicas"),
        ] {
            let mut vars =
                env(&[("PUBLISHER_REDIS_SENTINELS", "a:1"), ("PUBLISHER_REDIS_SENTINEL_MASTER", "m")]);
            vars.push((k.to_string(), v.to_string()));
            let err = Config::load_from(None, vars).unwrap_err().to_string();
            assert!(err.contains(key), "{k}={v}: {err}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let cfg = Config {
            publish_api_key: "k3y".into(),
            redis_url: "redis://:hunter2@10.0.0.1:6379".into(),
            ..Config::default()
        };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("k3y"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains("10.0.0.1:6379"), "{shown}");
    }
}
