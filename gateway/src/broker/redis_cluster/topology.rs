//! Follows the cluster's slot map for the pub/sub side: reads
//! `CLUSTER SLOTS` (from any master or seed that answers) when a link is
//! lost, a server says a slot moved, and periodically (often while the
//! backplane is degraded, so a promoted replica is found within a
//! fraction of a second); starts a link per new shard, stops the links
//! of shards that left, and hands the manager each new layout.
//!
//! A link belongs to a shard, not to an address: a master found where a
//! link's replica was (a promotion, planned or not) keeps that link,
//! which is told its new nodes and reconnects there if it must. So a
//! planned switch moves no channel: the link's standby on the promoted
//! replica kept every subscription (see `shard_link`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use redis::ConnectionInfo;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::shard_link::{self, Nodes, ShardConnector};
use super::slot_map::{self, Addr, Masters, Routes, Served};
use crate::broker::pubsub::link::{self, LinkSettings};
use crate::broker::pubsub::table::LinkId;
use crate::broker::pubsub::{Health, Inputs, Layout, LinkSpec};
use crate::broker::redis_pubsub::Delivery;
use crate::metrics::{Metrics, ShardLabel};

/// Slot map reads while every shard is up (a slot move is announced by
/// `sunsubscribe` pushes anyway).
const HEALTHY_EVERY: Duration = Duration::from_secs(5);
/// Slot map reads while a shard is down or a channel has no route,
/// waiting for a promotion to spread: each read is one small reply, and
/// every period here is a period of lost quotes on that shard.
const DEGRADED_EVERY: Duration = Duration::from_millis(50);
/// A slot map read gives up on one node after this long.
const ASK_LIMIT: Duration = Duration::from_millis(500);

pub(super) struct Topology {
    pub(super) seeds: Vec<ConnectionInfo>,
    pub(super) delivery: Delivery,
    pub(super) inputs: Inputs,
    pub(super) health: Arc<Health>,
    pub(super) refresh: mpsc::Receiver<()>,
    pub(super) timeout: Duration,
    pub(super) backoff_max: Duration,
    /// Each link also subscribes on a replica (`redis_cluster_standby`).
    pub(super) standby: bool,
    pub(super) metrics: Arc<Metrics>,
    pub(super) shutdown: CancellationToken,
}

/// A link's shard as last read.
struct Known {
    master: Addr,
    served: Served,
    /// What the link's connector reads at each connect.
    nodes: watch::Sender<Nodes>,
}

type Links = BTreeMap<LinkId, Known>;

impl Topology {
    pub(super) async fn run(mut self) {
        let mut links = Links::new();
        let mut next_id: LinkId = 0;
        let mut asker: Option<MultiplexedConnection> = None;
        loop {
            if let Some(masters) = self.read(&mut asker, &links).await
                && let Some(layout) = self.layout(masters, &mut links, &mut next_id)
                && self.inputs.layouts.send(layout).is_err()
            {
                return;
            }
            let every = if self.health.is_ready() { HEALTHY_EVERY } else { DEGRADED_EVERY };
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
                asked = self.refresh.recv() => if asked.is_none() { return },
            }
        }
    }

    /// `CLUSTER SLOTS` from the node asked last, or else any known master
    /// or seed; None when none answers.
    async fn read(&self, asker: &mut Option<MultiplexedConnection>, links: &Links) -> Option<Masters> {
        let limit = self.timeout.min(ASK_LIMIT);
        if let Some(conn) = asker.as_mut() {
            match ask(conn, limit, self.standby).await {
                Some(masters) => return Some(masters),
                None => *asker = None,
            }
        }
        let seed = self.seeds.first()?;
        let mut candidates: Vec<ConnectionInfo> = links
            .values()
            .flat_map(|k| std::iter::once(&k.master).chain(&k.served.replicas))
            .map(|(host, port)| shard_link::at(seed, host.clone(), *port))
            .collect();
        candidates.extend(self.seeds.iter().cloned());
        for info in candidates {
            let Ok(client) = redis::Client::open(info) else { continue };
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(limit))
                .set_response_timeout(Some(limit));
            let Ok(Ok(mut conn)) =
                timeout(limit * 2, client.get_multiplexed_async_connection_with_config(&config)).await
            else {
                continue;
            };
            if let Some(masters) = ask(&mut conn, limit, self.standby).await {
                *asker = Some(conn);
                return Some(masters);
            }
        }
        tracing::debug!("no cluster node answered CLUSTER SLOTS");
        None
    }

    /// Links for new shards, the end of links whose shard left, and the
    /// routes; None when no channel's route changed. A link whose shard's
    /// nodes changed (a promotion, a replica gone or added) is told so.
    fn layout(&self, masters: Masters, links: &mut Links, next_id: &mut LinkId) -> Option<Layout> {
        // Each master keeps the link it had, or the one it was a replica
        // of (a promotion); the rest are new shards.
        let mut claimed = BTreeSet::new();
        let mut matched = Vec::with_capacity(masters.len());
        for (addr, served) in masters {
            let own = links.iter().find(|(id, k)| !claimed.contains(*id) && k.master == addr);
            let promoted =
                || links.iter().find(|(id, k)| !claimed.contains(*id) && k.served.replicas.contains(&addr));
            let id = own.or_else(promoted).map(|(id, _)| *id);
            if let Some(id) = id {
                claimed.insert(id);
            }
            matched.push((id, addr, served));
        }
        let removed: Vec<LinkId> = links.keys().filter(|id| !claimed.contains(*id)).copied().collect();
        for id in &removed {
            links.remove(id);
        }
        let mut added = Vec::new();
        let mut slots = Vec::new();
        let mut routes = Vec::new();
        for (id, addr, served) in matched {
            let id = match id.and_then(|id| links.get_mut(&id).map(|k| (id, k))) {
                Some((id, known)) => {
                    if known.served.ranges != served.ranges {
                        slots.push((id, served.ranges.clone()));
                    }
                    if known.master != addr || known.served.replicas != served.replicas {
                        let nodes = Nodes { master: addr.clone(), replicas: served.replicas.clone() };
                        tracing::info!(shard = %slot_map::label(&served.ranges),
                            master = %slot_map::host_port(&addr), replicas = served.replicas.len(),
                            "cluster shard's nodes changed");
                        known.nodes.send_replace(nodes);
                    }
                    known.master = addr;
                    known.served = served;
                    id
                }
                None => {
                    let id = *next_id;
                    *next_id += 1;
                    let nodes = Nodes { master: addr.clone(), replicas: served.replicas.clone() };
                    let (tx, rx) = watch::channel(nodes);
                    match self.spawn_link(id, rx, &served.ranges) {
                        Ok(spec) => added.push(spec),
                        Err(e) => {
                            tracing::warn!(error = %e, master = %slot_map::host_port(&addr), "cannot open a link to a cluster master");
                            continue;
                        }
                    }
                    links.insert(id, Known { master: addr, served, nodes: tx });
                    id
                }
            };
            let known = &links[&id];
            routes.extend(known.served.ranges.iter().map(|r| (r.clone(), id)));
        }
        if added.is_empty() && removed.is_empty() && slots.is_empty() {
            return None;
        }
        let complete = slot_map::unserved(routes.iter().map(|(r, _)| r.clone()).collect()).is_empty();
        if !complete {
            tracing::debug!("the slot map has slots no master serves");
        }
        let routes = Routes::new(routes);
        Some(Layout {
            route: Box::new(move |channel| routes.route(channel)),
            added,
            removed,
            slots,
            complete,
        })
    }

    fn spawn_link(
        &self,
        id: LinkId,
        nodes: watch::Receiver<Nodes>,
        ranges: &[std::ops::RangeInclusive<u16>],
    ) -> Result<LinkSpec, String> {
        let seed = self.seeds.first().ok_or("no seed")?;
        let label = slot_map::label(ranges);
        let gauge =
            self.metrics.backplane_standby_up.get_or_create(&ShardLabel { shard: label.clone() }).clone();
        let delivery = self.delivery.for_link();
        let received = Arc::clone(&delivery.received);
        let connector = ShardConnector::new(seed, nodes, delivery, self.timeout, self.standby, gauge);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let settings = LinkSettings {
            link: id,
            label: label.clone(),
            timeout: self.timeout,
            backoff_max: self.backoff_max,
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(link::run(connector, settings, commands_rx, self.inputs.events.clone()));
        Ok(LinkSpec { id, label, slots: ranges.to_vec(), commands, received })
    }
}

/// The slot map; with `replicas`, also each master's online replicas.
async fn ask(conn: &mut MultiplexedConnection, limit: Duration, replicas: bool) -> Option<Masters> {
    let reply = timeout(limit, redis::cmd("CLUSTER").arg("SLOTS").query_async::<redis::Value>(conn)).await;
    let mut masters = match reply {
        Ok(Ok(reply)) => slot_map::masters(&reply),
        _ => return None,
    };
    if masters.is_empty() {
        return None;
    }
    if replicas {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SHARDS");
        // Without it (an error, a timeout) the replicas CLUSTER SLOTS named do.
        if let Ok(Ok(shards)) = timeout(limit, cmd.query_async::<redis::Value>(conn)).await {
            slot_map::add_replicas(&mut masters, &shards);
        }
    }
    Some(masters)
}
