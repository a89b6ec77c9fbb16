//! One run, phase by phase: ramp (open connections, wait until every
//! subscription is answered), measure (publish for `--duration` when
//! closed-loop), drain (wait for messages in flight), stop (close every
//! socket) and summarise. Every phase is bounded, so a run always ends.
//!
//! The connections live in a [`Fleet`]: a swarm in this process, or
//! worker processes each running one.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::publish::{PublishError, Publisher};
use crate::report::{Gathered, StatusLine, Summary, Timing, expected_deliveries};
use crate::settings::Settings;
use crate::stats::{Counters, ErrorTally};
use crate::swarm::{GoSnapshot, Swarm, SwarmError, SwarmResult};
use crate::target::TargetError;
use crate::workers::{WorkerError, Workers};

/// How often the coordinator looks at the fleet between status lines.
const POLL: Duration = Duration::from_millis(50);
const STATUS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("{0}")]
    Token(String),
    #[error("no connection established to {targets}; {attempts} attempts failed: {reasons}")]
    Unreachable { targets: String, attempts: u64, reasons: String },
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Workers(#[from] WorkerError),
}

impl From<SwarmError> for RunError {
    fn from(e: SwarmError) -> Self {
        match e {
            SwarmError::Target(t) => RunError::Target(t),
            e @ SwarmError::Token(_) => RunError::Token(e.to_string()),
        }
    }
}

/// The connections of a run.
pub enum Fleet {
    Local(Box<Swarm>),
    Workers(Workers),
}

impl Fleet {
    pub async fn start(settings: &Settings) -> Result<Fleet, RunError> {
        if settings.workers <= 1 {
            let swarm = Swarm::start(settings, None, settings.ramp).await?;
            Ok(Fleet::Local(Box::new(swarm)))
        } else {
            Ok(Fleet::Workers(Workers::spawn(settings).await?))
        }
    }

    /// Counters now (from workers: their last report) and the p99s of
    /// messages and of replies, in µs.
    pub fn counters(&self) -> (Counters, u64, u64) {
        match self {
            Fleet::Local(s) => (s.counters(), s.p99_us(), s.reply_p99_us()),
            Fleet::Workers(w) => w.counters(),
        }
    }

    pub fn is_settled(&self) -> bool {
        match self {
            Fleet::Local(s) => s.is_settled(),
            Fleet::Workers(w) => w.is_settled(),
        }
    }

    /// Lets time pass until `until`, taking in worker reports meanwhile.
    pub async fn pump(&mut self, until: Instant) -> Result<(), RunError> {
        match self {
            Fleet::Local(_) => tokio::time::sleep_until(until).await,
            Fleet::Workers(w) => w.pump_until(until).await?,
        }
        Ok(())
    }

    pub async fn go(&mut self) -> Result<GoSnapshot, RunError> {
        match self {
            Fleet::Local(s) => Ok(s.go()),
            Fleet::Workers(w) => Ok(w.go().await?),
        }
    }

    pub async fn stop(self) -> Result<Vec<SwarmResult>, RunError> {
        match self {
            Fleet::Local(s) => Ok(vec![s.stop().await]),
            Fleet::Workers(w) => Ok(w.stop().await?),
        }
    }
}

/// Runs once with `settings`; `interrupt` (Ctrl-C) cuts the current
/// phase short and still produces a summary.
pub async fn run(settings: &Settings, interrupt: CancellationToken) -> Result<Summary, RunError> {
    let started = Instant::now();
    let started_unix_ms = wire::now_ms();
    let mut live = Live {
        on: settings.live,
        line: StatusLine::new(),
        next: started,
        started,
        requested: settings.total_connections(),
        orders: settings.orders.is_some(),
    };
    let mut fleet = Fleet::start(settings).await?;

    // Ramp: until every client's first attempt has an answer.
    let settle_deadline = started + settings.ramp_time() + settings.settle_timeout;
    while !fleet.is_settled() && Instant::now() < settle_deadline && !interrupt.is_cancelled() {
        step(&mut fleet, &mut live, "ramp", None, settle_deadline).await?;
    }
    let ramp_s = started.elapsed().as_secs_f64();
    let (counters, _, _) = fleet.counters();
    if counters.established == 0 {
        let results = fleet.stop().await?;
        return Err(unreachable(settings, &results));
    }

    // Measure.
    let go = fleet.go().await?;
    let measure_start = Instant::now();
    let publisher = match &settings.publish {
        Some(p) => match Publisher::start(p, settings.space.quotes).await {
            Ok(publisher) => Some(publisher),
            Err(e) => {
                let _ = fleet.stop().await;
                return Err(e.into());
            }
        },
        None => None,
    };
    let measure_end = measure_start + settings.duration;
    while Instant::now() < measure_end && !interrupt.is_cancelled() {
        step(&mut fleet, &mut live, "measure", publisher.as_ref(), measure_end).await?;
    }
    let publish = match publisher {
        Some(p) => Some(p.stop().await),
        None => None,
    };

    // Drain: closed loop knows how many deliveries to wait for, order
    // mode how many answers and updates.
    let expected = publish.as_ref().map(|report| expected_deliveries(&report.per_topic, &go.subscribers));
    if expected.is_some() || settings.orders.is_some() {
        let drain_start = Instant::now();
        let drain_end = drain_start + settings.drain_bound();
        // Workers report every 250 ms: before a report from after the
        // last order went out, their counters may agree with each other
        // (every order sent answered) while orders are still in flight.
        let trust_from = match fleet {
            Fleet::Workers(_) => drain_start + 2 * crate::workers::STATUS_EVERY,
            Fleet::Local(_) => drain_start,
        };
        // Even after Ctrl-C: messages already published are owed, and the
        // wait is bounded (a second Ctrl-C quits at once).
        while Instant::now() < drain_end {
            let (c, _, _) = fleet.counters();
            let arrived = c.messages.saturating_sub(go.counters.messages).saturating_sub(c.duplicates);
            let messages_in = expected.is_none_or(|e| arrived >= e);
            let orders_in = settings.orders.is_none() || c.orders.all_in();
            if messages_in && orders_in && Instant::now() >= trust_from {
                break;
            }
            step(&mut fleet, &mut live, "drain", None, drain_end).await?;
        }
    }
    let measure_s = measure_start.elapsed().as_secs_f64();

    live.print("stop", &fleet, None);
    let results = fleet.stop().await?;
    let timing = Timing {
        ramp_s,
        measure_s,
        duration_s: settings.duration.as_secs_f64(),
        walltime_s: started.elapsed().as_secs_f64(),
        started_unix_ms,
    };
    Ok(Summary::build(Gathered {
        settings,
        results,
        go,
        publish,
        timing,
        interrupted: interrupt.is_cancelled(),
    }))
}

/// Waits one poll interval (never past `end`), printing the status line
/// when one is due.
async fn step(
    fleet: &mut Fleet,
    live: &mut Live,
    phase: &str,
    publisher: Option<&Publisher>,
    end: Instant,
) -> Result<(), RunError> {
    fleet.pump((Instant::now() + POLL).min(end)).await?;
    if Instant::now() >= live.next {
        live.print(phase, fleet, publisher);
    }
    Ok(())
}

struct Live {
    on: bool,
    line: StatusLine,
    next: Instant,
    started: Instant,
    requested: u64,
    /// Order mode: the line has an order part.
    orders: bool,
}

impl Live {
    fn print(&mut self, phase: &str, fleet: &Fleet, publisher: Option<&Publisher>) {
        self.next = Instant::now() + STATUS_EVERY;
        if !self.on {
            return;
        }
        use std::sync::atomic::Ordering::Relaxed;
        let (c, p99, reply_p99) = fleet.counters();
        let published =
            publisher.map(|p| (p.counters.published.load(Relaxed), p.counters.errors.load(Relaxed)));
        let elapsed = self.started.elapsed().as_secs_f64();
        let orders = self.orders.then_some(reply_p99);
        eprintln!("{}", self.line.render(elapsed, phase, self.requested, &c, p99, published, orders));
    }
}

fn unreachable(settings: &Settings, results: &[SwarmResult]) -> RunError {
    let mut errors = ErrorTally::default();
    let mut attempts = 0;
    for r in results {
        errors.merge(&r.errors);
        attempts += r.counters.attempted;
    }
    let reasons: Vec<String> =
        errors.by_count().into_iter().take(3).map(|(message, n)| format!("{message} (×{n})")).collect();
    RunError::Unreachable {
        targets: settings.urls.join(", "),
        attempts,
        reasons: if reasons.is_empty() { "no attempt finished".into() } else { reasons.join("; ") },
    }
}
