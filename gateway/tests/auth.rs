//! Authentication and topic permissions against a live node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use testkit::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "test-secret";

fn token(secret: &str, sub: &str, exp: u64) -> String {
    let claims = serde_json::json!({"sub": sub, "exp": exp});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn now_secs() -> u64 {
    wire::now_ms() / 1000
}

fn auth_config() -> gateway::Config {
    gateway::Config { jwt_secret: SECRET.into(), ..memory_config() }
}

#[tokio::test]
async fn orders_are_readable_only_by_their_account() {
    let gw = TestGateway::start(auth_config()).await;
    let alice = token(SECRET, "alice", now_secs() + 3600);
    let mut c = Client::connect(&format!("{}?token={alice}", gw.ws_url())).await;
    c.subscribe("orders.alice").await;
    let f = c.expect_error(r#"{"action":"subscribe","topic":"orders.bob"}"#, "forbidden").await;
    assert_eq!(f.topic.as_deref(), Some("orders.bob"));
    c.subscribe("quotes.AAPL").await; // public

    let mut anon = gw.client().await;
    anon.expect_error(r#"{"action":"subscribe","topic":"orders.alice"}"#, "unauthorized").await;
    anon.subscribe("quotes.AAPL").await;
    anon.expect_error(r#"{"action":"order","id":1,"order":{"qty":1}}"#, "unauthorized").await;

    gw.publish("orders.alice", r#"{"status":"new"}"#).await;
    let m = c.frame().await;
    assert_eq!((m.kind.as_str(), m.topic.as_deref()), ("message", Some("orders.alice")));
    assert_eq!(gw.metric(r#"gateway_client_errors_total{code="forbidden"}"#).await, 1.0);
}

#[tokio::test]
async fn bearer_header_works_too() {
    let gw = TestGateway::start(auth_config()).await;
    let mut req = gw.ws_url().into_client_request().unwrap();
    let bob = token(SECRET, "bob", now_secs() + 3600);
    req.headers_mut().insert("Authorization", format!("Bearer {bob}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut c = Client { ws };
    assert_eq!(c.frame().await.kind, "welcome");
    c.subscribe("orders.bob").await;
}

#[tokio::test]
async fn bad_or_expired_tokens_close_with_1008() {
    let gw = TestGateway::start(auth_config()).await;
    let bad = [
        token("wrong-secret", "alice", now_secs() + 3600),
        token(SECRET, "alice", now_secs() - 3600),
        "not-a-jwt".to_string(),
    ];
    for t in bad {
        let (ws, _) = tokio_tungstenite::connect_async(format!("{}?token={t}", gw.ws_url())).await.unwrap();
        let mut c = Client { ws };
        let f = c.frame().await;
        assert_eq!((f.kind.as_str(), f.code.as_deref()), ("error", Some("unauthorized")), "{f:?}");
        assert_eq!(c.close_code().await, Some(1008));
    }
    assert_eq!(gw.metric(r#"gateway_closes_total{code="policy_violation"}"#).await, 3.0);
}

#[tokio::test]
async fn a_token_expiring_mid_connection_closes_it() {
    let config = gateway::Config { jwt_leeway_secs: 0, ..auth_config() };
    let gw = TestGateway::start(config).await;
    let short = token(SECRET, "carol", now_secs() + 2);
    let mut c = Client::connect(&format!("{}?token={short}", gw.ws_url())).await;
    c.subscribe("orders.carol").await;
    let f = c.frame().await;
    assert_eq!(f.code.as_deref(), Some("unauthorized"), "{f:?}");
    assert_eq!(c.close_code().await, Some(1008));
    assert_eq!(gw.wait_metric("gateway_subscriptions", |v| v == 0.0).await, 0.0);
}

#[tokio::test]
async fn private_mode_needs_a_token_for_every_topic() {
    let gw = TestGateway::start(gateway::Config { public_topics: false, ..auth_config() }).await;
    let mut anon = gw.client().await;
    anon.expect_error(r#"{"action":"subscribe","topic":"quotes.AAPL"}"#, "unauthorized").await;
    let dave = token(SECRET, "dave", now_secs() + 3600);
    let mut c = Client::connect(&format!("{}?token={dave}", gw.ws_url())).await;
    c.subscribe("quotes.AAPL").await;
}

#[tokio::test]
async fn orders_act_for_the_tokens_account() {
    let server = TestRedis::get().await;
    let prefix = unique_prefix();
    let config = gateway::Config { jwt_secret: SECRET.into(), ..redis_config(&server.url(), &prefix) };
    let gw = TestGateway::start(config).await;
    assert_eq!(gw.wait_metric("gateway_backplane_up", |v| v == 1.0).await, 1.0);
    let erin = token(SECRET, "erin", now_secs() + 3600);
    let mut c = Client::connect(&format!("{}?token={erin}", gw.ws_url())).await;
    // The order names another account; the request carries the token's.
    c.send(r#"{"action":"order","id":"x","order":{"account":"mallory","symbol":"A","side":"buy","qty":1}}"#)
        .await;
    let mut conn = server.connection().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let raw: String = loop {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(wire::keys::order_requests(&prefix))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        if let Some(entry) = reply.ids.first() {
            break entry.get(wire::orders::REQUEST_FIELD).unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "no order request reached the stream");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let req: wire::orders::OrderRequest = serde_json::from_str(&raw).unwrap();
    assert_eq!(req.account.as_deref(), Some("erin"));
}
