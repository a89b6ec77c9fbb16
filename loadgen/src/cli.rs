//! Command-line flags (every one documented in `--help`) and their
//! validation into [`Settings`]: a bad flag stops loadgen before any
//! socket is opened, with the flag named.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::book::{OrderShape, Pace};
use crate::publish::{PublishSettings, PublishTarget, SeqSource};
use crate::settings::{FD_RESERVE, OrderSettings, Settings};
use crate::target::{self, Endpoint};
use crate::topics::{Dist, TopicSpace};

/// Load generator for the WebSocket pub/sub gateway.
///
/// Opens --connections WebSocket subscribers (each on --topics-per-conn
/// quotes.SYM<i> topics, plus its orders.ACC<i> topic with
/// --order-topics), waits until every subscription is acknowledged,
/// then measures for --duration: messages, end-to-end latency (receive
/// time − ts), per-topic seq gaps (lost) and duplicates. With
/// --publish-rate it also publishes (through Redis or POST /publish), so
/// one command measures the closed loop.
///
/// Order mode (--order-conns N): N more connections, each with its own
/// account token, place orders ({"action":"order","id":…,"order":{…}})
/// while measuring, at --order-rate in all or every --order-interval
/// each, optionally adding --order-step connections every
/// --order-step-every. It measures reply latency (p50/p90/p99/p99.9/max),
/// error answers by code (timeouts among them), answers per order
/// (exactly one, else lost or duplicate) and each accepted order's
/// lifecycle updates on orders.<account> (exactly once, no seq gap). Both
/// halves may run at once: -c subscribers on quotes beside the order
/// connections.
///
/// Exit status: 0 success; 1 the run failed (no connection established,
/// a worker or the publisher failed); 2 invalid flags or a refused
/// target; 3 loss above --max-loss, or an order failure (an order
/// without exactly one answer, a lifecycle update missing, repeated or
/// out of seq, or error answers above --max-order-errors).
#[derive(Debug, Parser)]
#[command(version, about, long_about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub run: RunArgs,

    /// Internal: run as worker process N of a multi-process run, reading
    /// the plan from stdin and reporting JSON lines on stdout.
    #[arg(long, hide = true)]
    pub worker_index: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs one step per connection count in --steps and prints the
    /// original benchmark's table as CSV (connections, connected, average
    /// response (ms), average size, messages, msg/sec, walltime, plus p99
    /// and lost). --connections and --duration are replaced by --steps and
    /// --step-duration. With --order-conns, the steps replace
    /// --order-conns instead and the table is the request/reply one
    /// (connections, connected, average response (ms), orders, orders/sec,
    /// walltime, p50, p90, p99, p99.9 and max (ms), timeouts, errors,
    /// lost, duplicates).
    Sweep(SweepArgs),
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Connection counts, one step each, in order (e.g. 500,1000,2000):
    /// subscribers, or order connections with --order-conns.
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    pub steps: Vec<u64>,

    /// Measured time of each step.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub step_duration: Duration,

    /// Pause between steps, so the gateway finishes closing the last
    /// step's sockets.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub step_pause: Duration,

    /// Also write the CSV table to this file.
    #[arg(long)]
    pub csv: Option<PathBuf>,

    #[command(flatten)]
    pub run: RunArgs,
}

/// How the final summary is printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A readable table.
    Table,
    /// The JSON summary (the same document as --json).
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Gateway WebSocket URL; repeat to spread connections round-robin
    /// over several gateways.
    #[arg(long = "url", value_name = "URL", default_value = "ws://127.0.0.1:8080/ws")]
    pub urls: Vec<String>,

    /// WebSocket connections to hold open.
    #[arg(short = 'c', long, default_value_t = 100)]
    pub connections: u64,

    /// Connections opened per second (over all workers).
    #[arg(long, default_value_t = 1000.0)]
    pub ramp: f64,

    /// Quote topics each connection subscribes to (distinct).
    #[arg(short = 'k', long, default_value_t = 5)]
    pub topics_per_conn: u32,

    /// Quote topics in the run: quotes.SYM0 .. quotes.SYM<N-1>.
    #[arg(long, default_value_t = 100)]
    pub quote_topics: u32,

    /// Order topics orders.ACC0 .. orders.ACC<N-1>; when set, connection c
    /// also subscribes to orders.ACC<c mod N> (its account).
    #[arg(long, default_value_t = 0)]
    pub order_topics: u32,

    /// How connections pick their quote topics.
    #[arg(long, value_enum, default_value_t = Dist::Uniform)]
    pub dist: Dist,

    /// Zipf exponent s (rank k is picked with probability ∝ 1/k^s).
    #[arg(long, default_value_t = 1.0)]
    pub zipf_s: f64,

    /// Seed of the topic assignment (same seed, same assignment).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Measured time after every subscription is acknowledged (publishing
    /// runs this long). Units: ms, s, m (a bare number is seconds).
    #[arg(short = 'd', long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,

    /// After the ramp, the longest wait for every subscription's answer
    /// before measuring starts anyway.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub settle_timeout: Duration,

    /// After publishing stops, the longest wait for messages in flight.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain: Duration,

    /// Timeout of one connection attempt (TCP connect and upgrade).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// First reconnect delay; doubles per failed attempt, with jitter.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub backoff_initial: Duration,

    /// Longest reconnect delay.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub backoff_max: Duration,

    /// Do not reconnect dropped connections (by default they reconnect
    /// and resubscribe with `since` = the last seq seen per topic).
    #[arg(long)]
    pub no_reconnect: bool,

    /// Loopback source addresses 127.0.0.1..N to spread connections over,
    /// so ephemeral ports do not run out (0: let the kernel choose).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(0..=254))]
    pub source_ips: u32,

    /// WebSocket read buffer per connection, in bytes.
    #[arg(long, default_value_t = 4096)]
    pub read_buffer: usize,

    /// JWT for the upgrade (sent as ?token=), the same for every connection.
    #[arg(long, env = "LOADGEN_TOKEN", hide_env_values = true, conflicts_with = "jwt_secret")]
    pub token: Option<String>,

    /// HS256 secret (the gateways' jwt_secret) to sign one token per
    /// connection, with sub = its account ACC<c mod --order-topics> (or
    /// ACC<c>), so each may read its own orders topic.
    #[arg(long, env = "LOADGEN_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Worker processes to spread connections over (one process holds at
    /// most the open-file limit less a reserve); 0 picks the fewest that
    /// fit.
    #[arg(long, default_value_t = 0)]
    pub workers: u32,

    /// Messages published per second over all quote topics (round-robin);
    /// needs --publish-http or --publish-redis. 0: do not publish.
    #[arg(long, default_value_t = 0.0)]
    pub publish_rate: f64,

    /// Publish through this POST /publish endpoint (the gateway's or the
    /// publisher's), e.g. http://127.0.0.1:8080/publish.
    #[arg(long, value_name = "URL", conflicts_with = "publish_redis")]
    pub publish_http: Option<String>,

    /// Publish envelopes straight to this Redis (PUBLISH <prefix><topic>),
    /// as any backend may, e.g. redis://127.0.0.1:6379.
    #[arg(long, value_name = "URL")]
    pub publish_redis: Option<String>,

    /// Bearer key for POST /publish.
    #[arg(long, env = "LOADGEN_PUBLISH_API_KEY", hide_env_values = true)]
    pub publish_api_key: Option<String>,

    /// Redis channel and key prefix (the gateways' channel_prefix).
    #[arg(long, default_value = "rt:")]
    pub channel_prefix: String,

    /// Where Redis publishing takes each seq: INCR of the topic's shared
    /// counter per message, or a local counter seeded from it (faster; the
    /// counter is raised to the last seq at the end).
    #[arg(long, value_enum, default_value_t = SeqSource::Incr)]
    pub redis_seq: SeqSource,

    /// Concurrent publishing connections; topics are split among them so
    /// each topic's messages go out in order.
    #[arg(long, default_value_t = 4)]
    pub publish_conns: u32,

    /// Pad each published data object to about this many bytes.
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,

    /// Order mode (the original benchmark's request/reply client): this
    /// many more connections, each acting for its own account
    /// <--order-account-prefix><j> (its token signed with --jwt-secret),
    /// subscribe to orders.<account> and then place orders while
    /// measuring. Every order must get exactly one answer (reply or
    /// error) and every accepted order its lifecycle updates (new,
    /// partially_filled when qty ≥ 2, filled or cancelled) exactly once
    /// with no seq gap. Reply latency is send → reply. Works beside
    /// --connections subscribers (which may then be 0).
    #[arg(long, default_value_t = 0, help_heading = "Order mode")]
    pub order_conns: u64,

    /// Orders per second over the --order-conns connections, each placing
    /// rate/N per second at intervals uniform in 0.5–1.5× its mean
    /// (connections added by --order-step keep that per-connection rate;
    /// a sweep keeps the total rate over each step's connections).
    /// Without it, --order-interval paces each connection.
    #[arg(long, help_heading = "Order mode")]
    pub order_rate: Option<f64>,

    /// Time between one connection's orders, uniform random in MIN-MAX
    /// (the original benchmark: 50ms-250ms).
    #[arg(long, default_value = "50ms-250ms", value_parser = parse_interval, help_heading = "Order mode")]
    pub order_interval: Interval,

    /// Order connections added every --order-step-every while measuring
    /// (the original added connections every 15 s); each step is a row of
    /// the summary's step table. 0: none.
    #[arg(long, default_value_t = 0, help_heading = "Order mode")]
    pub order_step: u64,

    /// Time between order connection steps.
    #[arg(long, default_value = "15s", value_parser = parse_duration, help_heading = "Order mode")]
    pub order_step_every: Duration,

    /// Symbols orders are placed on (uniformly); they must be ones the
    /// publisher trades (its `symbols`).
    #[arg(long, value_delimiter = ',', default_value = "AAPL,MSFT", help_heading = "Order mode")]
    pub order_symbols: Vec<String>,

    /// Order quantities are drawn from 1..=N (1 has no partial fill).
    #[arg(long, default_value_t = 500, help_heading = "Order mode")]
    pub order_qty_max: u32,

    /// Order connection j acts for account <PREFIX><j>.
    #[arg(long, default_value = "TRD", help_heading = "Order mode")]
    pub order_account_prefix: String,

    /// How long an order may wait for its answer after the measured phase
    /// (the drain waits at least this long for answers; the gateway
    /// answers `timeout` after its order_timeout_ms, 5 s by default).
    #[arg(long, default_value = "6s", value_parser = parse_duration, help_heading = "Order mode")]
    pub order_timeout: Duration,

    /// Highest tolerated ratio of error answers (timeout, rate_limited,
    /// ...) to orders sent; above it loadgen exits with status 3.
    #[arg(long, default_value_t = 0.0, help_heading = "Order mode")]
    pub max_order_errors: f64,

    /// Write every order's times as CSV (conn, n, order_id, sent_us,
    /// answer_us, code, new_ts_ms, new_recv_us, end_recv_us; Unix µs,
    /// ms for new_ts_ms); worker processes write FILE.<worker>.
    #[arg(long, value_name = "FILE", help_heading = "Order mode")]
    pub order_trace: Option<PathBuf>,

    /// Highest tolerated loss ratio, lost / (received + lost); above it
    /// loadgen exits with status 3.
    #[arg(long, default_value_t = 0.0)]
    pub max_loss: f64,

    /// Allow targets outside 127.0.0.0/8, ::1 and localhost.
    #[arg(long)]
    pub allow_remote: bool,

    /// Write the JSON summary to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Format of the summary printed on stdout.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,

    /// No status line every second on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Upper bounds that keep a typo from becoming a flood.
const MAX_CONNECTIONS: u64 = 1_000_000;
const MAX_RATE: f64 = 1_000_000.0;

/// A flag value that cannot work, naming the flag.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("--{flag}: {reason}")]
    Flag { flag: &'static str, reason: String },
    #[error(transparent)]
    Target(#[from] target::TargetError),
    #[error("{0}")]
    Clap(String),
}

impl RunArgs {
    /// Validates the flags; `open_files` is this process's open-file limit
    /// (it decides the automatic worker count).
    pub fn settings(&self, open_files: u64) -> Result<Settings, UsageError> {
        let bad = |flag: &'static str, reason: String| UsageError::Flag { flag, reason };
        if self.urls.is_empty() {
            return Err(bad("url", "at least one gateway URL is needed".into()));
        }
        for url in &self.urls {
            Endpoint::parse(url, &["ws"], 80)?.check_allowed(self.allow_remote)?;
        }
        if self.connections > MAX_CONNECTIONS {
            return Err(bad("connections", format!("must be at most {MAX_CONNECTIONS}")));
        }
        if self.connections == 0 && self.order_conns == 0 {
            return Err(bad("connections", "must be at least 1 (or use --order-conns)".into()));
        }
        if !(self.ramp.is_finite() && self.ramp > 0.0 && self.ramp <= MAX_RATE) {
            return Err(bad("ramp", format!("must be a rate above 0 and at most {MAX_RATE} per second")));
        }
        if self.quote_topics == 0 {
            return Err(bad("quote-topics", "must be at least 1".into()));
        }
        if self.topics_per_conn > self.quote_topics {
            return Err(bad(
                "topics-per-conn",
                format!("{} is more than the {} quote topics", self.topics_per_conn, self.quote_topics),
            ));
        }
        if self.connections > 0 && self.topics_per_conn == 0 && self.order_topics == 0 {
            return Err(bad("topics-per-conn", "connections need at least one topic".into()));
        }
        if !(self.zipf_s.is_finite() && self.zipf_s > 0.0) {
            return Err(bad("zipf-s", "must be a positive number".into()));
        }
        if self.duration.is_zero() {
            return Err(bad("duration", "must be above zero: the run needs a bound".into()));
        }
        if self.read_buffer < 512 {
            return Err(bad("read-buffer", "must be at least 512 bytes".into()));
        }
        if !(self.max_loss.is_finite() && (0.0..=1.0).contains(&self.max_loss)) {
            return Err(bad("max-loss", "must be a ratio between 0 and 1".into()));
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            return Err(bad(
                "backoff-max",
                "must be at least --backoff-initial, which must be above 0".into(),
            ));
        }
        let orders = self.order_settings()?;
        let sockets = self.connections + orders.as_ref().map_or(0, |o| o.total(self.duration));
        if sockets > MAX_CONNECTIONS {
            return Err(bad(
                "order-conns",
                format!("{sockets} connections in all is above {MAX_CONNECTIONS}"),
            ));
        }
        let per_process = open_files.saturating_sub(FD_RESERVE).max(1);
        let workers = match self.workers {
            0 => Settings::workers_needed(sockets, open_files),
            n => {
                let per_worker = sockets.div_ceil(u64::from(n));
                if per_worker > per_process {
                    return Err(bad(
                        "workers",
                        format!(
                            "{per_worker} connections per process is above what the open-file limit \
                             ({open_files}) allows ({per_process}); use --workers {} or more",
                            Settings::workers_needed(sockets, open_files)
                        ),
                    ));
                }
                n
            }
        };
        Ok(Settings {
            urls: self.urls.clone(),
            connections: self.connections,
            ramp: self.ramp,
            topics_per_conn: self.topics_per_conn,
            space: TopicSpace { quotes: self.quote_topics, orders: self.order_topics },
            dist: self.dist,
            zipf_s: self.zipf_s,
            seed: self.seed,
            duration: self.duration,
            settle_timeout: self.settle_timeout,
            drain: self.drain,
            connect_timeout: self.connect_timeout,
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
            reconnect: !self.no_reconnect,
            source_ips: self.source_ips,
            read_buffer: self.read_buffer,
            token: self.token.clone(),
            jwt_secret: self.jwt_secret.clone().filter(|s| !s.is_empty()),
            workers: workers.min(sockets.min(u64::from(u32::MAX)) as u32).max(1),
            publish: self.publish_settings()?,
            orders,
            max_loss: self.max_loss,
            allow_remote: self.allow_remote,
            live: !self.quiet,
        })
    }

    fn order_settings(&self) -> Result<Option<OrderSettings>, UsageError> {
        let bad = |flag: &'static str, reason: String| UsageError::Flag { flag, reason };
        if self.order_conns == 0 {
            if self.order_rate.is_some() {
                return Err(bad("order-rate", "needs --order-conns".into()));
            }
            if self.order_step > 0 {
                return Err(bad("order-step", "needs --order-conns".into()));
            }
            return Ok(None);
        }
        if self.token.is_some() {
            return Err(bad(
                "token",
                "order connections each act for their own account: use --jwt-secret instead".into(),
            ));
        }
        let Interval(min, max) = self.order_interval;
        let (pace, pace_text) = match self.order_rate {
            Some(rate) => {
                if !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE) {
                    return Err(bad(
                        "order-rate",
                        format!("must be above 0 and at most {MAX_RATE} per second"),
                    ));
                }
                if self.order_conns as f64 / rate * 1e6 < 1_000.0 {
                    return Err(bad(
                        "order-rate",
                        format!(
                            "{rate}/s over {} connections is more than 1,000 per connection per second",
                            self.order_conns
                        ),
                    ));
                }
                OrderSettings::pace_for_rate(rate, self.order_conns)
            }
            None => {
                let pace = Pace { min_us: min.as_micros() as u64, max_us: max.as_micros() as u64 };
                let text = format!(
                    "every {}-{} ms per connection ({:.1}/s each)",
                    min.as_millis(),
                    max.as_millis(),
                    pace.per_second()
                );
                (pace, text)
            }
        };
        if self.order_step > 0 && self.order_step_every.is_zero() {
            return Err(bad("order-step-every", "must be above zero".into()));
        }
        if self.order_symbols.is_empty() {
            return Err(bad("order-symbols", "at least one symbol is needed".into()));
        }
        for symbol in &self.order_symbols {
            if symbol.is_empty() || wire::Topic::parse(&format!("quotes.{symbol}")).is_err() {
                return Err(bad(
                    "order-symbols",
                    format!("{symbol:?} is not a symbol (A-Z a-z 0-9 . _ : -)"),
                ));
            }
        }
        if !(1..=1_000_000).contains(&self.order_qty_max) {
            return Err(bad("order-qty-max", "must be between 1 and 1,000,000".into()));
        }
        if wire::Topic::parse(&format!("orders.{}0", self.order_account_prefix)).is_err() {
            return Err(bad(
                "order-account-prefix",
                format!("{:?} cannot name an orders topic", self.order_account_prefix),
            ));
        }
        if !(self.max_order_errors.is_finite() && (0.0..=1.0).contains(&self.max_order_errors)) {
            return Err(bad("max-order-errors", "must be a ratio between 0 and 1".into()));
        }
        Ok(Some(OrderSettings {
            conns: self.order_conns,
            rate: self.order_rate,
            step: self.order_step,
            step_every: self.order_step_every,
            pace,
            pace_text,
            shape: OrderShape {
                symbols: self.order_symbols.clone(),
                qty_max: self.order_qty_max,
                account_in_order: self.jwt_secret.as_deref().is_none_or(str::is_empty),
            },
            account_prefix: self.order_account_prefix.clone(),
            timeout: self.order_timeout,
            max_errors: self.max_order_errors,
            trace: self.order_trace.clone(),
        }))
    }

    fn publish_settings(&self) -> Result<Option<PublishSettings>, UsageError> {
        let bad = |flag: &'static str, reason: &str| UsageError::Flag { flag, reason: reason.into() };
        let target = match (&self.publish_http, &self.publish_redis) {
            (Some(url), None) => {
                Endpoint::parse(url, &["http"], 80)?.check_allowed(self.allow_remote)?;
                PublishTarget::Http { url: url.clone(), api_key: self.publish_api_key.clone() }
            }
            (None, Some(url)) => {
                target::check_redis_url(url, self.allow_remote)?;
                if self.channel_prefix.is_empty() || self.channel_prefix.contains(char::is_whitespace) {
                    return Err(bad("channel-prefix", "must be non-empty, without spaces"));
                }
                PublishTarget::Redis {
                    url: url.clone(),
                    prefix: self.channel_prefix.clone(),
                    seq: self.redis_seq,
                }
            }
            (Some(_), Some(_)) => {
                return Err(bad("publish-http", "use one of --publish-http, --publish-redis"));
            }
            (None, None) => {
                if self.publish_rate != 0.0 {
                    return Err(bad("publish-rate", "needs --publish-http or --publish-redis"));
                }
                return Ok(None);
            }
        };
        if !(self.publish_rate.is_finite() && self.publish_rate > 0.0 && self.publish_rate <= MAX_RATE) {
            return Err(bad(
                "publish-rate",
                "must be above 0 and at most 1,000,000 per second with a publish target",
            ));
        }
        if self.publish_conns == 0 {
            return Err(bad("publish-conns", "must be at least 1"));
        }
        if self.payload_bytes > 1 << 20 {
            return Err(bad("payload-bytes", "must be at most 1 MiB"));
        }
        Ok(Some(PublishSettings {
            target,
            rate: self.publish_rate,
            conns: self.publish_conns,
            payload_bytes: self.payload_bytes,
        }))
    }
}

/// `250ms`, `10s`, `2m`, `1h`, or a bare number of seconds (fractions ok).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 500ms, 10s or 2m"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit {other:?} in {s:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs > 7.0 * 86_400.0 {
        return Err(format!("{s:?} is too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `MIN-MAX` of two durations (`50ms-250ms`), or one duration for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(pub Duration, pub Duration);

pub fn parse_interval(s: &str) -> Result<Interval, String> {
    let (min, max) = match s.split_once('-') {
        Some((a, b)) => (parse_duration(a)?, parse_duration(b)?),
        None => {
            let d = parse_duration(s)?;
            (d, d)
        }
    };
    if max.is_zero() || min > max {
        return Err(format!("{s:?}: need MIN-MAX with 0 <= MIN <= MAX and MAX above 0"));
    }
    if max > Duration::from_secs(3600) {
        return Err(format!("{s:?}: at most 1h between orders"));
    }
    Ok(Interval(min, max))
}

/// Parses a full command line into run settings (no subcommand), using
/// this process's open-file limit; for tests and embedding.
pub fn parse_settings<I, T>(args: I) -> Result<Settings, UsageError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(|e| UsageError::Clap(e.to_string()))?;
    cli.run.settings(open_file_limit())
}

/// The soft open-file limit, after raising it to the hard one.
pub fn open_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft).unwrap_or(1024),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("9999h").is_err());
    }

    #[test]
    fn defaults_are_valid_and_local() {
        let s = parse_settings(["loadgen"]).unwrap();
        assert_eq!(s.urls, ["ws://127.0.0.1:8080/ws"]);
        assert_eq!((s.connections, s.workers, s.publish.is_none()), (100, 1, true));
        assert_eq!(s.duration, Duration::from_secs(30));
        assert_eq!(s.max_loss, 0.0);
    }

    #[test]
    fn remote_targets_need_the_flag() {
        let err = parse_settings(["loadgen", "--url", "ws://10.0.0.5:8080/ws"]).unwrap_err();
        assert!(err.to_string().contains("--allow-remote"), "{err}");
        let s = parse_settings(["loadgen", "--url", "ws://gateway:8080/ws", "--allow-remote"]).unwrap();
        assert_eq!(s.urls, ["ws://gateway:8080/ws"]);
        let err = parse_settings([
            "loadgen",
            "--publish-redis",
            "redis://redis.example:6379",
            "--publish-rate",
            "10",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("--allow-remote"), "{err}");
    }

    #[test]
    fn publishing_flags_go_together() {
        let err = parse_settings(["loadgen", "--publish-rate", "5"]).unwrap_err();
        assert!(err.to_string().contains("--publish-rate"), "{err}");
        let err = parse_settings(["loadgen", "--publish-http", "http://127.0.0.1:1/publish"]).unwrap_err();
        assert!(err.to_string().contains("--publish-rate"), "{err}");
        let s = parse_settings([
            "loadgen",
            "--publish-http",
            "http://127.0.0.1:1/publish",
            "--publish-rate",
            "5",
        ])
        .unwrap();
        assert!(matches!(s.publish.unwrap().target, PublishTarget::Http { .. }));
    }

    #[test]
    fn impossible_shapes_name_their_flag() {
        for (args, flag) in [
            (&["--connections", "0"][..], "--connections"),
            (&["--topics-per-conn", "200"][..], "--topics-per-conn"),
            (&["--duration", "0s"][..], "--duration"),
            (&["--max-loss", "2"][..], "--max-loss"),
            (&["--ramp", "0"][..], "--ramp"),
            (&["--connections", "5000000"][..], "--connections"),
        ] {
            let err = parse_settings(std::iter::once("loadgen").chain(args.iter().copied())).unwrap_err();
            assert!(err.to_string().contains(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn explicit_workers_must_fit_the_file_limit() {
        let cli = Cli::try_parse_from(["loadgen", "--connections", "50000", "--workers", "2"]).unwrap();
        let err = cli.run.settings(20_000).unwrap_err();
        assert!(err.to_string().contains("--workers 3"), "{err}");
        assert_eq!(cli.run.settings(100_000).unwrap().workers, 2);
        let cli = Cli::try_parse_from(["loadgen", "--connections", "50000"]).unwrap();
        assert_eq!(cli.run.settings(20_000).unwrap().workers, 3);
    }

    #[test]
    fn sweep_takes_steps() {
        let cli = Cli::try_parse_from(["loadgen", "sweep", "--steps", "500,1000", "--step-duration", "2s"])
            .unwrap();
        match cli.command {
            Some(Command::Sweep(s)) => {
                assert_eq!(s.steps, [500, 1000]);
                assert_eq!(s.step_duration, Duration::from_secs(2));
            }
            None => panic!("no subcommand"),
        }
    }

    #[test]
    fn help_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
