//! The Redis Cluster backplane against a real 3-master cluster: sharded
//! pub/sub delivery to every node exactly once, sharded subscriptions that
//! follow local subscribers, snapshots and `since` replay through the
//! cluster, and topics spread over every master.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use testkit::*;

fn cluster_config(cluster: &RedisCluster) -> gateway::Config {
    gateway::Config { redis_cluster: true, ..redis_config(&cluster.url_list(), "rt:") }
}

async fn start_node(cluster: &RedisCluster) -> TestGateway {
    let gw = TestGateway::start(cluster_config(cluster)).await;
    assert_eq!(gw.wait_metric("gateway_backplane_up", |v| v == 1.0).await, 1.0, "node never connected");
    gw
}

/// SPUBLISHes `payload` on `channel` through a cluster connection, which
/// routes it to the master owning the channel's slot; returns how many
/// subscribers that shard had.
async fn spublish(cluster: &RedisCluster, channel: &str, payload: &str) -> i64 {
    let mut conn = cluster.connection().await;
    redis::cmd("SPUBLISH").arg(channel).arg(payload).query_async(&mut conn).await.unwrap()
}

#[tokio::test]
async fn a_message_published_once_reaches_every_node_exactly_once() {
    let cluster = RedisCluster::start(3).await;
    let a = start_node(&cluster).await;
    let b = start_node(&cluster).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    for c in [&mut on_a, &mut on_b] {
        c.subscribe("quotes.X").await;
        c.subscribe("orders.acct1").await;
    }

    // Through one node's POST /publish (the scripts SPUBLISH).
    let (status, body) = a.publish("quotes.X", r#"{"p":1}"#).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = b.publish("orders.acct1", r#"{"o":1}"#).await;
    assert!(body.contains(r#""seq":1"#), "{body}");
    // A backend's own SPUBLISH, sent to the master that owns the slot.
    let subscribers = spublish(&cluster, "rt:quotes.X", &envelope("quotes.X", 2, r#"{"p":2}"#)).await;
    assert_eq!(subscribers, 2, "one sharded subscription per node");

    for c in [&mut on_a, &mut on_b] {
        let mut got = Vec::new();
        for _ in 0..3 {
            let m = c.frame().await;
            assert_eq!(m.kind, "message", "{m:?}");
            got.push((m.topic.unwrap(), m.seq.unwrap()));
        }
        got.sort();
        assert_eq!(
            got,
            [("orders.acct1".to_string(), 1), ("quotes.X".to_string(), 1), ("quotes.X".to_string(), 2)]
        );
        c.expect_silence(Duration::from_millis(200)).await;
    }
    // Messages came in through the backplane, not a local shortcut.
    assert_eq!(a.metric("gateway_backplane_messages_total").await, 3.0);
    assert_eq!(b.metric("gateway_backplane_messages_total").await, 3.0);
}

#[tokio::test]
async fn a_sharded_subscription_follows_local_subscribers() {
    let cluster = RedisCluster::start(3).await;
    let gw = start_node(&cluster).await;
    let channel = "rt:quotes.NUM";
    assert_eq!(cluster.shard_numsub(channel).await, 0);

    let mut a = gw.client().await;
    a.subscribe("quotes.NUM").await;
    // `subscribed` is sent only after the shard confirmed the SSUBSCRIBE.
    assert_eq!(cluster.shard_numsub(channel).await, 1);
    let mut b = gw.client().await;
    b.subscribe("quotes.NUM").await;
    assert_eq!(
        cluster.shard_numsub(channel).await,
        1,
        "one sharded subscription however many local subscribers"
    );

    a.unsubscribe("quotes.NUM").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cluster.shard_numsub(channel).await, 1, "b still holds the topic");
    drop(b); // a disconnect releases too
    assert_eq!(cluster.wait_shard_numsub(channel, 0).await, 0, "the last one leaving releases it");
    assert_eq!(gw.metric("gateway_topics").await, 0.0);

    // Back again: a fresh SSUBSCRIBE, and messages flow.
    a.subscribe("quotes.NUM").await;
    assert_eq!(cluster.shard_numsub(channel).await, 1);
    spublish(&cluster, channel, &envelope("quotes.NUM", 1, "{}")).await;
    assert_eq!(a.frame().await.seq, Some(1));
}

#[tokio::test]
async fn snapshots_and_since_replay_work_through_the_cluster() {
    let cluster = RedisCluster::start(3).await;
    let a = start_node(&cluster).await;
    let b = start_node(&cluster).await;
    for bid in 1..=3 {
        let (status, body) = a.publish("quotes.SNAP", &format!(r#"{{"bid":{bid}}}"#)).await;
        assert_eq!(status, 200, "{body}");
    }
    for n in 1..=5 {
        a.publish("orders.acct7", &format!(r#"{{"n":{n}}}"#)).await;
    }

    // On the other node: the latest quote at once, then live ones.
    let mut c = b.client().await;
    c.subscribe("quotes.SNAP").await;
    let snap = c.frame().await;
    assert_eq!((snap.kind.as_str(), snap.seq), ("message", Some(3)));
    assert_eq!(snap.data.unwrap().get(), r#"{"bid":3}"#);
    a.publish("quotes.SNAP", r#"{"bid":4}"#).await;
    assert_eq!(c.frame().await.seq, Some(4));

    // `since`: what was missed from the history, then live, no gap, no repeat.
    c.send(r#"{"action":"subscribe","topic":"orders.acct7","since":2}"#).await;
    assert_eq!(c.frame().await.kind, "subscribed");
    for want in 3..=5 {
        let m = c.frame().await;
        assert_eq!((m.topic.as_deref(), m.seq), (Some("orders.acct7"), Some(want)));
    }
    a.publish("orders.acct7", r#"{"n":6}"#).await;
    assert_eq!(c.frame().await.seq, Some(6));
    c.expect_silence(Duration::from_millis(150)).await;
}

#[tokio::test]
async fn topics_spread_over_every_master() {
    let cluster = RedisCluster::start(3).await;
    // Two topics per master, picked by where their channel's slot lives.
    let mut per_master: Vec<Vec<String>> = vec![Vec::new(); cluster.nodes.len()];
    for i in 0.. {
        let topic = format!("quotes.S{i}");
        let owner = cluster.owner_of(&format!("rt:{topic}")).await;
        if per_master[owner].len() < 2 {
            per_master[owner].push(topic);
        }
        if per_master.iter().all(|t| t.len() == 2) {
            break;
        }
    }
    let topics: Vec<String> = per_master.concat();
    let gw = start_node(&cluster).await;
    let mut c = gw.client().await;
    for t in &topics {
        c.subscribe(t).await;
    }
    for (node, owned) in per_master.iter().enumerate() {
        let mut conn = cluster.node_connection(node).await;
        let mut channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("SHARDCHANNELS")
            .arg("rt:quotes.*")
            .query_async(&mut conn)
            .await
            .unwrap();
        channels.sort();
        let mut want: Vec<String> = owned.iter().map(|t| format!("rt:{t}")).collect();
        want.sort();
        assert_eq!(channels, want, "master {node} serves exactly its own topics");
    }
    // Each published through the node's scripts, each delivered once.
    for t in &topics {
        let (status, body) = gw.publish(t, r#"{"x":1}"#).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut got: Vec<String> = Vec::new();
    for _ in 0..topics.len() {
        let m = c.frame().await;
        assert_eq!(m.seq, Some(1));
        got.push(m.topic.unwrap());
    }
    got.sort();
    let mut want = topics.clone();
    want.sort();
    assert_eq!(got, want);
    c.expect_silence(Duration::from_millis(150)).await;
}

/// A topic name `quotes.<stem><n>` whose channel lives on master `node`
/// (or, with `on == false`, on any other master).
async fn topic_on(cluster: &RedisCluster, stem: &str, node: usize, on: bool) -> String {
    for i in 0.. {
        let topic = format!("quotes.{stem}{i}");
        if (cluster.owner_of(&format!("rt:{topic}")).await == node) == on {
            return topic;
        }
    }
    unreachable!()
}

#[tokio::test]
async fn a_master_restart_turns_readiness_off_then_subscriptions_come_back() {
    let mut cluster = RedisCluster::start(3).await;
    let gw = start_node(&cluster).await;
    let mut c = gw.client().await;
    c.subscribe("quotes.RST").await;
    let owner = cluster.owner_of("rt:quotes.RST").await;
    spublish(&cluster, "rt:quotes.RST", &envelope("quotes.RST", 1, "{}")).await;
    assert_eq!(c.frame().await.seq, Some(1));

    cluster.kill(owner);
    eventually("readiness to drop", || {
        let addr = gw.addr;
        async move { (http(addr, "GET", "/readyz", None, &[]).await.0 == 503).then_some(()) }
    })
    .await;
    // The client stays connected while a shard is away.
    c.send(r#"{"action":"ping"}"#).await;
    assert_eq!(c.frame().await.kind, "pong");
    // A topic on a live shard is subscribed at once and flows; one on the
    // dead shard is recorded (the client is told `subscribed`) and
    // subscribed when its master is back.
    let (alive, dead) =
        (topic_on(&cluster, "UP", owner, false).await, topic_on(&cluster, "DN", owner, true).await);
    let mut d = gw.client().await;
    d.subscribe(&alive).await;
    d.subscribe(&dead).await;
    // redis-rs may swap a live master's link while it repairs the dead
    // one, losing a subscription confirmed just before; the node's health
    // check finds the link short and subscribes again.
    assert_eq!(cluster.wait_shard_numsub(&format!("rt:{alive}"), 1).await, 1);
    assert_eq!(spublish(&cluster, &format!("rt:{alive}"), &envelope(&alive, 1, "{}")).await, 1);
    assert_eq!(d.frame().await.topic.as_deref(), Some(alive.as_str()));

    cluster.restart(owner).await;
    eventually("readiness to return", || {
        let addr = gw.addr;
        async move { (http(addr, "GET", "/readyz", None, &[]).await.0 == 200).then_some(()) }
    })
    .await;
    for channel in ["rt:quotes.RST".to_string(), format!("rt:{dead}")] {
        assert_eq!(
            cluster.wait_shard_numsub(&channel, 1).await,
            1,
            "{channel} subscribed on the restarted master"
        );
    }
    spublish(&cluster, "rt:quotes.RST", &envelope("quotes.RST", 2, "{}")).await;
    assert_eq!(c.frame().await.seq, Some(2));
    spublish(&cluster, &format!("rt:{dead}"), &envelope(&dead, 1, "{}")).await;
    assert_eq!(d.frame().await.topic.as_deref(), Some(dead.as_str()));
    assert!(gw.metric("gateway_backplane_reconnects_total").await >= 1.0);
}
