//! Sweep mode: one run per connection count, reproducing the original
//! benchmark's table as CSV (rows printed as each step finishes, and
//! written to `--csv`), with p99 and lost added. In order mode the steps
//! are order connection counts and the table is the request/reply one
//! ([`crate::order_report::CSV_HEADER`]).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::report::Summary;
use crate::run::{RunError, run};
use crate::settings::Settings;

pub const CSV_HEADER: &str =
    "connections,connected,average response (ms),average size,messages,msg/sec,walltime,p99 (ms),lost";

/// One step's outcome.
pub struct Step {
    pub connections: u64,
    pub summary: Result<Summary, RunError>,
}

/// The header of the table `base` settings produce.
pub fn header(base: &Settings) -> &'static str {
    if base.orders.is_some() { crate::order_report::CSV_HEADER } else { CSV_HEADER }
}

/// The row of a finished step in the table of its mode.
pub fn row(connections: u64, s: &Summary) -> String {
    match &s.orders {
        Some(o) => crate::order_report::csv_row(connections, o, s.timing.walltime_s),
        None => csv_row(connections, s),
    }
}

/// The pub/sub CSV row of a finished step; walltime in seconds.
pub fn csv_row(connections: u64, s: &Summary) -> String {
    let lost = s.messages.lost.max(s.messages.missing.unwrap_or(0));
    format!(
        "{},{},{:.3},{:.1},{},{:.1},{:.2},{:.3},{}",
        connections,
        s.connections.connected,
        s.latency_ms.mean,
        s.messages.average_size,
        s.messages.received,
        s.messages.per_second,
        s.timing.walltime_s,
        s.latency_ms.p99,
        lost
    )
}

/// Runs each step with `base` settings, `connections` (order mode: the
/// order connections) and `duration` replaced; `on_step` sees every step
/// as it ends. Stops early when a step establishes no connection (bigger
/// ones will not either) or on Ctrl-C.
pub async fn sweep(
    base: &Settings,
    steps: &[u64],
    step_duration: Duration,
    pause: Duration,
    open_files: u64,
    interrupt: CancellationToken,
    mut on_step: impl FnMut(&Step),
) -> Vec<Step> {
    let mut done = Vec::with_capacity(steps.len());
    for (i, &connections) in steps.iter().enumerate() {
        if interrupt.is_cancelled() {
            break;
        }
        if i > 0 {
            tokio::select! {
                _ = interrupt.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        let mut settings = base.clone();
        match settings.orders.as_mut() {
            Some(orders) => orders.set_conns(connections),
            None => settings.connections = connections,
        }
        settings.duration = step_duration;
        let sockets = settings.total_connections();
        let needed = Settings::workers_needed(sockets, open_files);
        settings.workers = base.workers.max(needed).min(sockets.min(u64::from(u32::MAX)) as u32).max(1);
        let summary = run(&settings, interrupt.clone()).await;
        let stop = matches!(summary, Err(RunError::Unreachable { .. } | RunError::Target(_)));
        let step = Step { connections, summary };
        on_step(&step);
        done.push(step);
        if stop {
            break;
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_match_the_header() {
        let json = r#"{"targets":["ws://127.0.0.1:1/ws"],"workers":1,
            "connections":{"requested":500,"attempted":500,"established":500,"failed":0,"dropped":0,"reconnects":0,"connected":500,"closed_clean":500},
            "subscriptions":{"requested":2500,"acknowledged":2500,"errors":0,"held_at_start":2500},
            "messages":{"received":12000,"received_measured":12000,"recovered":0,"bytes":1200000,"average_size":100.0,"per_second":1200.0,
                "lost":0,"duplicates":0,"expected":12000,"missing":3,"loss_ratio":0.0,"invalid_frames":0},
            "latency_ms":{"samples":12000,"mean":1.25,"p50":1.0,"p90":2.0,"p99":4.5,"p999":9.0,"max":12.0},
            "publish":null,"errors":{},
            "timing":{"ramp_s":0.5,"measure_s":10.0,"walltime_s":11.25,"started_unix_ms":0},"interrupted":false}"#;
        let s: Summary = serde_json::from_str(json).unwrap();
        let row = csv_row(500, &s);
        assert_eq!(row, "500,500,1.250,100.0,12000,1200.0,11.25,4.500,3");
        assert_eq!(row.split(',').count(), CSV_HEADER.split(',').count());
    }
}
