//! One shard's trouble stays on that shard: real Redis Clusters where a
//! master is SIGKILLed (with and without a replica to take over) or
//! switched by `CLUSTER FAILOVER`, while quotes are published on every
//! shard and order updates through a gateway. Two gateway nodes each hold
//! one client subscribed to every topic; what each received is compared
//! with what was published.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use testkit::cluster::SlotResolver;
use testkit::*;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// The most any test here may take.
const BOUND: Duration = Duration::from_secs(55);
/// Between two quotes of one topic.
const QUOTE_EVERY: Duration = Duration::from_millis(100);
/// Between two order updates of one topic.
const ORDER_EVERY: Duration = Duration::from_millis(150);

fn node_config(cluster: &RedisCluster) -> gateway::Config {
    gateway::Config {
        redis_cluster: true,
        redis_timeout_ms: 1_000,
        ..redis_config(&cluster.url_list(), "rt:")
    }
}

/// Topics of one master's shard.
struct Shard {
    quotes: Vec<String>,
    order: String,
}

/// Four quote topics and one order topic per master.
async fn shards(cluster: &RedisCluster, masters: &[usize]) -> HashMap<usize, Shard> {
    let mut out: HashMap<usize, Shard> =
        masters.iter().map(|&m| (m, Shard { quotes: Vec::new(), order: String::new() })).collect();
    for i in 0.. {
        let quote = format!("quotes.F{i}");
        if let Some(s) = out.get_mut(&cluster.owner_of(&format!("rt:{quote}")).await)
            && s.quotes.len() < 4
        {
            s.quotes.push(quote);
        }
        let order = format!("orders.acct{i}");
        if let Some(s) = out.get_mut(&cluster.owner_of(&format!("rt:{order}")).await)
            && s.order.is_empty()
        {
            s.order = order;
        }
        if out.values().all(|s| s.quotes.len() == 4 && !s.order.is_empty()) {
            return out;
        }
    }
    unreachable!()
}

/// (topic, seq) → when it was published.
type Published = Arc<Mutex<HashMap<(String, u64), Instant>>>;

/// SPUBLISHes a quote on every topic every [`QUOTE_EVERY`], each to the
/// master that owns it on a plain connection of its own (so one master's
/// death never slows the others' publishing); after a failure it asks
/// the slot map for the new owner. Only quotes a master took count as
/// published.
async fn publish_quotes(
    urls: Vec<String>,
    resolver: SlotResolver,
    topics: Vec<String>,
    published: Published,
    mut stop: oneshot::Receiver<()>,
) {
    let mut conns: Vec<Option<MultiplexedConnection>> = Vec::new();
    for url in urls {
        conns.push(redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.ok());
    }
    let mut owner: HashMap<String, Option<usize>> = HashMap::new();
    for t in &topics {
        owner.insert(t.clone(), resolver.owner_of(&format!("rt:{t}")).await);
    }
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(QUOTE_EVERY);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        seq += 1;
        let sends = topics.iter().map(|t| {
            let conn = owner[t].and_then(|o| conns[o].clone());
            let (t, env) = (t.clone(), envelope(t, seq, r#"{"p":1}"#));
            async move {
                let Some(mut conn) = conn else { return (t, false) };
                let cmd = redis::cmd("SPUBLISH").arg(format!("rt:{t}")).arg(env).clone();
                let sent =
                    tokio::time::timeout(Duration::from_millis(300), cmd.query_async::<i64>(&mut conn)).await;
                (t, matches!(sent, Ok(Ok(_))))
            }
        });
        let now = Instant::now();
        for (t, ok) in futures_util::future::join_all(sends).await {
            if ok {
                published.lock().unwrap().insert((t, seq), now);
            } else {
                owner.insert(t.clone(), resolver.owner_of(&format!("rt:{t}")).await);
            }
        }
    }
}

/// Publishes order updates on `topics` through `gw`'s `POST /publish`
/// (the scripts: `seq`, history, deduplication); records the `seq` of
/// each one answered 200.
async fn publish_orders(
    addr: std::net::SocketAddr,
    topics: Vec<String>,
    published: Published,
    mut stop: oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval(ORDER_EVERY);
    let mut n = 0;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        n += 1;
        for t in &topics {
            let body = format!(r#"{{"topic":"{t}","data":{{"n":{n}}},"id":"u{n}"}}"#);
            let (status, answer) = http(addr, "POST", "/publish", Some(&body), &[]).await;
            if status == 200 {
                let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
                published.lock().unwrap().insert((t.clone(), v["seq"].as_u64().unwrap()), Instant::now());
            }
        }
    }
}

/// Every message frame a client receives, with when, until stopped.
async fn collect(mut c: Client, mut stop: oneshot::Receiver<()>) -> Vec<(String, u64, Instant)> {
    let mut got = Vec::new();
    loop {
        tokio::select! {
            _ = &mut stop => return got,
            f = c.frame() => if f.kind == "message" {
                got.push((f.topic.unwrap(), f.seq.unwrap(), Instant::now()));
            },
        }
    }
}

/// What one scenario measured on one node.
struct Measured {
    /// Share of the quotes published on the healthy shards delivered.
    healthy: f64,
    /// The failed shard's first quote delivered after the failure:
    /// published when (None: none came).
    failed_back: Option<Instant>,
    /// Share of the failed shard's quotes delivered.
    failed: f64,
}

struct Run {
    cluster: RedisCluster,
    /// The gateway nodes, each with one collecting client.
    nodes: Vec<TestGateway>,
    shards: HashMap<usize, Shard>,
    /// The master that fails.
    victim: usize,
    quotes: Published,
    orders: Published,
    stops: Vec<oneshot::Sender<()>>,
    collectors: Vec<tokio::task::JoinHandle<Vec<(String, u64, Instant)>>>,
}

impl Run {
    /// Two nodes, a client on each subscribed to every topic, and both
    /// publishers running.
    async fn start(cluster: RedisCluster, masters: Vec<usize>) -> Run {
        let shards = shards(&cluster, &masters).await;
        let mut nodes = Vec::new();
        for _ in 0..2 {
            let gw = TestGateway::start(node_config(&cluster)).await;
            gw.wait_metric("gateway_backplane_up", |v| v == 1.0).await;
            nodes.push(gw);
        }
        let mut stops = Vec::new();
        let mut collectors = Vec::new();
        for gw in &nodes {
            let mut c = gw.client().await;
            for s in shards.values() {
                for t in s.quotes.iter().chain([&s.order]) {
                    c.subscribe(t).await;
                }
            }
            let (tx, rx) = oneshot::channel();
            stops.push(tx);
            collectors.push(tokio::spawn(collect(c, rx)));
        }
        let (quotes, orders) = (Published::default(), Published::default());
        let all_quotes: Vec<String> = shards.values().flat_map(|s| s.quotes.clone()).collect();
        let (tx, rx) = oneshot::channel();
        stops.push(tx);
        tokio::spawn(publish_quotes(cluster.urls(), cluster.resolver(), all_quotes, Arc::clone(&quotes), rx));
        let victim = masters[0];
        // Orders on the failing shard and on a healthy one.
        let order_topics = vec![shards[&victim].order.clone(), shards[&masters[1]].order.clone()];
        let (tx, rx) = oneshot::channel();
        stops.push(tx);
        tokio::spawn(publish_orders(nodes[0].addr, order_topics, Arc::clone(&orders), rx));
        Run { cluster, nodes, shards, victim, quotes, orders, stops, collectors }
    }

    /// [`Run::start`] on 3 masters with a replica each, once every node
    /// holds each shard's topics on its replica too.
    async fn with_replicas() -> Run {
        let options =
            ClusterOptions { replicas: 1, node_timeout_ms: Some(2_000), ..ClusterOptions::masters(3) };
        let cluster = RedisCluster::start_with(options).await;
        let masters = masters(&cluster).await;
        let run = Run::start(cluster, masters).await;
        wait_standbys(&run, 3).await;
        run
    }

    /// Stops publishing, lets what is in flight arrive, and measures each
    /// node against what was published since `since`.
    async fn finish(mut self, since: Instant) -> Vec<Measured> {
        let (collector_stops, publisher_stops) = {
            let mut all = std::mem::take(&mut self.stops);
            let publishers = all.split_off(self.collectors.len());
            (all, publishers)
        };
        for stop in publisher_stops {
            let _ = stop.send(());
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for stop in collector_stops {
            let _ = stop.send(());
        }
        let quotes = self.quotes.lock().unwrap().clone();
        let orders = self.orders.lock().unwrap().clone();
        let victim_quotes: BTreeSet<&String> = self.shards[&self.victim].quotes.iter().collect();
        let mut measured = Vec::new();
        for (node, collector) in std::mem::take(&mut self.collectors).into_iter().enumerate() {
            let got = collector.await.unwrap();
            let received: BTreeSet<(String, u64)> = got.iter().map(|(t, s, _)| (t.clone(), *s)).collect();
            let share = |on_victim: bool| {
                let published: Vec<&(String, u64)> = quotes
                    .iter()
                    .filter(|(k, at)| **at >= since && victim_quotes.contains(&k.0) == on_victim)
                    .map(|(k, _)| k)
                    .collect();
                let delivered = published.iter().filter(|k| received.contains(k)).count();
                delivered as f64 / published.len().max(1) as f64
            };
            let failed_back = got
                .iter()
                .filter(|(t, s, _)| {
                    victim_quotes.contains(t) && quotes.get(&(t.clone(), *s)).is_some_and(|at| *at > since)
                })
                .filter_map(|(t, s, _)| quotes.get(&(t.clone(), *s)).copied())
                .min();
            // Order updates: every one published arrives, once, in order.
            for topic in orders.keys().map(|(t, _)| t.clone()).collect::<BTreeSet<_>>() {
                let seqs: Vec<u64> = got.iter().filter(|(t, _, _)| *t == topic).map(|(_, s, _)| *s).collect();
                let contiguous: Vec<u64> = (1..=seqs.len() as u64).collect();
                assert_eq!(seqs, contiguous, "node {node}: {topic} lost, repeated or reordered an update");
                for (t, s) in orders.keys().filter(|(t, _)| *t == topic) {
                    assert!(seqs.contains(s), "node {node}: {t} seq {s} published, never delivered");
                }
            }
            let mut lost: Vec<(u64, Duration)> = quotes
                .iter()
                .filter(|(k, at)| **at >= since && victim_quotes.contains(&k.0) && !received.contains(k))
                .map(|(k, at)| (k.1, at.duration_since(since)))
                .collect();
            lost.sort();
            eprintln!("node {node}: lost on the failed shard (seq, published after the failure): {lost:?}");
            let m = Measured { healthy: share(false), failed_back, failed: share(true) };
            eprintln!(
                "node {node}: healthy shards {:.2} %, failed shard {:.2} %, orders {:?}",
                m.healthy * 100.0,
                m.failed * 100.0,
                orders.keys().fold(HashMap::<&str, usize>::new(), |mut n, (t, _)| {
                    *n.entry(t.as_str()).or_default() += 1;
                    n
                })
            );
            measured.push(m);
        }
        measured
    }
}

async fn bounded(body: impl std::future::Future<Output = ()>) {
    tokio::select! {
        () = body => {}
        () = tokio::time::sleep(BOUND) => panic!("test exceeded its time bound of {BOUND:?}"),
    }
}

/// The indexes of the cluster's masters (3), from slot owners.
async fn masters(cluster: &RedisCluster) -> Vec<usize> {
    let mut masters = Vec::new();
    for i in 0.. {
        let m = cluster.owner_of(&format!("rt:probe{i}")).await;
        if !masters.contains(&m) {
            masters.push(m);
        }
        if masters.len() == 3 {
            return masters;
        }
    }
    unreachable!()
}

/// Waits until each node holds the topics of `shards` shards on a
/// replica too (`gateway_backplane_standby_up`); the slot map read at
/// start may predate the replicas, the next one (≤ 5 s) names them.
async fn wait_standbys(run: &Run, shards: usize) {
    // Two slot map periods, a node timeout and a loaded machine's slack.
    let deadline = Instant::now() + Duration::from_secs(20);
    for gw in &run.nodes {
        loop {
            let (_, body) = http(gw.addr, "GET", "/metrics", None, &[]).await;
            let up: f64 = body
                .lines()
                .filter(|l| l.starts_with("gateway_backplane_standby_up{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            if up == shards as f64 {
                break;
            }
            assert!(Instant::now() < deadline, "no standby on {shards} shards in time ({up})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The promoted replica's first quote taken, after `since`.
fn first_taken_on(run: &Run, since: Instant) -> Option<Instant> {
    let victim: BTreeSet<&String> = run.shards[&run.victim].quotes.iter().collect();
    run.quotes
        .lock()
        .unwrap()
        .iter()
        .filter(|((t, _), at)| victim.contains(t) && **at > since)
        .map(|(_, at)| *at)
        .min()
}

#[tokio::test]
async fn a_killed_master_with_a_replica_costs_the_healthy_shards_nothing() {
    bounded(async {
        let mut run = Run::with_replicas().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let killed_at = Instant::now();
        run.cluster.kill(run.victim);
        // Until its replica took over and a few seconds more.
        let deadline = killed_at + Duration::from_secs(20);
        let promoted = loop {
            if let Some(at) = first_taken_on(&run, killed_at) {
                break at;
            }
            assert!(Instant::now() < deadline, "the replica was never promoted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        eprintln!("replica promoted {:?} after the kill", promoted - killed_at);
        tokio::time::sleep(Duration::from_secs(4)).await;
        for (node, m) in run.finish(killed_at).await.into_iter().enumerate() {
            assert!(m.healthy >= 0.99, "node {node}: healthy shards delivered {:.2} %", m.healthy * 100.0);
            let back = m.failed_back.expect("the failed shard's topics never flowed again");
            eprintln!(
                "node {node}: failed shard flowing {:?} after the promotion",
                back.saturating_duration_since(promoted)
            );
            assert!(back < promoted + Duration::from_secs(10), "node {node}: failed shard back too late");
        }
    })
    .await;
}

#[tokio::test]
async fn a_killed_master_without_a_replica_leaves_the_other_shards_flowing() {
    bounded(async {
        let options = ClusterOptions {
            node_timeout_ms: Some(2_000),
            full_coverage: false,
            ..ClusterOptions::masters(3)
        };
        let cluster = RedisCluster::start_with(options).await;
        let masters = masters(&cluster).await;
        let mut run = Run::start(cluster, masters).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let killed_at = Instant::now();
        run.cluster.kill(run.victim);
        // Readiness names the shard that is down, on every node.
        for gw in &run.nodes {
            let addr = gw.addr;
            let body = eventually("readiness to name the shard down", || async move {
                let (status, body) = http(addr, "GET", "/readyz", None, &[]).await;
                (status == 503 && !body.contains(r#""shards_down":[]"#)).then_some(body)
            })
            .await;
            assert!(body.contains(r#""shards_down":[""#), "{body}");
        }
        tokio::time::sleep(Duration::from_secs(8)).await;
        // The order update publisher on the dead shard was told so at once.
        let (status, body) = http(
            run.nodes[0].addr,
            "POST",
            "/publish",
            Some(&format!(r#"{{"topic":"{}","data":{{}}}}"#, run.shards[&run.victim].order)),
            &[],
        )
        .await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("backplane_unavailable"), "{body}");
        let victim_order = run.shards[&run.victim].order.clone();
        // Its last update before the kill may still be in flight: only
        // the healthy shard's orders are checked for every update.
        run.orders.lock().unwrap().retain(|(t, _), _| *t != victim_order);
        for (node, m) in run.finish(killed_at).await.into_iter().enumerate() {
            assert!(m.healthy >= 0.99, "node {node}: healthy shards delivered {:.2} %", m.healthy * 100.0);
        }
    })
    .await;
}

#[tokio::test]
async fn a_planned_failover_loses_no_order_update_and_no_quote_off_its_shard() {
    bounded(async {
        let run = Run::with_replicas().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let switched_at = Instant::now();
        let replica = run.cluster.replica_of(run.victim).await;
        run.cluster.failover(replica).await;
        let victim_quote = format!("rt:{}", run.shards[&run.victim].quotes[0]);
        eventually("the replica to take over", || {
            let resolver = run.cluster.resolver();
            let channel = victim_quote.clone();
            async move { (resolver.owner_of(&channel).await == Some(replica)).then_some(()) }
        })
        .await;
        eprintln!("switched {:?} after CLUSTER FAILOVER", switched_at.elapsed());
        tokio::time::sleep(Duration::from_secs(4)).await;
        for (node, m) in run.finish(switched_at).await.into_iter().enumerate() {
            assert!(m.healthy >= 0.99, "node {node}: healthy shards delivered {:.2} %", m.healthy * 100.0);
            // The old master ends this node's sharded subscriptions as it
            // turns replica (`sunsubscribe`); the standby subscriptions on
            // the replica it promotes go on through the switch, so not one
            // quote taken by either is lost. Order updates are checked for
            // every one in `finish`.
            assert!(m.failed >= 1.0, "node {node}: the switched shard delivered {:.2} %", m.failed * 100.0);
        }
    })
    .await;
}

#[tokio::test]
async fn a_killed_replica_costs_nothing_and_its_standby_comes_back() {
    bounded(async {
        let mut run = Run::with_replicas().await;
        let replica = run.cluster.replica_of(run.victim).await;
        let killed_at = Instant::now();
        run.cluster.kill(replica);
        // Each node carries on from the master; the standby is gone.
        wait_standbys(&run, 2).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        run.cluster.restart(replica).await;
        // Back as a replica: the nodes take a standby on it again.
        wait_standbys(&run, 3).await;
        for (node, m) in run.finish(killed_at).await.into_iter().enumerate() {
            assert!(m.healthy >= 1.0, "node {node}: other shards delivered {:.2} %", m.healthy * 100.0);
            assert!(m.failed >= 1.0, "node {node}: the replica's shard delivered {:.2} %", m.failed * 100.0);
        }
    })
    .await;
}
