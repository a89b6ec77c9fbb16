//! The client protocol against a live node on the in-memory backplane:
//! every action of the contract, and every kind of bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_util::SinkExt;
use testkit::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn welcome_then_ping_pong() {
    let gw = TestGateway::start(memory_config()).await;
    let (ws, _) = tokio_tungstenite::connect_async(gw.ws_url()).await.unwrap();
    let mut client = Client { ws };
    let welcome = client.frame().await;
    assert_eq!(welcome.kind, "welcome");
    assert!(welcome.node.as_deref().is_some_and(|n| !n.is_empty()));
    let session = welcome.session.unwrap();
    assert!(uuid::Uuid::parse_str(&session).is_ok(), "session is a uuid: {session}");
    client.send(r#"{"action":"ping"}"#).await;
    assert_eq!(client.text().await, r#"{"type":"pong"}"#);
}

#[tokio::test]
async fn two_clients_exchange_messages_through_the_node() {
    let gw = TestGateway::start(memory_config()).await;
    let mut a = gw.client().await;
    let mut b = gw.client().await;
    a.subscribe("quotes.AAPL").await;
    b.subscribe("quotes.AAPL").await;
    let (status, body) = gw.publish("quotes.AAPL", r#"{"symbol":"AAPL","bid":189.1,"ask":189.2}"#).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""seq":1"#), "{body}");
    gw.publish("quotes.AAPL", r#"{"symbol":"AAPL","bid":189.2,"ask":189.3}"#).await;
    for client in [&mut a, &mut b] {
        for want_seq in [1, 2] {
            let text = client.text().await;
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["type"], "message");
            assert_eq!(v["topic"], "quotes.AAPL");
            assert_eq!(v["seq"], want_seq);
            assert!(v["ts"].as_u64().unwrap() > 1_700_000_000_000);
            assert_eq!(v["data"]["symbol"], "AAPL");
            // Exactly the contract's fields, nothing else.
            assert_eq!(v.as_object().unwrap().len(), 5, "{text}");
        }
    }
}

#[tokio::test]
async fn channels_path_and_identifier_alias() {
    let gw = TestGateway::start(memory_config()).await;
    let mut c = Client::connect(&format!("ws://{}/channels", gw.addr)).await;
    c.send(r#"{"action":"subscribe","identifier":"quotes.MSFT"}"#).await;
    let f = c.frame().await;
    assert_eq!((f.kind.as_str(), f.topic.as_deref()), ("subscribed", Some("quotes.MSFT")));
    gw.publish("quotes.MSFT", r#"{"p":1}"#).await;
    let m = c.frame().await;
    assert_eq!((m.kind.as_str(), m.topic.as_deref(), m.seq), ("message", Some("quotes.MSFT"), Some(1)));
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let gw = TestGateway::start(memory_config()).await;
    let mut c = gw.client().await;
    c.subscribe("quotes.A").await;
    c.subscribe("quotes.B").await;
    c.unsubscribe("quotes.A").await;
    gw.publish("quotes.A", r#"{"p":1}"#).await;
    gw.publish("quotes.B", r#"{"p":2}"#).await;
    let m = c.frame().await;
    assert_eq!(m.topic.as_deref(), Some("quotes.B"), "only B is still subscribed");
    c.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(gw.metric("gateway_subscriptions").await, 1.0);
    assert_eq!(gw.metric("gateway_topics").await, 1.0);
}

#[tokio::test]
async fn bad_input_gets_stable_codes_and_keeps_the_connection() {
    let config = gateway::Config { max_subscriptions: 3, ..memory_config() };
    let gw = TestGateway::start(config).await;
    let mut c = gw.client().await;
    c.subscribe("quotes.KEEP").await;

    c.expect_error("{not json", "invalid_json").await;
    c.expect_error("", "invalid_json").await;
    c.expect_error("[1,2,3]", "invalid_frame").await;
    c.expect_error("\"subscribe\"", "invalid_frame").await;
    c.expect_error(r#"{"action":7}"#, "invalid_frame").await;
    c.expect_error(r#"{"topic":"quotes.X"}"#, "unknown_action").await;
    c.expect_error(r#"{"action":"publish","topic":"quotes.X"}"#, "unknown_action").await;
    c.expect_error(r#"{"action":"subscribe"}"#, "invalid_topic").await;
    c.expect_error(r#"{"action":"subscribe","topic":""}"#, "invalid_topic").await;
    let long = "q".repeat(129);
    let f = c.expect_error(&format!(r#"{{"action":"subscribe","topic":"{long}"}}"#), "invalid_topic").await;
    assert!(f.message.unwrap().contains("128"));
    let f = c.expect_error(r#"{"action":"subscribe","topic":"quotes/AAPL"}"#, "invalid_topic").await;
    assert_eq!(f.topic.as_deref(), Some("quotes/AAPL"), "the offending topic is echoed");
    c.expect_error(r#"{"action":"subscribe","topic":"quotes.ÄPFEL"}"#, "invalid_topic").await;
    c.expect_error(r#"{"action":"subscribe","topic":5}"#, "invalid_frame").await;
    c.expect_error(r#"{"action":"subscribe","topic":"quotes.KEEP"}"#, "already_subscribed").await;
    c.expect_error(r#"{"action":"unsubscribe","topic":"quotes.NOPE"}"#, "not_subscribed").await;
    c.subscribe("quotes.S2").await;
    c.subscribe("quotes.S3").await;
    let f = c.expect_error(r#"{"action":"subscribe","topic":"quotes.S4"}"#, "too_many_subscriptions").await;
    assert_eq!(f.topic.as_deref(), Some("quotes.S4"));
    let f = c.expect_error(r#"{"action":"order","id":"o1","order":{"qty":1}}"#, "not_supported").await;
    assert_eq!(f.id.map(|id| id.get().to_string()).as_deref(), Some(r#""o1""#), "order errors echo the id");
    c.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let f = c.frame().await;
    assert_eq!(f.code.as_deref(), Some("binary_not_supported"));

    // After all that, the earlier subscription still works.
    gw.publish("quotes.KEEP", r#"{"still":"here"}"#).await;
    let m = c.frame().await;
    assert_eq!((m.kind.as_str(), m.topic.as_deref()), ("message", Some("quotes.KEEP")));
    // And every refusal was counted by code.
    assert_eq!(gw.metric(r#"gateway_client_errors_total{code="invalid_json"}"#).await, 2.0);
    assert_eq!(gw.metric(r#"gateway_client_errors_total{code="invalid_topic"}"#).await, 5.0);
    assert_eq!(gw.metric(r#"gateway_client_errors_total{code="binary_not_supported"}"#).await, 1.0);
}

#[tokio::test]
async fn oversize_frame_closes_1009_and_spares_others() {
    let config = gateway::Config { max_frame_bytes: 1024, ..memory_config() };
    let gw = TestGateway::start(config).await;
    let mut bystander = gw.client().await;
    bystander.subscribe("quotes.A").await;
    let mut big = gw.client().await;
    big.subscribe("quotes.A").await;
    let payload = format!(r#"{{"action":"subscribe","topic":"{}"}}"#, "x".repeat(2000));
    big.send(&payload).await;
    assert_eq!(big.close_code().await, Some(1009));
    // The offender's subscription is released; the bystander is untouched.
    assert_eq!(gw.wait_metric("gateway_subscriptions", |v| v == 1.0).await, 1.0);
    gw.publish("quotes.A", r#"{"p":1}"#).await;
    assert_eq!(bystander.frame().await.seq, Some(1));
}

#[tokio::test]
async fn silent_client_is_dropped_by_heartbeat() {
    // The timeout is generous so `alive`, which answers pings only while the
    // test reads from it, survives the metric checks on a loaded machine.
    let config = gateway::Config { ping_interval_ms: 200, ping_timeout_ms: 1_000, ..memory_config() };
    let gw = TestGateway::start(config).await;
    let mut alive = gw.client().await;
    alive.subscribe("quotes.A").await;
    // A client that subscribes and then never reads (so never answers a ping).
    let mut silent = gw.client().await;
    silent.subscribe("quotes.A").await;
    silent.subscribe("quotes.B").await;
    // `alive` keeps reading: tungstenite answers pings while it polls.
    alive.expect_silence(Duration::from_millis(2_500)).await;
    assert_eq!(gw.wait_metric(r#"gateway_closes_total{code="heartbeat_timeout"}"#, |v| v >= 1.0).await, 1.0);
    assert_eq!(gw.wait_metric("gateway_connections", |v| v == 1.0).await, 1.0);
    assert_eq!(
        gw.metric("gateway_subscriptions").await,
        1.0,
        "the silent client's subscriptions are released"
    );
    assert_eq!(gw.metric("gateway_topics").await, 1.0);
    gw.publish("quotes.A", r#"{"p":1}"#).await;
    assert_eq!(alive.frame().await.seq, Some(1));
    drop(silent);
}

#[tokio::test]
async fn max_connections_refuses_cleanly() {
    let config = gateway::Config { max_connections: 2, ..memory_config() };
    let gw = TestGateway::start(config).await;
    let mut a = gw.client().await;
    let _b = gw.client().await;
    let err = tokio_tungstenite::connect_async(gw.ws_url()).await.unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 503),
        other => panic!("expected HTTP 503, got {other}"),
    }
    assert_eq!(gw.metric(r#"gateway_connections_refused_total{code="full"}"#).await, 1.0);
    // Existing clients are not disturbed.
    a.send(r#"{"action":"ping"}"#).await;
    assert_eq!(a.frame().await.kind, "pong");
}

#[tokio::test]
async fn shutdown_closes_clients_with_1012() {
    let mut gw = TestGateway::start(gateway::Config { drain_ms: 600, ..memory_config() }).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = gw.client().await;
        c.subscribe("quotes.A").await;
        clients.push(c);
    }
    let (status, _) = gw.get("/readyz").await;
    assert_eq!(status, 200);
    gw.begin_shutdown();
    for c in &mut clients {
        assert_eq!(c.close_code().await, Some(1012));
    }
    // run() returns within the drain window once everyone is gone.
    let task = std::mem::replace(&mut gw.task, tokio::spawn(async {}));
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn health_ready_metrics_and_publish_validation() {
    let gw = TestGateway::start(memory_config()).await;
    assert_eq!(gw.get("/healthz").await.0, 200);
    let (status, body) = gw.get("/readyz").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""backplane":"memory""#), "{body}");
    let (status, body) = gw.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "gateway_connections",
        "gateway_subscriptions",
        "gateway_topics",
        "gateway_backplane_messages_total",
        "gateway_frames_sent_total",
        "gateway_frames_dropped_total",
        "gateway_backplane_reconnects_total",
        "process_cpu_seconds_total",
    ] {
        assert!(body.contains(name), "missing {name}");
    }
    let bad = [
        ("not json", "invalid_json"),
        (r#"{"topic":"quotes.A"}"#, "invalid_frame"),
        (r#"{"topic":"bad topic","data":{}}"#, "invalid_topic"),
        (r#"{"topic":"quotes.A","data":[1]}"#, "invalid_frame"),
    ];
    for (body, code) in bad {
        let (status, resp) = http(gw.addr, "POST", "/publish", Some(body), &[]).await;
        assert_eq!(status, 400, "{body}");
        assert!(resp.contains(code), "{body}: {resp}");
    }
}

#[tokio::test]
async fn publish_api_key_is_enforced_when_set() {
    let gw =
        TestGateway::start(gateway::Config { publish_api_key: "s3cret".into(), ..memory_config() }).await;
    let body = r#"{"topic":"quotes.A","data":{}}"#;
    assert_eq!(gw.publish("quotes.A", "{}").await.0, 401);
    let (status, _) =
        http(gw.addr, "POST", "/publish", Some(body), &[("Authorization", "Bearer nope")]).await;
    assert_eq!(status, 401);
    let (status, _) =
        http(gw.addr, "POST", "/publish", Some(body), &[("Authorization", "Bearer s3cret")]).await;
    assert_eq!(status, 200);
    let (_, metrics) = gw.get("/metrics").await;
    assert!(!metrics.contains("s3cret"), "secrets never appear in /metrics");
}

/// The fan-out writes frames to an idle client's socket itself; when a
/// client stops reading, a frame goes out in part and the rest is left to
/// the connection's task, which writes it before its own reply (here the
/// pong), then what queued meanwhile: the client reads whole frames, in
/// order, and the pong among them.
#[tokio::test]
async fn frames_the_fan_out_wrote_in_part_are_finished_before_the_next_reply() {
    // Frames larger than what the socket takes at once: on loopback the
    // first direct write of a 900 KB frame to a client that does not read
    // takes ~110 KB (seen with a temporary print).
    let gw = TestGateway::start(gateway::Config { max_frame_bytes: 2 << 20, ..memory_config() }).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gw.addr).await.unwrap();
    let url = format!("ws://{}/ws", gw.addr);
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream)).await.unwrap();
    let mut c = Client { ws };
    assert_eq!(c.frame().await.kind, "welcome");
    c.subscribe("quotes.BIG").await;
    let data = format!(r#"{{"pad":"{}"}}"#, "x".repeat(900_000));
    const PUBLISHED: u64 = 8;
    for _ in 0..PUBLISHED {
        let (status, body) = gw.publish("quotes.BIG", &data).await;
        assert_eq!(status, 200, "{body}");
    }
    assert!(gw.metric("gateway_frames_direct_total").await > 0.0, "the fan-out wrote some itself");
    c.send(r#"{"action":"ping"}"#).await;
    // Quotes may conflate while queued; the last one is always sent.
    let (mut last, mut pong) = (0, false);
    while last < PUBLISHED {
        let f = c.frame().await;
        match f.kind.as_str() {
            "pong" => pong = true,
            "message" => {
                let seq = f.seq.unwrap();
                assert!(seq > last, "in order: {seq} after {last}");
                last = seq;
            }
            other => panic!("unexpected {other}"),
        }
    }
    if !pong {
        assert_eq!(c.frame().await.kind, "pong");
    }
}
