//! The glue: builds a node (hub, broker, metrics) from its config, routes
//! HTTP and WebSocket requests, and runs until the shutdown future
//! resolves, then drains: stop admitting, close clients with 1012 spread
//! over the drain window, wait for them up to its end.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Extension, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::FutureExt;
use futures_util::future::Either;
use publisher::Engine;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::memory::MemoryBroker;
use crate::broker::redis::RedisBroker;
use crate::broker::redis_cluster::RedisClusterBroker;
use crate::broker::{Broker, Sink, Wiring};
use crate::config::Config;
use crate::hub::Hub;
use crate::inbound::Inbound;
use crate::listener::{self, AdmissionSlot};
use crate::metrics::Metrics;
use crate::node::{Node, NodeParts, Refused};
use crate::requests::Requests;
use crate::topics::Topics;
use crate::{connection, demo, http, page, ws};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    #[error("demo: {0}")]
    Demo(#[from] publisher::backplane::WriteError),
    #[error("demo tokens: {0}")]
    DemoToken(#[from] jsonwebtoken::errors::Error),
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
}

/// Builds the node for `config`: the Redis backplane when a URL is set
/// (the Redis Cluster one with `redis_cluster`), the in-memory one
/// otherwise; and the demo's engine when the node runs it.
/// `drain` starts the clients' drain; `stop` ends the backplane, which must
/// keep delivering to draining clients until the last one is closed.
pub fn build_node(
    mut config: Config,
    drain: CancellationToken,
    stop: CancellationToken,
) -> Result<(Arc<Node>, Option<Engine>), ServerError> {
    let id =
        if config.node_id.is_empty() { uuid::Uuid::new_v4().to_string() } else { config.node_id.clone() };
    let tokens = config.demo_token_enabled().then(|| {
        if config.jwt_secret.is_empty() {
            config.jwt_secret = demo::ephemeral_secret();
        } else {
            tracing::warn!(
                "demo_token is on with your jwt_secret: anyone who reaches this node can act as `demo`"
            );
        }
        demo::Tokens::new(&config.jwt_secret)
    });
    let tokens = tokens.transpose()?;
    let metrics = Arc::new(Metrics::default());
    let hub = Arc::new(Hub::new(Arc::clone(&metrics), &id));
    let requests = Arc::new(Requests::default());
    // What the broker receives goes here: the hub, the requests, the gap fill.
    let inbound =
        Inbound::new(Arc::clone(&hub), Arc::clone(&requests), Arc::clone(&metrics), config.replay_limit);
    let sink: Arc<dyn Sink> = Arc::clone(&inbound) as Arc<dyn Sink>;
    let mut engine = None;
    let broker: Arc<dyn Broker> = if !config.uses_redis() {
        if config.demo_enabled() {
            let (orders, desk) = demo::order_desk(&requests);
            let memory = Arc::new(MemoryBroker::new(sink, Some(orders)));
            let publisher = demo::publisher_config(&config, &id);
            engine = Some(demo::start_in_memory(publisher, Arc::clone(&memory), desk));
            memory
        } else {
            Arc::new(MemoryBroker::new(sink, None))
        }
    } else {
        let wiring = Wiring { node_id: &id, sink, metrics: Arc::clone(&metrics), shutdown: stop };
        if config.redis_cluster {
            Arc::new(RedisClusterBroker::start(&config, wiring)?)
        } else {
            Arc::new(RedisBroker::start(&config, wiring)?)
        }
    };
    if engine.is_none() && config.demo_enabled() {
        engine = Some(demo::start_on_redis(demo::publisher_config(&config, &id))?);
    }
    inbound.attach(&broker);
    let topics = Arc::new(Topics::new(hub, Arc::clone(&broker), inbound));
    let parts = NodeParts { config, id, broker, topics, requests, metrics, tokens };
    Ok((Arc::new(Node::new(parts, drain)), engine))
}

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/client.js", get(page::client_js))
        .route("/app.js", get(page::app_js))
        .route("/style.css", get(page::style_css))
        .route("/demo/token", get(http::demo_token))
        .route("/ws", get(upgrade))
        .route("/channels", get(upgrade))
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/metrics", get(http::metrics))
        .route("/publish", post(http::publish))
        .with_state(node)
}

/// Serves `listener` until `shutdown` resolves, then drains.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let token = CancellationToken::new();
    let backplane = CancellationToken::new();
    // Whatever way run() ends, the backplane tasks end with it.
    let _stop_backplane = backplane.clone().drop_guard();
    let (node, demo) = build_node(config, token.clone(), backplane)?;
    tracing::info!(
        addr = %listener.local_addr()?,
        node = %node.id,
        backplane = node.broker.kind(),
        max_connections = node.max_connections,
        "gateway listening"
    );
    if node.config.jwt_secret.is_empty() {
        tracing::warn!("authentication is off (no jwt_secret): every topic, orders.* included, is open");
    }
    if node.config.publish_api_key.is_empty() && node.config.publish_insecure {
        tracing::warn!("POST /publish is open to anyone who reaches this port (publish_insecure)");
    }
    let signal = {
        let token = token.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: closing clients over the drain window");
            token.cancel();
        }
    };
    listener::serve(
        listener,
        Arc::clone(&node),
        router(Arc::clone(&node)),
        refusal_router(Arc::clone(&node)),
        signal,
    )
    .await;
    node.tracker.close();
    if tokio::time::timeout(node.config.drain(), node.tracker.wait()).await.is_err() {
        tracing::warn!(left = node.tracker.len(), "drain window ended with connections still open");
    }
    if let Some(demo) = demo {
        demo.stop().await;
    }
    Ok(())
}

/// What a refused connection is served: health and metrics probes still
/// answer (a full node is alive, and says why it is not ready), anything
/// else gets the refusal's status, and the connection closes.
pub fn refusal_router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/metrics", get(http::metrics))
        .fallback(refuse_connection)
        .with_state(node)
}

async fn refuse_connection(State(node): State<Arc<Node>>, refused: Option<Extension<Refused>>) -> Response {
    let refused = refused.map_or(Refused::Full, |Extension(r)| r);
    node.metrics.refused(refused.reason());
    let mut response = refusal(refused);
    response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    response
}

fn refusal(refused: Refused) -> Response {
    let (status, why) = match refused {
        Refused::Draining => (StatusCode::SERVICE_UNAVAILABLE, "node is draining"),
        Refused::Full => (StatusCode::SERVICE_UNAVAILABLE, "node is at max_connections"),
        Refused::PerIp => (StatusCode::TOO_MANY_REQUESTS, "too many connections from this address"),
        Refused::PendingPerIp => {
            (StatusCode::TOO_MANY_REQUESTS, "too many unfinished connections from this address")
        }
    };
    (status, why).into_response()
}

async fn upgrade(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(slot): Extension<AdmissionSlot>,
    RawQuery(query): RawQuery,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    let accept = match ws::handshake::check(request.method(), request.version(), headers) {
        Ok(accept) => accept,
        Err(refusal) => return refusal.into_response(),
    };
    if let Some(origin) = headers.get(header::ORIGIN)
        && !origin_allowed(&node.config.allowed_origins, origin.to_str().unwrap_or(""))
    {
        node.metrics.refused("origin");
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    // A connection admitted before the drain began may still ask.
    if node.shutdown.is_cancelled() {
        node.metrics.refused(Refused::Draining.reason());
        return refusal(Refused::Draining);
    }
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = crate::auth::token_from(query.as_deref(), authorization);
    let Some(on_upgrade) = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return (StatusCode::UPGRADE_REQUIRED, "this connection cannot be upgraded").into_response();
    };
    // One upgrade per connection: hyper hands the socket over with it.
    let Some(mut admission) = slot.take() else {
        return (StatusCode::BAD_REQUEST, "this connection was upgraded already").into_response();
    };
    admission.upgraded();
    // A refused token still gets the upgrade, so a browser client can read
    // why in the close frame (1008) instead of an opaque failed handshake.
    let identity = node.auth.authenticate(token.as_deref());
    let cfg = &node.config;
    let limits = ws::Limits {
        max_message: cfg.max_frame_bytes,
        read_chunk: cfg.ws_read_buffer_bytes,
        write_gather: cfg.ws_write_buffer_bytes,
    };
    // The upgrade completes once hyper has written the 101 below. A
    // combinator, not an async block: the task holds either the wait for
    // the upgrade or the connection, never both.
    let connection = on_upgrade.then(move |upgraded| match upgraded {
        Ok(upgraded) => {
            let socket = ws::Socket::new(upgraded, limits);
            Either::Left(connection::serve(socket, node, peer, identity, admission))
        }
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            Either::Right(std::future::ready(()))
        }
    });
    tokio::spawn(connection);
    ws::handshake::switching(&accept)
}

/// Whether a browser's `Origin` may connect: any when the list is empty.
fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed.is_empty() || allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
}
