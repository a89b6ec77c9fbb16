//! The hub's subscribe, unsubscribe and fan-out costs for a hot topic
//! (issue 14 item 3), without the network: N subscribers joining one
//! topic against N spread over 1,000 topics while another thread fans
//! messages out to the first topic without pause (as the backplane reader
//! does, so fan-outs hold snapshots while subscribes happen), then all
//! leaving; and the fan-out cost per delivery at N subscribers.
//!
//!   cargo bench -p gateway --bench hub                 # N=15000,100000 REPS=5
//!   N=15000 REPS=3 cargo bench -p gateway --bench hub
//!
//! Prints the median of REPS runs for each figure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway::hub::{ConnId, Hub, Subscriber};
use gateway::metrics::Metrics;
use gateway::outbox::{Delivery, Limits, Outbox};
use wire::Topic;

const SPREAD_TOPICS: usize = 1_000;

fn delivery(topic: &Topic, seq: u64) -> Delivery {
    let text = Bytes::from(format!(
        r#"{{"type":"message","topic":"{}","seq":{seq},"ts":1,"data":{{"bid":1.0}}}}"#,
        topic.as_str()
    ));
    Delivery { topic: topic.clone(), seq, text, conflatable: false, fanned_out: None, direct: true }
}

struct Timings {
    join: Duration,
    leave: Duration,
}

/// `n` subscribers over `topics` (round robin), joining then leaving,
/// while a thread fans out to `topics[0]`.
fn churn(n: usize, topics: &[Topic], outboxes: &[Arc<Outbox>]) -> Timings {
    let hub = Arc::new(Hub::new(Arc::new(Metrics::default()), "bench"));
    let stop = Arc::new(AtomicBool::new(false));
    let fanout = {
        let (hub, stop, topic) = (Arc::clone(&hub), Arc::clone(&stop), topics[0].clone());
        std::thread::spawn(move || {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                hub.dispatch(delivery(&topic, seq));
            }
        })
    };
    let t0 = Instant::now();
    for (i, outbox) in outboxes.iter().enumerate().take(n) {
        hub.subscribe(
            &topics[i % topics.len()],
            Subscriber { conn: ConnId(i as u64), outbox: Arc::clone(outbox) },
        );
    }
    let join = t0.elapsed();
    let t1 = Instant::now();
    for i in 0..n {
        hub.unsubscribe(topics[i % topics.len()].as_str(), ConnId(i as u64));
    }
    let leave = t1.elapsed();
    stop.store(true, Ordering::Relaxed);
    fanout.join().unwrap();
    for outbox in outboxes {
        outbox.take(&mut VecDeque::new());
    }
    Timings { join, leave }
}

/// Nanoseconds per delivery of one fan-out to `n` subscribers.
fn fanout_ns(n: usize, outboxes: &[Arc<Outbox>]) -> f64 {
    let hub = Hub::new(Arc::new(Metrics::default()), "bench");
    let topic = Topic::parse("quotes.HOT").unwrap();
    for (i, outbox) in outboxes.iter().enumerate().take(n) {
        hub.subscribe(&topic, Subscriber { conn: ConnId(i as u64), outbox: Arc::clone(outbox) });
    }
    let rounds = (2_000_000 / n).max(3);
    let mut drained = VecDeque::new();
    let mut spent = Duration::ZERO;
    for seq in 0..rounds as u64 {
        let d = delivery(&topic, seq);
        let t = Instant::now();
        hub.dispatch(d);
        spent += t.elapsed();
        for outbox in outboxes.iter().take(n) {
            outbox.take(&mut drained);
            drained.clear();
        }
    }
    spent.as_nanos() as f64 / (rounds * n) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let reps: usize = std::env::var("REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let sizes: Vec<usize> = std::env::var("N")
        .unwrap_or_else(|_| "15000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let hot = [Topic::parse("quotes.HOT").unwrap()];
    let spread: Vec<Topic> =
        (0..SPREAD_TOPICS).map(|i| Topic::parse(&format!("quotes.S{i}")).unwrap()).collect();
    println!("hub bench: median of {reps}; another thread fans out to the first topic throughout");
    println!(
        "subscribers  hot join ms  spread join ms  hot/spread  hot leave ms  spread leave ms  fan-out ns/delivery"
    );
    for n in sizes {
        let outboxes: Vec<Arc<Outbox>> =
            (0..n).map(|_| Arc::new(Outbox::new(Limits { frames: 64, bytes: 1 << 20 }, None))).collect();
        let (mut hj, mut sj, mut hl, mut sl, mut f) = (vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..reps {
            let h = churn(n, &hot, &outboxes);
            let s = churn(n, &spread, &outboxes);
            hj.push(h.join.as_secs_f64() * 1e3);
            hl.push(h.leave.as_secs_f64() * 1e3);
            sj.push(s.join.as_secs_f64() * 1e3);
            sl.push(s.leave.as_secs_f64() * 1e3);
            f.push(fanout_ns(n, &outboxes));
        }
        let (hj, sj) = (median(hj), median(sj));
        println!(
            "{n:>11}  {hj:>11.1}  {sj:>14.1}  {:>10.2}  {:>12.1}  {:>15.1}  {:>19.1}",
            hj / sj,
            median(hl),
            median(sl),
            median(f)
        );
    }
}
