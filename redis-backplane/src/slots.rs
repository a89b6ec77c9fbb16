//! Reading a `CLUSTER SLOTS` reply: which master serves which slots.
//! The publisher PINGs every master it lists; the tests find the master
//! that owns a key.

use std::collections::HashSet;

use redis::Value;

/// One range of slots and the master serving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub host: String,
    pub port: u16,
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
    let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
        (fields.first(), fields.get(1), fields.get(2))
    else {
        return None;
    };
    let host = match master.first()? {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    let Some(Value::Int(port)) = master.get(1) else { return None };
    Some(SlotRange {
        start: u16::try_from(*start).ok()?,
        end: u16::try_from(*end).ok()?,
        host,
        port: u16::try_from(*port).ok()?,
    })
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
    fn finds_the_range_of_a_slot() {
        let reply = Value::Array(vec![range(0, 100, 7001), Value::Int(3), range(101, 16383, 7002)]);
        let ranges = slot_ranges(&reply);
        assert_eq!(ranges.len(), 2);
        let owner = ranges.iter().find(|r| r.contains(150)).map(|r| r.port);
        assert_eq!(owner, Some(7002));
    }
}
