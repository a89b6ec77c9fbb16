//! The accept loop: every TCP connection is admitted (or refused) the
//! moment it is accepted, not when it asks for a WebSocket, and every
//! HTTP request must arrive whole within `request_timeout_ms`.
//!
//! A connection that sends half a request and stops (the cheapest attack
//! on a WebSocket server: no handshake ever completes, the socket is held
//! for ever) is closed at the timeout, and while it waits it counts
//! toward `max_connections`, `max_connections_per_ip` and the per-address
//! cap on connections that have not upgraded yet (`max_pending_per_ip`),
//! so one address cannot take the node's files. Refused connections get
//! their status (503 full, 429 per address) from a small, bounded pool of
//! responders that still answer health and metrics probes; past that pool
//! they are closed at once. `accept()` failing (no files left) backs off
//! instead of spinning, logged once per episode.
//!
//! Written by hand on hyper's HTTP/1 connection builder because
//! `axum::serve` offers no header timeout and no hook at accept time.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::node::{Admission, Node, Refused};

/// Refused connections answered at once at most; more are closed unanswered.
const REFUSING_MAX: usize = 256;
/// How long a refused connection may take to send its request.
const REFUSING_TIMEOUT: Duration = Duration::from_secs(2);
/// Backoff bounds while `accept()` fails (e.g. EMFILE: no files left).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(20);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// An accepted connection's admission, until a WebSocket upgrade takes it
/// (the socket then lives on in the connection task, and so does its
/// count); dropped with the HTTP connection otherwise.
#[derive(Clone)]
pub struct AdmissionSlot(Arc<Mutex<Option<Admission>>>);

impl AdmissionSlot {
    /// Takes the admission (for the upgrade); `None` if already taken.
    pub fn take(&self) -> Option<Admission> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Serves `listener` with `app` (admitted connections) and `refusal`
/// (refused ones) until `shutdown` resolves, then stops accepting; open
/// HTTP connections are asked to finish by the node's drain signal, and
/// their admissions let the node's drain wait for them.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    app: Router,
    refusal: Router,
    shutdown: impl Future<Output = ()>,
) {
    let refusing = Arc::new(Semaphore::new(REFUSING_MAX));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut failing = false;
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "accept failed (out of files?); backing off until it works");
                        failing = true;
                    }
                    node.metrics.accept_errors.inc();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
        };
        if failing {
            tracing::info!("accepting again");
            failing = false;
        }
        backoff = ACCEPT_BACKOFF_MIN;
        // Market data is many small frames: without TCP_NODELAY, Nagle's
        // algorithm meets the client's delayed ACK and holds frames ~40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        match node.admit(peer.ip()) {
            Ok(admission) => {
                let slot = AdmissionSlot(Arc::new(Mutex::new(Some(admission))));
                let timeout = node.config.request_timeout();
                tokio::spawn(serve_connection(tcp, peer, app.clone(), slot, timeout, Arc::clone(&node)));
            }
            Err(refused) => {
                // Answer while that is cheap (the responder counts what it
                // refuses: probes still get their answer); under a flood
                // just close.
                if let Ok(permit) = Arc::clone(&refusing).try_acquire_owned() {
                    let refusal = refusal.clone();
                    let node = Arc::clone(&node);
                    tokio::spawn(async move {
                        let slot = AdmissionSlot(Arc::new(Mutex::new(None)));
                        let service = with_extensions(refusal, peer, slot, Some(refused));
                        serve_http(tcp, service, REFUSING_TIMEOUT, false, &node).await;
                        drop(permit);
                    });
                } else {
                    node.metrics.refused(refused.reason());
                }
            }
        }
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    slot: AdmissionSlot,
    timeout: Duration,
    node: Arc<Node>,
) {
    node.metrics.http_connections.inc();
    let service = with_extensions(app, peer, slot, None);
    serve_http(tcp, service, timeout, true, &node).await;
    node.metrics.http_connections.dec();
}

/// The router with what its handlers need to know of the connection in
/// every request: the peer, the admission slot and why it was refused.
fn with_extensions(
    router: Router,
    peer: SocketAddr,
    slot: AdmissionSlot,
    refused: Option<Refused>,
) -> impl tower::Service<Request<Incoming>, Response = Response, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    router.map_request(move |mut req: Request<Incoming>| {
        let extensions = req.extensions_mut();
        extensions.insert(ConnectInfo(peer));
        extensions.insert(slot.clone());
        if let Some(refused) = refused {
            extensions.insert(refused);
        }
        req.map(axum::body::Body::new)
    })
}

/// One HTTP/1.1 connection (upgradable to a WebSocket) whose request
/// headers must arrive within `timeout`; asked to finish at shutdown.
async fn serve_http<S>(tcp: TcpStream, service: S, timeout: Duration, keep_alive: bool, node: &Node)
where
    S: tower::Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(timeout).keep_alive(keep_alive);
    // hyper's own HTTP/1 connection (not hyper-util's auto one, which wraps
    // the stream in a private type): its upgrade hands back the TcpStream.
    let conn = builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service)).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = node.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        let timed_out = e.is_timeout();
        if timed_out {
            node.metrics.request_timeouts.inc();
        }
        tracing::debug!(error = %e, timed_out, "HTTP connection ended with an error");
    }
}

/// Errors of one connection that came and went before `accept()` returned
/// it; nothing to back off from.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}
