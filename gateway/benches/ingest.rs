//! The per-message cost of tracing in the gateway's hot path, without the
//! network: `Hub::ingest` of quote envelopes to 50 local subscribers
//! (their queues drained as a connection task would, every 16 messages),
//! measured as process CPU time per message (the exporter's threads
//! included) in one run, for:
//!
//!   off  no OTLP endpoint (the default)
//!   on   exporting over OTLP/gRPC to testkit's receiver, default ratio (1 % of quotes)
//!   all  the same, every message traced
//!
//! Each variant runs in a process of its own (telemetry is process-wide),
//! the variants interleaved, REPS times; medians are printed.
//!
//!   cargo bench -p gateway --bench ingest            # REPS=5 MESSAGES=200000 by default
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use gateway::hub::{ConnId, Hub, Subscriber};
use gateway::metrics::Metrics;
use gateway::outbox::{Limits, Outbox};
use wire::Topic;

const SUBSCRIBERS: u64 = 50;
const VARIANTS: [&str; 3] = ["off", "on", "all"];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One variant in this process: prints `RESULT <cpu ns/msg> <wall ns/msg> <spans>`.
fn child(variant: &str) {
    let ratio = if variant == "all" { 1.0 } else { 0.01 };
    let settings = service::telemetry::Settings { quote_ratio: ratio, ..Default::default() };
    service::telemetry::init_with("ingest-bench", &settings).unwrap();
    assert_eq!(service::telemetry::trace::enabled(), variant != "off");
    let hub = Hub::new(Arc::new(Metrics::default()), "bench");
    let topic = Topic::parse("quotes.BENCH").unwrap();
    let outboxes: Vec<Arc<Outbox>> = (0..SUBSCRIBERS)
        .map(|i| {
            let outbox = Arc::new(Outbox::new(Limits { frames: 1024, bytes: 4 << 20 }, None));
            // Held, as a connection's topics are: its frames are admitted.
            outbox.held(|held| held.insert(topic.clone()));
            hub.subscribe(&topic, Subscriber { conn: ConnId(i), outbox: Arc::clone(&outbox) });
            outbox
        })
        .collect();
    let n = env_usize("MESSAGES", 200_000) as u64;
    let data = r#"{"symbol":"BENCH","bid":189.1,"ask":189.2,"bid_size":300,"ask_size":200}"#;
    let envelopes: Vec<String> =
        (1..=n).map(|seq| wire::envelope::encode(topic.as_str(), seq, wire::now_ms(), data, None)).collect();
    let mut batch = VecDeque::new();
    let cpu0 = service::telemetry::cpu_seconds().unwrap();
    let t0 = Instant::now();
    for (i, env) in envelopes.iter().enumerate() {
        hub.ingest(topic.as_str(), env.as_bytes());
        if i % 16 == 15 {
            for outbox in &outboxes {
                outbox.take(&mut batch);
                batch.clear();
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    // Spans still queued are exported (and paid for) before the clock stops.
    service::telemetry::shutdown();
    let cpu = service::telemetry::cpu_seconds().unwrap() - cpu0;
    let mut page = String::new();
    service::telemetry::finish_openmetrics(&mut page);
    let exported = page
        .lines()
        .find_map(|l| l.strip_prefix("trace_spans_exported_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    println!("RESULT {:.1} {:.1} {exported}", cpu * 1e9 / n as f64, wall * 1e9 / n as f64);
}

/// One variant's figures over the runs.
struct Runs {
    variant: &'static str,
    cpu: Vec<f64>,
    wall: Vec<f64>,
    spans: Vec<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if let Ok(variant) = std::env::var("INGEST_BENCH_VARIANT") {
        return child(&variant);
    }
    let reps = env_usize("REPS", 5);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = rt.block_on(testkit::otlp::OtlpReceiver::start());
    let mut results: Vec<Runs> = VARIANTS
        .iter()
        .map(|v| Runs { variant: v, cpu: Vec::new(), wall: Vec::new(), spans: Vec::new() })
        .collect();
    for _ in 0..reps {
        for Runs { variant, cpu, wall, spans } in results.iter_mut() {
            let mut cmd = Command::new(std::env::current_exe().unwrap());
            cmd.env("INGEST_BENCH_VARIANT", *variant).env("RUST_LOG", "warn");
            if *variant != "off" {
                cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint())
                    .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
            }
            let out = cmd.output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{variant}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
            let line = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")).unwrap();
            let f: Vec<f64> = line.split_whitespace().map(|x| x.parse().unwrap()).collect();
            cpu.push(f[0]);
            wall.push(f[1]);
            spans.push(f[2]);
        }
        receiver.store.clear();
    }
    let base = median(results[0].cpu.clone());
    println!(
        "Hub::ingest, {SUBSCRIBERS} subscribers, {} messages per run, median of {reps} runs",
        env_usize("MESSAGES", 200_000)
    );
    println!(
        "| variant | CPU ns/message | vs off | wall ns/message | spans exported per run | CPU per run (ns/message) |"
    );
    println!("|---|---|---|---|---|---|");
    for Runs { variant, cpu, wall, spans } in &results {
        let m = median(cpu.clone());
        let runs: Vec<String> = cpu.iter().map(|c| format!("{c:.0}")).collect();
        println!(
            "| {variant} | {m:.0} | {:+.1} % | {:.0} | {:.0} | {} |",
            (m / base - 1.0) * 100.0,
            median(wall.clone()),
            median(spans.clone()),
            runs.join(", ")
        );
    }
}
