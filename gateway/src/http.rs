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
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use wire::{ErrorCode, Topic};

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

#[derive(Deserialize)]
struct PublishRequest<'a> {
    #[serde(borrow)]
    topic: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default, borrow)]
    traceparent: Option<std::borrow::Cow<'a, str>>,
}

fn refuse(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    let message: String = message.into();
    (status, Json(json!({"error": {"code": code.as_str(), "message": message}}))).into_response()
}

/// `POST /publish` with `{"topic": …, "data": {…}}`; answers `{"topic", "seq"}`.
pub async fn publish(State(node): State<Arc<Node>>, headers: HeaderMap, body: Bytes) -> Response {
    let key = node.config.publish_api_key.expose();
    if !key.is_empty() {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
            return refuse(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "missing or wrong Bearer key");
        }
    }
    let req: PublishRequest<'_> = match serde_json::from_slice(&body) {
        Ok(req) => req,
        Err(e) if e.is_data() => {
            return refuse(StatusCode::BAD_REQUEST, ErrorCode::InvalidFrame, e.to_string());
        }
        Err(e) => return refuse(StatusCode::BAD_REQUEST, ErrorCode::InvalidJson, e.to_string()),
    };
    let topic = match Topic::parse(&req.topic) {
        Ok(t) => t,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, ErrorCode::InvalidTopic, e.to_string()),
    };
    if !req.data.get().starts_with('{') {
        return refuse(StatusCode::BAD_REQUEST, ErrorCode::InvalidFrame, "data must be a JSON object");
    }
    match node.broker.publish(&topic, req.data.get(), req.traceparent.as_deref()).await {
        Ok(seq) => {
            node.metrics.http_published.inc();
            Json(json!({"topic": topic.as_str(), "seq": seq})).into_response()
        }
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::BackplaneUnavailable, e.to_string()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
