//! Several gateway nodes as real processes (`gateway` binary) on one
//! private backplane, with the `publisher` binary as the backend and, for
//! node loss and rolling restarts, a real haproxy in front: fan-out across
//! nodes, order replies back to the asking node, Redis subscriptions that
//! follow each node's local subscribers, clients that survive a SIGKILLed
//! node and a rolling restart without losing an order update.
//!
//! Every scenario runs twice: on a single redis-server (`…_single`) and on
//! a 3-master Redis Cluster (`…_cluster`, gateways and publisher in cluster
//! mode, raw publishes as `SPUBLISH`, subscription counts from `PUBSUB
//! SHARDNUMSUB` on the master owning the channel's slot).
//!
//! Every process is killed by its guard when the test ends or fails, and
//! each test is bounded in time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use testkit::process::{Balancer, GatewayNode, PublisherProcess, Scratch, publisher_bin};
use testkit::resilient::{Options, ResilientClient};
use testkit::*;
use tokio::time::Instant;

/// The most any test here may take, start to end.
const BOUND: Duration = Duration::from_secs(55);

/// Runs a test body, failing it if it takes longer than [`BOUND`]. The
/// panic comes while the body still holds its processes, so their guards
/// kill them knowing the test failed (and show their logs).
async fn bounded(body: impl Future<Output = ()>) {
    tokio::select! {
        () = body => {}
        () = tokio::time::sleep(BOUND) => panic!("test exceeded its time bound of {BOUND:?}"),
    }
}

/// Which backplane a scenario runs on.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Single,
    Cluster,
}

/// The Redis the nodes share: one private redis-server, or a private
/// 3-master Redis Cluster.
enum Backplane {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Backplane {
    async fn start(kind: Kind) -> Backplane {
        match kind {
            Kind::Single => Backplane::Single(RedisServer::start(false).await),
            Kind::Cluster => Backplane::Cluster(RedisCluster::start(3).await),
        }
    }

    /// `redis_url` for gateways and the publisher: the server's URL, or the
    /// cluster's comma-separated seed list.
    fn url(&self) -> String {
        match self {
            Backplane::Single(r) => r.url(),
            Backplane::Cluster(c) => c.url_list(),
        }
    }

    /// Settings a gateway node needs on this backplane.
    fn gateway_env(&self) -> Vec<(&'static str, &'static str)> {
        match self {
            Backplane::Single(_) => vec![],
            Backplane::Cluster(_) => vec![("GATEWAY_REDIS_CLUSTER", "true")],
        }
    }

    /// Settings the publisher needs on this backplane.
    fn publisher_env(&self) -> Vec<(&'static str, &'static str)> {
        match self {
            Backplane::Single(_) => vec![],
            Backplane::Cluster(_) => vec![("PUBLISHER_REDIS_CLUSTER", "true")],
        }
    }

    /// A connection that publishes as any backend would.
    async fn raw(&self) -> RawConnection {
        match self {
            Backplane::Single(r) => RawConnection::Single(r.connection().await.unwrap()),
            Backplane::Cluster(c) => RawConnection::Cluster(c.connection().await),
        }
    }

    /// Publishes `payload` on `channel` straight into Redis; returns how
    /// many subscriptions received it.
    async fn raw_publish(&self, channel: &str, payload: &str) -> i64 {
        self.raw().await.publish(channel, payload).await
    }

    /// How many subscriptions `channel` has: `PUBSUB NUMSUB`, or `PUBSUB
    /// SHARDNUMSUB` on the master owning the channel's slot.
    async fn numsub(&self, channel: &str) -> i64 {
        match self {
            Backplane::Single(r) => numsub(&mut r.connection().await.unwrap(), channel).await,
            Backplane::Cluster(c) => c.shard_numsub(channel).await,
        }
    }

    /// Polls [`Backplane::numsub`] until it equals `want` or WAIT passes;
    /// returns the last value.
    async fn wait_numsub(&self, channel: &str, want: i64) -> i64 {
        match self {
            Backplane::Single(r) => wait_numsub(&mut r.connection().await.unwrap(), channel, want).await,
            Backplane::Cluster(c) => c.wait_shard_numsub(channel, want).await,
        }
    }

    /// `GET key` as a number (routed to the owning master on a cluster).
    async fn get_u64(&self, key: &str) -> Option<u64> {
        let cmd = redis::cmd("GET").arg(key).clone();
        match self {
            Backplane::Single(r) => cmd.query_async(&mut r.connection().await.unwrap()).await.unwrap(),
            Backplane::Cluster(c) => cmd.query_async(&mut c.connection().await).await.unwrap(),
        }
    }
}

/// A publishing connection: `PUBLISH` on a single server, `SPUBLISH`
/// routed by slot on a cluster.
#[derive(Clone)]
enum RawConnection {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl RawConnection {
    async fn publish(&mut self, channel: &str, payload: &str) -> i64 {
        match self {
            RawConnection::Single(c) => {
                redis::cmd("PUBLISH").arg(channel).arg(payload).query_async(c).await.unwrap()
            }
            RawConnection::Cluster(c) => {
                redis::cmd("SPUBLISH").arg(channel).arg(payload).query_async(c).await.unwrap()
            }
        }
    }
}

/// A private backplane and `n` gateway nodes on it (node ids n1…nN).
struct Cluster {
    nodes: Vec<GatewayNode>,
    backplane: Backplane,
    prefix: String,
    /// Last, so logs outlive the processes that write them.
    scratch: Scratch,
}

impl Cluster {
    async fn start(kind: Kind, name: &str, n: usize, env: &[(&str, &str)]) -> Cluster {
        let scratch = Scratch::new(name);
        let backplane = Backplane::start(kind).await;
        let prefix = unique_prefix();
        let mut all: Vec<(&str, &str)> = backplane.gateway_env();
        all.extend_from_slice(env);
        let mut nodes = Vec::new();
        for i in 1..=n {
            let id = format!("n{i}");
            let bin = std::path::Path::new(env!("CARGO_BIN_EXE_gateway"));
            nodes.push(GatewayNode::start(bin, &id, &backplane.url(), &prefix, &all, &scratch.dir).await);
        }
        Cluster { nodes, backplane, prefix, scratch }
    }

    fn channel(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// Haproxy in front of every node.
    async fn balancer(&self) -> Balancer {
        let servers: Vec<(&str, std::net::SocketAddr)> =
            self.nodes.iter().map(|n| (n.node_id.as_str(), n.addr)).collect();
        Balancer::start(&servers, &self.scratch.dir).await
    }

    /// The publisher process with a quote feed and simulated orders.
    async fn publisher(&self, env: &[(&str, &str)]) -> PublisherProcess {
        let mut all: Vec<(&str, &str)> = self.backplane.publisher_env();
        all.extend_from_slice(env);
        PublisherProcess::start(&self.backplane.url(), &self.prefix, &all, &self.scratch.dir).await
    }

    /// The current `seq` counter of `topic` in Redis.
    async fn seq(&self, topic: &str) -> u64 {
        let key = wire::keys::seq_counter(&self.prefix, topic);
        self.backplane.get_u64(&key).await.unwrap_or(0)
    }
}

/// Two tests for one scenario: on a single redis-server and on a cluster.
macro_rules! on_both_backplanes {
    ($scenario:ident, $single:ident, $cluster:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $single() {
            $scenario(Kind::Single).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $cluster() {
            $scenario(Kind::Cluster).await;
        }
    };
}

fn data(frame: &wire::server::Frame) -> serde_json::Value {
    serde_json::from_str(frame.data.as_ref().unwrap().get()).unwrap()
}

on_both_backplanes!(
    a_message_published_once_reaches_every_node_exactly_once,
    a_message_published_once_reaches_every_node_exactly_once_single,
    a_message_published_once_reaches_every_node_exactly_once_cluster
);

async fn a_message_published_once_reaches_every_node_exactly_once(kind: Kind) {
    bounded(async {
        let cluster = Cluster::start(kind, "fanout", 3, &[]).await;
        let topic = "quotes.FAN";
        let mut clients = Vec::new();
        for node in &cluster.nodes {
            for _ in 0..2 {
                let mut c = Client::connect(&node.ws_url()).await;
                c.subscribe(topic).await;
                clients.push(c);
            }
        }
        let channel = cluster.channel(topic);
        assert_eq!(
            cluster.backplane.numsub(&channel).await,
            3,
            "one Redis subscription per node, not per client"
        );

        // Published once, through one node's HTTP API.
        let (status, body) = cluster.nodes[0].publish(topic, r#"{"bid":1.5}"#).await;
        assert_eq!(status, 200, "{body}");
        let seq = serde_json::from_str::<serde_json::Value>(&body).unwrap()["seq"].as_u64().unwrap();
        for c in &mut clients {
            let m = c.frame().await;
            assert_eq!((m.kind.as_str(), m.topic.as_deref(), m.seq), ("message", Some(topic), Some(seq)));
            assert_eq!(data(&m)["bid"], 1.5);
        }
        // The next one, straight into Redis as any backend would publish: it
        // is every client's very next frame, so the first came only once.
        let n = cluster.backplane.raw_publish(&channel, &envelope(topic, seq + 1, r#"{"bid":1.6}"#)).await;
        assert_eq!(n, 3, "Redis delivers it to the three nodes");
        for c in &mut clients {
            let m = c.frame().await;
            assert_eq!((m.topic.as_deref(), m.seq), (Some(topic), Some(seq + 1)), "{m:?}");
        }
    })
    .await;
}

on_both_backplanes!(
    an_order_gets_its_reply_on_the_node_it_was_placed_through,
    an_order_gets_its_reply_on_the_node_it_was_placed_through_single,
    an_order_gets_its_reply_on_the_node_it_was_placed_through_cluster
);

async fn an_order_gets_its_reply_on_the_node_it_was_placed_through(kind: Kind) {
    publisher_bin(); // built first if stale, outside the time bound
    bounded(async {
        let cluster = Cluster::start(kind, "orders", 3, &[]).await;
        let _publisher = cluster.publisher(&[]).await;
        let topic = "orders.acct-b";
        let mut clients = Vec::new();
        for node in &cluster.nodes {
            let mut c = Client::connect(&node.ws_url()).await;
            c.subscribe(topic).await;
            clients.push(c);
        }
        // One order through each node, all at once.
        for (i, c) in clients.iter_mut().enumerate() {
            c.send(&format!(
                r#"{{"action":"order","id":"via-n{}","order":{{"account":"acct-b","symbol":"AAPL","side":"buy","qty":100}}}}"#,
                i + 1
            ))
            .await;
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let own = format!(r#""via-n{}""#, i + 1);
            let mut replies = Vec::new();
            let mut filled = 0;
            // Each order's updates reach every node; each reply only its own.
            while replies.is_empty() || filled < 3 {
                let f = c.frame().await;
                match f.kind.as_str() {
                    "reply" => replies.push(f.id.unwrap().get().to_string()),
                    "message" if data(&f)["status"] == "filled" => filled += 1,
                    "message" => {}
                    _ => panic!("node n{}: unexpected {f:?}", i + 1),
                }
            }
            assert_eq!(replies, vec![own], "node n{} got exactly its own reply", i + 1);
            c.send(r#"{"action":"ping"}"#).await;
            assert_eq!(c.frame().await.kind, "pong", "nothing else was sent to node n{}", i + 1);
        }
    })
    .await;
}

on_both_backplanes!(
    a_node_releases_its_redis_subscription_when_its_last_subscriber_leaves,
    a_node_releases_its_redis_subscription_when_its_last_subscriber_leaves_single,
    a_node_releases_its_redis_subscription_when_its_last_subscriber_leaves_cluster
);

async fn a_node_releases_its_redis_subscription_when_its_last_subscriber_leaves(kind: Kind) {
    bounded(async {
        let cluster = Cluster::start(kind, "release", 3, &[("GATEWAY_UNSUBSCRIBE_GRACE_MS", "100")]).await;
        let topic = "quotes.REL";
        let channel = cluster.channel(topic);
        let mut clients = Vec::new();
        for node in &cluster.nodes {
            let mut pair = Vec::new();
            for _ in 0..2 {
                let mut c = Client::connect(&node.ws_url()).await;
                c.subscribe(topic).await;
                pair.push(c);
            }
            clients.push(pair);
        }
        let backplane = &cluster.backplane;
        assert_eq!(backplane.numsub(&channel).await, 3);

        // On n2: one subscriber unsubscribes, the other disconnects.
        let mut n2 = clients.remove(1);
        n2[0].unsubscribe(topic).await;
        n2[0].send(r#"{"action":"ping"}"#).await;
        assert_eq!(n2[0].frame().await.kind, "pong");
        assert_eq!(backplane.numsub(&channel).await, 3, "n2 still has a local subscriber");
        drop(n2.pop());
        assert_eq!(backplane.wait_numsub(&channel, 2).await, 2, "n2 released its subscription");
        eventually("n2 to count no topic", || async {
            (cluster.nodes[1].metric("gateway_topics").await == 0.0).then_some(())
        })
        .await;

        // n1 and n3 keep theirs and still deliver.
        let n = backplane.raw_publish(&channel, &envelope(topic, 7, "{}")).await;
        assert_eq!(n, 2);
        for c in clients.iter_mut().flatten() {
            assert_eq!(c.frame().await.seq, Some(7));
        }
        assert_eq!(backplane.numsub(&channel).await, 2);
        n2[0].send(r#"{"action":"ping"}"#).await;
        assert_eq!(n2[0].frame().await.kind, "pong", "the unsubscribed client got nothing more");
    })
    .await;
}

/// Order-update accounts of the simulated feed, and their topics.
const ACCOUNTS: [&str; 3] = ["orders.acct-1", "orders.acct-2", "orders.acct-3"];
const QUOTES: &str = "quotes.AAPL";

/// Waits until every client has seen every update published so far on
/// its order topics, then checks each was seen exactly once, from 1 on.
async fn assert_every_order_update_once(
    cluster: &Cluster,
    clients: &[ResilientClient],
    topics: &[Vec<&str>],
) {
    let mut targets = Vec::new();
    for topic in ACCOUNTS {
        targets.push((topic, cluster.seq(topic).await));
    }
    for (i, client) in clients.iter().enumerate() {
        for (topic, target) in targets.iter().filter(|(t, _)| topics[i].contains(t)) {
            eventually(&format!("client {i} to catch up on {topic} to seq {target}"), || async {
                (client.with(|r| r.last_seq(topic)).unwrap_or(0) >= *target).then_some(())
            })
            .await;
            let stream = client.with(|r| r.streams.get(*topic).cloned()).unwrap();
            assert_eq!(
                (stream.first, stream.duplicates, stream.gaps, stream.received),
                (Some(1), 0, 0, stream.last.unwrap()),
                "client {i} on {topic}: every seq from 1 exactly once: {stream:?}"
            );
        }
    }
}

on_both_backplanes!(
    clients_of_a_killed_node_reconnect_elsewhere_and_miss_no_order_update,
    clients_of_a_killed_node_reconnect_elsewhere_and_miss_no_order_update_single,
    clients_of_a_killed_node_reconnect_elsewhere_and_miss_no_order_update_cluster
);

async fn clients_of_a_killed_node_reconnect_elsewhere_and_miss_no_order_update(kind: Kind) {
    publisher_bin(); // built first if stale, outside the time bound
    bounded(async {
        let mut cluster = Cluster::start(kind, "node-loss", 3, &[]).await;
        let _publisher = cluster
            .publisher(&[
                ("PUBLISHER_QUOTE_RATE", "40"),
                ("PUBLISHER_ACCOUNTS", "3"),
                ("PUBLISHER_ORDER_RATE", "15"),
            ])
            .await;
        let lb = cluster.balancer().await;
        let mut options = Options::new(&lb.ws_url()).topic(QUOTES, None);
        for topic in ACCOUNTS {
            options = options.topic(topic, Some(0));
        }
        let clients: Vec<ResilientClient> =
            (0..12).map(|_| ResilientClient::spawn(options.clone())).collect();
        eventually("every client streaming quotes and orders", || async {
            clients
                .iter()
                .all(|c| {
                    c.is_streaming()
                        && c.with(|r| ACCOUNTS.iter().chain([&QUOTES]).all(|t| r.last_seq(t).is_some()))
                })
                .then_some(())
        })
        .await;

        let victim = cluster.nodes[1].node_id.clone();
        let on_victim: Vec<usize> =
            (0..clients.len()).filter(|&i| clients[i].node().as_deref() == Some(victim.as_str())).collect();
        assert!(on_victim.len() >= 2, "leastconn put only {} of 12 clients on {victim}", on_victim.len());
        let quote_before: Vec<u64> =
            on_victim.iter().map(|&i| clients[i].with(|r| r.last_seq(QUOTES)).unwrap()).collect();

        cluster.nodes[1].kill();
        let killed = Instant::now();
        for (k, &i) in on_victim.iter().enumerate() {
            let client = &clients[i];
            eventually(&format!("client {i} of {victim} to stream again from another node"), || async {
                client.with(|r| {
                    let s = r.current()?;
                    // A fresh snapshot, newer than the last quote seen before.
                    let snapshot = *s.first_seq.get(QUOTES)?;
                    (s.node != victim && s.subscribed == 4 && snapshot > quote_before[k]).then_some(())
                })
            })
            .await;
        }
        let recovered = killed.elapsed();
        for (i, c) in clients.iter().enumerate() {
            let sessions = c.with(|r| r.sessions.len());
            let expected = if on_victim.contains(&i) { 2 } else { 1 };
            assert_eq!(sessions, expected, "client {i}: only the killed node's clients reconnect, once");
        }
        let topics = vec![ACCOUNTS.to_vec(); clients.len()];
        assert_every_order_update_once(&cluster, &clients, &topics).await;
        eprintln!("{} clients of the killed node streaming again after {recovered:?}", on_victim.len());
    })
    .await;
}

on_both_backplanes!(
    a_rolling_restart_spreads_reconnects_and_loses_no_order_update,
    a_rolling_restart_spreads_reconnects_and_loses_no_order_update_single,
    a_rolling_restart_spreads_reconnects_and_loses_no_order_update_cluster
);

async fn a_rolling_restart_spreads_reconnects_and_loses_no_order_update(kind: Kind) {
    const DRAIN: Duration = Duration::from_millis(2_000);
    publisher_bin(); // built first if stale, outside the time bound
    bounded(async {
        let drain_ms = DRAIN.as_millis().to_string();
        let mut cluster = Cluster::start(kind, "rolling", 3, &[("GATEWAY_DRAIN_MS", &drain_ms)]).await;
        let _publisher = cluster
            .publisher(&[
                ("PUBLISHER_SYMBOLS", "AAPL"),
                ("PUBLISHER_QUOTE_RATE", "10"),
                ("PUBLISHER_ACCOUNTS", "3"),
                ("PUBLISHER_ORDER_RATE", "6"),
            ])
            .await;
        let lb = cluster.balancer().await;
        // 60 clients: each drained node holds 20 or more, so the spread of
        // their reconnects is no accident of a few draws.
        let topics: Vec<Vec<&str>> = (0..60).map(|i| vec![ACCOUNTS[i % 3]]).collect();
        let clients: Vec<ResilientClient> = topics
            .iter()
            .map(|t| {
                ResilientClient::spawn(Options::new(&lb.ws_url()).topic(t[0], Some(0)).topic(QUOTES, None))
            })
            .collect();
        eventually("every client streaming", || async {
            clients.iter().all(ResilientClient::is_streaming).then_some(())
        })
        .await;

        for n in 0..cluster.nodes.len() {
            let node_id = cluster.nodes[n].node_id.clone();
            let on_node: Vec<(usize, usize)> = clients
                .iter()
                .enumerate()
                .filter(|(_, c)| c.node().as_deref() == Some(node_id.as_str()))
                .map(|(i, c)| (i, c.with(|r| r.sessions.len())))
                .collect();
            assert!(on_node.len() >= 10, "only {} clients on {node_id} before its restart", on_node.len());

            let term = Instant::now();
            cluster.nodes[n].terminate();
            let status = cluster.nodes[n].wait_exit(DRAIN + Duration::from_secs(5)).await;
            assert!(
                status.is_some_and(|s| s.success()),
                "{node_id} did not drain and exit cleanly: {status:?}"
            );
            let mut reconnects = Vec::new();
            for &(i, before) in &on_node {
                let client = &clients[i];
                let (closed, reopened) = eventually(&format!("client {i} of {node_id} back"), || async {
                    client.with(|r| {
                        let old = &r.sessions[before - 1];
                        let new = r.sessions.get(before)?;
                        (r.is_streaming(2) && new.node != node_id).then(|| (old.clone(), new.opened))
                    })
                })
                .await;
                assert_eq!(closed.close_code, Some(1012), "client {i} closed with 1012 by {node_id}");
                let closed_after = closed.ended.unwrap() - term;
                assert!(closed_after <= DRAIN, "client {i} closed {closed_after:?} after SIGTERM");
                reconnects.push(reopened);
            }
            let first = *reconnects.iter().min().unwrap();
            let spread = *reconnects.iter().max().unwrap() - first;
            eprintln!(
                "{node_id}: {} clients reconnected over {spread:?} (drain window {DRAIN:?})",
                reconnects.len()
            );
            assert!(
                spread >= DRAIN / 4,
                "{} clients of {node_id} reconnected within {spread:?}: not spread over the drain window",
                reconnects.len()
            );
            cluster.nodes[n].restart().await;
            lb.wait_server(&node_id, "UP").await;
        }
        assert_every_order_update_once(&cluster, &clients, &topics).await;
    })
    .await;
}

on_both_backplanes!(
    a_draining_node_keeps_delivering_until_it_closes_each_client,
    a_draining_node_keeps_delivering_until_it_closes_each_client_single,
    a_draining_node_keeps_delivering_until_it_closes_each_client_cluster
);

/// A node draining after SIGTERM keeps serving the clients it has not
/// closed yet: messages published during the drain window still reach
/// them until their own 1012.
async fn a_draining_node_keeps_delivering_until_it_closes_each_client(kind: Kind) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    bounded(async {
        let mut cluster = Cluster::start(kind, "drain-delivery", 1, &[("GATEWAY_DRAIN_MS", "4000")]).await;
        let topic = "quotes.DRAIN";
        let mut clients = Vec::new();
        for _ in 0..6 {
            let mut c = Client::connect(&cluster.nodes[0].ws_url()).await;
            c.subscribe(topic).await;
            clients.push(c);
        }
        let term = Instant::now();
        cluster.nodes[0].terminate();
        // One message every 25 ms through the whole drain.
        let mut redis = cluster.backplane.raw().await;
        let channel = cluster.channel(topic);
        let feed = tokio::spawn(async move {
            for seq in 1.. {
                redis.publish(&channel, &envelope(topic, seq, "{}")).await;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        // Each client reads until its close: when it came, and what it got.
        let readers: Vec<_> = clients
            .into_iter()
            .map(|mut c| {
                tokio::spawn(async move {
                    let mut received = 0;
                    loop {
                        match tokio::time::timeout(WAIT, c.ws.next()).await {
                            Ok(Some(Ok(Message::Text(_)))) => received += 1,
                            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => break,
                            Ok(Some(Ok(_))) => {}
                            Err(_) => panic!("no close within {WAIT:?} of SIGTERM"),
                        }
                    }
                    (term.elapsed(), received)
                })
            })
            .collect();
        let mut results = Vec::new();
        for r in readers {
            results.push(r.await.unwrap());
        }
        feed.abort();
        // Closes are spread over the first 2 s: a client closed after 300 ms
        // has had a dozen messages published to it meanwhile.
        let starved: Vec<_> =
            results.iter().filter(|(at, n)| *at > Duration::from_millis(300) && *n == 0).collect();
        assert!(
            starved.is_empty(),
            "clients got nothing while the node drained (close time, messages): {results:?}"
        );
    })
    .await;
}
