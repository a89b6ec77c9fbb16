//! The subscription manager both Redis backplanes share: one task owns
//! the [`table::Table`] of channels this node wants, turns client
//! subscribes and releases into SUBSCRIBE / UNSUBSCRIBE on the right
//! [`link`], and follows links as they come and go.
//!
//! The backplane decides only what a link is and which link carries a
//! channel (a [`Layout`]): the single Redis spreads channels over
//! `pubsub_connections` links by hash, the cluster routes each channel to
//! the link of the master owning its slot and sends a new layout when the
//! slot map changes. A link's failure touches only the channels it
//! carries; the others keep flowing.
//!
//! Readiness: every link up with all it carried before re-subscribed, and
//! every wanted channel routed. Which links are not is published in
//! [`Health`] for `/readyz` and for commands that fail fast.
//!
//! The delivery probe ([`probe`]): each link also carries a probe channel
//! of this node, on which the manager periodically publishes a nonce
//! through the backplane's command path; a link whose probe does not come
//! back within `probe_timeout_ms` of the publish is told to reconnect (it
//! is down, so not ready, until it has re-subscribed everything) and the
//! event is counted per link.

pub(crate) mod link;
pub(crate) mod probe;
pub(crate) mod table;

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wire::{Topic, keys};

use super::{BoxFuture, BrokerError, Sink, Subscribed, Wiring};
use crate::metrics::{Metrics, ShardLabel};
use link::{Command, Event};
use probe::Probes;
use table::{Action, LinkId, Table};

/// Requests gathered into one batch.
const BATCH: usize = 512;

/// Which link carries a channel (None: no link serves its slot).
pub(crate) type Route = Box<dyn Fn(&str) -> Option<LinkId> + Send + Sync>;

/// One link as the manager knows it.
pub(crate) struct LinkSpec {
    pub(crate) id: LinkId,
    /// Metrics label and log name (bounded, see [`ShardLabel`]).
    pub(crate) label: String,
    /// The cluster slots it serves (empty on a single Redis).
    pub(crate) slots: Vec<RangeInclusive<u16>>,
    /// Dropping it stops the link's task.
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    /// Messages its readers received (any channel), for the probe's verdict.
    pub(crate) received: Arc<AtomicU64>,
}

/// How channels map onto links, and which links appeared or went.
pub(crate) struct Layout {
    pub(crate) route: Route,
    pub(crate) added: Vec<LinkSpec>,
    pub(crate) removed: Vec<LinkId>,
    /// The slots each kept link serves now (a slot move).
    pub(crate) slots: Vec<(LinkId, Vec<RangeInclusive<u16>>)>,
    /// Every slot has a master (always true on a single Redis).
    pub(crate) complete: bool,
}

/// What `backplane_up` counts.
#[derive(Clone, Copy)]
pub(crate) enum UpGauge {
    /// Links up (single Redis: one per pub/sub connection).
    Links,
    /// 1 when the whole backplane is up (Redis Cluster).
    Whole,
}

/// The backplane's state as the manager last saw it.
#[derive(Default)]
pub(crate) struct Health {
    ready: AtomicBool,
    /// Labels of the links not up, for `/readyz`.
    down: RwLock<Vec<String>>,
    /// Slots whose link is not up (cluster), so a command for them fails fast.
    down_slots: RwLock<Vec<RangeInclusive<u16>>>,
}

impl Health {
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub(crate) fn down(&self) -> Vec<String> {
        self.down.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Whether `slot`'s master is known to be away.
    pub(crate) fn slot_down(&self, slot: u16) -> bool {
        self.down_slots.read().unwrap_or_else(PoisonError::into_inner).iter().any(|r| r.contains(&slot))
    }
}

/// Publishes a probe message (channel, payload) through the backplane's
/// command path, as real messages are published.
pub(crate) type ProbePublish =
    Arc<dyn Fn(String, String) -> BoxFuture<'static, Result<(), BrokerError>> + Send + Sync>;

/// The delivery probe's settings.
pub(crate) struct ProbeSettings {
    /// Between probes of one link; zero turns the probe off.
    pub(crate) interval: Duration,
    /// A probe not back this long after its publish was confirmed
    /// reconnects its link.
    pub(crate) timeout: Duration,
    /// Set by the backplane; None: no probe.
    pub(crate) publish: Option<ProbePublish>,
}

/// What the probe's publishes and the readers report to the manager.
enum ProbeEvent {
    Back { channel: String, nonce: u64 },
    Published { link: LinkId, nonce: u64, result: Result<(), BrokerError> },
}

/// Given to the readers: takes the messages of this node's probe
/// channels before they reach the hub.
#[derive(Clone)]
pub(crate) struct ProbeReturns {
    base: Arc<str>,
    events: mpsc::UnboundedSender<ProbeEvent>,
}

impl ProbeReturns {
    /// Whether `channel` is one of this node's probe channels.
    pub(crate) fn is_probe(&self, channel: &str) -> bool {
        Probes::is_probe(&self.base, channel)
    }

    /// True when `channel` is one of this node's probe channels: its
    /// message went to the manager and is not for the hub.
    pub(crate) fn take(&self, channel: &str, payload: &[u8]) -> bool {
        if !self.is_probe(channel) {
            return false;
        }
        if let Some(nonce) = Probes::nonce_of(payload) {
            // Fails only once the manager stopped at shutdown.
            let _ = self.events.send(ProbeEvent::Back { channel: channel.to_owned(), nonce });
        }
        true
    }
}

pub(crate) struct ManagerSettings {
    /// Asked whether a released topic is wanted again when its grace ends.
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) prefix: String,
    /// This node's reply channel: wanted from the start, never released.
    pub(crate) reply_channel: String,
    /// The start of this node's probe channel names.
    pub(crate) probe_base: String,
    pub(crate) probe: ProbeSettings,
    pub(crate) grace: Duration,
    pub(crate) up_gauge: UpGauge,
    /// Asks for a slot map refresh (cluster); capacity 1, so asks coalesce.
    pub(crate) refresh: Option<mpsc::Sender<()>>,
    pub(crate) shutdown: CancellationToken,
}

impl ManagerSettings {
    /// A node's settings from its config: one gauge count per link, no
    /// slot map to refresh (the cluster sets both).
    pub(crate) fn new(config: &crate::config::Config, wiring: &Wiring<'_>) -> Self {
        ManagerSettings {
            sink: Arc::clone(&wiring.sink),
            metrics: Arc::clone(&wiring.metrics),
            prefix: config.channel_prefix.clone(),
            reply_channel: keys::node_replies(&config.channel_prefix, wiring.node_id),
            probe_base: Probes::base(&config.channel_prefix, wiring.node_id),
            probe: ProbeSettings {
                interval: config.probe_interval(),
                timeout: config.probe_timeout(),
                publish: None,
            },
            grace: config.unsubscribe_grace(),
            up_gauge: UpGauge::Links,
            refresh: None,
            shutdown: wiring.shutdown.clone(),
        }
    }
}

enum Request {
    Subscribe(Topic, oneshot::Sender<Result<Subscribed, BrokerError>>),
    Release(Topic),
}

/// Handle to the manager task.
pub(crate) struct PubSub {
    requests: mpsc::UnboundedSender<Request>,
    health: Arc<Health>,
}

/// Where links and the topology report to the manager.
pub(crate) struct Inputs {
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) layouts: mpsc::UnboundedSender<Layout>,
    /// For the readers' [`Delivery`](super::redis_pubsub::Delivery).
    pub(crate) probes: ProbeReturns,
}

impl PubSub {
    /// Starts the manager with no link; links arrive in layouts.
    pub(crate) fn start(settings: ManagerSettings) -> (PubSub, Inputs) {
        Self::start_with(settings, Arc::default())
    }

    /// Starts the manager publishing into `health` (made beforehand by a
    /// backplane whose commands check it).
    pub(crate) fn start_with(settings: ManagerSettings, health: Arc<Health>) -> (PubSub, Inputs) {
        // Unbounded: `release` is called from synchronous cleanup that
        // cannot wait, and each request is one client action already
        // bounded by the connection limits.
        let (requests, requests_rx) = mpsc::unbounded_channel();
        // Unbounded: a link must never wait on the manager while it
        // holds a connection; it sends a handful of events per command.
        let (events, events_rx) = mpsc::unbounded_channel();
        let (layouts, layouts_rx) = mpsc::unbounded_channel();
        // Unbounded: readers must never wait; one event per probe sent.
        let (probe_events, probe_events_rx) = mpsc::unbounded_channel();
        let mut table = Table::new(settings.grace);
        table.pin(&settings.reply_channel, None);
        let probes = match &settings.probe {
            ProbeSettings { interval, timeout, publish: Some(_) } if !interval.is_zero() => Some(
                Probes::new(settings.probe_base.clone(), *interval, *timeout, rand::random::<u64>() >> 1),
            ),
            _ => None,
        };
        let returns =
            ProbeReturns { base: settings.probe_base.as_str().into(), events: probe_events.clone() };
        let manager = Manager {
            table,
            links: HashMap::new(),
            route: Box::new(|_| None),
            complete: false,
            health: Arc::clone(&health),
            probes,
            probe_events,
            settings,
        };
        tokio::spawn(manager.run(requests_rx, events_rx, layouts_rx, probe_events_rx));
        (PubSub { requests, health }, Inputs { events, layouts, probes: returns })
    }

    /// Resolves once the server confirmed the subscription (or, while its
    /// link is away, once the topic is recorded for its return).
    pub(crate) async fn subscribe(&self, topic: &Topic) -> Result<Subscribed, BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Subscribe(topic.clone(), tx))
            .map_err(|_| BrokerError::Unavailable("backplane stopped".into()))?;
        rx.await.map_err(|_| BrokerError::Unavailable("backplane stopped".into()))?
    }

    pub(crate) fn release(&self, topic: &Topic) {
        // Fails only once the manager stopped at shutdown; nothing to release then.
        let _ = self.requests.send(Request::Release(topic.clone()));
    }

    pub(crate) fn health(&self) -> &Arc<Health> {
        &self.health
    }
}

/// What the manager keeps of one link.
struct LinkInfo {
    label: String,
    slots: Vec<RangeInclusive<u16>>,
    commands: mpsc::UnboundedSender<Command>,
    received: Arc<AtomicU64>,
    ready: bool,
    /// It was ready once: being ready again counts as a reconnect.
    was_ready: bool,
}

impl LinkInfo {
    /// Messages its readers received so far.
    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

struct Manager {
    table: Table<oneshot::Sender<Result<Subscribed, BrokerError>>>,
    links: HashMap<LinkId, LinkInfo>,
    route: Route,
    complete: bool,
    health: Arc<Health>,
    /// The delivery probe's state; None when it is off.
    probes: Option<Probes>,
    /// Where a probe's publish reports back.
    probe_events: mpsc::UnboundedSender<ProbeEvent>,
    settings: ManagerSettings,
}

impl Manager {
    async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<Request>,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut layouts: mpsc::UnboundedReceiver<Layout>,
        mut probe_events: mpsc::UnboundedReceiver<ProbeEvent>,
    ) {
        let shutdown = self.settings.shutdown.clone();
        // A single Redis sends its one layout and drops the sender.
        let mut layouts_open = true;
        loop {
            let next_release = self.table.next_release();
            let links = &self.links;
            let next_probe =
                self.probes.as_ref().and_then(|p| p.next_wake(|l| links.get(&l).is_some_and(|i| i.ready)));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                request = requests.recv() => {
                    let Some(request) = request else { break };
                    self.request(request);
                    for _ in 1..BATCH {
                        match requests.try_recv() {
                            Ok(request) => self.request(request),
                            Err(_) => break,
                        }
                    }
                }
                event = events.recv() => {
                    let Some(event) = event else { break };
                    self.event(event);
                    for _ in 1..BATCH {
                        match events.try_recv() {
                            Ok(event) => self.event(event),
                            Err(_) => break,
                        }
                    }
                }
                layout = layouts.recv(), if layouts_open => match layout {
                    Some(layout) => self.layout(layout),
                    None => layouts_open = false,
                },
                // Never closed: the manager holds a sender.
                Some(event) = probe_events.recv() => self.probe_event(event),
                _ = super::sleep_until_opt(next_probe) => self.probe(Instant::now()),
                _ = super::sleep_until_opt(next_release) => {
                    let sink = &self.settings.sink;
                    let prefix = self.settings.prefix.as_str();
                    self.table.expire(Instant::now(), |channel| {
                        keys::topic_of_channel(prefix, channel).is_some_and(|t| sink.wanted(t))
                    });
                }
            }
            self.settle();
        }
        self.health.ready.store(false, Ordering::Relaxed);
    }

    fn request(&mut self, request: Request) {
        match request {
            Request::Subscribe(topic, reply) => {
                let channel = keys::channel(&self.settings.prefix, topic.as_str());
                let route = (self.route)(&channel);
                self.table.subscribe(&channel, route, reply);
            }
            Request::Release(topic) => {
                self.table.release(&keys::channel(&self.settings.prefix, topic.as_str()), Instant::now());
            }
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Up { link, epoch } => self.table.link_up(link, epoch),
            Event::Down { link } => {
                self.table.link_down(link);
                if let Some(probes) = self.probes.as_mut() {
                    probes.link_down(link);
                }
                if let Some(info) = self.links.get(&link) {
                    self.settings.metrics.backplane_shard_losses.get_or_create(&shard(&info.label)).inc();
                }
                self.ask_refresh();
            }
            Event::Answered { link, epoch, outcomes } => self.table.answered(link, epoch, outcomes),
            Event::Dropped { link, epoch, channel } => self.table.dropped(link, epoch, &channel),
        }
    }

    /// A new slot map: links added first, channels moved, links gone last.
    fn layout(&mut self, layout: Layout) {
        for spec in layout.added {
            self.table.add_link(spec.id);
            self.links.insert(
                spec.id,
                LinkInfo {
                    label: spec.label,
                    slots: spec.slots,
                    commands: spec.commands,
                    received: spec.received,
                    ready: false,
                    was_ready: false,
                },
            );
        }
        for (id, slots) in layout.slots {
            if let Some(info) = self.links.get_mut(&id) {
                info.slots = slots;
            }
        }
        self.route = layout.route;
        self.complete = layout.complete;
        self.table.reroute(&self.route);
        for id in layout.removed {
            self.table.remove_link(id);
            if let Some(info) = self.links.remove(&id) {
                self.settings.metrics.backplane_shard_up.get_or_create(&shard(&info.label)).set(0);
            }
        }
        if let Some(probes) = self.probes.as_mut() {
            let now = Instant::now();
            let ids: Vec<LinkId> = self.links.keys().copied().collect();
            let channels = probes.relayout(&ids, &*self.route, now);
            for channel in channels.unpin {
                self.table.unpin(&channel, now);
            }
            for (channel, link) in channels.pin {
                self.table.pin(&channel, Some(link));
                if let Some(info) = self.links.get(&link) {
                    // Shown from the start, so a dashboard's rate() sees the first.
                    let _ = self.settings.metrics.backplane_probe_failures.get_or_create(&shard(&info.label));
                }
            }
        }
    }

    /// Reconnects the links whose probe is late and publishes the probes due.
    fn probe(&mut self, now: Instant) {
        let Some(probes) = self.probes.as_mut() else { return };
        let links = &self.links;
        for late in probes.expired(now, |l| links.get(&l).map_or(0, LinkInfo::received)) {
            let Some(info) = self.links.get(&late.link) else { continue };
            self.settings.metrics.backplane_probe_failures.get_or_create(&shard(&info.label)).inc();
            let waited_ms = self.settings.probe.timeout.as_millis() as u64 * u64::from(late.extended + 1);
            if late.extended == 0 {
                tracing::warn!(
                    shard = %info.label,
                    waited_ms,
                    "redis pub/sub link delivers nothing (its delivery probe did not come back); reconnecting it"
                );
            } else {
                tracing::warn!(
                    shard = %info.label,
                    waited_ms,
                    "redis pub/sub link still receives but its delivery probe did not come back: \
                     too far behind, or its probe channel is lost; reconnecting it"
                );
            }
            if let Some(epoch) = self.table.epoch(late.link) {
                // Fails only when the link stopped; its removal follows.
                let _ = info.commands.send(Command::Reconnect { epoch });
            }
        }
        let Some(publish) = self.settings.probe.publish.as_ref() else { return };
        let links = &self.links;
        for sent in probes.due(now, |l| links.get(&l).is_some_and(|i| i.ready)) {
            let publish = Arc::clone(publish);
            let events = self.probe_events.clone();
            // Bounded by the backplane's command timeout.
            tokio::spawn(async move {
                let result = publish(sent.channel, Probes::payload(sent.nonce)).await;
                let _ = events.send(ProbeEvent::Published { link: sent.link, nonce: sent.nonce, result });
            });
        }
    }

    fn probe_event(&mut self, event: ProbeEvent) {
        let Some(probes) = self.probes.as_mut() else { return };
        match event {
            ProbeEvent::Back { channel, nonce } => probes.returned(&channel, nonce),
            ProbeEvent::Published { link, nonce, result } => {
                if let Err(e) = &result
                    && let Some(info) = self.links.get(&link)
                {
                    // The command path's trouble, not the link's: no verdict.
                    self.settings.metrics.backplane_probe_errors.get_or_create(&shard(&info.label)).inc();
                    tracing::debug!(shard = %info.label, error = %e, "could not publish a delivery probe");
                }
                let received = self.links.get(&link).map_or(0, LinkInfo::received);
                probes.published(link, nonce, result.is_ok(), Instant::now(), received);
            }
        }
    }

    fn ask_refresh(&self) {
        if let Some(refresh) = &self.settings.refresh {
            // Full: a refresh is asked for already.
            let _ = refresh.try_send(());
        }
    }

    /// Carries out what the table decided and publishes readiness.
    fn settle(&mut self) {
        if self.table.take_refresh() {
            self.ask_refresh();
        }
        for action in self.table.take_actions() {
            match action {
                Action::Subscribe { link, epoch, channels, resync } => {
                    if let Some(info) = self.links.get(&link) {
                        if resync {
                            self.settings
                                .metrics
                                .backplane_shard_resubscribes
                                .get_or_create(&shard(&info.label))
                                .inc();
                        }
                        // Fails only when the link stopped; its removal follows.
                        let _ = info.commands.send(Command::Subscribe { epoch, channels });
                    }
                }
                Action::Unsubscribe { link, epoch, channels } => {
                    if let Some(info) = self.links.get(&link) {
                        let _ = info.commands.send(Command::Unsubscribe { epoch, channels });
                    }
                }
                Action::Answer(waiter, result) => {
                    // The subscriber may have gone meanwhile.
                    let _ = waiter.send(result);
                }
            }
        }
        self.publish_health();
    }

    fn publish_health(&mut self) {
        let metrics = &self.settings.metrics;
        let mut down = Vec::new();
        let mut down_slots = Vec::new();
        let mut ready_links = 0i64;
        for (&id, info) in self.links.iter_mut() {
            let ready = self.table.link_ready(id);
            if ready != info.ready {
                info.ready = ready;
                metrics.backplane_shard_up.get_or_create(&shard(&info.label)).set(i64::from(ready));
                if ready && info.was_ready {
                    metrics.backplane_reconnects.inc();
                    tracing::info!(
                        shard = %info.label,
                        topics = self.table.carried(id),
                        "redis backplane shard back; topics re-subscribed"
                    );
                } else if ready {
                    tracing::info!(shard = %info.label, "redis backplane shard connected");
                }
                info.was_ready |= ready;
            }
            if ready {
                ready_links += 1;
            } else {
                down.push(info.label.clone());
                down_slots.extend(info.slots.iter().cloned());
            }
        }
        down.sort();
        let whole = self.complete && !self.links.is_empty() && down.is_empty() && self.table.unrouted() == 0;
        if !self.complete {
            down.push("unserved slots".into());
        }
        let gauge = match self.settings.up_gauge {
            UpGauge::Links => ready_links,
            UpGauge::Whole => i64::from(whole),
        };
        metrics.backplane_up.set(gauge);
        self.health.ready.store(whole, Ordering::Relaxed);
        *self.health.down.write().unwrap_or_else(PoisonError::into_inner) = down;
        *self.health.down_slots.write().unwrap_or_else(PoisonError::into_inner) = down_slots;
    }
}

fn shard(label: &str) -> ShardLabel {
    ShardLabel { shard: label.to_owned() }
}
