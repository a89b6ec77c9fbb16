//! The node's plain HTTP endpoints: health, readiness, metrics and the
//! publish API (`POST /publish`), which lets a backend publish through
//! any node without speaking Redis, and makes a single memory-backed
//! node useful on its own.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use wire::ErrorCode;

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

/// `POST /publish` with `{"topic": …, "data": {…}, "traceparent"?, "id"?}`;
/// answers `{"topic", "seq"}`.
pub async fn publish(State(node): State<Arc<Node>>, headers: HeaderMap, body: Bytes) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !wire::publish::bearer_matches(authorization, node.config.publish_api_key.expose()) {
        return refuse(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "missing or wrong Bearer key");
    }
    let req = match wire::publish::parse(&body) {
        Ok(req) => req,
        Err((code, message)) => return refuse(StatusCode::BAD_REQUEST, code, message),
    };
    let published =
        node.broker.publish(&req.topic, req.data.get(), req.traceparent.as_deref(), req.id.as_deref()).await;
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
