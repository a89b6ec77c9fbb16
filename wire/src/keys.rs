//! Redis names every service agrees on, all under one configurable prefix
//! (`rt:` by default, as the contract says).
//!
//! Topic channels are `<prefix><topic>` (the contract). The rest are this
//! project's own: latest value of a topic, per-topic history stream and
//! sequence counter, the order request stream and per-node reply channels.
//!
//! Every per-topic key carries the topic's full channel name as its
//! `{hash tag}` (`rt:last:{rt:quotes.AAPL}`), so on a Redis Cluster the
//! key lives in the same slot as the channel: one script can update a
//! topic's keys and `SPUBLISH` its channel atomically. Channels hold no
//! braces (topics cannot, and the prefix is checked), so a channel hashes
//! as a whole, exactly like the tag.

/// The pub/sub channel a topic's messages travel on.
pub fn channel(prefix: &str, topic: &str) -> String {
    format!("{prefix}{topic}")
}

/// The topic a channel name carries, if it has our prefix.
pub fn topic_of_channel<'a>(prefix: &str, channel: &'a str) -> Option<&'a str> {
    channel.strip_prefix(prefix)
}

/// String key holding the latest envelope of a topic (quote snapshots).
pub fn last_value(prefix: &str, topic: &str) -> String {
    format!("{prefix}last:{{{prefix}{topic}}}")
}

/// Stream key holding a topic's recent history (order updates). Entry ids
/// are `0-<seq>`, so "everything after `since`" is `XRANGE key (0-<since> +`
/// and re-adding an update after a retry is refused, not duplicated.
pub fn history(prefix: &str, topic: &str) -> String {
    format!("{prefix}history:{{{prefix}{topic}}}")
}

/// Counter key for a topic's `seq` when publishers share it through Redis.
pub fn seq_counter(prefix: &str, topic: &str) -> String {
    format!("{prefix}seq:{{{prefix}{topic}}}")
}

/// Marker recording that order update `id` on `topic` was written (its
/// value is the update's `seq`), so a retried write is not repeated.
pub fn dedupe(prefix: &str, topic: &str, id: &str) -> String {
    format!("{prefix}dedupe:{{{prefix}{topic}}}:{id}")
}

/// Stream id of the history entry for `seq`.
pub fn history_id(seq: u64) -> String {
    format!("0-{seq}")
}

/// The `seq` a history stream id stands for.
pub fn seq_of_history_id(id: &str) -> Option<u64> {
    id.strip_prefix("0-")?.parse().ok()
}

/// Stream of order requests, read by the order service's consumer group.
pub fn order_requests(prefix: &str) -> String {
    format!("{prefix}orders:requests")
}

/// Channel on which one gateway node receives the replies to its requests.
/// `@` cannot appear in a topic, so no topic's channel can collide with it
/// (a client cannot subscribe to another node's replies, nor release ours).
pub fn node_replies(prefix: &str, node_id: &str) -> String {
    format!("{prefix}@replies:{node_id}")
}

/// Field of a history stream entry that holds the envelope JSON.
pub const HISTORY_FIELD: &str = "env";

/// Hash slots of a Redis Cluster.
pub const CLUSTER_SLOTS: u16 = 16384;

/// The Redis Cluster hash slot of `key` (or of a sharded channel): CRC16
/// (XMODEM) of the key's `{hash tag}` when it has a non-empty one, else
/// of the whole key, modulo 16384. Writers use it to keep each pipeline
/// within one slot; tests use it to spread topics over nodes.
pub fn cluster_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16_xmodem(tagged.unwrap_or(bytes)) % CLUSTER_SLOTS
}

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), the checksum
/// Redis Cluster hashes keys with.
fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(channel("rt:", "quotes.AAPL"), "rt:quotes.AAPL");
        assert_eq!(topic_of_channel("rt:", "rt:quotes.AAPL"), Some("quotes.AAPL"));
        assert_eq!(topic_of_channel("rt:", "xx:quotes.AAPL"), None);
        assert_eq!(history("rt:", "orders.a"), "rt:history:{rt:orders.a}");
        assert_eq!(last_value("rt:", "quotes.AAPL"), "rt:last:{rt:quotes.AAPL}");
        assert_eq!(seq_counter("rt:", "quotes.AAPL"), "rt:seq:{rt:quotes.AAPL}");
        assert_eq!(dedupe("rt:", "orders.a", "u1"), "rt:dedupe:{rt:orders.a}:u1");
        assert_eq!(seq_of_history_id(&history_id(42)), Some(42));
        assert_eq!(seq_of_history_id("5-1"), None);
        let replies = node_replies("rt:", "n1");
        let as_topic = topic_of_channel("rt:", &replies).unwrap();
        assert!(crate::topic::validate(as_topic).is_err(), "no topic maps to a reply channel");
    }

    #[test]
    fn cluster_slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(cluster_slot("foo"), 12182);
        assert_eq!(cluster_slot("bar"), 5061);
        assert_eq!(cluster_slot("rt:quotes.AAPL"), 13555);
        assert_eq!(cluster_slot("{user1000}.following"), cluster_slot("{user1000}.followers"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(cluster_slot("{}foo"), crc16_xmodem(b"{}foo") % CLUSTER_SLOTS);
        assert_eq!(cluster_slot("foo{bar"), crc16_xmodem(b"foo{bar") % CLUSTER_SLOTS);
    }

    #[test]
    fn every_topic_key_shares_its_channel_slot() {
        for (prefix, topic) in [("rt:", "quotes.AAPL"), ("t1a2:", "orders.acct-1"), ("x", "news")] {
            let slot = cluster_slot(&channel(prefix, topic));
            for key in [
                last_value(prefix, topic),
                history(prefix, topic),
                seq_counter(prefix, topic),
                dedupe(prefix, topic, "u-7"),
            ] {
                assert_eq!(cluster_slot(&key), slot, "{key} hashes like {prefix}{topic}");
            }
        }
    }
}
