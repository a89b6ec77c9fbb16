//! The subscription table: which channels this node wants from the
//! backplane, which link carries each, and where each stands on it.
//!
//! Pure bookkeeping, no I/O and no clock reads (callers pass `now`): the
//! manager feeds it what happened (a client subscribed or left, a link
//! came up or went down, a server confirmed, refused or dropped a
//! subscription, the slot map changed) and carries out the actions it
//! queues (SUBSCRIBE / UNSUBSCRIBE on a link, answers to waiting
//! subscribers). Both Redis backplanes run on it; only their links
//! differ.
//!
//! Invariants, per channel entry:
//! - `Recorded`: wanted but not on any server (its link is down, no link
//!   serves its slot, or a server dropped it). Sent at the next flush
//!   once its link is up; waiters on a link that is not up are answered
//!   [`Subscribed::Recorded`] (subscribed when it returns).
//! - `Pending`: SUBSCRIBE sent on connection `epoch` of its link; answers
//!   for another connection are stale and ignored.
//! - `Held`: confirmed on the link's current connection.
//!
//! A link going down turns its entries back into `Recorded`; a link
//! coming up gets every entry routed to it sent again, once.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::broker::{BrokerError, Subscribed};

/// Names one link (a pub/sub connection) for the life of the node.
pub(crate) type LinkId = usize;

/// What a server said to one channel of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Held,
    /// Refused for good (an ACL, a bad name): the subscribers hear why.
    Refused(String),
    /// The server does not own the channel's slot (`MOVED`,
    /// `CLUSTERDOWN`): routed again after a slot map refresh.
    Moved,
    /// The connection failed; a `Down` for the link follows.
    Lost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Recorded,
    /// `resync`: sent to restore a subscription the node had (after a
    /// link came back, a reroute, a drop), which readiness waits for; a
    /// first subscription does not hold readiness back.
    Pending {
        epoch: u64,
        resync: bool,
    },
    Held,
}

struct Entry<W> {
    /// The link that carries the channel; None while no link serves its slot.
    link: Option<LinkId>,
    status: Status,
    /// The last local subscriber left: unsubscribed at this time unless
    /// someone came back.
    release_at: Option<Instant>,
    /// Never released (the node's reply channel).
    pinned: bool,
    /// Subscribers waiting for the server's confirmation.
    waiters: Vec<W>,
}

/// What the driver must do.
#[derive(Debug)]
pub(crate) enum Action<W> {
    /// `resync`: it restores subscriptions the link lost (counted).
    Subscribe {
        link: LinkId,
        epoch: u64,
        channels: Vec<String>,
        resync: bool,
    },
    Unsubscribe {
        link: LinkId,
        epoch: u64,
        channels: Vec<String>,
    },
    Answer(W, Result<Subscribed, BrokerError>),
}

pub(crate) struct Table<W> {
    grace: Duration,
    entries: HashMap<String, Entry<W>>,
    /// Known links, with the connection generation when up.
    links: BTreeMap<LinkId, Option<u64>>,
    /// `Up`s of links not known yet: a link may connect before the
    /// layout that adds it is read (they come on different channels).
    early: BTreeMap<LinkId, u64>,
    actions: Vec<Action<W>>,
    /// A server said a slot is elsewhere: the slot map needs reading.
    refresh: bool,
}

impl<W> Table<W> {
    pub(crate) fn new(grace: Duration) -> Self {
        Table {
            grace,
            entries: HashMap::new(),
            links: BTreeMap::new(),
            early: BTreeMap::new(),
            actions: Vec::new(),
            refresh: false,
        }
    }

    /// A new link, down until it reports a connection (or up, if it
    /// reported one already).
    pub(crate) fn add_link(&mut self, link: LinkId) {
        let early = self.early.remove(&link);
        self.links.entry(link).or_insert(early);
    }

    /// Forgets a link; its entries wait for a route (call after
    /// [`Table::reroute`], which moves them elsewhere).
    pub(crate) fn remove_link(&mut self, link: LinkId) {
        self.links.remove(&link);
        for entry in self.entries.values_mut().filter(|e| e.link == Some(link)) {
            entry.link = None;
            entry.status = Status::Recorded;
        }
    }

    /// A client wants `channel` (which `route` would carry). `waiter` is
    /// answered once the server confirmed, or at once when the channel is
    /// held already or its link is away (recorded).
    pub(crate) fn subscribe(&mut self, channel: &str, route: Option<LinkId>, waiter: W) {
        let entry = self.entries.entry(channel.to_owned()).or_insert_with(|| Entry {
            link: route,
            status: Status::Recorded,
            release_at: None,
            pinned: false,
            waiters: Vec::new(),
        });
        entry.release_at = None;
        match entry.status {
            Status::Held => self.actions.push(Action::Answer(waiter, Ok(Subscribed::Confirmed))),
            _ => entry.waiters.push(waiter),
        }
    }

    /// Wants `channel` for the node's whole life (its reply channel).
    pub(crate) fn pin(&mut self, channel: &str, route: Option<LinkId>) {
        let entry = self.entries.entry(channel.to_owned()).or_insert_with(|| Entry {
            link: route,
            status: Status::Recorded,
            release_at: None,
            pinned: true,
            waiters: Vec::new(),
        });
        entry.pinned = true;
        entry.release_at = None;
    }

    /// `channel` is not wanted for life any more (a probe channel whose
    /// slot moved): it goes at the next expiry unless a subscriber wants it.
    pub(crate) fn unpin(&mut self, channel: &str, now: Instant) {
        if let Some(entry) = self.entries.get_mut(channel) {
            entry.pinned = false;
            entry.release_at = Some(now);
        }
    }

    /// `channel` lost its last local subscriber: it goes after the grace
    /// delay unless wanted again by then.
    pub(crate) fn release(&mut self, channel: &str, now: Instant) {
        if let Some(entry) = self.entries.get_mut(channel)
            && !entry.pinned
        {
            entry.release_at = Some(now + self.grace);
        }
    }

    /// When the next release is due.
    pub(crate) fn next_release(&self) -> Option<Instant> {
        self.entries.values().filter_map(|e| e.release_at).min()
    }

    /// Drops released channels whose grace ran out and that `wanted`
    /// (the hub) says still have nobody, unsubscribing those on a server.
    pub(crate) fn expire(&mut self, now: Instant, wanted: impl Fn(&str) -> bool) {
        let due: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.release_at.is_some_and(|at| at <= now))
            .map(|(c, _)| c.clone())
            .collect();
        let mut gone: BTreeMap<(LinkId, u64), Vec<String>> = BTreeMap::new();
        for channel in due {
            if wanted(&channel) {
                if let Some(entry) = self.entries.get_mut(&channel) {
                    entry.release_at = None;
                }
                continue;
            }
            let Some(entry) = self.entries.remove(&channel) else { continue };
            for waiter in entry.waiters {
                self.actions.push(Action::Answer(waiter, Ok(Subscribed::Recorded)));
            }
            let on_server = matches!(entry.status, Status::Pending { .. } | Status::Held);
            if let (true, Some(link)) = (on_server, entry.link)
                && let Some(Some(epoch)) = self.links.get(&link)
            {
                gone.entry((link, *epoch)).or_default().push(channel);
            }
        }
        for ((link, epoch), mut channels) in gone {
            channels.sort();
            self.actions.push(Action::Unsubscribe { link, epoch, channels });
        }
    }

    /// `link` connected (connection `epoch`): everything it carries is sent again.
    pub(crate) fn link_up(&mut self, link: LinkId, epoch: u64) {
        // Not known yet: kept for its layout. (A late `Up` of a link
        // already removed is kept too, and changes nothing: ids are not reused.)
        let Some(state) = self.links.get_mut(&link) else {
            self.early.insert(link, epoch);
            return;
        };
        *state = Some(epoch);
        for entry in self.entries.values_mut().filter(|e| e.link == Some(link)) {
            entry.status = Status::Recorded;
        }
    }

    /// `link` lost its connection: its channels are recorded until it is back.
    pub(crate) fn link_down(&mut self, link: LinkId) {
        self.early.remove(&link);
        if let Some(state) = self.links.get_mut(&link) {
            *state = None;
        }
        for entry in self.entries.values_mut().filter(|e| e.link == Some(link)) {
            entry.status = Status::Recorded;
        }
    }

    /// A link's answer to a SUBSCRIBE sent on connection `epoch`.
    pub(crate) fn answered(&mut self, link: LinkId, epoch: u64, outcomes: Vec<(String, Outcome)>) {
        if self.links.get(&link) != Some(&Some(epoch)) {
            return;
        }
        for (channel, outcome) in outcomes {
            let Some(entry) = self.entries.get_mut(&channel) else { continue };
            if entry.link != Some(link)
                || !matches!(entry.status, Status::Pending { epoch: e, .. } if e == epoch)
            {
                continue;
            }
            match outcome {
                Outcome::Held => {
                    entry.status = Status::Held;
                    for waiter in entry.waiters.drain(..) {
                        self.actions.push(Action::Answer(waiter, Ok(Subscribed::Confirmed)));
                    }
                }
                Outcome::Refused(why) if !entry.pinned => {
                    if let Some(entry) = self.entries.remove(&channel) {
                        for waiter in entry.waiters {
                            self.actions.push(Action::Answer(waiter, Err(BrokerError::Refused(why.clone()))));
                        }
                    }
                }
                // The reply channel is retried when the link reconnects.
                Outcome::Refused(_) => entry.status = Status::Recorded,
                Outcome::Moved => {
                    entry.link = None;
                    entry.status = Status::Recorded;
                    self.refresh = true;
                }
                Outcome::Lost => entry.status = Status::Recorded,
            }
        }
    }

    /// A server ended the subscription to `channel` on `link` (its node
    /// gave up the slot): it is sent again on the same link at once, and
    /// the slot map is read. A master that turned replica of the same
    /// shard (a planned failover) takes it back as a replica; one whose
    /// slot went to another shard answers MOVED, and the channel then
    /// waits for the slot map and is subscribed once on the new owner. A
    /// drop of a channel not wanted (the echo of our own UNSUBSCRIBE)
    /// changes nothing.
    pub(crate) fn dropped(&mut self, link: LinkId, epoch: u64, channel: &str) {
        if self.links.get(&link) != Some(&Some(epoch)) {
            return;
        }
        if let Some(entry) = self.entries.get_mut(channel)
            && entry.link == Some(link)
            && entry.status == Status::Held
        {
            entry.status = Status::Recorded;
            self.refresh = true;
        }
    }

    /// The slot map changed: each channel whose link is not `route`'s any
    /// more moves there (and is unsubscribed from the old one if that is
    /// still up).
    pub(crate) fn reroute(&mut self, route: impl Fn(&str) -> Option<LinkId>) {
        let mut leaving: BTreeMap<(LinkId, u64), Vec<String>> = BTreeMap::new();
        for (channel, entry) in self.entries.iter_mut() {
            let next = route(channel);
            if next == entry.link {
                continue;
            }
            if matches!(entry.status, Status::Pending { .. } | Status::Held)
                && let Some(old) = entry.link
                && let Some(Some(epoch)) = self.links.get(&old)
            {
                leaving.entry((old, *epoch)).or_default().push(channel.clone());
            }
            entry.link = next;
            entry.status = Status::Recorded;
        }
        for ((link, epoch), mut channels) in leaving {
            channels.sort();
            self.actions.push(Action::Unsubscribe { link, epoch, channels });
        }
    }

    /// Whether a reply said the slot map is stale (and forgets it).
    pub(crate) fn take_refresh(&mut self) -> bool {
        std::mem::take(&mut self.refresh)
    }

    /// Sends what is recorded on links that are up, answers waiters of
    /// links that are not, and hands over every queued action.
    pub(crate) fn take_actions(&mut self) -> Vec<Action<W>> {
        let mut sends: BTreeMap<(LinkId, u64), (Vec<String>, bool)> = BTreeMap::new();
        for (channel, entry) in self.entries.iter_mut().filter(|(_, e)| e.status == Status::Recorded) {
            match entry.link.and_then(|l| self.links.get(&l).copied().flatten().map(|epoch| (l, epoch))) {
                Some((link, epoch)) => {
                    let resync = entry.waiters.is_empty();
                    entry.status = Status::Pending { epoch, resync };
                    let send = sends.entry((link, epoch)).or_default();
                    send.0.push(channel.clone());
                    send.1 |= resync;
                }
                None => {
                    for waiter in entry.waiters.drain(..) {
                        self.actions.push(Action::Answer(waiter, Ok(Subscribed::Recorded)));
                    }
                }
            }
        }
        for ((link, epoch), (mut channels, resync)) in sends {
            channels.sort();
            self.actions.push(Action::Subscribe { link, epoch, channels, resync });
        }
        std::mem::take(&mut self.actions)
    }

    /// Up, and holding (or about to hold) everything it carried before.
    pub(crate) fn link_ready(&self, link: LinkId) -> bool {
        matches!(self.links.get(&link), Some(Some(_)))
            && !self.entries.values().any(|e| {
                e.link == Some(link)
                    && matches!(e.status, Status::Recorded | Status::Pending { resync: true, .. })
            })
    }

    /// `link`'s connection generation while it is up.
    pub(crate) fn epoch(&self, link: LinkId) -> Option<u64> {
        self.links.get(&link).copied().flatten()
    }

    /// Wanted channels that no link serves (an unserved slot).
    pub(crate) fn unrouted(&self) -> usize {
        self.entries.values().filter(|e| e.link.is_none()).count()
    }

    /// Channels wanted on `link`.
    pub(crate) fn carried(&self, link: LinkId) -> usize {
        self.entries.values().filter(|e| e.link == Some(link)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_millis(100);

    fn subscribes(actions: &[Action<u32>]) -> Vec<(LinkId, u64, Vec<String>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Subscribe { link, epoch, channels, .. } => Some((*link, *epoch, channels.clone())),
                _ => None,
            })
            .collect()
    }

    fn unsubscribes(actions: &[Action<u32>]) -> Vec<(LinkId, Vec<String>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Unsubscribe { link, channels, .. } => Some((*link, channels.clone())),
                _ => None,
            })
            .collect()
    }

    fn answers(actions: &[Action<u32>]) -> Vec<(u32, bool)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Answer(w, r) => Some((*w, r.is_ok())),
                _ => None,
            })
            .collect()
    }

    fn up_table(links: &[LinkId]) -> Table<u32> {
        let mut t = Table::new(GRACE);
        for &l in links {
            t.add_link(l);
            t.link_up(l, 1);
        }
        assert!(t.take_actions().is_empty());
        t
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_first_subscriber_sends_one_subscribe_and_waits_for_it() {
        let mut t = up_table(&[0]);
        t.subscribe("a", Some(0), 1);
        t.subscribe("a", Some(0), 2);
        let actions = t.take_actions();
        assert_eq!(subscribes(&actions), vec![(0, 1, names(&["a"]))]);
        assert!(answers(&actions).is_empty(), "nobody is answered before the server confirms");
        t.answered(0, 1, vec![("a".into(), Outcome::Held)]);
        assert_eq!(answers(&t.take_actions()), vec![(1, true), (2, true)]);
        // Held: a later subscriber is answered at once, nothing is sent.
        t.subscribe("a", Some(0), 3);
        let actions = t.take_actions();
        assert_eq!(answers(&actions), vec![(3, true)]);
        assert!(subscribes(&actions).is_empty());
        assert!(t.link_ready(0));
    }

    #[test]
    fn a_release_waits_the_grace_delay_and_asks_the_hub_again() {
        let mut t = up_table(&[0]);
        let now = Instant::now();
        t.subscribe("a", Some(0), 1);
        t.take_actions();
        t.answered(0, 1, vec![("a".into(), Outcome::Held)]);
        t.take_actions();
        t.release("a", now);
        assert_eq!(t.next_release(), Some(now + GRACE));
        t.expire(now + GRACE / 2, |_| false);
        assert!(t.take_actions().is_empty(), "not due yet");
        // Due, but the hub has a subscriber again: kept.
        t.expire(now + GRACE, |_| true);
        assert!(t.take_actions().is_empty());
        assert_eq!(t.next_release(), None);
        t.release("a", now + GRACE);
        t.expire(now + GRACE * 2, |_| false);
        assert_eq!(unsubscribes(&t.take_actions()), vec![(0, names(&["a"]))]);
        assert_eq!(t.carried(0), 0);
    }

    #[test]
    fn flapping_subscribe_and_release_never_reach_the_server() {
        let mut t = up_table(&[0]);
        let now = Instant::now();
        t.subscribe("a", Some(0), 1);
        t.take_actions();
        t.answered(0, 1, vec![("a".into(), Outcome::Held)]);
        t.take_actions();
        for i in 0..10u32 {
            t.release("a", now);
            t.subscribe("a", Some(0), 10 + i);
        }
        let actions = t.take_actions();
        assert!(subscribes(&actions).is_empty() && unsubscribes(&actions).is_empty());
        assert_eq!(answers(&actions).len(), 10);
        assert_eq!(t.next_release(), None, "the last subscribe cancelled the release");
        t.expire(now + GRACE * 3, |_| false);
        assert!(t.take_actions().is_empty());
        // A release of a channel never confirmed still unsubscribes it.
        t.subscribe("b", Some(0), 30);
        t.take_actions();
        t.release("b", now);
        t.expire(now + GRACE, |_| false);
        let actions = t.take_actions();
        assert_eq!(answers(&actions), vec![(30, true)]);
        assert_eq!(unsubscribes(&actions), vec![(0, names(&["b"]))]);
        // Its late confirmation changes nothing.
        t.answered(0, 1, vec![("b".into(), Outcome::Held)]);
        assert!(t.take_actions().is_empty());
    }

    #[test]
    fn a_lost_link_records_its_channels_and_subscribes_them_again_once_back() {
        let mut t = up_table(&[0, 1]);
        for (c, l) in [("a", 0), ("b", 0), ("c", 1)] {
            t.subscribe(c, Some(l), 0);
        }
        t.take_actions();
        t.answered(0, 1, vec![("a".into(), Outcome::Held), ("b".into(), Outcome::Held)]);
        t.answered(1, 1, vec![("c".into(), Outcome::Held)]);
        t.take_actions();
        t.link_down(0);
        assert!(!t.link_ready(0));
        assert!(t.link_ready(1), "the other link is not touched");
        // While it is down a new subscriber is recorded and answered.
        t.subscribe("d", Some(0), 7);
        let actions = t.take_actions();
        assert_eq!(answers(&actions), vec![(7, true)]);
        assert!(subscribes(&actions).is_empty());
        // A stale answer from the dead connection is ignored.
        t.answered(0, 1, vec![("a".into(), Outcome::Held)]);
        assert!(!t.link_ready(0));
        t.link_up(0, 2);
        let actions = t.take_actions();
        assert_eq!(subscribes(&actions), vec![(0, 2, names(&["a", "b", "d"]))]);
        assert!(matches!(actions[0], Action::Subscribe { resync: true, .. }));
        assert!(!t.link_ready(0), "not ready before the server confirmed");
        t.answered(
            0,
            2,
            vec![("a".into(), Outcome::Held), ("b".into(), Outcome::Held), ("d".into(), Outcome::Held)],
        );
        assert!(t.take_actions().is_empty());
        assert!(t.link_ready(0));
    }

    #[test]
    fn a_partial_failure_touches_only_the_failed_channels() {
        let mut t = up_table(&[0]);
        t.subscribe("ok", Some(0), 1);
        t.subscribe("acl", Some(0), 2);
        t.subscribe("moved", Some(0), 3);
        t.take_actions();
        t.answered(
            0,
            1,
            vec![
                ("ok".into(), Outcome::Held),
                ("acl".into(), Outcome::Refused("NOPERM".into())),
                ("moved".into(), Outcome::Moved),
            ],
        );
        let mut got = answers(&t.take_actions());
        got.sort();
        // Refused: told so and forgotten; moved: recorded until routed.
        assert_eq!(got, vec![(1, true), (2, false), (3, true)]);
        assert!(t.take_refresh(), "a MOVED asks for the slot map");
        assert!(!t.take_refresh());
        assert_eq!(t.carried(0), 1);
        assert_eq!(t.unrouted(), 1);
        t.add_link(5);
        t.link_up(5, 1);
        t.reroute(|c| Some(if c == "moved" { 5 } else { 0 }));
        assert_eq!(subscribes(&t.take_actions()), vec![(5, 1, names(&["moved"]))]);
        assert_eq!(t.unrouted(), 0);
    }

    #[test]
    fn a_slot_move_resubscribes_on_the_new_owner_once() {
        let mut t = up_table(&[0, 1]);
        t.pin("reply", Some(0));
        t.subscribe("a", Some(0), 1);
        t.subscribe("b", Some(0), 2);
        let actions = t.take_actions();
        assert_eq!(subscribes(&actions), vec![(0, 1, names(&["a", "b", "reply"]))]);
        t.answered(0, 1, ["a", "b", "reply"].iter().map(|c| (c.to_string(), Outcome::Held)).collect());
        t.take_actions();
        // The server gives up "a"'s slot: it says so for each channel.
        t.dropped(0, 1, "a");
        assert!(t.take_refresh());
        t.reroute(|c| Some(if c == "a" { 1 } else { 0 }));
        let actions = t.take_actions();
        assert_eq!(subscribes(&actions), vec![(1, 1, names(&["a"]))]);
        assert!(unsubscribes(&actions).is_empty(), "the old owner let it go already");
        // A failover: link 0's master is replaced by link 2.
        t.add_link(2);
        t.reroute(|c| Some(if c == "a" { 1 } else { 2 }));
        t.remove_link(0);
        let actions = t.take_actions();
        assert!(subscribes(&actions).is_empty(), "link 2 is not up yet");
        assert!(!t.link_ready(2));
        t.link_up(2, 1);
        assert_eq!(subscribes(&t.take_actions()), vec![(2, 1, names(&["b", "reply"]))]);
        // The pinned reply channel is never released.
        t.release("reply", Instant::now());
        assert_eq!(t.next_release(), None);
    }

    #[test]
    fn a_dropped_channel_is_sent_again_on_its_link_until_a_server_says_moved() {
        let mut t = up_table(&[0, 1]);
        t.subscribe("a", Some(0), 1);
        t.take_actions();
        t.answered(0, 1, vec![("a".into(), Outcome::Held)]);
        t.take_actions();
        t.dropped(0, 1, "a");
        assert!(t.take_refresh(), "the slot map is read");
        assert!(!t.link_ready(0), "not held until confirmed again");
        assert_eq!(subscribes(&t.take_actions()), vec![(0, 1, names(&["a"]))], "at once, same link");
        // A replica of the same shard now: it holds it again.
        t.answered(0, 1, vec![("a".into(), Outcome::Held)]);
        assert!(t.link_ready(0));
        // The slot went to another shard: MOVED, then the new route.
        t.dropped(0, 1, "a");
        t.take_actions();
        t.answered(0, 1, vec![("a".into(), Outcome::Moved)]);
        assert_eq!(t.unrouted(), 1);
        t.reroute(|_| Some(1));
        assert_eq!(subscribes(&t.take_actions()), vec![(1, 1, names(&["a"]))]);
    }

    #[test]
    fn a_link_that_connects_before_its_layout_is_read_is_up() {
        let mut t: Table<u32> = Table::new(GRACE);
        t.pin("reply", None);
        t.link_up(3, 1);
        t.add_link(3);
        t.reroute(|_| Some(3));
        assert_eq!(subscribes(&t.take_actions()), vec![(3, 1, names(&["reply"]))]);
        t.answered(3, 1, vec![("reply".into(), Outcome::Held)]);
        assert!(t.link_ready(3));
        // An early `Up` whose connection was lost before the layout: down.
        t.link_up(4, 1);
        t.link_down(4);
        t.add_link(4);
        assert_eq!(t.epoch(4), None);
    }

    #[test]
    fn an_unpinned_channel_goes_at_the_next_expiry() {
        let mut t = up_table(&[0]);
        let now = Instant::now();
        t.pin("probe", Some(0));
        t.take_actions();
        t.answered(0, 1, vec![("probe".into(), Outcome::Held)]);
        assert_eq!(t.epoch(0), Some(1));
        t.unpin("probe", now);
        assert_eq!(t.next_release(), Some(now));
        t.expire(now, |_| false);
        assert_eq!(unsubscribes(&t.take_actions()), vec![(0, names(&["probe"]))]);
        assert_eq!(t.carried(0), 0);
        t.link_down(0);
        assert_eq!(t.epoch(0), None);
    }
}
