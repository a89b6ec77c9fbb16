//! How loadgen fails: loss above `--max-loss` (seq gaps published
//! through a Redis-backed gateway, and gaps plus duplicates from a fake
//! gateway), an unreachable target, a remote target without
//! `--allow-remote`; and `--help` documenting every flag.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use loadgen::Summary;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_gaps_through_a_redis_gateway_fail_max_loss() {
    let redis = TestRedis::get().await;
    let prefix = unique_prefix();
    let gw = start_gateway(redis_config(&redis.url(), &prefix)).await;
    let json = temp_path("gaps.json");
    let mut child = loadgen_command(&[
        "--url",
        &gw.ws_url(),
        "--connections",
        "20",
        "--topics-per-conn",
        "2",
        "--quote-topics",
        "2",
        "--duration",
        "4s",
        "--json",
        json.to_str().unwrap(),
    ])
    .spawn()
    .unwrap();

    // The status line says when measuring began: every subscription is
    // acknowledged, so the gateway holds its Redis subscriptions.
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let wait_measure = async {
        let mut seen = String::new();
        while let Some(line) = stderr.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("] measure") {
                return seen;
            }
        }
        panic!("loadgen ended before measuring: {seen}");
    };
    let mut log = tokio::time::timeout(Duration::from_secs(60), wait_measure).await.expect("measuring began");

    let mut conn = redis.connection().await;
    for topic in ["quotes.SYM0", "quotes.SYM1"] {
        for seq in [1, 2, 4] {
            let envelope = wire::envelope::encode(topic, seq, wire::now_ms(), r#"{"bid":1.0}"#, None);
            let _: i64 = redis::cmd("PUBLISH")
                .arg(wire::keys::channel(&prefix, topic))
                .arg(envelope)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }

    let rest = async {
        while let Ok(Some(line)) = stderr.next_line().await {
            log.push_str(&line);
            log.push('\n');
        }
        log
    };
    let log = tokio::time::timeout(RUN_BOUND, rest).await.unwrap();
    let status = tokio::time::timeout(RUN_BOUND, child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(3), "exit 3 is loss above --max-loss: {log}");
    assert!(log.contains("above --max-loss"), "{log}");
    let summary: Summary = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let m = &summary.messages;
    // 20 connections × 2 topics, each missing seq 3.
    assert_eq!((m.received, m.lost, m.duplicates), (120, 40, 0), "{summary:#?}");
    assert!((m.loss_ratio - 40.0 / 160.0).abs() < 1e-9, "{}", m.loss_ratio);
}

/// A stand-in gateway: answers every subscribe, then sends seq 1, 2, 2, 4.
async fn fake_gateway_with_gaps() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                let welcome = wire::server::welcome("fake", "s");
                if ws.send(Message::text(welcome)).await.is_err() {
                    return;
                }
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Text(text) = msg else { continue };
                    let Ok(wire::client::Command::Subscribe { topic, .. }) = wire::client::parse(&text)
                    else {
                        continue;
                    };
                    let mut frames = vec![wire::server::subscribed(topic.as_str())];
                    for seq in [1, 2, 2, 4] {
                        frames.push(wire::envelope::message_frame(topic.as_str(), seq, wire::now_ms(), "{}"));
                    }
                    for frame in frames {
                        if ws.send(Message::text(frame)).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_and_duplicates_are_counted_per_connection_and_topic() {
    let addr = fake_gateway_with_gaps().await;
    let json = temp_path("fake.json");
    let url = format!("ws://{addr}/ws");
    let args = ["--url", &url, "-c", "10", "-k", "3", "--quote-topics", "5", "-d", "1s", "-q"];
    let run = loadgen(&[&args[..], &["--json", json.to_str().unwrap()]].concat()).await;
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    let summary: Summary = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let m = &summary.messages;
    assert_eq!((m.received, m.lost, m.duplicates), (120, 30, 30), "{summary:#?}");
    assert_eq!(summary.connections.closed_clean, 10, "{summary:#?}");

    // The same loss is fine when tolerated.
    let run = loadgen(&[&args[..], &["--max-loss", "0.5"]].concat()).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[tokio::test]
async fn an_unreachable_target_exits_non_zero_with_a_clear_message() {
    let url = format!("ws://127.0.0.1:{}/ws", free_port());
    let run = loadgen(&["--url", &url, "--connections", "5", "--duration", "2s", "--quiet"]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("no connection established"), "{}", run.stderr);
    assert!(run.stderr.contains(&url) && run.stderr.contains("refused"), "{}", run.stderr);
}

#[tokio::test]
async fn remote_targets_are_refused_without_allow_remote() {
    for args in [
        &["--url", "ws://10.20.30.40:8080/ws"][..],
        &["--url", "ws://gateway.example.com/ws"][..],
        &["--publish-http", "http://192.168.1.1/publish", "--publish-rate", "1"][..],
        &["--publish-redis", "redis://10.0.0.1:6379", "--publish-rate", "1"][..],
    ] {
        let run = loadgen(args).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(run.stderr.contains("--allow-remote"), "{args:?}: {}", run.stderr);
    }
}

#[tokio::test]
async fn help_documents_every_flag() {
    let run = loadgen(&["--help"]).await;
    assert_eq!(run.code, Some(0));
    for flag in [
        "--url",
        "--connections",
        "--ramp",
        "--topics-per-conn",
        "--quote-topics",
        "--order-topics",
        "--dist",
        "--zipf-s",
        "--seed",
        "--duration",
        "--settle-timeout",
        "--drain",
        "--connect-timeout",
        "--backoff-initial",
        "--backoff-max",
        "--no-reconnect",
        "--source-ips",
        "--read-buffer",
        "--token",
        "--jwt-secret",
        "--workers",
        "--publish-rate",
        "--publish-http",
        "--publish-redis",
        "--publish-api-key",
        "--channel-prefix",
        "--redis-seq",
        "--publish-conns",
        "--payload-bytes",
        "--max-loss",
        "--allow-remote",
        "--json",
        "--output",
        "--quiet",
    ] {
        assert!(run.stdout.contains(flag), "{flag} missing from --help");
    }
    assert!(!run.stdout.contains("--worker-index"), "internal flag stays hidden");
    let run = loadgen(&["sweep", "--help"]).await;
    for flag in ["--steps", "--step-duration", "--step-pause", "--csv"] {
        assert!(run.stdout.contains(flag), "{flag} missing from sweep --help");
    }
}
