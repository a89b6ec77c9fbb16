//! The topics one connection holds and what it already sent on each (to
//! skip duplicates and notice a hole the node could not fill): the rule
//! that decides whether a frame fanned out to the connection goes to its
//! socket.
//!
//! Kept in the connection's [`Outbox`](super::Outbox), under its lock, not
//! in the connection's task: a frame the hub writes to the socket itself
//! ([`super`]'s direct path) is admitted by the same rule, at the same
//! place in the connection's sequence, as one the task takes from the
//! queue.
//!
//! Most connections hold one topic or a few: those are kept in a vector
//! that is scanned (one 40 B allocation for one topic, where a hash map
//! allocates a table of four buckets and its control bytes, ~190 B), and
//! under the node's copy of each name, not the one the client's command
//! parsed. Past [`SCAN_MAX`] topics a map takes over.

use std::collections::HashMap;

use wire::{Topic, TopicFamily};

use super::Delivery;

/// Topics kept in a scanned vector; more than this, in a map.
const SCAN_MAX: usize = 8;

/// Held topics and what was sent on each: scanned while few, a map past
/// [`SCAN_MAX`] (and back to a vector at half that, so a connection
/// hovering at the threshold does not rebuild one each time).
pub enum Held {
    Few(Vec<(Topic, Sent)>),
    /// Boxed, so the usual few topics do not carry a map's inline size
    /// (48 B against the vector's 24, in every connection's outbox).
    #[allow(clippy::box_collection, reason = "the box keeps Held as small as a Vec")]
    Many(Box<HashMap<Topic, Sent>>),
}

impl Default for Held {
    fn default() -> Self {
        Held::Few(Vec::new())
    }
}

/// Per-topic delivery state of one connection.
#[derive(Default)]
pub struct Sent {
    /// Highest `seq` a snapshot or replay sent: live frames up to it are
    /// duplicates and skipped (until the first newer one).
    floor: Option<u64>,
    /// The last `seq` sent (0: none yet), to notice gaps.
    last: u64,
}

/// What to do with a frame fanned out to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Skip,
    Send,
    /// Nothing was sent between `after` and this frame.
    Gap {
        after: u64,
    },
}

impl Held {
    pub(crate) fn len(&self) -> usize {
        match self {
            Held::Few(few) => few.len(),
            Held::Many(many) => many.len(),
        }
    }

    pub(crate) fn contains(&self, topic: &str) -> bool {
        match self {
            Held::Few(few) => few.iter().any(|(t, _)| t.as_str() == topic),
            Held::Many(many) => many.contains_key(topic),
        }
    }

    fn get_mut(&mut self, topic: &str) -> Option<&mut Sent> {
        match self {
            Held::Few(few) => few.iter_mut().find(|(t, _)| t.as_str() == topic).map(|(_, sent)| sent),
            Held::Many(many) => many.get_mut(topic),
        }
    }

    /// Holds `topic` afresh (replacing what was sent on it, if held).
    pub fn insert(&mut self, topic: Topic) {
        if let Some(sent) = self.get_mut(topic.as_str()) {
            *sent = Sent::default();
            return;
        }
        match self {
            Held::Few(few) if few.len() < SCAN_MAX => {
                if few.capacity() == 0 {
                    // One topic, one entry (a first push would make room for four).
                    few.reserve_exact(1);
                }
                few.push((topic, Sent::default()));
            }
            Held::Few(few) => {
                let mut many: HashMap<Topic, Sent> = std::mem::take(few).into_iter().collect();
                many.insert(topic, Sent::default());
                *self = Held::Many(Box::new(many));
            }
            Held::Many(many) => {
                many.insert(topic, Sent::default());
            }
        }
    }

    /// Stops holding `topic`; returns the name it was held under.
    pub(crate) fn remove(&mut self, topic: &str) -> Option<Topic> {
        match self {
            Held::Few(few) => {
                let i = few.iter().position(|(t, _)| t.as_str() == topic)?;
                let (topic, _) = few.swap_remove(i);
                if few.is_empty() {
                    // A connection that left every topic keeps no buffer.
                    *few = Vec::new();
                }
                Some(topic)
            }
            Held::Many(many) => {
                let (topic, _) = many.remove_entry(topic)?;
                if many.len() <= SCAN_MAX / 2 {
                    let few: Vec<_> = std::mem::take(&mut **many).into_iter().collect();
                    *self = Held::Few(few);
                }
                Some(topic)
            }
        }
    }

    /// Holds `topic` under `shared` (the same name), so the connection
    /// does not keep a copy of its own.
    pub(crate) fn share(&mut self, shared: Topic) {
        match self {
            Held::Few(few) => {
                if let Some((t, _)) = few.iter_mut().find(|(t, _)| *t == shared) {
                    *t = shared;
                }
            }
            Held::Many(many) => {
                if let Some(sent) = many.remove(shared.as_str()) {
                    many.insert(shared, sent);
                }
            }
        }
    }

    /// Recovery sent everything up to `seq` on `topic`.
    pub(crate) fn set_floor(&mut self, topic: &str, seq: u64) {
        if let Some(sent) = self.get_mut(topic) {
            sent.floor = Some(seq);
            sent.last = seq;
        }
    }

    /// What to do with a frame: skip it (topic no longer held, or already
    /// sent by recovery), send it, or first say that updates before it
    /// are missing (order topics, whose seq has no holes by construction:
    /// the node fills gaps before it fans out, so a hole left here means
    /// the history no longer had them).
    ///
    /// With `commit_gap` false a gap changes nothing and is only reported,
    /// so the frame can be admitted again, by the connection's task, which
    /// sends the notice.
    pub(crate) fn admit(&mut self, delivery: &Delivery, commit_gap: bool) -> Admit {
        let Some(sent) = self.get_mut(delivery.topic.as_str()) else {
            return Admit::Skip;
        };
        if let Some(floor) = sent.floor {
            if delivery.seq <= floor {
                return Admit::Skip;
            }
            // Dropped at the first newer frame, so a backend that restarts
            // its seq is not muted.
            sent.floor = None;
        }
        let after = sent.last;
        let gap = delivery.topic.family() == TopicFamily::Orders && after > 0 && delivery.seq > after + 1;
        if gap && !commit_gap {
            return Admit::Gap { after };
        }
        sent.last = delivery.seq;
        if gap { Admit::Gap { after } } else { Admit::Send }
    }

    pub(crate) fn into_topics(self) -> Vec<Topic> {
        match self {
            Held::Few(few) => few.into_iter().map(|(topic, _)| topic).collect(),
            Held::Many(many) => {
                let many: HashMap<Topic, Sent> = *many;
                many.into_keys().collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn topic(i: usize) -> Topic {
        Topic::parse(&format!("orders.acct-{i}")).unwrap()
    }

    fn delivery(topic: &Topic, seq: u64) -> Delivery {
        Delivery {
            topic: topic.clone(),
            seq,
            text: Bytes::new(),
            conflatable: false,
            fanned_out: None,
            direct: true,
        }
    }

    #[test]
    fn held_topics_move_between_vector_and_map_and_keep_what_was_sent() {
        let mut held = Held::default();
        for i in 0..=SCAN_MAX {
            held.insert(topic(i));
            held.get_mut(topic(i).as_str()).unwrap().last = i as u64;
        }
        assert!(matches!(held, Held::Many(_)), "past SCAN_MAX, a map");
        assert_eq!(held.len(), SCAN_MAX + 1);
        for i in 0..=SCAN_MAX {
            assert_eq!(
                held.get_mut(topic(i).as_str()).map(|s| s.last),
                Some(i as u64),
                "kept across the switch"
            );
        }
        for i in 0..=SCAN_MAX / 2 {
            assert_eq!(held.remove(topic(i).as_str()), Some(topic(i)));
        }
        assert!(matches!(held, Held::Few(_)), "back to a vector at half");
        assert!(held.remove(topic(0).as_str()).is_none(), "removed once");
        assert!(!held.contains(topic(0).as_str()) && held.contains(topic(SCAN_MAX).as_str()));
        assert_eq!(held.get_mut(topic(SCAN_MAX).as_str()).map(|s| s.last), Some(SCAN_MAX as u64));
        let mut left: Vec<String> = held.into_topics().iter().map(|t| t.to_string()).collect();
        left.sort();
        let mut want: Vec<String> = (SCAN_MAX / 2 + 1..=SCAN_MAX).map(|i| topic(i).to_string()).collect();
        want.sort();
        assert_eq!(left, want);
    }

    #[test]
    fn one_topic_is_one_entry_under_the_shared_name() {
        let mut held = Held::default();
        let parsed = topic(1);
        held.insert(parsed.clone());
        let Held::Few(few) = &held else { panic!("one topic is not a map") };
        assert_eq!(few.capacity(), 1, "no room for four made by a first push");
        let shared = topic(1);
        held.share(shared.clone());
        let Held::Few(few) = &held else { panic!("one topic is not a map") };
        assert!(std::ptr::eq(few[0].0.as_str(), shared.as_str()), "held under the node's copy");
        held.remove(parsed.as_str());
        let Held::Few(few) = &held else { panic!("no topics is not a map") };
        assert_eq!(few.capacity(), 0, "nothing kept once every topic is left");
    }

    #[test]
    fn floors_skip_replayed_frames_and_a_gap_is_only_committed_when_asked() {
        let mut held = Held::default();
        let t = topic(1);
        assert_eq!(held.admit(&delivery(&t, 1), true), Admit::Skip, "not held");
        held.insert(t.clone());
        held.set_floor(t.as_str(), 5);
        assert_eq!(held.admit(&delivery(&t, 5), true), Admit::Skip, "replayed already");
        assert_eq!(held.admit(&delivery(&t, 6), true), Admit::Send);
        assert_eq!(held.admit(&delivery(&t, 4), true), Admit::Send, "floor dropped at the first newer frame");
        held.set_floor(t.as_str(), 6);
        assert_eq!(held.admit(&delivery(&t, 9), false), Admit::Gap { after: 6 });
        assert_eq!(held.admit(&delivery(&t, 9), false), Admit::Gap { after: 6 }, "nothing committed");
        assert_eq!(held.admit(&delivery(&t, 9), true), Admit::Gap { after: 6 });
        assert_eq!(held.admit(&delivery(&t, 10), true), Admit::Send);
    }
}
