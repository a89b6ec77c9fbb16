//! The node: everything one gateway process shares between its
//! connections (config, broker, the topic lifecycle (and through it the hub), metrics, the
//! shutdown signal) and the admission of new connections, counted from
//! accept: every TCP connection holds an [`Admission`] for its whole life,
//! WebSocket or not.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::auth::Auth;
use crate::broker::Broker;
use crate::config::Config;
use crate::demo::Tokens;
use crate::hub::ConnId;
use crate::metrics::Metrics;
use crate::requests::Requests;
use crate::topics::Topics;

/// Open files kept free for Redis, HTTP probes and logs when the
/// connection limit is derived from the open-file limit (at most a
/// quarter of a small limit).
const FD_RESERVE: usize = 256;

pub struct Node {
    pub config: Config,
    /// Sent in `welcome`; names this node's reply channel.
    pub id: String,
    pub broker: Arc<dyn Broker>,
    /// Joins and leaves topics: the hub's first / last answers drive the
    /// broker's subscriptions.
    pub topics: Arc<Topics>,
    /// Order requests waiting for their reply.
    pub requests: Arc<Requests>,
    /// Token checks and topic permissions.
    pub auth: Auth,
    /// Signs demo tokens, when this node hands them out.
    pub tokens: Option<Tokens>,
    pub metrics: Arc<Metrics>,
    /// Cancelled on SIGTERM: stop admitting, close clients, drain.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Connections this node admits at most (resolved from config).
    pub max_connections: usize,
    /// Connections one address may hold before upgrading (resolved).
    pub max_pending_per_ip: usize,
    /// Admitted connections, including ones still upgrading.
    admitted: AtomicUsize,
    /// Admitted connections per client address.
    per_ip: Mutex<HashMap<IpAddr, PerIp>>,
    next_conn: AtomicU64,
}

/// What one client address holds.
#[derive(Default)]
struct PerIp {
    /// Connections admitted, upgraded or not.
    total: usize,
    /// Of those, the ones not upgraded to a WebSocket (yet).
    pending: usize,
}

/// What a node is assembled from (see [`crate::server::build_node`]).
pub struct NodeParts {
    pub config: Config,
    pub id: String,
    pub broker: Arc<dyn Broker>,
    pub topics: Arc<Topics>,
    pub requests: Arc<Requests>,
    pub metrics: Arc<Metrics>,
    pub tokens: Option<Tokens>,
}

/// Held by one admitted connection for its whole life.
pub struct Admission {
    node: Arc<Node>,
    ip: IpAddr,
    /// Not upgraded to a WebSocket (yet).
    pending: bool,
    _task: TaskTrackerToken,
}

impl Admission {
    /// The connection became a WebSocket: it no longer counts as pending.
    pub fn upgraded(&mut self) {
        if std::mem::take(&mut self.pending) {
            let mut per_ip = self.node.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(held) = per_ip.get_mut(&self.ip) {
                held.pending -= 1;
            }
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.node.admitted.fetch_sub(1, Ordering::AcqRel);
        let mut per_ip = self.node.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = per_ip.get_mut(&self.ip) {
            held.total -= 1;
            if self.pending {
                held.pending -= 1;
            }
            if held.total == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Why a connection was not admitted (also its metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Draining,
    Full,
    PerIp,
    /// The address holds `max_pending_per_ip` connections not upgraded.
    PendingPerIp,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Draining => "draining",
            Refused::Full => "full",
            Refused::PerIp => "per_ip",
            Refused::PendingPerIp => "pending_per_ip",
        }
    }
}

impl Node {
    pub fn new(parts: NodeParts, shutdown: CancellationToken) -> Self {
        let NodeParts { config, id, broker, topics, requests, metrics, tokens } = parts;
        let max_connections = match config.max_connections {
            0 => {
                let files = open_file_limit();
                files.saturating_sub(FD_RESERVE.min(files / 4)).max(1)
            }
            n => n,
        };
        // Room for a burst of handshakes from one address (a balancer, a
        // NAT) while far from letting one address take the node's files.
        let max_pending_per_ip = match config.max_pending_per_ip {
            0 => (max_connections / 16).max(32),
            n => n,
        };
        Node {
            auth: Auth::from_config(&config),
            tokens,
            config,
            id,
            broker,
            topics,
            requests,
            metrics,
            shutdown,
            tracker: TaskTracker::new(),
            max_connections,
            max_pending_per_ip,
            admitted: AtomicUsize::new(0),
            per_ip: Mutex::default(),
            next_conn: AtomicU64::new(1),
        }
    }

    /// Admits one more connection from `ip` (just accepted, not upgraded)
    /// unless the node is draining, full, or that address holds its limit
    /// of connections or of connections not upgraded.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refused> {
        if self.shutdown.is_cancelled() {
            return Err(Refused::Draining);
        }
        {
            let limit = self.config.max_connections_per_ip;
            let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            // A refusal leaves the entry as it was: never empty, since a
            // limit was reached.
            let held = per_ip.entry(ip).or_default();
            if limit > 0 && held.total >= limit {
                return Err(Refused::PerIp);
            }
            if held.pending >= self.max_pending_per_ip {
                return Err(Refused::PendingPerIp);
            }
            held.total += 1;
            held.pending += 1;
        }
        // From here the admission's Drop undoes every count.
        let admission = Admission { node: Arc::clone(self), ip, pending: true, _task: self.tracker.token() };
        let prev = self.admitted.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max_connections {
            return Err(Refused::Full);
        }
        Ok(admission)
    }

    pub fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// Ready for traffic: backplane up and not draining.
    pub fn is_ready(&self) -> bool {
        !self.shutdown.is_cancelled() && self.broker.is_ready()
    }
}

/// Raises the soft open-file limit to the hard one and returns it; a
/// gateway holds one file per client.
pub fn raise_open_file_limit() -> usize {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n as usize,
        Err(_) => open_file_limit(),
    }
}

fn open_file_limit() -> usize {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _)) => soft.min(usize::MAX as u64) as usize,
        Err(_) => 1024,
    }
}
