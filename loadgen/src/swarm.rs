//! The clients of one process: started at the ramp rate, watched until
//! they settle, snapshotted when measuring begins, and stopped together
//! (each closing its socket) when the run ends. Order connections of
//! later steps are started while measuring, at their step's time; the
//! order trace, if asked for, is written when the swarm stops.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::book::TraceRow;
use crate::client::{CLOSE_WAIT, Client, Dest, OrderPlan, Shared, Trader, now_us};
use crate::order_stats::{OrderStats, StepResult};
use crate::settings::Settings;
use crate::stats::{Counters, ErrorTally, LatencyBuckets, Stats};
use crate::target::{self, Endpoint, TargetError};
use crate::token::Minter;

/// How long stopping may take beyond the clients' own close wait.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What a swarm looked like when measuring began.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoSnapshot {
    pub counters: Counters,
    /// Connections holding each topic (by index), acknowledged.
    pub subscribers: BTreeMap<u32, u64>,
}

impl GoSnapshot {
    pub fn merge(&mut self, other: &GoSnapshot) {
        self.counters.add(&other.counters);
        for (&topic, &n) in &other.subscribers {
            *self.subscribers.entry(topic).or_insert(0) += n;
        }
    }
}

/// Everything a swarm measured, as sent from a worker to its parent.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwarmResult {
    pub connections: u64,
    pub counters: Counters,
    pub latency_us: LatencyBuckets,
    pub errors: ErrorTally,
    pub at_go: GoSnapshot,
    /// Order mode: each step's outcomes and reply latency.
    #[serde(default)]
    pub order_steps: Vec<StepResult>,
    /// Order mode: error codes of first answers.
    #[serde(default)]
    pub order_codes: ErrorTally,
}

/// The token each connection presents.
enum Tokens {
    None,
    Shared(Arc<str>),
    Minted(Minter),
}

impl Tokens {
    fn new(settings: &Settings) -> Result<Tokens, SwarmError> {
        Ok(match (&settings.jwt_secret, &settings.token) {
            (Some(secret), _) => {
                // Valid for the whole run and then some: an expiring token
                // would close connections mid-run.
                let exp = wire::now_ms() / 1000 + settings.longest_run().as_secs() + 3600;
                Tokens::Minted(Minter::new(secret, settings.space, exp).map_err(SwarmError::Token)?)
            }
            (None, Some(token)) => Tokens::Shared(token.as_str().into()),
            (None, None) => Tokens::None,
        })
    }

    fn for_conn(&self, id: u64) -> Result<Option<Arc<str>>, SwarmError> {
        Ok(match self {
            Tokens::None => None,
            Tokens::Shared(t) => Some(Arc::clone(t)),
            Tokens::Minted(m) => Some(m.mint(id).map_err(SwarmError::Token)?.into()),
        })
    }

    fn for_account(&self, account: &str) -> Result<Option<Arc<str>>, SwarmError> {
        Ok(match self {
            Tokens::None => None,
            Tokens::Shared(t) => Some(Arc::clone(t)),
            Tokens::Minted(m) => Some(m.mint_for(account).map_err(SwarmError::Token)?.into()),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("cannot sign client tokens with --jwt-secret: {0}")]
    Token(jsonwebtoken::errors::Error),
}

pub struct Swarm {
    shared: Arc<Shared>,
    /// Clients opened during the ramp (later order steps not counted).
    connections: u64,
    /// Every ramp client is started.
    ramped: Arc<AtomicBool>,
    /// Spawns clients at the ramp rate, then later order steps' ones at
    /// their times; yields them all for joining.
    ramp: JoinHandle<JoinSet<()>>,
    at_go: Option<GoSnapshot>,
    /// `--order-trace` file of this process.
    trace: Option<std::path::PathBuf>,
}

impl Swarm {
    /// Resolves the targets and starts the clients of worker `worker` (all
    /// of them with `None`), at `ramp` connections per second.
    pub async fn start(settings: &Settings, worker: Option<u32>, ramp: f64) -> Result<Swarm, SwarmError> {
        let mut dests = Vec::with_capacity(settings.urls.len());
        for url in &settings.urls {
            let endpoint = Endpoint::parse(url, &["ws"], 80)?;
            endpoint.check_allowed(settings.allow_remote)?;
            let addr = endpoint.resolve().await?;
            dests.push(Dest { url: url.as_str().into(), addr });
        }
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(settings.read_buffer)
            // Clients only send a few small frames; flush each at once.
            .write_buffer_size(0)
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20));
        let orders = settings.orders.as_ref();
        let steps = orders.map_or(1, |o| o.steps(settings.duration));
        let step_len = orders.map_or(settings.duration, |o| o.step_len(settings.duration));
        let order_stats = OrderStats::new(
            steps as usize,
            step_len.as_micros() as u64,
            orders.is_some_and(|o| o.trace.is_some()),
        );
        let shared = Arc::new(Shared {
            stats: Stats::with_orders(settings.space.len(), order_stats),
            space: settings.space,
            connect_timeout: settings.connect_timeout,
            backoff_initial: settings.backoff_initial,
            backoff_max: settings.backoff_max,
            reconnect: settings.reconnect,
            ws_config,
            stop: CancellationToken::new(),
            go: tokio::sync::watch::Sender::new(None),
            orders: orders.map(|o| OrderPlan {
                pace: o.pace,
                shape: Arc::new(o.shape.clone()),
                seed: settings.seed,
                duration_us: settings.duration.as_micros() as u64,
                trace: o.trace.is_some(),
            }),
        });
        let (range, traders): (std::ops::Range<u64>, Vec<u64>) = match worker {
            None => (0..settings.connections, (0..settings.order_conns()).collect()),
            Some(i) => (settings.worker_range(i), settings.worker_traders(i).collect()),
        };
        // (connection id, order connection index) of every client, in the
        // order they open: the ramp's first, then each later step's.
        let mut plan: Vec<(u64, Option<u64>, u64)> = range.map(|id| (id, None, 0)).collect();
        for &j in &traders {
            let step = orders.map_or(0, |o| o.opens_in_step(j));
            plan.push((settings.connections + j, Some(j), step));
        }
        plan.sort_by_key(|&(_, _, step)| step);
        let connections = plan.iter().filter(|&&(_, _, step)| step == 0).count() as u64;
        let sampler = settings.sampler();
        let tokens = Tokens::new(settings)?;
        // Sign one now, so a key that cannot sign fails the start, not
        // each client.
        tokens.for_conn(0)?;
        let source_ips = settings.source_ips;
        let account_prefix = orders.map(|o| o.account_prefix.clone());
        let step_every = orders.map_or(Duration::ZERO, |o| o.step_every);
        let ramped = Arc::new(AtomicBool::new(false));
        let spawner = {
            let shared = Arc::clone(&shared);
            let ramped = Arc::clone(&ramped);
            async move {
                let mut set = JoinSet::new();
                // Each step's clients open at the ramp rate from the step's
                // start: the ramp's from now, later ones' from go + step.
                let mut step_start = Instant::now();
                let (mut current, mut n) = (0u64, 0u64);
                for (id, trader, step) in plan {
                    if step != current {
                        ramped.store(true, Ordering::Release);
                        let Some(go) = wait_go(&shared).await else { break };
                        step_start = go + step_every * step as u32;
                        (current, n) = (step, 0);
                    }
                    let at = step_start + Duration::from_secs_f64(n as f64 / ramp.max(f64::MIN_POSITIVE));
                    n += 1;
                    tokio::select! {
                        _ = shared.stop.cancelled() => break,
                        _ = tokio::time::sleep_until(at) => {}
                    }
                    let dest = dests[(id % dests.len() as u64) as usize].clone();
                    let (token, trader) = match (trader, &account_prefix) {
                        (Some(j), Some(prefix)) => {
                            let account = format!("{prefix}{j}");
                            let topic = format!("orders.{account}");
                            (
                                tokens.for_account(&account).ok().flatten(),
                                Some(Trader { index: j, account, topic }),
                            )
                        }
                        _ => (tokens.for_conn(id).ok().flatten(), None),
                    };
                    let client = Client {
                        id,
                        token,
                        source: target::source_for(id, source_ips, dest.addr),
                        dest,
                        topics: if trader.is_some() { Box::default() } else { sampler.topics_for(id) },
                        trader,
                    };
                    set.spawn(client.run(Arc::clone(&shared)));
                }
                ramped.store(true, Ordering::Release);
                set
            }
        };
        let trace = orders.and_then(|o| o.trace.clone()).map(|path| match worker {
            None => path,
            Some(i) => {
                let mut name = path.into_os_string();
                name.push(format!(".{i}"));
                name.into()
            }
        });
        Ok(Swarm { shared, connections, ramped, ramp: tokio::spawn(spawner), at_go: None, trace })
    }

    pub fn counters(&self) -> Counters {
        self.shared.stats.counters()
    }

    /// p99 latency so far, µs.
    pub fn p99_us(&self) -> u64 {
        self.shared.stats.latency().value_at_quantile(0.99)
    }

    /// p99 reply latency so far (order mode), µs.
    pub fn reply_p99_us(&self) -> u64 {
        self.shared.stats.orders.reply_p99_us()
    }

    /// Every ramp client started and its first attempt has an outcome.
    pub fn is_settled(&self) -> bool {
        self.ramped.load(Ordering::Acquire) && self.counters().settled >= self.connections
    }

    /// Marks the start of measuring (order connections start placing).
    pub fn go(&mut self) -> GoSnapshot {
        let snap = GoSnapshot { counters: self.counters(), subscribers: self.shared.stats.subscribers() };
        let now = now_us();
        self.shared.stats.orders.start(now);
        self.shared.go.send_replace(Some(now));
        self.at_go = Some(snap.clone());
        snap
    }

    /// Closes every socket (bounded in time) and reports.
    pub async fn stop(self) -> SwarmResult {
        self.shared.stop.cancel();
        let grace = CLOSE_WAIT + STOP_GRACE;
        if let Ok(Ok(mut set)) = tokio::time::timeout(grace, self.ramp).await {
            let joined = async { while set.join_next().await.is_some() {} };
            if tokio::time::timeout(grace, joined).await.is_err() {
                set.abort_all();
            }
        }
        let stats = &self.shared.stats;
        if let Some(path) = &self.trace {
            let (rows, dropped) = stats.orders.take_trace();
            if let Err(e) = write_trace(path, &rows) {
                stats.error(&format!("writing the order trace {}: {e}", path.display()));
            }
            if dropped > 0 {
                stats.error(&format!("order trace full: {dropped} rows not written"));
            }
        }
        SwarmResult {
            connections: self.connections,
            counters: stats.counters(),
            latency_us: LatencyBuckets::from_histogram(&stats.latency()),
            errors: stats.errors(),
            at_go: self.at_go.unwrap_or_default(),
            order_steps: stats.orders.steps(),
            order_codes: stats.orders.codes(),
        }
    }
}

/// The instant measuring began, once it has (`None` if the run stopped
/// first).
async fn wait_go(shared: &Shared) -> Option<Instant> {
    let mut go = shared.go.subscribe();
    let at_us = tokio::select! {
        _ = shared.stop.cancelled() => return None,
        got = go.wait_for(Option::is_some) => (*got.ok()?)?,
    };
    // Back from Unix time to the runtime's clock.
    let ago = Duration::from_micros(now_us().saturating_sub(at_us));
    Some(Instant::now().checked_sub(ago).unwrap_or_else(Instant::now))
}

fn write_trace(path: &std::path::Path, rows: &[TraceRow]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "{}", TraceRow::CSV_HEADER)?;
    for row in rows {
        writeln!(out, "{}", row.csv())?;
    }
    out.flush()
}
