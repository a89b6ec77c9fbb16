//! The publisher's link to Redis: a pool of connections to one server
//! (fixed, or the master Redis Sentinel names at each connect), or one
//! connection to a Redis Cluster (`redis_cluster`), behind one connection
//! type, so every task runs the same commands either way.
//!
//! The cluster connection is multiplexed (one link per cluster node,
//! routed by key) and shared by the feed, the update writer and the HTTP
//! API. The order service's blocking XREADGROUP gets a cluster connection
//! of its own ([`Link::dedicated`]): a blocked read would otherwise hold up
//! every reply behind it on the shared link to that node.
//!
//! A cluster pipeline must stay within one slot, so [`run_by_slot`] sends
//! one pipeline per slot, all in flight at once, keeping the order of the
//! commands of each slot (a topic's updates are in one slot).

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::{join_all, try_join_all};
use redis::aio::ConnectionLike;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use redis_backplane::Pool;
use tokio::sync::OnceCell;
use tokio::time::timeout;

use crate::backplane::WriteError;
use crate::config::Config;

/// A connection taken from the link: pooled (one server) or a handle on
/// the cluster connection.
pub enum Conn {
    Single(redis_backplane::pool::Connection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

pub enum Link {
    Single(Pool),
    Cluster(Box<ClusterLink>),
}

pub struct ClusterLink {
    client: ClusterClient,
    /// Made on first use and kept: redis-rs repairs its node links.
    shared: OnceCell<ClusterConnection>,
    timeout: Duration,
}

impl Link {
    /// The link `config` asks for; nothing connects until first use.
    pub fn open(config: &Config) -> Result<Link, WriteError> {
        if config.redis_cluster {
            let client = redis_backplane::cluster_client(config.redis_seeds(), config.redis_timeout())
                .build()
                .map_err(|e| WriteError::Pool(format!("invalid redis_url: {e}")))?;
            Ok(Link::Cluster(Box::new(ClusterLink {
                client,
                shared: OnceCell::new(),
                timeout: config.redis_timeout(),
            })))
        } else {
            let target = target(&config.redis_url, config.sentinel(), config.redis_timeout())?;
            Ok(Link::Single(pool_to(target, config.redis_timeout(), 16)?))
        }
    }

    /// A connection for ordinary commands (pooled, or the shared cluster one).
    pub async fn conn(&self) -> Result<Conn, WriteError> {
        match self {
            Link::Single(pool) => {
                Ok(Conn::Single(pool.get().await.map_err(|e| WriteError::Pool(e.to_string()))?))
            }
            Link::Cluster(link) => {
                let conn = link.shared.get_or_try_init(|| connect(&link.client, link.timeout)).await?;
                Ok(Conn::Cluster(conn.clone()))
            }
        }
    }

    /// A connection no other task uses, for commands that block (pooled
    /// connections already are; on a cluster, a connection of its own).
    pub async fn dedicated(&self) -> Result<Conn, WriteError> {
        match self {
            Link::Single(_) => self.conn().await,
            Link::Cluster(link) => Ok(Conn::Cluster(connect(&link.client, link.timeout).await?)),
        }
    }

    /// One round trip to every master: is Redis there? On a cluster a
    /// plain PING is not enough: its fan-out skips masters whose link is
    /// down, so each master of `CLUSTER SLOTS` is PINGed on its own link.
    pub async fn ping(&self) -> Result<(), WriteError> {
        let mut conn = self.conn().await?;
        let Conn::Cluster(cluster) = &mut conn else {
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            return Ok(());
        };
        let random = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        let slots = cluster.route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), random).await?;
        let masters = redis_backplane::slots::slot_masters(&slots);
        if masters.is_empty() {
            return Err(WriteError::Reply("CLUSTER SLOTS listed no master".into()));
        }
        let pings = masters.into_iter().map(|(host, port)| {
            let mut conn = cluster.clone();
            async move {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                conn.route_command(redis::cmd("PING"), route).await
            }
        });
        try_join_all(pings).await?;
        Ok(())
    }
}

async fn connect(client: &ClusterClient, limit: Duration) -> Result<ClusterConnection, WriteError> {
    // Each seed may take a connect timeout before the next is tried.
    match timeout(limit * 2, client.get_async_connection()).await {
        Ok(conn) => Ok(conn?),
        Err(_) => Err(WriteError::Pool("connecting to the Redis Cluster timed out".into())),
    }
}

/// Runs `cmds`, each with the cluster slot of its key, on a cluster: one
/// pipeline per slot, all in flight at once, each slot's commands in their
/// order. Returns the replies in the order of `cmds`; fails if any
/// pipeline failed (the others may have run).
pub async fn run_by_slot(conn: &ClusterConnection, cmds: Vec<(u16, Cmd)>) -> Result<Vec<Value>, WriteError> {
    let total = cmds.len();
    let mut by_slot: BTreeMap<u16, (Vec<usize>, Pipeline)> = BTreeMap::new();
    for (i, (slot, cmd)) in cmds.into_iter().enumerate() {
        let (indexes, pipe) = by_slot.entry(slot).or_insert_with(|| (Vec::new(), redis::pipe()));
        indexes.push(i);
        pipe.add_command(cmd);
    }
    let runs = by_slot.into_values().map(|(indexes, pipe)| {
        let mut conn = conn.clone();
        async move { (indexes, pipe.query_async::<Vec<Value>>(&mut conn).await) }
    });
    let mut replies = vec![Value::Nil; total];
    for (indexes, result) in join_all(runs).await {
        for (i, value) in indexes.into_iter().zip(result?) {
            replies[i] = value;
        }
    }
    Ok(replies)
}

/// A connection pool to the server at `url` whose commands fail after
/// `timeout` instead of hanging on a Redis that went away.
pub fn pool(url: &str, timeout: Duration, size: usize) -> Result<Pool, WriteError> {
    pool_to(target(url, None, timeout)?, timeout, size)
}

fn target(
    url: &str,
    sentinel: Option<redis_backplane::SentinelConfig<'_>>,
    timeout: Duration,
) -> Result<redis_backplane::Target, WriteError> {
    redis_backplane::Target::open(url, sentinel, timeout)
        .map_err(|e| WriteError::Pool(format!("invalid redis_url: {e}")))
}

/// A pool to `target` (built by `redis_backplane::pool`).
fn pool_to(target: redis_backplane::Target, timeout: Duration, size: usize) -> Result<Pool, WriteError> {
    let options = redis_backplane::PoolOptions { size, timeout, command_timeout: Some(timeout) };
    redis_backplane::pool(target, options).map_err(|e| WriteError::Pool(e.to_string()))
}
