//! Health of a Redis Cluster as one node sees it: which slot ranges have a
//! master answering on this node's link, and how many sharded
//! subscriptions each link holds.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::time::Duration;

use futures_util::future::join_all;
use redis::Value;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use tokio::time::timeout;
use wire::keys;

/// What one health check found.
pub(super) struct Health {
    /// Slot ranges whose master did not answer, or that no master serves.
    pub(super) down: Vec<RangeInclusive<u16>>,
    /// For each master that answered: the slot ranges it serves, and how
    /// many sharded subscriptions our link to it holds.
    pub(super) held: Vec<(Vec<RangeInclusive<u16>>, usize)>,
    /// Why the backplane is not wholly up, if it is not.
    pub(super) problem: Option<String>,
}

/// Asks the master of every slot range, each on its own link, for
/// `CLIENT INFO` (a PING that also tells how many sharded subscriptions
/// the link holds). A plain PING through the cluster connection is no
/// health check: its fan-out skips masters whose link is down, so it
/// answers PONG with a shard gone.
/// The slot map comes from `CLUSTER SLOTS` on any node, or from the last
/// answer (`known`) when that node does not answer.
pub(super) async fn cluster_health(
    conn: &mut ClusterConnection,
    limit: Duration,
    known: &mut Vec<(RangeInclusive<u16>, (String, u16))>,
) -> Health {
    let asked = timeout(
        limit,
        conn.route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        ),
    )
    .await;
    let mut problem = None;
    match asked {
        Ok(Ok(reply)) => *known = slot_ranges(&reply),
        Ok(Err(e)) => problem = Some(format!("CLUSTER SLOTS: {e}")),
        Err(_) => problem = Some("CLUSTER SLOTS timed out".to_string()),
    }
    if known.is_empty() {
        let why = problem.unwrap_or_else(|| "CLUSTER SLOTS listed no master".into());
        return Health { down: vec![0..=keys::CLUSTER_SLOTS - 1], held: Vec::new(), problem: Some(why) };
    }
    let ranges = known.clone();
    let mut masters: HashMap<(String, u16), Vec<RangeInclusive<u16>>> = HashMap::new();
    for (range, master) in &ranges {
        masters.entry(master.clone()).or_default().push(range.clone());
    }
    let asks = masters.into_iter().map(|((host, port), served)| {
        let mut conn = conn.clone();
        async move {
            let route =
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.clone(), port });
            let info = redis::cmd("CLIENT").arg("INFO").clone();
            match timeout(limit, conn.route_command(info, route)).await {
                Ok(Ok(info)) => Ok((served, shard_subscriptions(&info))),
                Ok(Err(e)) => Err((served, format!("master {host}:{port}: {e}"))),
                Err(_) => Err((served, format!("master {host}:{port}: timed out"))),
            }
        }
    });
    let mut health = Health { down: Vec::new(), held: Vec::new(), problem };
    for answer in join_all(asks).await {
        match answer {
            Ok((served, Some(subscriptions))) => health.held.push((served, subscriptions)),
            // Answered, without the count (a server before 7.0): alive, not checked.
            Ok((_, None)) => {}
            Err((served, problem)) => {
                health.down.extend(served);
                health.problem = Some(problem);
            }
        }
    }
    let unserved = unserved(ranges.iter().map(|(range, _)| range.clone()).collect());
    if !unserved.is_empty() {
        health.problem = Some(format!("{} slot ranges have no master", unserved.len()));
        health.down.extend(unserved);
    }
    health
}

/// The `ssub=` field of a `CLIENT INFO` reply: the link's sharded
/// subscriptions.
pub(super) fn shard_subscriptions(info: &Value) -> Option<usize> {
    let text = match info {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    text.split_whitespace().find_map(|field| field.strip_prefix("ssub="))?.parse().ok()
}

/// The slot ranges of a `CLUSTER SLOTS` reply, each with its master's
/// (host, port).
pub(super) fn slot_ranges(reply: &Value) -> Vec<(RangeInclusive<u16>, (String, u16))> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for range in ranges {
        let Value::Array(fields) = range else { continue };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            continue;
        };
        let host = match master.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => continue,
        };
        if let (Ok(start), Ok(end), Some(Value::Int(port))) =
            (u16::try_from(*start), u16::try_from(*end), master.get(1))
            && let Ok(port) = u16::try_from(*port)
        {
            out.push((start..=end, (host, port)));
        }
    }
    out
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

    fn range(start: i64, end: i64, port: i64) -> Value {
        Value::Array(vec![
            Value::Int(start),
            Value::Int(end),
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ]),
        ])
    }

    #[test]
    fn reads_cluster_slots_and_finds_gaps() {
        let reply =
            Value::Array(vec![range(0, 5460, 7001), range(10923, 16383, 7003), range(5461, 10000, 7002)]);
        let ranges = slot_ranges(&reply);
        assert_eq!(ranges.len(), 3);
        assert_eq!(ranges[1], (10923..=16383, ("127.0.0.1".to_string(), 7003)));
        let served: Vec<_> = ranges.into_iter().map(|(r, _)| r).collect();
        assert_eq!(unserved(served.clone()), vec![10001..=10922]);
        assert!(unserved(vec![0..=16383]).is_empty());
        assert_eq!(unserved(Vec::new()), vec![0..=16383]);
        assert_eq!(unserved(vec![1..=16382]), vec![0..=0, 16383..=16383]);
    }

    #[test]
    fn reads_the_links_sharded_subscriptions() {
        let info = Value::BulkString(
            b"id=7 addr=127.0.0.1:5 sub=0 psub=0 ssub=12 multi=-1 cmd=client|info\n".to_vec(),
        );
        assert_eq!(shard_subscriptions(&info), Some(12));
        assert_eq!(shard_subscriptions(&Value::BulkString(b"id=7 sub=0".to_vec())), None);
    }
}
