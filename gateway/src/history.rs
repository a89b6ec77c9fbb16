//! A topic's history as both recoveries read it: the replay a client asks
//! for with `since` (`connection/recovery.rs`, one connection) and the
//! gap the node fills in an order topic's live stream (`inbound.rs`,
//! every local subscriber at once). One read, one parse, one `seq`
//! window, so both send the same updates in the same order; each update
//! then becomes its `message` frame through the one builder,
//! [`wire::envelope::Envelope::to_message_frame`].

use wire::Topic;
use wire::envelope::Envelope;

use crate::broker::{Broker, BrokerError};

/// Up to `limit` envelopes of one topic after a `seq`, oldest first.
pub(crate) struct History {
    topic: Topic,
    after: u64,
    limit: usize,
    raws: Vec<Vec<u8>>,
}

impl History {
    /// Reads up to `limit` updates of `topic` with `seq > after`.
    pub(crate) async fn read(
        broker: &dyn Broker,
        topic: &Topic,
        after: u64,
        limit: usize,
    ) -> Result<History, BrokerError> {
        let raws = broker.history_after(topic, after, limit).await?;
        Ok(Self::of(topic, after, limit, raws))
    }

    /// What a read returned (also for tests).
    pub(crate) fn of(topic: &Topic, after: u64, limit: usize, raws: Vec<Vec<u8>>) -> History {
        History { topic: topic.clone(), after, limit, raws }
    }

    /// Whether it holds everything after `after`: fewer than `limit` came back.
    pub(crate) fn complete(&self) -> bool {
        self.raws.len() < self.limit
    }

    /// The updates with `seq` below `before` (all of them with None),
    /// parsed; a malformed one is skipped.
    pub(crate) fn envelopes(&self, before: Option<u64>) -> impl Iterator<Item = Envelope<'_>> {
        let topic = self.topic.as_str();
        self.raws
            .iter()
            .filter_map(move |raw| Envelope::parse(raw, Some(topic)).ok())
            .filter(|env| env.seq > self.after)
            .take_while(move |env| before.is_none_or(|b| env.seq < b))
    }

    /// The first `seq` kept when it is not the one right after `after`:
    /// the history was trimmed past what was asked for.
    pub(crate) fn starts_late(&self) -> Option<u64> {
        let first = self.envelopes(None).next()?.seq;
        (first > self.after + 1).then_some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raws(seqs: &[u64]) -> Vec<Vec<u8>> {
        seqs.iter().map(|&s| wire::envelope::encode("orders.a", s, 1, "{}", None).into_bytes()).collect()
    }

    #[test]
    fn a_window_of_parsed_updates() {
        let topic = Topic::parse("orders.a").unwrap();
        let mut got = raws(&[3, 4, 5, 6]);
        got.insert(1, b"garbage".to_vec());
        let history = History::of(&topic, 2, 10, got);
        assert!(history.complete());
        assert_eq!(history.starts_late(), None);
        let seqs: Vec<u64> = history.envelopes(Some(6)).map(|e| e.seq).collect();
        assert_eq!(seqs, [3, 4, 5], "malformed skipped, stops before `before`");
        let trimmed = History::of(&topic, 0, 2, raws(&[4, 5]));
        assert!(!trimmed.complete(), "as many as asked for: more may follow");
        assert_eq!(trimmed.starts_late(), Some(4));
    }
}
