//! One link: a task that owns one pub/sub connection (to the single
//! Redis, or to one cluster master), keeps it connected with jittered
//! backoff, runs the SUBSCRIBE / UNSUBSCRIBE the manager asks for on it,
//! and reports what happened as [`Event`]s. What the connection is comes
//! from a [`Connector`]; the loop is the same for every backplane.
//!
//! A link knows nothing of topics or subscribers: the manager re-sends
//! what it carries when it reports `Up`. Commands carry the connection
//! generation they were meant for; one for an earlier connection is
//! dropped (the manager re-sends after `Up`).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use super::table::{LinkId, Outcome};
use crate::broker::BoxFuture;

const BACKOFF_START: Duration = Duration::from_millis(100);
/// Channels per SUBSCRIBE command when re-subscribing a large set.
pub(crate) const CHUNK: usize = 1000;

/// What a connection's reader noticed.
#[derive(Debug)]
pub(crate) enum Notice {
    /// The stream ended or the socket failed.
    Lost(String),
    /// The server ended a subscription (a sharded channel whose slot moved).
    Dropped(String),
}

/// A connection and the notices of its reader.
pub(crate) type Connected<C> = (C, mpsc::UnboundedReceiver<Notice>);

/// Opens and drives one kind of pub/sub connection.
pub(crate) trait Connector: Send + Sync + 'static {
    /// A live connection; dropping it closes it and stops its reader.
    type Conn: Send + 'static;

    /// Connects and starts the reader that delivers messages; notices
    /// arrive on the receiver.
    fn connect(&self) -> BoxFuture<'_, Result<Connected<Self::Conn>, String>>;

    /// Subscribes `channels`; one outcome per channel, in order.
    fn subscribe<'a>(
        &'a self,
        conn: &'a mut Self::Conn,
        channels: &'a [String],
    ) -> BoxFuture<'a, Vec<Outcome>>;

    /// Unsubscribes `channels`; an error means the connection is broken.
    fn unsubscribe<'a>(
        &'a self,
        conn: &'a mut Self::Conn,
        channels: &'a [String],
    ) -> BoxFuture<'a, Result<(), String>>;

    /// A round trip, so a peer that vanished without closing is noticed.
    fn ping<'a>(&'a self, conn: &'a mut Self::Conn) -> BoxFuture<'a, Result<(), String>>;

    /// Resolves when where `connect` goes changed since it last ran (a
    /// cluster shard's replica promoted), so a link waiting out its
    /// backoff tries the new node at once. Never, by default.
    fn changed(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::pending())
    }
}

/// What the manager asks of a link. `Reconnect`: drop connection `epoch`
/// and connect again, for it stopped delivering (the delivery probe did
/// not come back) though it looks connected.
#[derive(Debug)]
pub(crate) enum Command {
    Subscribe { epoch: u64, channels: Vec<String> },
    Unsubscribe { epoch: u64, channels: Vec<String> },
    Reconnect { epoch: u64 },
}

/// What a link tells the manager.
#[derive(Debug)]
pub(crate) enum Event {
    Up { link: LinkId, epoch: u64 },
    Down { link: LinkId },
    Answered { link: LinkId, epoch: u64, outcomes: Vec<(String, Outcome)> },
    Dropped { link: LinkId, epoch: u64, channel: String },
}

pub(crate) struct LinkSettings {
    pub(crate) link: LinkId,
    /// For logs: which connection or shard.
    pub(crate) label: String,
    pub(crate) timeout: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) shutdown: CancellationToken,
}

/// Why a connected session ended.
enum Ended {
    Stop,
    Lost(String),
}

/// Runs a link until shutdown or until the manager drops its command
/// sender (a master that left the slot map).
pub(crate) async fn run<C: Connector>(
    connector: C,
    settings: LinkSettings,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
) {
    let LinkSettings { link, label, timeout: limit, backoff_max, shutdown } = settings;
    let mut backoff = service::Backoff::new(BACKOFF_START, backoff_max);
    let mut epoch = 0u64;
    let mut outage_logged = false;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let attempt = match timeout(limit, connector.connect()).await {
            Ok(attempt) => attempt,
            Err(_) => Err("connect timed out".to_string()),
        };
        match attempt {
            Ok((mut conn, mut notices)) => {
                epoch += 1;
                if events.send(Event::Up { link, epoch }).is_err() {
                    return;
                }
                if outage_logged {
                    tracing::info!(shard = %label, "redis pub/sub link back");
                }
                backoff.reset();
                let session = Session { connector: &connector, link, epoch, limit, events: &events };
                let ended = session.serve(&mut conn, &mut commands, &mut notices, &shutdown).await;
                drop(conn);
                match ended {
                    Ended::Stop => return,
                    Ended::Lost(why) => {
                        let _ = events.send(Event::Down { link });
                        tracing::warn!(shard = %label, error = %why, "redis pub/sub link lost; reconnecting");
                        outage_logged = true;
                    }
                }
            }
            Err(why) => {
                // Once per outage at warn; every retry at debug.
                if !outage_logged {
                    tracing::warn!(shard = %label, error = %why, "redis pub/sub link unavailable; retrying with backoff");
                    outage_logged = true;
                } else {
                    tracing::debug!(shard = %label, error = %why, "redis pub/sub link still unavailable");
                }
            }
        }
        if !wait_offline(&mut commands, &shutdown, backoff.next_delay(), connector.changed()).await {
            return;
        }
    }
}

/// Sleeps out a backoff delay (cut short when the target `changed`),
/// dropping commands (all meant for a connection that is gone). False
/// when the link must stop.
async fn wait_offline(
    commands: &mut mpsc::UnboundedReceiver<Command>,
    shutdown: &CancellationToken,
    delay: Duration,
    changed: BoxFuture<'_, ()>,
) -> bool {
    let until = Instant::now() + delay;
    let mut changed = changed;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep_until(until) => return true,
            () = &mut changed => return true,
            cmd = commands.recv() => if cmd.is_none() { return false },
        }
    }
}

/// One connected session of a link.
struct Session<'a, C: Connector> {
    connector: &'a C,
    link: LinkId,
    epoch: u64,
    limit: Duration,
    events: &'a mpsc::UnboundedSender<Event>,
}

impl<C: Connector> Session<'_, C> {
    async fn serve(
        &self,
        conn: &mut C::Conn,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        notices: &mut mpsc::UnboundedReceiver<Notice>,
        shutdown: &CancellationToken,
    ) -> Ended {
        // PING as often as the timeout allows, so a peer that vanished
        // without closing the socket is noticed within two timeouts.
        let mut health = tokio::time::interval(self.limit.max(Duration::from_millis(500)));
        health.reset();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ended::Stop,
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return Ended::Stop };
                    if let Err(why) = self.run(conn, cmd).await {
                        return Ended::Lost(why);
                    }
                }
                notice = notices.recv() => match notice {
                    None => return Ended::Lost("pub/sub reader ended".into()),
                    Some(Notice::Lost(why)) => return Ended::Lost(why),
                    Some(Notice::Dropped(channel)) => {
                        let _ = self.events.send(Event::Dropped { link: self.link, epoch: self.epoch, channel });
                    }
                },
                _ = health.tick() => {
                    match timeout(self.limit, self.connector.ping(conn)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Ended::Lost(e),
                        Err(_) => return Ended::Lost("ping timed out".into()),
                    }
                }
            }
        }
    }

    /// Runs one command; an error means the connection is gone.
    async fn run(&self, conn: &mut C::Conn, cmd: Command) -> Result<(), String> {
        match cmd {
            Command::Subscribe { epoch, channels } if epoch == self.epoch => {
                for chunk in channels.chunks(CHUNK) {
                    let outcomes = match timeout(self.limit, self.connector.subscribe(conn, chunk)).await {
                        Ok(outcomes) => outcomes,
                        Err(_) => vec![Outcome::Lost; chunk.len()],
                    };
                    let lost = outcomes.contains(&Outcome::Lost);
                    let outcomes = chunk.iter().cloned().zip(outcomes).collect();
                    let _ = self.events.send(Event::Answered { link: self.link, epoch, outcomes });
                    if lost {
                        return Err("subscribe failed".into());
                    }
                }
                Ok(())
            }
            Command::Unsubscribe { epoch, channels } if epoch == self.epoch => {
                for chunk in channels.chunks(CHUNK) {
                    match timeout(self.limit, self.connector.unsubscribe(conn, chunk)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(_) => return Err("unsubscribe timed out".into()),
                    }
                }
                Ok(())
            }
            Command::Reconnect { epoch } if epoch == self.epoch => {
                Err("the delivery probe did not come back in time".into())
            }
            // For an earlier connection: the manager re-sends after `Up`.
            Command::Subscribe { .. } | Command::Unsubscribe { .. } | Command::Reconnect { .. } => Ok(()),
        }
    }
}
