//! The slot map of a Redis Cluster, the gateway's one user of
//! `CLUSTER SLOTS` replies: which master serves which slot ranges (and
//! with which replicas), which slots no master serves, and the link a
//! sharded channel travels on.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use redis::Value;
use wire::keys;

use crate::broker::pubsub::table::LinkId;

/// A master's address as `CLUSTER SLOTS` gives it.
pub(super) type Addr = (String, u16);

/// `host:port`, as logs show a node.
pub(super) fn host_port(addr: &Addr) -> String {
    format!("{}:{}", addr.0, addr.1)
}

/// What one master serves, and who replicates it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Served {
    /// In slot order.
    pub(super) ranges: Vec<RangeInclusive<u16>>,
    /// Sorted, without duplicates.
    pub(super) replicas: Vec<Addr>,
}

/// Each master with what it serves.
pub(super) type Masters = BTreeMap<Addr, Served>;

/// Groups a `CLUSTER SLOTS` reply by master.
pub(super) fn masters(reply: &Value) -> Masters {
    let mut masters = Masters::new();
    for range in redis_backplane::slots::slot_ranges(reply) {
        let served = masters.entry((range.host, range.port)).or_default();
        served.ranges.push(range.start..=range.end);
        served.replicas.extend(range.replicas);
    }
    for served in masters.values_mut() {
        served.ranges.sort_by_key(|r| *r.start());
        served.replicas.sort();
        served.replicas.dedup();
    }
    masters
}

/// Adds the replicas a `CLUSTER SHARDS` reply names online (which
/// `CLUSTER SLOTS` may not list yet, see `redis_backplane::slots`).
pub(super) fn add_replicas(masters: &mut Masters, shards: &Value) {
    for (master, replicas) in redis_backplane::slots::shard_replicas(shards) {
        if let Some(served) = masters.get_mut(&master) {
            served.replicas.extend(replicas);
            served.replicas.sort();
            served.replicas.dedup();
        }
    }
}

/// Slot ranges with their link, to route a channel.
pub(super) struct Routes(Vec<(RangeInclusive<u16>, LinkId)>);

impl Routes {
    pub(super) fn new(ranges: impl IntoIterator<Item = (RangeInclusive<u16>, LinkId)>) -> Self {
        Routes(ranges.into_iter().collect())
    }

    /// The link whose master serves `channel`'s slot.
    pub(super) fn route(&self, channel: &str) -> Option<LinkId> {
        let slot = keys::cluster_slot(channel);
        self.0.iter().find(|(range, _)| range.contains(&slot)).map(|(_, link)| *link)
    }
}

/// How a shard is named in metrics and logs: its first slot range,
/// which stays the same when a replica takes over.
pub(super) fn label(ranges: &[RangeInclusive<u16>]) -> String {
    match ranges.first() {
        Some(r) => format!("{}-{}", r.start(), r.end()),
        None => "none".into(),
    }
}

/// The slot ranges no range in `served` covers.
pub(super) fn unserved(mut served: Vec<RangeInclusive<u16>>) -> Vec<RangeInclusive<u16>> {
    served.sort_by_key(|r| *r.start());
    let mut gaps = Vec::new();
    let mut next: u32 = 0;
    for range in served {
        if u32::from(*range.start()) > next {
            gaps.push(next as u16..=range.start() - 1);
        }
        next = next.max(u32::from(*range.end()) + 1);
    }
    if next < u32::from(keys::CLUSTER_SLOTS) {
        gaps.push(next as u16..=keys::CLUSTER_SLOTS - 1);
    }
    gaps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(b"127.0.0.1".to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    fn range(start: i64, end: i64, port: i64) -> Value {
        Value::Array(vec![Value::Int(start), Value::Int(end), node(port), node(port + 100)])
    }

    #[test]
    fn reads_cluster_slots_and_finds_gaps() {
        let reply =
            Value::Array(vec![range(0, 5460, 7001), range(10923, 16383, 7003), range(5461, 10000, 7002)]);
        let three = masters(&reply);
        assert_eq!(three.len(), 3);
        let third = &three[&("127.0.0.1".to_string(), 7003)];
        assert_eq!(third.ranges, vec![10923..=16383]);
        assert_eq!(third.replicas, vec![("127.0.0.1".to_string(), 7103)]);
        let served: Vec<_> = three.values().flat_map(|s| s.ranges.clone()).collect();
        assert_eq!(unserved(served), vec![10001..=10922]);
        assert!(unserved(vec![0..=16383]).is_empty());
        assert_eq!(unserved(Vec::new()), vec![0..=16383]);
        assert_eq!(unserved(vec![1..=16382]), vec![0..=0, 16383..=16383]);
        let reply = Value::Array(vec![range(0, 100, 7001), range(200, 300, 7001), range(101, 199, 7002)]);
        let masters = masters(&reply);
        assert_eq!(masters.len(), 2);
        let first = &masters[&("127.0.0.1".to_string(), 7001)];
        assert_eq!(first.ranges, vec![0..=100, 200..=300]);
        assert_eq!(first.replicas, vec![("127.0.0.1".to_string(), 7101)], "one replica, listed once");
        assert_eq!(label(&first.ranges), "0-100");
    }

    #[test]
    fn routes_a_channel_by_its_slot() {
        let routes = Routes::new([(0..=8000, 3), (8001..=16383, 4)]);
        let channel = "rt:quotes.X";
        let want = if keys::cluster_slot(channel) <= 8000 { 3 } else { 4 };
        assert_eq!(routes.route(channel), Some(want));
        assert_eq!(Routes::new([]).route(channel), None);
    }
}
