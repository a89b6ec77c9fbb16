//! Follows the cluster's slot map for the pub/sub side: reads
//! `CLUSTER SLOTS` (from any master or seed that answers) when a link is
//! lost, a server says a slot moved, and periodically (often while the
//! backplane is degraded, so a promoted replica is found within a
//! fraction of a second); starts a link per new master, stops the links
//! of masters that left, and hands the manager each new layout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::ConnectionInfo;
use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::shard_link::{self, ShardConnector};
use super::slot_map::{self, Addr, Masters, Routes};
use crate::broker::pubsub::link::{self, LinkSettings};
use crate::broker::pubsub::table::LinkId;
use crate::broker::pubsub::{Health, Inputs, Layout, LinkSpec};
use crate::broker::redis_pubsub::Delivery;

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
    pub(super) shutdown: CancellationToken,
}

struct Known {
    id: LinkId,
    ranges: Vec<std::ops::RangeInclusive<u16>>,
}

impl Topology {
    pub(super) async fn run(mut self) {
        let mut links: HashMap<Addr, Known> = HashMap::new();
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
    async fn read(
        &self,
        asker: &mut Option<MultiplexedConnection>,
        links: &HashMap<Addr, Known>,
    ) -> Option<Masters> {
        let limit = self.timeout.min(ASK_LIMIT);
        if let Some(conn) = asker.as_mut() {
            match ask(conn, limit).await {
                Some(masters) => return Some(masters),
                None => *asker = None,
            }
        }
        let seed = self.seeds.first()?;
        let mut candidates: Vec<ConnectionInfo> =
            links.keys().map(|(host, port)| shard_link::at(seed, host.clone(), *port)).collect();
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
            if let Some(masters) = ask(&mut conn, limit).await {
                *asker = Some(conn);
                return Some(masters);
            }
        }
        tracing::debug!("no cluster node answered CLUSTER SLOTS");
        None
    }

    /// Links for new masters, the end of links whose master left, and the
    /// routes; None when nothing changed.
    fn layout(
        &self,
        masters: Masters,
        links: &mut HashMap<Addr, Known>,
        next_id: &mut LinkId,
    ) -> Option<Layout> {
        let unchanged = masters.len() == links.len()
            && masters.iter().all(|(addr, ranges)| links.get(addr).is_some_and(|k| &k.ranges == ranges));
        if unchanged {
            return None;
        }
        let mut removed = Vec::new();
        links.retain(|addr, known| {
            let keep = masters.contains_key(addr);
            if !keep {
                removed.push(known.id);
            }
            keep
        });
        let mut added = Vec::new();
        let mut slots = Vec::new();
        let mut routes = Vec::new();
        for (addr, ranges) in &masters {
            let id = match links.get_mut(addr) {
                Some(known) => {
                    if &known.ranges != ranges {
                        known.ranges = ranges.clone();
                        slots.push((known.id, ranges.clone()));
                    }
                    known.id
                }
                None => {
                    let id = *next_id;
                    *next_id += 1;
                    match self.spawn_link(id, addr.clone(), ranges) {
                        Ok(spec) => added.push(spec),
                        Err(e) => {
                            tracing::warn!(error = %e, master = %format!("{}:{}", addr.0, addr.1), "cannot open a link to a cluster master");
                            continue;
                        }
                    }
                    links.insert(addr.clone(), Known { id, ranges: ranges.clone() });
                    id
                }
            };
            routes.extend(ranges.iter().map(|r| (r.clone(), id)));
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
        addr: Addr,
        ranges: &[std::ops::RangeInclusive<u16>],
    ) -> Result<LinkSpec, String> {
        let seed = self.seeds.first().ok_or("no seed")?;
        let connector = ShardConnector::new(seed, addr, self.delivery.clone(), self.timeout)?;
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let label = slot_map::label(ranges);
        let settings = LinkSettings {
            link: id,
            label: label.clone(),
            timeout: self.timeout,
            backoff_max: self.backoff_max,
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(link::run(connector, settings, commands_rx, self.inputs.events.clone()));
        Ok(LinkSpec { id, label, slots: ranges.to_vec(), commands })
    }
}

async fn ask(conn: &mut MultiplexedConnection, limit: Duration) -> Option<Masters> {
    let reply = timeout(limit, redis::cmd("CLUSTER").arg("SLOTS").query_async::<redis::Value>(conn)).await;
    match reply {
        Ok(Ok(reply)) => {
            let masters = slot_map::masters(&reply);
            (!masters.is_empty()).then_some(masters)
        }
        _ => None,
    }
}
