//! Reading a `CLUSTER SLOTS` reply: which master serves which slots, and
//! its replicas. The publisher PINGs every master it lists; the gateway's
//! shard links subscribe on a master and one of its replicas; the tests
//! find the master that owns a key.

use std::collections::{HashMap, HashSet};

use redis::Value;

/// One range of slots, the master serving it and that master's replicas
/// (those the answering node does not think failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub host: String,
    pub port: u16,
    pub replicas: Vec<(String, u16)>,
}

impl SlotRange {
    pub fn contains(&self, slot: u16) -> bool {
        (self.start..=self.end).contains(&slot)
    }
}

/// The ranges of a `CLUSTER SLOTS` reply; entries that are not
/// `[start, end, [host, port, …], …]` are skipped.
pub fn slot_ranges(reply: &Value) -> Vec<SlotRange> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    ranges.iter().filter_map(slot_range).collect()
}

fn slot_range(range: &Value) -> Option<SlotRange> {
    let Value::Array(fields) = range else { return None };
    let (Some(Value::Int(start)), Some(Value::Int(end)), Some(master)) =
        (fields.first(), fields.get(1), fields.get(2))
    else {
        return None;
    };
    let (host, port) = node(master)?;
    Some(SlotRange {
        start: u16::try_from(*start).ok()?,
        end: u16::try_from(*end).ok()?,
        host,
        port,
        replicas: fields.iter().skip(3).filter_map(node).collect(),
    })
}

/// A node entry: `[host, port, …]`.
fn node(entry: &Value) -> Option<(String, u16)> {
    let Value::Array(node) = entry else { return None };
    let host = match node.first()? {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    let Some(Value::Int(port)) = node.get(1) else { return None };
    Some((host, u16::try_from(*port).ok()?))
}

/// Each master's replicas not marked failed, from a `CLUSTER SHARDS`
/// reply (Redis 7+). `CLUSTER SLOTS` leaves out a replica whose
/// replication offset is still 0 (and `CLUSTER SHARDS` calls it
/// "loading"), which lasts until the master's first replication ping
/// (10 s) on a shard that only carries sharded pub/sub: those messages
/// cross the cluster bus, not the replication stream.
pub fn shard_replicas(reply: &Value) -> HashMap<(String, u16), Vec<(String, u16)>> {
    let mut out = HashMap::new();
    let Value::Array(shards) = reply else { return out };
    for shard in shards {
        let Some(Value::Array(nodes)) = field(shard, "nodes") else { continue };
        let mut master = None;
        let mut replicas = Vec::new();
        for node in nodes {
            let text = |key| match field(node, key) {
                Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                Some(Value::SimpleString(s)) => Some(s.clone()),
                _ => None,
            };
            let port = match field(node, "port").or_else(|| field(node, "tls-port")) {
                Some(Value::Int(p)) => u16::try_from(*p).ok(),
                _ => None,
            };
            let host = text("endpoint").filter(|e| !e.is_empty() && e != "?").or_else(|| text("ip"));
            let (Some(host), Some(port)) = (host, port) else { continue };
            match (text("role").as_deref(), text("health").as_deref()) {
                (Some("master"), _) => master = Some((host, port)),
                (Some("replica"), Some(health)) if health != "failed" => replicas.push((host, port)),
                _ => {}
            }
        }
        if let Some(master) = master {
            out.insert(master, replicas);
        }
    }
    out
}

/// The value under `key` of a reply map (a RESP3 map, or the flat
/// key/value array RESP2 gives).
fn field<'a>(map: &'a Value, key: &str) -> Option<&'a Value> {
    let is_key = |k: &Value| {
        matches!(k, Value::BulkString(b) if b == key.as_bytes())
            || matches!(k, Value::SimpleString(s) if s == key)
    };
    match map {
        Value::Map(pairs) => pairs.iter().find(|(k, _)| is_key(k)).map(|(_, v)| v),
        Value::Array(flat) => flat.chunks(2).find(|kv| is_key(&kv[0])).and_then(|kv| kv.get(1)),
        _ => None,
    }
}

/// The distinct masters (host, port) of a `CLUSTER SLOTS` reply.
pub fn slot_masters(reply: &Value) -> HashSet<(String, u16)> {
    slot_ranges(reply).into_iter().map(|r| (r.host, r.port)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: i64, end: i64, port: i64) -> Value {
        Value::Array(vec![
            Value::Int(start),
            Value::Int(end),
            Value::Array(vec![Value::BulkString(b"10.0.0.1".to_vec()), Value::Int(port)]),
        ])
    }

    #[test]
    fn reads_the_masters_of_cluster_slots() {
        let reply = Value::Array(vec![range(0, 100, 7001), range(101, 200, 7002), range(201, 16383, 7001)]);
        let masters = slot_masters(&reply);
        assert_eq!(masters.len(), 2);
        assert!(masters.contains(&("10.0.0.1".to_string(), 7002)));
    }

    #[test]
    fn reads_the_replicas_of_each_range() {
        let replica = Value::Array(vec![Value::BulkString(b"10.0.0.2".to_vec()), Value::Int(7004)]);
        let Value::Array(mut fields) = range(0, 16383, 7001) else { unreachable!() };
        fields.extend([replica, Value::Int(1)]);
        let ranges = slot_ranges(&Value::Array(vec![Value::Array(fields)]));
        assert_eq!(ranges[0].replicas, vec![("10.0.0.2".to_string(), 7004)]);
        assert!(slot_ranges(&Value::Array(vec![range(0, 1, 7001)]))[0].replicas.is_empty());
    }

    #[test]
    fn reads_online_replicas_from_cluster_shards() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let node = |port: i64, role: &str, health: &str| {
            Value::Array(vec![
                bulk("id"),
                bulk("abc"),
                bulk("port"),
                Value::Int(port),
                bulk("ip"),
                bulk("127.0.0.1"),
                bulk("endpoint"),
                bulk("127.0.0.1"),
                bulk("role"),
                bulk(role),
                bulk("replication-offset"),
                Value::Int(0),
                bulk("health"),
                bulk(health),
            ])
        };
        let shard = Value::Array(vec![
            bulk("slots"),
            Value::Array(vec![Value::Int(0), Value::Int(16383)]),
            bulk("nodes"),
            Value::Array(vec![
                node(7004, "replica", "online"),
                node(7001, "master", "online"),
                node(7005, "replica", "failed"),
                node(7006, "replica", "loading"),
            ]),
        ]);
        let replicas = shard_replicas(&Value::Array(vec![shard, Value::Int(1)]));
        assert_eq!(replicas.len(), 1);
        let want = vec![("127.0.0.1".to_string(), 7004), ("127.0.0.1".to_string(), 7006)];
        assert_eq!(replicas[&("127.0.0.1".to_string(), 7001)], want);
    }

    #[test]
    fn finds_the_range_of_a_slot() {
        let reply = Value::Array(vec![range(0, 100, 7001), Value::Int(3), range(101, 16383, 7002)]);
        let ranges = slot_ranges(&reply);
        assert_eq!(ranges.len(), 2);
        let owner = ranges.iter().find(|r| r.contains(150)).map(|r| r.port);
        assert_eq!(owner, Some(7002));
    }
}
