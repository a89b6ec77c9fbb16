//! The Redis Cluster backplane (Redis 7+): topics travel on sharded
//! pub/sub, so a message only crosses the shard that owns its channel's
//! slot instead of being broadcast to every node of the cluster.
//!
//! Pub/sub and commands take separate paths, so one master's trouble
//! stays on that master's shard:
//! - Subscriptions are kept by the shared manager (`pubsub`) on one link
//!   per shard (`shard_link`: plain RESP3 connections of its own, to the
//!   master and, as a standby, to one of its replicas), discovered from
//!   the slot map (`topology`, `slot_map`). A lost link touches only its
//!   own slots' topics, which are re-subscribed once on the master that
//!   serves them next (the same one back, or the promoted replica); a
//!   planned failover loses nothing, for the standby holds them through it.
//! - Commands (the publish scripts with `SPUBLISH`, snapshot and history
//!   reads, order requests) go through redis-rs's cluster connection,
//!   which routes by slot and follows `MOVED` / `ASK`. A command for a
//!   slot whose master the pub/sub side knows is down fails fast with
//!   `backplane_unavailable` instead of waiting for the timeout.

mod shard_link;
mod slot_map;
mod topology;

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use redis::IntoConnectionInfo;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use wire::keys;
use wire::scripts::PublishCommand;

use super::pubsub::{Health, ManagerSettings, ProbeSettings, PubSub, UpGauge};
use super::redis_commands::ScriptPublisher;
use super::redis_pubsub::Delivery;
use super::redis_shared::{self, Commands, Redis};
use super::{Answer, BrokerError, Wiring};
use crate::config::Config;

const BACKOFF_START: Duration = Duration::from_millis(100);

/// The cluster connection for commands, once made. Everyone clones it
/// from here: it is multiplexed, and a clone is a handle, not a link.
type ConnSlot = Arc<RwLock<Option<ClusterConnection>>>;

/// The Redis Cluster backplane (its `Broker` is [`Redis`]'s).
pub type RedisClusterBroker = Redis<Cluster>;

/// Where a Redis Cluster runs commands: one cluster connection.
pub struct Cluster {
    conn: ConnSlot,
    /// The manager's view of the shards, so a command fails fast for one that is down.
    health: Arc<Health>,
}

impl RedisClusterBroker {
    /// Starts the manager, the slot map follower and the command
    /// connection; they connect in the background, so a node whose cluster
    /// is not up yet starts anyway (and reports not ready).
    pub(crate) fn start(config: &Config, wiring: Wiring<'_>) -> Result<Self, BrokerError> {
        let invalid = |e: redis::RedisError| BrokerError::Unavailable(format!("invalid redis_url: {e}"));
        let seeds = config
            .redis_seeds()
            .map(|url| url.into_connection_info().map_err(invalid))
            .collect::<Result<Vec<_>, _>>()?;
        let client = ClusterClientBuilder::new(config.redis_seeds())
            .connection_timeout(config.redis_timeout())
            .response_timeout(config.redis_timeout())
            .build()
            .map_err(invalid)?;
        let (refresh, refresh_rx) = mpsc::channel(1);
        let conn: ConnSlot = Arc::default();
        // Made before the manager, so its delivery probe can publish through it.
        let health = Arc::new(Health::default());
        let commands = Arc::new(Cluster { conn: Arc::clone(&conn), health: Arc::clone(&health) });
        let settings = ManagerSettings::new(config, &wiring);
        let probe = redis_shared::probe_publish(
            Arc::clone(&commands),
            PublishCommand::SPublish,
            config.redis_timeout(),
        );
        let settings = ManagerSettings {
            up_gauge: UpGauge::Whole,
            refresh: Some(refresh),
            probe: ProbeSettings { publish: Some(probe), ..settings.probe },
            ..settings
        };
        let Wiring { sink, shutdown, metrics, .. } = wiring;
        let reply_channel = settings.reply_channel.clone();
        let (pubsub, inputs) = PubSub::start_with(settings, health);
        let delivery = Delivery::new(sink, &config.channel_prefix, reply_channel, &inputs);
        let topology = topology::Topology {
            seeds,
            delivery,
            inputs,
            health: Arc::clone(pubsub.health()),
            refresh: refresh_rx,
            timeout: config.redis_timeout(),
            backoff_max: config.redis_backoff_max(),
            standby: config.redis_cluster_standby,
            metrics,
            shutdown: shutdown.clone(),
        };
        tokio::spawn(topology.run());
        tokio::spawn(connect_commands(
            client,
            Arc::clone(&conn),
            config.redis_timeout(),
            config.redis_backoff_max(),
            shutdown,
        ));
        Ok(Redis {
            commands,
            pubsub,
            prefix: config.channel_prefix.clone(),
            timeout: config.redis_timeout(),
            scripts: ScriptPublisher::new(
                &config.channel_prefix,
                PublishCommand::SPublish,
                config.history_maxlen,
                0,
                config.redis_timeout(),
            ),
        })
    }
}

impl Cluster {
    /// The cluster connection (it routes by `key`'s slot), unless that
    /// slot's shard is known to be down.
    fn conn(&self, key: &str) -> Result<ClusterConnection, BrokerError> {
        if self.health.slot_down(keys::cluster_slot(key)) {
            return Err(BrokerError::Unavailable("the cluster shard of this topic is down".into()));
        }
        let slot = self.conn.read().unwrap_or_else(PoisonError::into_inner);
        slot.clone().ok_or_else(|| BrokerError::Unavailable("not connected to the Redis Cluster yet".into()))
    }
}

/// Every command takes the one cluster connection.
impl Commands for Cluster {
    type Bulk = ClusterConnection;
    type Quick = ClusterConnection;
    const KIND: &'static str = "redis-cluster";

    fn bulk<'a>(&'a self, key: &'a str) -> Answer<'a, ClusterConnection> {
        let conn = self.conn(key);
        Box::pin(async move { conn })
    }

    fn quick<'a>(&'a self, key: &'a str) -> Answer<'a, ClusterConnection> {
        self.bulk(key)
    }
}

/// Makes the command connection (learning the slot map from a seed),
/// retrying with jittered backoff until it exists or shutdown. Later
/// losses are repaired by redis-rs inside the connection.
async fn connect_commands(
    client: ClusterClient,
    slot: ConnSlot,
    limit: Duration,
    backoff_max: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = service::Backoff::new(BACKOFF_START, backoff_max);
    let mut outage_logged = false;
    loop {
        // Each seed may take a connect timeout before the next is tried.
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            attempt = timeout(limit * 2, client.get_async_connection()) => attempt,
        };
        let why = match attempt {
            Ok(Ok(conn)) => {
                *slot.write().unwrap_or_else(PoisonError::into_inner) = Some(conn);
                // Dropping the last handle at shutdown ends redis-rs's tasks.
                shutdown.cancelled().await;
                *slot.write().unwrap_or_else(PoisonError::into_inner) = None;
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timed out".to_string(),
        };
        if !outage_logged {
            tracing::warn!(error = %why, "redis cluster command connection unavailable; retrying with backoff");
            outage_logged = true;
        } else {
            tracing::debug!(error = %why, "redis cluster command connection still unavailable");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}
