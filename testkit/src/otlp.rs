//! A real OTLP trace receiver: it speaks OTLP/gRPC (the collector's
//! `TraceService`) and OTLP/HTTP with protobuf bodies (`POST /v1/traces`),
//! keeps what it receives, and shows it as JSON on a query port: all
//! spans on `GET /spans`, and the subset of Jaeger's query API that a
//! test reads (`/api/services`, `/api/traces?service=…`,
//! `/api/traces/{id}`), so it can stand in for Jaeger.
//!
//! Tests start it in-process with [`OtlpReceiver::start`]; the
//! `otlp-receiver` binary runs the same code on fixed ports. It keeps at
//! most `max_spans` spans (the oldest go first), and refuses bodies it
//! cannot decode with the status OTLP prescribes (400, 415), never a
//! panic.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Which OTLP transport a span arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Grpc,
    Http,
}

/// One received span, flattened.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root.
    pub parent_span_id: String,
    pub name: String,
    /// `SPAN_KIND_SERVER`, …
    pub kind: String,
    /// The resource's `service.name`.
    pub service: String,
    pub transport: Transport,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: BTreeMap<String, Value>,
    pub resource: BTreeMap<String, Value>,
    /// `(trace_id, span_id)` of each link.
    pub links: Vec<(String, String)>,
}

impl ReceivedSpan {
    /// An attribute as a string (numbers and booleans rendered).
    pub fn attr(&self, key: &str) -> Option<String> {
        self.attributes.get(key).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

/// The spans received so far, shared by the servers and the queries.
#[derive(Clone)]
pub struct Store {
    spans: Arc<Mutex<VecDeque<ReceivedSpan>>>,
    max_spans: usize,
}

impl Store {
    pub fn new(max_spans: usize) -> Store {
        Store { spans: Arc::default(), max_spans: max_spans.max(1) }
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
    }

    pub fn clear(&self) {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    fn add(&self, request: ExportTraceServiceRequest, transport: Transport) -> usize {
        let mut added = Vec::new();
        for rs in request.resource_spans {
            let resource = rs.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
            let service = resource.get("service.name").and_then(Value::as_str).unwrap_or("").to_owned();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    added.push(ReceivedSpan {
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name,
                        kind: SpanKind::try_from(span.kind).map(|k| k.as_str_name()).unwrap_or("").to_owned(),
                        service: service.clone(),
                        transport,
                        start_unix_nano: span.start_time_unix_nano,
                        end_unix_nano: span.end_time_unix_nano,
                        attributes: attributes(&span.attributes),
                        resource: resource.clone(),
                        links: span.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                    });
                }
            }
        }
        let n = added.len();
        let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        spans.extend(added);
        while spans.len() > self.max_spans {
            spans.pop_front();
        }
        n
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, Value> {
    kvs.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map_or(Value::Null, any_value_json))).collect()
}

fn any_value_json(v: &AnyValue) -> Value {
    match &v.value {
        None => Value::Null,
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        Some(any_value::Value::ArrayValue(a)) => Value::Array(a.values.iter().map(any_value_json).collect()),
        Some(any_value::Value::KvlistValue(l)) => Value::Object(attributes(&l.values).into_iter().collect()),
        Some(any_value::Value::BytesValue(b)) => Value::String(hex(b)),
        Some(_) => Value::Null,
    }
}

/// The gRPC `TraceService`.
struct Grpc(Store);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(request.into_inner(), Transport::Grpc);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// `POST /v1/traces`, protobuf bodies (OTLP/HTTP).
async fn http_export(State(store): State<Store>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.starts_with("application/x-protobuf") {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "only application/x-protobuf is accepted")
            .into_response();
    }
    if headers.get(header::CONTENT_ENCODING).is_some_and(|v| v != "identity") {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "compressed bodies are not accepted").into_response();
    }
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            store.add(request, Transport::Http);
            let reply = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
            ([(header::CONTENT_TYPE, "application/x-protobuf")], reply).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("not an ExportTraceServiceRequest: {e}")).into_response(),
    }
}

/// The OTLP/HTTP receiver.
pub fn http_router(store: Store) -> Router {
    Router::new().route("/v1/traces", post(http_export)).with_state(store)
}

#[derive(Deserialize)]
struct TracesQuery {
    service: Option<String>,
    operation: Option<String>,
    limit: Option<usize>,
}

/// The query API: `GET /spans`, `DELETE /spans`, `GET /healthz`, and
/// Jaeger's `/api/services`, `/api/traces`, `/api/traces/{id}`.
pub fn query_router(store: Store) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/spans",
            get(|State(store): State<Store>| async move { axum::Json(store.spans()) }).delete(
                |State(store): State<Store>| async move {
                    store.clear();
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route("/api/services", get(services))
        .route("/api/traces", get(find_traces))
        .route("/api/traces/{id}", get(one_trace))
        .with_state(store)
}

async fn services(State(store): State<Store>) -> Response {
    let names: BTreeSet<String> = store.spans().into_iter().map(|s| s.service).collect();
    axum::Json(json!({"data": names, "total": names.len()})).into_response()
}

async fn find_traces(State(store): State<Store>, Query(q): Query<TracesQuery>) -> Response {
    let spans = store.spans();
    let mut ids: Vec<String> = Vec::new();
    for s in spans.iter().rev() {
        let service_ok = q.service.as_deref().is_none_or(|svc| s.service == svc);
        let operation_ok = q.operation.as_deref().is_none_or(|op| s.name == op);
        if service_ok && operation_ok && !ids.contains(&s.trace_id) {
            ids.push(s.trace_id.clone());
        }
    }
    ids.truncate(q.limit.unwrap_or(20));
    let data: Vec<Value> = ids.iter().map(|id| jaeger_trace(id, &spans)).collect();
    axum::Json(json!({"data": data, "total": data.len()})).into_response()
}

async fn one_trace(State(store): State<Store>, Path(id): Path<String>) -> Response {
    let spans = store.spans();
    if !spans.iter().any(|s| s.trace_id == id) {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"data": [], "errors": [{"code": 404, "msg": "trace not found"}]})),
        )
            .into_response();
    }
    axum::Json(json!({"data": [jaeger_trace(&id, &spans)]})).into_response()
}

/// One trace in the shape of Jaeger's query API.
fn jaeger_trace(id: &str, spans: &[ReceivedSpan]) -> Value {
    let mut processes: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for s in spans.iter().filter(|s| s.trace_id == id) {
        let next = format!("p{}", processes.len() + 1);
        let pid = processes.entry(s.service.clone()).or_insert(next).clone();
        let mut references: Vec<Value> = Vec::new();
        if !s.parent_span_id.is_empty() {
            references
                .push(json!({"refType": "CHILD_OF", "traceID": s.trace_id, "spanID": s.parent_span_id}));
        }
        references.extend(
            s.links.iter().map(|(t, sp)| json!({"refType": "FOLLOWS_FROM", "traceID": t, "spanID": sp})),
        );
        let tags: Vec<Value> = s
            .attributes
            .iter()
            .map(|(k, v)| {
                let kind = match v {
                    Value::Bool(_) => "bool",
                    Value::Number(n) if n.is_i64() || n.is_u64() => "int64",
                    Value::Number(_) => "float64",
                    _ => "string",
                };
                json!({"key": k, "type": kind, "value": v})
            })
            .collect();
        out.push(json!({
            "traceID": s.trace_id,
            "spanID": s.span_id,
            "operationName": s.name,
            "references": references,
            "startTime": s.start_unix_nano / 1000,
            "duration": s.end_unix_nano.saturating_sub(s.start_unix_nano) / 1000,
            "tags": tags,
            "processID": pid,
        }));
    }
    let processes: serde_json::Map<String, Value> = processes
        .into_iter()
        .map(|(service, pid)| (pid, json!({"serviceName": service, "tags": []})))
        .collect();
    json!({"traceID": id, "spans": out, "processes": processes})
}

/// The three listeners, already bound.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    pub query: TcpListener,
}

/// A running receiver; its servers stop when it is dropped.
pub struct OtlpReceiver {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub query: SocketAddr,
    pub store: Store,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl OtlpReceiver {
    /// Serves on loopback ports picked by the system.
    pub async fn start() -> OtlpReceiver {
        let bind = || TcpListener::bind("127.0.0.1:0");
        let listeners = Listeners {
            grpc: bind().await.expect("bind gRPC"),
            http: bind().await.expect("bind HTTP"),
            query: bind().await.expect("bind query"),
        };
        Self::serve(listeners, Store::new(100_000)).expect("local addresses")
    }

    /// Serves on the given listeners.
    pub fn serve(listeners: Listeners, store: Store) -> std::io::Result<OtlpReceiver> {
        let (grpc, http, query) =
            (listeners.grpc.local_addr()?, listeners.http.local_addr()?, listeners.query.local_addr()?);
        let grpc_service = TraceServiceServer::new(Grpc(store.clone()));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listeners.grpc);
        let grpc_task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(grpc_service)
                .serve_with_incoming(incoming)
                .await;
            if let Err(e) = served {
                eprintln!("otlp-receiver: gRPC server ended: {e}");
            }
        });
        let serve = |listener: TcpListener, app: Router| {
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    eprintln!("otlp-receiver: HTTP server ended: {e}");
                }
            })
        };
        let tasks = vec![
            grpc_task,
            serve(listeners.http, http_router(store.clone())),
            serve(listeners.query, query_router(store.clone())),
        ];
        Ok(OtlpReceiver { grpc, http, query, store, tasks })
    }

    /// The `OTEL_EXPORTER_OTLP_ENDPOINT` for gRPC.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The `OTEL_EXPORTER_OTLP_ENDPOINT` for HTTP/protobuf.
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.store.spans()
    }

    /// Waits (at most `within`) until `check` finds what it needs in the
    /// spans received, and returns it; panics with the spans otherwise.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn(&[ReceivedSpan]) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let spans = self.spans();
            if let Some(found) = check(&spans) {
                return found;
            }
            if tokio::time::Instant::now() >= deadline {
                let names: Vec<String> = spans
                    .iter()
                    .map(|s| format!("{} {}/{} <- {}", s.name, s.trace_id, s.span_id, s.parent_span_id))
                    .collect();
                panic!("{what}: not received within {within:?}; received {} spans: {names:#?}", spans.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A collector that accepts connections and never answers: exports to it
/// hang until the exporter's own timeout.
pub struct BlackHole {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BlackHole {
    pub async fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind black hole");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            // Held, never read: the peer's writes fill the buffers and stop.
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                if held.len() < 1024 {
                    held.push(socket);
                }
            }
        });
        BlackHole { addr, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}
