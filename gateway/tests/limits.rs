//! Per-client limits against a live node: each refusal has its code and
//! metric, and well-behaved clients are served throughout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use testkit::*;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn status_of(err: tokio_tungstenite::tungstenite::Error) -> u16 {
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => resp.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn browser_origins_outside_the_allowlist_are_refused() {
    let config = gateway::Config { allowed_origins: vec!["https://good.example".into()], ..memory_config() };
    let gw = TestGateway::start(config).await;
    let with_origin = |origin: &str| {
        let mut req = gw.ws_url().into_client_request().unwrap();
        req.headers_mut().insert("Origin", origin.parse().unwrap());
        req
    };
    let err = tokio_tungstenite::connect_async(with_origin("https://evil.example")).await.unwrap_err();
    assert_eq!(status_of(err), 403);
    let (ws, _) = tokio_tungstenite::connect_async(with_origin("https://good.example")).await.unwrap();
    assert_eq!(Client { ws }.frame().await.kind, "welcome");
    gw.client().await; // no Origin: not a browser, not checked
    assert_eq!(gw.metric(r#"gateway_connections_refused_total{code="origin"}"#).await, 1.0);
}

/// Connects from a chosen loopback source address.
async fn connect_from(
    gw: &TestGateway,
    source: &str,
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(gw.addr).await.unwrap();
    let (ws, _) =
        tokio_tungstenite::client_async(gw.ws_url(), tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await?;
    let mut c = Client { ws };
    assert_eq!(c.frame().await.kind, "welcome");
    Ok(c)
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let gw = TestGateway::start(gateway::Config { max_connections_per_ip: 2, ..memory_config() }).await;
    let a = connect_from(&gw, "127.0.0.1").await.unwrap();
    let _b = connect_from(&gw, "127.0.0.1").await.unwrap();
    let err = connect_from(&gw, "127.0.0.1").await.err().unwrap();
    assert_eq!(status_of(err), 429);
    let _other = connect_from(&gw, "127.0.0.2").await.unwrap();
    drop(a);
    // The freed slot is usable again once the node saw the disconnect.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if connect_from(&gw, "127.0.0.1").await.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(gw.metric(r#"gateway_connections_refused_total{code="per_ip"}"#).await >= 1.0);
}

#[tokio::test]
async fn command_floods_are_rate_limited() {
    let gw = TestGateway::start(gateway::Config { max_commands_per_sec: 10, ..memory_config() }).await;
    let mut c = gw.client().await;
    for _ in 0..30 {
        c.send(r#"{"action":"ping"}"#).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    for _ in 0..30 {
        let f = c.frame().await;
        match (f.kind.as_str(), f.code.as_deref()) {
            ("pong", _) => pongs += 1,
            ("error", Some("rate_limited")) => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((10..=13).contains(&pongs), "about one burst passes: {pongs}");
    assert_eq!(pongs + limited, 30);
    assert_eq!(gw.metric(r#"gateway_client_errors_total{code="rate_limited"}"#).await, f64::from(limited));
}

#[tokio::test]
async fn a_client_that_keeps_sending_garbage_is_closed_4003() {
    let gw = TestGateway::start(gateway::Config { max_client_errors: 5, ..memory_config() }).await;
    let mut good = gw.client().await;
    good.subscribe("quotes.A").await;
    let mut bad = gw.client().await;
    for _ in 0..5 {
        bad.send("garbage").await;
    }
    for _ in 0..5 {
        assert_eq!(bad.frame().await.code.as_deref(), Some("invalid_json"));
    }
    assert_eq!(bad.close_code().await, Some(4003));
    gw.publish("quotes.A", "{}").await;
    assert_eq!(good.frame().await.seq, Some(1));
}
