//! End to end on a Redis Cluster: a private 3-master cluster, the
//! `publisher` binary in cluster mode as its own process, and gateway
//! nodes in cluster mode with real WebSocket clients on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use testkit::process::Process;
use testkit::*;

/// The publisher binary, killed when dropped.
struct Publisher {
    _process: Process,
    addr: SocketAddr,
}

/// Starts the publisher on `cluster` and waits until its `/readyz` says
/// every master answers.
async fn start_publisher(cluster: &RedisCluster, env: &[(&str, &str)]) -> Publisher {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_publisher"));
    cmd.env("PUBLISHER_LISTEN", addr.to_string())
        .env("PUBLISHER_REDIS_CLUSTER", "true")
        .env("PUBLISHER_REDIS_URL", cluster.url_list())
        .env("PUBLISHER_CHANNEL_PREFIX", "rt:")
        .env("PUBLISHER_SYMBOLS", "AAPL,MSFT")
        .env("PUBLISHER_QUOTE_RATE", "0")
        .env("PUBLISHER_ORDER_RATE", "0")
        .env("PUBLISHER_FILL_DELAY_MS", "20")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let publisher = Publisher { _process: Process::adopt("publisher", cmd.spawn().unwrap()), addr };
    eventually("the publisher to be ready", || async move {
        // Not listening yet is not a failure (`http` would panic on it).
        tokio::net::TcpStream::connect(addr).await.ok()?;
        (http(addr, "GET", "/readyz", None, &[]).await.0 == 200).then_some(())
    })
    .await;
    publisher
}

async fn start_node(cluster: &RedisCluster) -> TestGateway {
    let mut config = redis_config(&cluster.url_list(), "rt:");
    config.redis_cluster = true;
    let gw = TestGateway::start(config).await;
    assert_eq!(gw.wait_metric("gateway_backplane_up", |v| v == 1.0).await, 1.0, "node never connected");
    gw
}

#[tokio::test]
async fn quote_subscriber_gets_the_snapshot_then_live_quotes() {
    let cluster = RedisCluster::start(3).await;
    let publisher = start_publisher(&cluster, &[("PUBLISHER_QUOTE_RATE", "200")]).await;
    let gw = start_node(&cluster).await;
    // Wait until the feed has stored a snapshot (on the master owning it).
    let conn = cluster.connection().await;
    let key = wire::keys::last_value("rt:", "quotes.AAPL");
    eventually("a stored quote", || {
        let mut conn = conn.clone();
        let key = key.clone();
        async move { redis::cmd("GET").arg(key).query_async::<Option<String>>(&mut conn).await.ok().flatten() }
    })
    .await;

    let mut c = gw.client().await;
    c.subscribe("quotes.AAPL").await;
    let snapshot = c.frame().await;
    assert_eq!((snapshot.kind.as_str(), snapshot.topic.as_deref()), ("message", Some("quotes.AAPL")));
    let data: serde_json::Value = serde_json::from_str(snapshot.data.unwrap().get()).unwrap();
    assert!(data["bid"].as_f64().unwrap() > 0.0 && data["ask"].as_f64() >= data["bid"].as_f64(), "{data}");
    let mut last = snapshot.seq.unwrap();
    for _ in 0..20 {
        let m = c.frame().await;
        let seq = m.seq.unwrap();
        assert_eq!(seq, last + 1, "live quotes follow the snapshot with no gap and no repeat");
        last = seq;
    }
    let (status, body) = http(publisher.addr, "GET", "/metrics", None, &[]).await;
    assert_eq!(status, 200);
    assert!(metric(&body, "publisher_quotes_published_total") >= 20.0, "{body}");
}

#[tokio::test]
async fn order_round_trips_through_either_node_then_its_updates() {
    let cluster = RedisCluster::start(3).await;
    let _publisher = start_publisher(&cluster, &[]).await;
    // Two nodes: each one's replies come on its own reply channel, which
    // lives on whichever master owns that channel's slot.
    let nodes = [start_node(&cluster).await, start_node(&cluster).await];
    for (n, gw) in nodes.iter().enumerate() {
        let account = format!("acct-e2e{n}");
        let mut c = gw.client().await;
        c.subscribe(&format!("orders.{account}")).await;
        c.send(&format!(
            r#"{{"action":"order","id":"o-{n}","order":{{"account":"{account}","symbol":"AAPL","side":"buy","qty":100,"price":189.1}}}}"#
        ))
        .await;
        // The reply and the order's updates travel on different shards
        // (the node's reply channel, the account's topic), so the first
        // update may overtake the reply: take them in any interleaving.
        let mut reply = None;
        let mut updates: Vec<(u64, serde_json::Value)> = Vec::new();
        while reply.is_none() || updates.last().is_none_or(|(_, u)| u["status"] != "filled") {
            let f = c.frame().await;
            match f.kind.as_str() {
                "reply" => {
                    assert!(reply.is_none(), "one reply: {f:?}");
                    assert_eq!(f.id.as_ref().unwrap().get(), format!(r#""o-{n}""#));
                    reply = Some(serde_json::from_str::<serde_json::Value>(f.data.unwrap().get()).unwrap());
                }
                "message" => {
                    assert_eq!(f.topic.as_deref(), Some(format!("orders.{account}").as_str()), "{f:?}");
                    updates.push((f.seq.unwrap(), serde_json::from_str(f.data.unwrap().get()).unwrap()));
                }
                _ => panic!("unexpected frame {f:?}"),
            }
        }
        let order_id = reply.unwrap()["order_id"].as_str().unwrap().to_string();
        let mut statuses = Vec::new();
        let mut seqs = Vec::new();
        for (seq, update) in updates {
            assert_eq!(update["order_id"], order_id.as_str());
            statuses.push(update["status"].as_str().unwrap().to_string());
            seqs.push(seq);
        }
        assert_eq!(statuses.first().map(String::as_str), Some("new"));
        assert!(statuses.iter().any(|s| s == "partially_filled"), "{statuses:?}");
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "per-account seq, no gap");

        // A refused order gets the service's specific code, with the id.
        c.send(&format!(
            r#"{{"action":"order","id":7,"order":{{"account":"{account}","symbol":"AAPL","side":"up","qty":1}}}}"#
        ))
        .await;
        let err = c.frame().await;
        assert_eq!((err.code.as_deref(), err.id.unwrap().get()), (Some("invalid_side"), "7"));
    }
    // The updates are in the topic's history too, for `since`.
    let mut late = nodes[1].client().await;
    late.send(r#"{"action":"subscribe","topic":"orders.acct-e2e0","since":0}"#).await;
    assert_eq!(late.frame().await.kind, "subscribed");
    let first = late.frame().await;
    assert_eq!((first.topic.as_deref(), first.seq), (Some("orders.acct-e2e0"), Some(1)));
}
