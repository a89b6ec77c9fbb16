//! `POST /publish` is closed unless a key is configured or the operator
//! opened it; the one-command demo opens it to loopback clients only; a
//! body that trickles in is cut off at `request_timeout_ms`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use gateway::config::Switch;
use testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BODY: &str = r#"{"topic":"quotes.A","data":{"bid":1}}"#;

fn code(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["error"]["code"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn closed_by_default_open_with_its_key() {
    let closed = gateway::Config { publish_insecure: false, ..memory_config() };
    let gw = TestGateway::start(closed.clone()).await;
    let (status, body) = http(gw.addr, "POST", "/publish", Some(BODY), &[]).await;
    assert_eq!((status, code(&body).as_str()), (403, "forbidden"), "{body}");
    let keyed = gateway::Config { publish_api_key: "k3y".into(), ..closed };
    let gw = TestGateway::start(keyed).await;
    let (status, body) = http(gw.addr, "POST", "/publish", Some(BODY), &[]).await;
    assert_eq!((status, code(&body).as_str()), (401, "unauthorized"), "{body}");
    let (status, body) =
        http(gw.addr, "POST", "/publish", Some(BODY), &[("Authorization", "Bearer k3y")]).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn the_demo_opens_it_to_loopback_clients() {
    let demo = gateway::Config { demo: Switch::On, publish_insecure: false, ..memory_config() };
    let gw = TestGateway::start(demo).await;
    let (status, body) = http(gw.addr, "POST", "/publish", Some(BODY), &[]).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off() {
    let config = gateway::Config { request_timeout_ms: 300, ..memory_config() };
    let gw = TestGateway::start(config).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!("POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", BODY.len());
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&BODY.as_bytes()[..5]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test]
async fn an_unfinished_request_is_closed_at_the_timeout() {
    let config = gateway::Config { request_timeout_ms: 300, ..memory_config() };
    let gw = TestGateway::start(config).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the node kept an unfinished request open");
    assert_eq!(gw.wait_metric("gateway_request_timeouts_total", |v| v >= 1.0).await, 1.0);
}
