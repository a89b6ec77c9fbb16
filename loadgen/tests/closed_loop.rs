//! Closed-loop runs against a real gateway (in-memory backplane, in this
//! process) publishing through its `POST /publish`: every expected
//! delivery arrives, nothing is lost or duplicated, with one process or
//! with worker processes, and sweep mode prints the benchmark table.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use loadgen::Summary;

fn assert_lossless(s: &Summary, connections: u64, subscriptions: u64) {
    let c = &s.connections;
    assert_eq!((c.established, c.connected, c.failed, c.dropped), (connections, connections, 0, 0), "{s:#?}");
    assert_eq!(c.closed_clean, connections, "every socket closed with a handshake");
    assert_eq!(s.subscriptions.acknowledged, subscriptions, "{s:#?}");
    assert_eq!(s.subscriptions.errors, 0);
    let m = &s.messages;
    let expected = m.expected.expect("closed loop knows its expected deliveries");
    assert!(m.received > 0, "{s:#?}");
    // Snapshots a gateway sends on subscribe (of messages published
    // before) are extra; every live delivery owed arrived exactly once.
    let live = m.received - m.recovered;
    assert_eq!(live, expected, "every delivery owed arrived: {s:#?}");
    assert_eq!((m.lost, m.duplicates, m.missing, m.loss_ratio), (0, 0, Some(0), 0.0), "{s:#?}");
    let p = s.publish.as_ref().expect("publish report");
    assert!(p.published > 0 && p.errors == 0, "{p:?}");
    assert_eq!(s.latency_ms.samples, live, "every live message has a latency");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publish_closed_loop_delivers_everything() {
    let gw = start_gateway(memory_config()).await;
    let json = temp_path("summary.json");
    let run = loadgen(&[
        "--url",
        &gw.ws_url(),
        "--connections",
        "200",
        "--topics-per-conn",
        "5",
        "--quote-topics",
        "100",
        "--publish-http",
        &publish_url(&gw),
        "--publish-rate",
        "500",
        "--duration",
        "3s",
        "--json",
        json.to_str().unwrap(),
        "--quiet",
    ])
    .await;
    assert_eq!(run.code, Some(0), "stderr: {}\nstdout: {}", run.stderr, run.stdout);
    assert!(run.stdout.contains("loadgen summary"), "the table goes to stdout: {}", run.stdout);
    let summary: Summary = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_lossless(&summary, 200, 1000);
    assert_eq!(summary.messages.recovered, 0, "a fresh gateway has no snapshots to send");
    assert_eq!(summary.messages.received, summary.messages.expected.unwrap());
    assert_eq!(summary.workers, 1);
    assert_eq!(summary.subscriptions.held_at_start, 1000);
    // A loaded machine may publish slower, never faster.
    let p = summary.publish.as_ref().unwrap();
    assert!(p.achieved_rate <= 520.0 && p.published >= 300, "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_processes_merge_into_one_summary() {
    let gw = start_gateway(memory_config()).await;
    let run = loadgen(&[
        "--url",
        &gw.ws_url(),
        "--connections",
        "120",
        "--topics-per-conn",
        "3",
        "--quote-topics",
        "20",
        "--dist",
        "zipf",
        "--workers",
        "2",
        "--publish-http",
        &publish_url(&gw),
        "--publish-rate",
        "200",
        "--duration",
        "2s",
        "--output",
        "json",
        "--quiet",
    ])
    .await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let summary: Summary = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(summary.workers, 2);
    assert_lossless(&summary, 120, 360);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_prints_the_benchmark_table() {
    let gw = start_gateway(memory_config()).await;
    let csv = temp_path("sweep.csv");
    let run = loadgen(&[
        "sweep",
        "--steps",
        "20,40",
        "--step-duration",
        "1s",
        "--step-pause",
        "200ms",
        "--url",
        &gw.ws_url(),
        "--quote-topics",
        "10",
        "--publish-http",
        &publish_url(&gw),
        "--publish-rate",
        "100",
        "--csv",
        csv.to_str().unwrap(),
        "--quiet",
    ])
    .await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert_eq!(lines[0], loadgen::sweep::CSV_HEADER);
    for (line, conns) in lines[1..].iter().zip(["20", "40"]) {
        let cols: Vec<&str> = line.split(',').collect();
        assert_eq!(cols.len(), 9, "{line}");
        assert_eq!((cols[0], cols[1]), (conns, conns), "all connected: {line}");
        assert!(cols[4].parse::<u64>().unwrap() > 0, "messages: {line}");
        assert_eq!(cols[8], "0", "lost: {line}");
    }
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_publish_closed_loop_through_a_redis_gateway() {
    let redis = TestRedis::get().await;
    let prefix = unique_prefix();
    let gw = start_gateway(redis_config(&redis.url(), &prefix)).await;
    for seq_source in ["incr", "local"] {
        let run = loadgen(&[
            "--url",
            &gw.ws_url(),
            "--connections",
            "50",
            "--topics-per-conn",
            "2",
            "--quote-topics",
            "10",
            "--publish-redis",
            &redis.url(),
            "--channel-prefix",
            &prefix,
            "--redis-seq",
            seq_source,
            "--publish-rate",
            "200",
            "--duration",
            "2s",
            "--output",
            "json",
            "--quiet",
        ])
        .await;
        assert_eq!(run.code, Some(0), "{seq_source}: {}", run.stderr);
        let summary: Summary = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(summary.publish.as_ref().unwrap().mode, "redis");
        assert_lossless(&summary, 50, 100);
    }
    // Both runs took their seqs from (or left them in) the shared counters:
    // the counters hold every message published on each topic.
    let mut conn = redis.connection().await;
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}seq:*")).query_async(&mut conn).await.unwrap();
    assert_eq!(keys.len(), 10, "{keys:?}");
    let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();
}
