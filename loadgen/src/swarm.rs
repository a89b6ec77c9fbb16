//! The clients of one process: started at the ramp rate, watched until
//! they settle, snapshotted when measuring begins, and stopped together
//! (each closing its socket) when the run ends.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::client::{CLOSE_WAIT, Client, Dest, Shared};
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
    connections: u64,
    /// Spawns clients at the ramp rate; yields them for joining.
    ramp: JoinHandle<JoinSet<()>>,
    at_go: Option<GoSnapshot>,
}

impl Swarm {
    /// Resolves the targets and starts clients `range` of the run, at
    /// `ramp` connections per second.
    pub async fn start(settings: &Settings, range: Range<u64>, ramp: f64) -> Result<Swarm, SwarmError> {
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
        let shared = Arc::new(Shared {
            stats: Stats::new(settings.space.len()),
            space: settings.space,
            connect_timeout: settings.connect_timeout,
            backoff_initial: settings.backoff_initial,
            backoff_max: settings.backoff_max,
            reconnect: settings.reconnect,
            ws_config,
            stop: CancellationToken::new(),
        });
        let sampler = settings.sampler();
        let tokens = Tokens::new(settings)?;
        // Sign one now, so a key that cannot sign fails the start, not
        // each client.
        tokens.for_conn(range.start)?;
        let source_ips = settings.source_ips;
        let connections = range.end - range.start;
        let spawner = {
            let shared = Arc::clone(&shared);
            async move {
                let mut set = JoinSet::new();
                let started = Instant::now();
                for (n, id) in range.enumerate() {
                    let at = started + Duration::from_secs_f64(n as f64 / ramp.max(f64::MIN_POSITIVE));
                    tokio::select! {
                        _ = shared.stop.cancelled() => break,
                        _ = tokio::time::sleep_until(at) => {}
                    }
                    let dest = dests[(id % dests.len() as u64) as usize].clone();
                    let client = Client {
                        id,
                        token: tokens.for_conn(id).ok().flatten(),
                        source: target::source_for(id, source_ips, dest.addr),
                        dest,
                        topics: sampler.topics_for(id),
                    };
                    set.spawn(client.run(Arc::clone(&shared)));
                }
                set
            }
        };
        Ok(Swarm { shared, connections, ramp: tokio::spawn(spawner), at_go: None })
    }

    pub fn counters(&self) -> Counters {
        self.shared.stats.counters()
    }

    /// p99 latency so far, µs.
    pub fn p99_us(&self) -> u64 {
        self.shared.stats.latency().value_at_quantile(0.99)
    }

    /// Every client started and its first attempt has an outcome.
    pub fn is_settled(&self) -> bool {
        self.ramp.is_finished() && self.counters().settled >= self.connections
    }

    /// Marks the start of measuring.
    pub fn go(&mut self) -> GoSnapshot {
        let snap = GoSnapshot { counters: self.counters(), subscribers: self.shared.stats.subscribers() };
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
        SwarmResult {
            connections: self.connections,
            counters: stats.counters(),
            latency_us: LatencyBuckets::from_histogram(&stats.latency()),
            errors: stats.errors(),
            at_go: self.at_go.unwrap_or_default(),
        }
    }
}
