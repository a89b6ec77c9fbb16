//! The ingest bench's "off" child for the gateway before tracing (commit
//! 10669b0: `Hub::new` without a node id), for bench/tracing.md. Copy it to
//! `gateway/benches/ingest.rs` of that tree (with a `[[bench]] name = "ingest",
//! harness = false` entry in its gateway/Cargo.toml) and build it there.
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;
use gateway::hub::{ConnId, Hub, Subscriber};
use gateway::metrics::Metrics;
use gateway::outbox::{Limits, Outbox};
use wire::Topic;
fn main() {
    service::telemetry::init("ingest-bench");
    let hub = Hub::new(Arc::new(Metrics::default()));
    let topic = Topic::parse("quotes.BENCH").unwrap();
    let outboxes: Vec<Arc<Outbox>> = (0..50u64)
        .map(|i| {
            let outbox = Arc::new(Outbox::new(Limits { frames: 1024, bytes: 4 << 20 }));
            hub.subscribe(&topic, Subscriber { conn: ConnId(i), outbox: Arc::clone(&outbox) });
            outbox
        })
        .collect();
    let n: u64 = std::env::var("MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
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
    let cpu = service::telemetry::cpu_seconds().unwrap() - cpu0;
    println!("RESULT {:.1} {:.1} 0", cpu * 1e9 / n as f64, wall * 1e9 / n as f64);
}
