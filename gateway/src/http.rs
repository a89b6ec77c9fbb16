//! The node's plain HTTP endpoints: health, readiness, metrics and the
//! publish API (`POST /publish`), which lets a backend publish through
//! any node without speaking Redis, and makes a single memory-backed
//! node useful on its own.

use std::sync::Arc;

use axum::Json;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use service::telemetry::trace;
use tracing::{Instrument, Span};
use wire::ErrorCode;

use crate::broker::Publish;
use crate::node::Node;

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(node): State<Arc<Node>>) -> Response {
    let draining = node.shutdown.is_cancelled();
    let backplane_up = node.broker.is_ready();
    let body = json!({
        "ready": !draining && backplane_up,
        "node": node.id,
        "backplane": node.broker.kind(),
        "backplane_up": backplane_up,
        "shards_down": node.broker.down_shards(),
        "draining": draining,
    });
    let status = if node.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

pub async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        node.metrics.render(),
    )
        .into_response()
}

fn refuse(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    let message: String = message.into();
    (status, Json(json!({"error": {"code": code.as_str(), "message": message}}))).into_response()
}

fn refuse_publish(denied: wire::publish::Denied) -> Response {
    let status = StatusCode::from_u16(denied.status()).unwrap_or(StatusCode::FORBIDDEN);
    let (code, message) = denied.explain();
    refuse(status, code, message)
}

/// A request body of at most `limit` bytes that arrives within `timeout`:
/// a client trickling a body must not hold the connection for ever.
async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, Response> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::InvalidFrame,
            format!("the body is over {limit} bytes or was cut short"),
        )),
        Err(_) => {
            Err(refuse(StatusCode::REQUEST_TIMEOUT, ErrorCode::Timeout, "the body did not arrive in time"))
        }
    }
}

/// `POST /publish` with `{"topic": …, "data": {…}, "traceparent"?, "id"?}`;
/// answers `{"topic", "seq"}`.
///
/// A `traceparent` request header (or else the body's field) is
/// continued by a `gateway.publish` span when sampled, and the envelope
/// carries that span's context, so every node's fan-out is its child;
/// untraced, a valid incoming one is written into the envelope as is.
pub async fn publish(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    // The one-command demo opens it to this machine only.
    let open = node.config.publish_insecure || (node.config.demo_enabled() && peer.ip().is_loopback());
    if let Err(denied) = wire::publish::authorize(authorization, node.config.publish_api_key.expose(), open) {
        return refuse_publish(denied);
    }
    let body = match read_body(body, node.config.max_frame_bytes, node.config.request_timeout()).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let req = match wire::publish::parse(&body) {
        Ok(req) => req,
        Err((code, message)) => return refuse(StatusCode::BAD_REQUEST, code, message),
    };
    let incoming = headers.get("traceparent").and_then(|v| v.to_str().ok()).or(req.traceparent.as_deref());
    let span = trace::sample(req.topic.family().into(), incoming).map(|sampled| {
        let span = tracing::info_span!(
            target: trace::TARGET,
            "gateway.publish",
            otel.kind = "server",
            messaging.destination.name = req.topic.as_str(),
            node.id = %node.id,
        );
        sampled.attach(&span);
        span
    });
    let traceparent = trace::hand_on(span.as_ref(), incoming);
    let published = node
        .broker
        .publish(Publish {
            topic: &req.topic,
            data_json: req.data.get(),
            traceparent: traceparent.as_deref(),
            id: req.id.as_deref(),
        })
        .instrument(span.unwrap_or_else(Span::none))
        .await;
    match published {
        Ok(seq) => {
            node.metrics.http_published.inc();
            Json(json!({"topic": req.topic.as_str(), "seq": seq})).into_response()
        }
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::BackplaneUnavailable, e.to_string()),
    }
}

/// `GET /demo/token`: a short-lived token for the demo account, when this
/// node hands them out (404 otherwise, and the page asks for a token).
pub async fn demo_token(State(node): State<Arc<Node>>) -> Response {
    let Some(tokens) = &node.tokens else {
        return refuse(StatusCode::NOT_FOUND, ErrorCode::NotSupported, "this node hands out no demo tokens");
    };
    match tokens.issue() {
        Ok(issued) => ([(header::CACHE_CONTROL, "no-store")], Json(issued)).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, e.to_string()),
    }
}
