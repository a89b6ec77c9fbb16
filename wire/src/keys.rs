//! Redis names every service agrees on, all under one configurable prefix
//! (`rt:` by default, as the contract says).
//!
//! Topic channels are `<prefix><topic>` (the contract). The rest are this
//! project's own: latest value of a topic, per-topic history stream and
//! sequence counter, the order request stream and per-node reply channels.

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
    format!("{prefix}last:{{{topic}}}")
}

/// Stream key holding a topic's recent history (order updates). Entry ids
/// are `0-<seq>`, so "everything after `since`" is `XRANGE key (0-<since> +`
/// and re-adding an update after a retry is refused, not duplicated.
pub fn history(prefix: &str, topic: &str) -> String {
    format!("{prefix}history:{{{topic}}}")
}

/// Counter key for a topic's `seq` when publishers share it through Redis.
pub fn seq_counter(prefix: &str, topic: &str) -> String {
    format!("{prefix}seq:{{{topic}}}")
}

/// Marker recording that order update `id` on `topic` was written (its
/// value is the update's `seq`), so a retried write is not repeated.
pub fn dedupe(prefix: &str, topic: &str, id: &str) -> String {
    format!("{prefix}dedupe:{{{topic}}}:{id}")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(channel("rt:", "quotes.AAPL"), "rt:quotes.AAPL");
        assert_eq!(topic_of_channel("rt:", "rt:quotes.AAPL"), Some("quotes.AAPL"));
        assert_eq!(topic_of_channel("rt:", "xx:quotes.AAPL"), None);
        assert_eq!(history("rt:", "orders.a"), "rt:history:{orders.a}");
        assert_eq!(seq_of_history_id(&history_id(42)), Some(42));
        assert_eq!(seq_of_history_id("5-1"), None);
        let replies = node_replies("rt:", "n1");
        let as_topic = topic_of_channel("rt:", &replies).unwrap();
        assert!(crate::topic::validate(as_topic).is_err(), "no topic maps to a reply channel");
    }
}
