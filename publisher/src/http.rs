//! The publisher's HTTP endpoints: health, readiness, metrics, and
//! `POST /publish`, through which any backend can publish on a topic with
//! the same guarantees as the publisher's own messages.
//!
//! `orders.*` topics go through the order-update script (history, dedupe;
//! an optional `id` in the body makes a client's own retries safe too);
//! `quotes.*` also store the topic's snapshot; other topics are published
//! with the next `seq` only.

use std::borrow::Cow;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::time::Instant;
use wire::{ErrorCode, TopicFamily};

use service::telemetry::trace;

use crate::backplane::{self, OrderUpdate, WriteError};
use crate::outage;
use crate::state::Shared;

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let body = json!({
        "ready": shared.is_ready(),
        "replica": shared.replica_id,
        "redis_up": shared.outage.is_up(),
        "draining": shared.shutdown.is_cancelled(),
        "buffered_updates": shared.metrics.buffered_updates.get(),
    });
    let status = if shared.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

pub async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        shared.metrics.render(),
    )
        .into_response()
}

fn refuse(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    let message: String = message.into();
    (status, Json(json!({"error": {"code": code.as_str(), "message": message}}))).into_response()
}

/// `POST /publish` with `{"topic", "data": {…}, "traceparent"?, "id"?}`;
/// answers `{"topic", "seq"}`.
pub async fn publish(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let cfg = &shared.config;
    if let Err(denied) =
        wire::publish::authorize(authorization, cfg.publish_api_key.expose(), cfg.publish_insecure)
    {
        let status = StatusCode::from_u16(denied.status()).unwrap_or(StatusCode::FORBIDDEN);
        let (code, message) = denied.explain();
        return refuse(status, code, message);
    }
    let req = match wire::publish::parse(&body) {
        Ok(req) => req,
        Err((code, message)) => return refuse(StatusCode::BAD_REQUEST, code, message),
    };
    let topic = req.topic;
    // A `traceparent` header (or the body's) is continued by a publish span
    // whose context the envelope carries; one this service does not trace
    // is handed on unchanged.
    let incoming = headers.get("traceparent").and_then(|v| v.to_str().ok()).or(req.traceparent.as_deref());
    let traced = trace::publish(topic.as_str(), incoming);
    let traceparent = trace::hand_on(traced.as_ref().map(|t| &t.span), incoming);
    let traceparent = traceparent.as_deref();
    let result = match topic.family() {
        TopicFamily::Orders => {
            let id = req.id.map(Cow::into_owned).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let update = OrderUpdate::new(topic.clone(), id, req.data.get(), traceparent);
            write_update(&shared, update).await
        }
        family => {
            let quotes = family == TopicFamily::Quotes;
            let r = backplane::publish_one(
                &*shared.backplane,
                topic.as_str(),
                req.data.get(),
                traceparent,
                quotes,
            )
            .await;
            match &r {
                Ok(_) => {
                    shared.outage.succeeded();
                    if quotes {
                        shared.metrics.quotes_published.inc();
                    }
                }
                Err(e) => shared.outage.failed("http publish", e),
            }
            r
        }
    };
    match result {
        Ok(seq) => {
            shared.metrics.http_published.inc();
            Json(json!({"topic": topic.as_str(), "seq": seq})).into_response()
        }
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::BackplaneUnavailable, e.to_string()),
    }
}

/// Writes one order update, retrying (safely: the update has one id)
/// until Redis takes it or `redis_timeout` has passed.
async fn write_update(shared: &Shared, update: OrderUpdate) -> Result<u64, WriteError> {
    let deadline = Instant::now() + shared.config.redis_timeout();
    let mut backoff = outage::backoff(shared.config.redis_backoff_max());
    loop {
        match shared.backplane.write_updates(std::slice::from_ref(&update)).await {
            Ok(written) => {
                shared.outage.succeeded();
                let w = written.first().copied().ok_or_else(|| WriteError::Reply("no reply".into()))?;
                if w.duplicate {
                    shared.metrics.order_updates_deduplicated.inc();
                } else {
                    shared.metrics.order_updates_published.inc();
                }
                return Ok(w.seq);
            }
            Err(e) => {
                shared.outage.failed("http publish", &e);
                let delay = backoff.next_delay();
                if Instant::now() + delay >= deadline {
                    return Err(e);
                }
                shared.metrics.retries.inc();
                tokio::time::sleep(delay).await;
            }
        }
    }
}
