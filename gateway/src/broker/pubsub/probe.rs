//! The delivery probe's bookkeeping: which probe channel each link
//! carries, when the next probe is due, and which probe did not come back
//! in time. Pure, no I/O and no clock reads (callers pass `now`); the
//! manager publishes what [`Probes::due`] hands out through the
//! backplane's command path and reconnects what [`Probes::expired`] names.
//!
//! A link can stay connected, answer PING and confirm SUBSCRIBE, and still
//! deliver nothing (a proxy or a server that drops pushes, a subscription
//! the server forgot): only a message that goes the whole way shows it.
//! So each link carries a channel of its own (routed onto it by the same
//! [`Route`](super::Route) as every channel), and the node publishes a
//! nonce on it like any message.
//!
//! A probe's bound starts when its publish is confirmed, not when it is
//! sent: Redis has queued the message for every subscriber by the time it
//! answers, so a slow command path cannot make a healthy link look dead.
//! A publish that fails is no verdict on the link (the caller counts it).
//!
//! Nor is a late probe on a link that keeps receiving: its messages come
//! in order, so a probe behind seconds of backlog (a node short of CPU,
//! a burst) is late without the link being dead, and reconnecting would
//! throw the whole backlog away (measured: at 1M deliveries/s asked, a
//! node 7 s behind its link lost 80 % that way). Such a probe's bound is
//! extended, up to [`EXTENSIONS`] times, for as long as the link's
//! readers received something since the bound began.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::table::LinkId;

/// Hash tags tried to find a channel a link carries: enough for a
/// cluster master that serves a single slot (1 in 16384).
const TAGS_TRIED: u64 = 1 << 18;

/// How many times a late probe's bound is extended while its link keeps
/// receiving: with the default 5 s bound, a link may be 30 s behind
/// before it is taken for broken (Redis' own pub/sub output buffer limit,
/// 32 MB by default, usually cuts such a subscriber first).
pub(crate) const EXTENSIONS: u32 = 5;

/// A link whose probe did not come back in time.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Late {
    pub(crate) link: LinkId,
    /// Times its bound was extended because the link kept receiving.
    pub(crate) extended: u32,
}

/// A probe to publish.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Probe {
    pub(crate) link: LinkId,
    pub(crate) channel: String,
    pub(crate) nonce: u64,
}

/// What the manager must change in the table after a new layout.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Channels {
    /// Probe channels no link uses any more (unpin them first).
    pub(crate) unpin: Vec<String>,
    /// New probe channels, with the link each is routed to.
    pub(crate) pin: Vec<(String, LinkId)>,
}

struct Outstanding {
    nonce: u64,
    /// When its publish was confirmed (or the bound last extended); the
    /// bound runs from here.
    confirmed: Option<Instant>,
    /// The link's received count at that moment.
    received: u64,
    extended: u32,
}

struct LinkProbe {
    channel: String,
    /// No new probe before this.
    next_at: Instant,
    outstanding: Option<Outstanding>,
}

pub(crate) struct Probes {
    /// `<prefix>@probe:<node_id>:`; a hash tag follows.
    base: String,
    interval: Duration,
    timeout: Duration,
    next_nonce: u64,
    links: BTreeMap<LinkId, LinkProbe>,
}

impl Probes {
    /// `first_nonce` should differ between starts, so a probe of an
    /// earlier run of the same node id is never taken for a current one.
    pub(crate) fn new(base: String, interval: Duration, timeout: Duration, first_nonce: u64) -> Self {
        Probes { base, interval, timeout, next_nonce: first_nonce, links: BTreeMap::new() }
    }

    /// The probe channels of node `node_id`: `@` cannot appear in a
    /// topic, so no topic's channel is one (as for the reply channel).
    pub(crate) fn base(prefix: &str, node_id: &str) -> String {
        format!("{prefix}@probe:{node_id}:")
    }

    /// Whether `channel` is one of this node's probe channels.
    pub(crate) fn is_probe(base: &str, channel: &str) -> bool {
        channel.starts_with(base)
    }

    /// The nonce a probe message carries.
    pub(crate) fn payload(nonce: u64) -> String {
        nonce.to_string()
    }

    /// The nonce of a received probe message (None: not one of ours).
    pub(crate) fn nonce_of(payload: &[u8]) -> Option<u64> {
        std::str::from_utf8(payload).ok()?.parse().ok()
    }

    /// The first channel `<base>{<n>}` that `route` puts on `link`: on a
    /// single Redis the tag only changes the hash, on a cluster the tag
    /// is what is hashed, so the channel lands in a slot of `link`'s master.
    fn channel_for(&self, link: LinkId, route: &dyn Fn(&str) -> Option<LinkId>) -> Option<String> {
        (0..TAGS_TRIED).map(|n| format!("{}{{{n}}}", self.base)).find(|c| route(c) == Some(link))
    }

    /// The links are now `links`, routed by `route`: a link whose probe
    /// channel is not routed onto it any more gets a new one (a slot move),
    /// a link that is gone leaves its channel.
    pub(crate) fn relayout(
        &mut self,
        links: &[LinkId],
        route: &dyn Fn(&str) -> Option<LinkId>,
        now: Instant,
    ) -> Channels {
        let mut changes = Channels::default();
        self.links.retain(|id, probe| {
            let keep = links.contains(id);
            if !keep {
                changes.unpin.push(probe.channel.clone());
            }
            keep
        });
        for &link in links {
            if let Some(probe) = self.links.get(&link)
                && route(&probe.channel) == Some(link)
            {
                continue;
            }
            let Some(channel) = self.channel_for(link, route) else {
                tracing::debug!(link, "no probe channel routes onto this link; it is not probed");
                if let Some(old) = self.links.remove(&link) {
                    changes.unpin.push(old.channel);
                }
                continue;
            };
            let fresh =
                LinkProbe { channel: channel.clone(), next_at: now + self.interval, outstanding: None };
            if let Some(old) = self.links.insert(link, fresh) {
                changes.unpin.push(old.channel);
            }
            changes.pin.push((channel, link));
        }
        // A channel handed from a removed link to a new one stays pinned.
        changes.unpin.retain(|c| !changes.pin.iter().any(|(p, _)| p == c));
        changes
    }

    /// Probes to publish now: one per `ready` link whose last probe came
    /// back (or was given up) and whose interval passed.
    pub(crate) fn due(&mut self, now: Instant, ready: impl Fn(LinkId) -> bool) -> Vec<Probe> {
        let mut probes = Vec::new();
        for (&link, probe) in self.links.iter_mut() {
            if probe.outstanding.is_some() || probe.next_at > now || !ready(link) {
                continue;
            }
            let nonce = self.next_nonce;
            self.next_nonce = self.next_nonce.wrapping_add(1);
            probe.outstanding = Some(Outstanding { nonce, confirmed: None, received: 0, extended: 0 });
            probe.next_at = now + self.interval;
            probes.push(Probe { link, channel: probe.channel.clone(), nonce });
        }
        probes
    }

    /// The publish of probe `nonce` on `link` was confirmed (`ok`) or
    /// failed; a failure gives the probe up without a verdict. `received`:
    /// the link's received count now.
    pub(crate) fn published(&mut self, link: LinkId, nonce: u64, ok: bool, now: Instant, received: u64) {
        let Some(probe) = self.links.get_mut(&link) else { return };
        if let Some(out) = probe.outstanding.as_mut().filter(|o| o.nonce == nonce) {
            if ok {
                if out.confirmed.is_none() {
                    out.confirmed = Some(now);
                    out.received = received;
                }
            } else {
                probe.outstanding = None;
            }
        }
    }

    /// A probe message came back on `channel`.
    pub(crate) fn returned(&mut self, channel: &str, nonce: u64) {
        for probe in self.links.values_mut().filter(|p| p.channel == channel) {
            if probe.outstanding.as_ref().is_some_and(|o| o.nonce == nonce) {
                probe.outstanding = None;
            }
        }
    }

    /// Links whose confirmed probe did not come back within the bound,
    /// extended while `received` (a link's received count) grew; each is
    /// probed again an interval from now (once reconnected).
    pub(crate) fn expired(&mut self, now: Instant, received: impl Fn(LinkId) -> u64) -> Vec<Late> {
        let mut late = Vec::new();
        for (&link, probe) in self.links.iter_mut() {
            let Some(out) = probe.outstanding.as_mut() else { continue };
            if out.confirmed.is_none_or(|at| at + self.timeout > now) {
                continue;
            }
            let count = received(link);
            if count > out.received && out.extended < EXTENSIONS {
                // Still receiving: behind, not dead.
                out.confirmed = Some(now);
                out.received = count;
                out.extended += 1;
                continue;
            }
            late.push(Late { link, extended: out.extended });
            probe.outstanding = None;
            probe.next_at = now + self.interval;
        }
        late
    }

    /// `link` lost its connection: a probe under way proves nothing now.
    pub(crate) fn link_down(&mut self, link: LinkId) {
        if let Some(probe) = self.links.get_mut(&link) {
            probe.outstanding = None;
        }
    }

    /// When [`Probes::due`] or [`Probes::expired`] next has something
    /// (links not `ready` wait for the event that makes them ready).
    pub(crate) fn next_wake(&self, ready: impl Fn(LinkId) -> bool) -> Option<Instant> {
        self.links
            .iter()
            .filter_map(|(&link, probe)| match &probe.outstanding {
                Some(out) => out.confirmed.map(|at| at + self.timeout),
                None => ready(link).then_some(probe.next_at),
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(100);
    const TIMEOUT: Duration = Duration::from_millis(300);

    fn by_hash(links: usize) -> impl Fn(&str) -> Option<LinkId> {
        move |c: &str| {
            use std::hash::{Hash, Hasher};
            let mut h = std::hash::DefaultHasher::new();
            c.hash(&mut h);
            Some((h.finish() % links as u64) as usize)
        }
    }

    fn probes() -> Probes {
        Probes::new(Probes::base("rt:", "n1"), INTERVAL, TIMEOUT, 7)
    }

    #[test]
    fn each_link_gets_a_channel_routed_onto_it() {
        let mut p = probes();
        let route = by_hash(4);
        let now = Instant::now();
        let changes = p.relayout(&[0, 1, 2, 3], &route, now);
        assert!(changes.unpin.is_empty());
        assert_eq!(changes.pin.len(), 4);
        for (channel, link) in &changes.pin {
            assert_eq!(route(channel), Some(*link), "{channel}");
            assert!(Probes::is_probe(&Probes::base("rt:", "n1"), channel));
            assert!(wire::topic::validate(channel.strip_prefix("rt:").unwrap()).is_err(), "never a topic");
        }
        // The same routes again: nothing changes.
        assert_eq!(p.relayout(&[0, 1, 2, 3], &route, now), Channels::default());
    }

    #[test]
    fn a_cluster_channel_lands_in_a_slot_of_its_master() {
        let mut p = probes();
        // Link 5 serves one slot only.
        let route = |c: &str| Some(if wire::keys::cluster_slot(c) == 9_000 { 5 } else { 6 });
        let changes = p.relayout(&[5, 6], &route, Instant::now());
        let five = changes.pin.iter().find(|(_, l)| *l == 5).unwrap();
        assert_eq!(wire::keys::cluster_slot(&five.0), 9_000);
        // The slot moves to link 6; link 5 now serves 100..=200.
        let moved = |c: &str| Some(if (100..=200).contains(&wire::keys::cluster_slot(c)) { 5 } else { 6 });
        let changes = p.relayout(&[5, 6], &moved, Instant::now());
        assert_eq!(changes.unpin, vec![five.0.clone()]);
        assert_eq!(changes.pin.len(), 1);
        assert!((100..=200).contains(&wire::keys::cluster_slot(&changes.pin[0].0)));
        // Link 5 is replaced by link 7 on the same slots: the channel is handed over.
        let replaced = |c: &str| Some(if (100..=200).contains(&wire::keys::cluster_slot(c)) { 7 } else { 6 });
        let changes = p.relayout(&[6, 7], &replaced, Instant::now());
        assert!(changes.unpin.is_empty(), "{changes:?}");
        assert_eq!(changes.pin.iter().map(|(_, l)| *l).collect::<Vec<_>>(), vec![7]);
    }

    #[test]
    fn a_probe_that_does_not_return_within_the_bound_names_its_link() {
        let mut p = probes();
        let t0 = Instant::now();
        p.relayout(&[0, 1], &by_hash(2), t0);
        assert!(p.due(t0, |_| true).is_empty(), "the first probe waits an interval");
        assert_eq!(p.next_wake(|_| true), Some(t0 + INTERVAL));
        assert_eq!(p.next_wake(|_| false), None, "links not ready are not probed");
        let t1 = t0 + INTERVAL;
        let sent = p.due(t1, |l| l == 0 || l == 1);
        assert_eq!(sent.iter().map(|s| (s.link, s.nonce)).collect::<Vec<_>>(), vec![(0, 7), (1, 8)]);
        assert!(p.due(t1 + INTERVAL * 5, |_| true).is_empty(), "one probe under way per link");
        // Not confirmed yet: no bound runs, however slow the publish.
        assert!(p.expired(t1 + TIMEOUT * 10, |_| 0).is_empty());
        assert_eq!(p.next_wake(|_| true), None);
        // Link 0's probe comes back even before its publish is confirmed.
        p.returned(&sent[0].channel, 7);
        p.published(0, 7, true, t1, 0);
        p.published(1, 8, true, t1, 0);
        assert_eq!(p.next_wake(|_| true), Some(t1 + INTERVAL));
        // A stale nonce does not count.
        p.returned(&sent[1].channel, 7);
        assert!(p.expired(t1 + TIMEOUT - Duration::from_millis(1), |_| 0).is_empty());
        assert_eq!(p.expired(t1 + TIMEOUT, |_| 0), vec![Late { link: 1, extended: 0 }]);
        assert!(p.expired(t1 + TIMEOUT * 2, |_| 0).is_empty(), "counted once");
        // Link 1 is probed again an interval later.
        let again = p.due(t1 + TIMEOUT + INTERVAL, |_| true);
        assert_eq!(again.iter().map(|s| s.link).collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn a_late_probe_on_a_link_that_keeps_receiving_waits_longer_but_not_forever() {
        let mut p = probes();
        let t0 = Instant::now();
        p.relayout(&[0], &by_hash(1), t0);
        let sent = p.due(t0 + INTERVAL, |_| true);
        let t1 = t0 + INTERVAL;
        p.published(0, sent[0].nonce, true, t1, 100);
        // Messages keep arriving behind a backlog: the bound is extended.
        let mut now = t1;
        for n in 1..=EXTENSIONS {
            now += TIMEOUT;
            assert!(p.expired(now, |_| 100 + u64::from(n)).is_empty(), "extension {n}");
            assert_eq!(p.next_wake(|_| true), Some(now + TIMEOUT));
        }
        now += TIMEOUT;
        assert_eq!(p.expired(now, |_| 1_000), vec![Late { link: 0, extended: EXTENSIONS }], "not forever");
        // A link that received nothing since the bound began: late at once.
        let sent = p.due(now + INTERVAL, |_| true);
        p.published(0, sent[0].nonce, true, now + INTERVAL, 1_000);
        assert_eq!(p.expired(now + INTERVAL + TIMEOUT, |_| 1_000), vec![Late { link: 0, extended: 0 }]);
        // The probe coming back ends the wait whatever the count.
        let later = now + INTERVAL * 2 + TIMEOUT;
        let sent = p.due(later, |_| true);
        p.published(0, sent[0].nonce, true, later, 1_000);
        assert!(p.expired(later + TIMEOUT, |_| 1_001).is_empty());
        p.returned(&sent[0].channel, sent[0].nonce);
        assert!(p.expired(later + TIMEOUT * 10, |_| 1_001).is_empty());
    }

    #[test]
    fn a_failed_publish_or_a_lost_link_is_no_verdict() {
        let mut p = probes();
        let t0 = Instant::now();
        p.relayout(&[0], &by_hash(1), t0);
        let sent = p.due(t0 + INTERVAL, |_| true);
        p.published(0, sent[0].nonce, false, t0 + INTERVAL, 0);
        assert!(p.expired(t0 + TIMEOUT * 10, |_| 0).is_empty());
        let sent = p.due(t0 + INTERVAL * 2, |_| true);
        p.published(0, sent[0].nonce, true, t0 + INTERVAL * 2, 0);
        p.link_down(0);
        assert!(p.expired(t0 + TIMEOUT * 10, |_| 0).is_empty());
        assert_eq!(Probes::nonce_of(Probes::payload(42).as_bytes()), Some(42));
        assert_eq!(Probes::nonce_of(b"x"), None);
    }
}
