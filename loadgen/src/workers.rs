//! Worker processes: one process may hold only as many sockets as its
//! open-file limit, so a large run re-executes loadgen as N children
//! (hidden flag `--worker-index`), each running a [`Swarm`] over its
//! block of connection ids.
//!
//! The protocol is JSON lines. Parent → child on stdin: the plan
//! ([`WorkerPlan`]), then the words `go` (measuring starts) and `stop`
//! (close everything and report); end of stdin also means stop, so a
//! child never outlives its parent for long. Child → parent on stdout: a
//! [`Report`] per line: periodic `status`, `settled` once, `went` after
//! `go`, and one final `result`. Children's stderr is the parent's.

use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::settings::Settings;
use crate::stats::Counters;
use crate::swarm::{GoSnapshot, Swarm, SwarmResult};

/// How often a child reports its counters.
pub const STATUS_EVERY: Duration = Duration::from_millis(250);
/// How long a child may take to answer `go`.
const GO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long children may take to close their sockets and report.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot start worker processes: {0}")]
    Spawn(std::io::Error),
    #[error("worker {index}: {message}")]
    Failed { index: usize, message: String },
    #[error("worker {index} exited early ({status})")]
    Exited { index: usize, status: String },
    #[error("worker {index} did not answer within {timeout:?}")]
    Timeout { index: usize, timeout: Duration },
    #[error("worker plan on stdin: {0}")]
    Plan(String),
}

/// What a child is told to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerPlan {
    pub settings: Settings,
}

/// One line a child writes on stdout, e.g. `{"status":{…}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
// Externally tagged: an internally tagged enum would buffer its fields,
// and buffered maps lose their integer keys.
#[serde(rename_all = "snake_case")]
pub enum Report {
    Status {
        counters: Counters,
        p99_us: u64,
        #[serde(default)]
        reply_p99_us: u64,
    },
    Settled,
    Went {
        snapshot: GoSnapshot,
    },
    Result {
        result: Box<SwarmResult>,
    },
    Fatal {
        message: String,
    },
}

// ---------------------------------------------------------------- child

/// The child side: reads the plan, runs its swarm, reports until told to
/// stop (or the parent goes away, or the run's longest bound passes).
pub async fn child_main(index: u32) -> Result<(), WorkerError> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let line = stdin.next_line().await.map_err(|e| WorkerError::Plan(e.to_string()))?;
    let line = line.ok_or_else(|| WorkerError::Plan("stdin closed before the plan".into()))?;
    let plan: WorkerPlan = serde_json::from_str(&line).map_err(|e| WorkerError::Plan(e.to_string()))?;
    let settings = plan.settings;
    // A terminal's Ctrl-C reaches the whole process group; the parent
    // decides when children stop, so they must not die of it first.
    tokio::spawn(async { while tokio::signal::ctrl_c().await.is_ok() {} });
    crate::cli::open_file_limit();
    // This worker's share of the ramp: its subscribers and first-step
    // order connections, of everyone's.
    let range = settings.worker_range(index);
    let first_step = settings.initial_order_conns();
    let mine =
        (range.end - range.start) + settings.worker_traders(index).filter(|&j| j < first_step).count() as u64;
    let share = mine as f64 / (settings.connections + first_step).max(1) as f64;
    let mut swarm = match Swarm::start(&settings, Some(index), settings.ramp * share).await {
        Ok(s) => s,
        Err(e) => {
            emit(&Report::Fatal { message: e.to_string() });
            return Err(WorkerError::Failed { index: index as usize, message: e.to_string() });
        }
    };
    let deadline = Instant::now() + settings.longest_run();
    let mut tick = tokio::time::interval(STATUS_EVERY);
    let mut settled_sent = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let status =
                    Report::Status { counters: swarm.counters(), p99_us: swarm.p99_us(), reply_p99_us: swarm.reply_p99_us() };
                if !emit(&status) {
                    break;
                }
                if !settled_sent && swarm.is_settled() {
                    settled_sent = emit(&Report::Settled);
                }
            }
            line = stdin.next_line() => match line {
                Ok(Some(cmd)) if cmd.trim() == "go" => {
                    emit(&Report::Went { snapshot: swarm.go() });
                }
                Ok(Some(cmd)) if cmd.trim() == "stop" => break,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let result = swarm.stop().await;
    emit(&Report::Result { result: Box::new(result) });
    Ok(())
}

/// Writes one report line; false once stdout is gone.
fn emit(report: &Report) -> bool {
    use std::io::Write;
    let Ok(line) = serde_json::to_string(report) else { return false };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

// --------------------------------------------------------------- parent

enum Event {
    Report(Box<Report>),
    /// A line that was not a report (kept for the error message).
    Garbage(String),
    Eof,
}

#[derive(Default)]
struct WorkerState {
    counters: Counters,
    p99_us: u64,
    reply_p99_us: u64,
    settled: bool,
    went: Option<GoSnapshot>,
    result: Option<SwarmResult>,
    eof: bool,
}

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// The parent's view of its children.
pub struct Workers {
    procs: Vec<Proc>,
    state: Vec<WorkerState>,
    events: mpsc::UnboundedReceiver<(usize, Event)>,
}

impl Workers {
    /// Starts `settings.workers` children of this executable and hands
    /// each the plan.
    pub async fn spawn(settings: &Settings) -> Result<Workers, WorkerError> {
        let exe = std::env::current_exe().map_err(WorkerError::Spawn)?;
        let plan = serde_json::to_string(&WorkerPlan { settings: settings.clone() })
            .map_err(|e| WorkerError::Plan(e.to_string()))?;
        let (tx, events) = mpsc::unbounded_channel();
        let mut procs = Vec::new();
        for index in 0..settings.workers as usize {
            let mut child = Command::new(&exe)
                .arg("--worker-index")
                .arg(index.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(WorkerError::Spawn)?;
            let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(WorkerError::Failed { index, message: "no stdio pipes".into() });
            };
            let sent = async {
                stdin.write_all(plan.as_bytes()).await?;
                stdin.write_all(b"\n").await?;
                stdin.flush().await
            };
            sent.await
                .map_err(|e| WorkerError::Failed { index, message: format!("sending the plan: {e}") })?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let event = match serde_json::from_str::<Report>(&line) {
                        Ok(report) => Event::Report(Box::new(report)),
                        Err(_) => Event::Garbage(line),
                    };
                    if tx.send((index, event)).is_err() {
                        return;
                    }
                }
                let _ = tx.send((index, Event::Eof));
            });
            procs.push(Proc { child, stdin: Some(stdin) });
        }
        let state = procs.iter().map(|_| WorkerState::default()).collect();
        Ok(Workers { procs, state, events })
    }

    /// The children's latest counters, summed, and their highest p99s
    /// (messages, replies).
    pub fn counters(&self) -> (Counters, u64, u64) {
        let mut total = Counters::default();
        let (mut p99, mut reply_p99) = (0, 0);
        for s in &self.state {
            total.add(&s.counters);
            p99 = p99.max(s.p99_us);
            reply_p99 = reply_p99.max(s.reply_p99_us);
        }
        (total, p99, reply_p99)
    }

    pub fn is_settled(&self) -> bool {
        self.state.iter().all(|s| s.settled)
    }

    /// Takes in reports until `until`; fails if a child failed or died.
    pub async fn pump_until(&mut self, until: Instant) -> Result<(), WorkerError> {
        loop {
            let next = tokio::select! {
                e = self.events.recv() => e,
                _ = tokio::time::sleep_until(until) => return Ok(()),
            };
            match next {
                Some((index, event)) => self.apply(index, event).await?,
                None => return Ok(()),
            }
        }
    }

    async fn apply(&mut self, index: usize, event: Event) -> Result<(), WorkerError> {
        let Some(state) = self.state.get_mut(index) else { return Ok(()) };
        match event {
            Event::Report(report) => match *report {
                Report::Status { counters, p99_us, reply_p99_us } => {
                    state.counters = counters;
                    state.p99_us = p99_us;
                    state.reply_p99_us = reply_p99_us;
                }
                Report::Settled => state.settled = true,
                Report::Went { snapshot } => state.went = Some(snapshot),
                Report::Result { result } => {
                    state.counters = result.counters;
                    state.result = Some(*result);
                }
                Report::Fatal { message } => return Err(WorkerError::Failed { index, message }),
            },
            Event::Garbage(line) => {
                let line: String = line.chars().take(200).collect();
                return Err(WorkerError::Failed { index, message: format!("unexpected output {line:?}") });
            }
            Event::Eof => {
                state.eof = true;
                if state.result.is_none() {
                    let status =
                        match tokio::time::timeout(Duration::from_secs(2), self.procs[index].child.wait())
                            .await
                        {
                            Ok(Ok(status)) => status.to_string(),
                            _ => "still running with stdout closed".into(),
                        };
                    return Err(WorkerError::Exited { index, status });
                }
            }
        }
        Ok(())
    }

    /// Waits until `done` holds for every child, up to `timeout`.
    async fn wait_all(
        &mut self,
        timeout: Duration,
        done: fn(&WorkerState) -> bool,
    ) -> Result<(), WorkerError> {
        let deadline = Instant::now() + timeout;
        while let Some(index) = self.state.iter().position(|s| !done(s)) {
            if Instant::now() >= deadline {
                return Err(WorkerError::Timeout { index, timeout });
            }
            self.pump_until(deadline.min(Instant::now() + Duration::from_millis(50))).await?;
        }
        Ok(())
    }

    async fn tell(&mut self, word: &str) -> Result<(), WorkerError> {
        for (index, proc) in self.procs.iter_mut().enumerate() {
            if let Some(stdin) = proc.stdin.as_mut() {
                let line = format!("{word}\n");
                stdin
                    .write_all(line.as_bytes())
                    .await
                    .map_err(|e| WorkerError::Failed { index, message: format!("telling it {word}: {e}") })?;
            }
        }
        Ok(())
    }

    /// Tells every child that measuring starts; returns their snapshots.
    pub async fn go(&mut self) -> Result<GoSnapshot, WorkerError> {
        self.tell("go").await?;
        self.wait_all(GO_TIMEOUT, |s| s.went.is_some()).await?;
        let mut total = GoSnapshot::default();
        for s in &self.state {
            if let Some(w) = &s.went {
                total.merge(w);
            }
        }
        Ok(total)
    }

    /// Tells every child to close its sockets, and collects the results.
    pub async fn stop(mut self) -> Result<Vec<SwarmResult>, WorkerError> {
        // A child that already died cannot be told; its missing result
        // is reported below.
        let _ = self.tell("stop").await;
        for proc in &mut self.procs {
            proc.stdin = None;
        }
        let waited = self.wait_all(STOP_TIMEOUT, |s| s.result.is_some()).await;
        for proc in &mut self.procs {
            if tokio::time::timeout(Duration::from_secs(5), proc.child.wait()).await.is_err() {
                let _ = proc.child.kill().await;
            }
        }
        waited?;
        Ok(self.state.into_iter().filter_map(|s| s.result).collect())
    }
}
