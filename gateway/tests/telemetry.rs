//! Traces and logs of real gateway and publisher processes, exported to
//! a real OTLP receiver (testkit's, over gRPC and over HTTP/protobuf): a
//! quote is one trace from the publisher's span to every node's fan-out
//! span; an order is one trace from the client's frame through both
//! services to the reply and the order's updates; a fan-out span
//! continues the envelope's `traceparent` on every node, `POST /publish`
//! continues a `traceparent` header, an order's gateway spans hand the
//! context to the order service through the request stream; a dead or
//! black-hole collector neither slows delivery nor floods the log, and
//! JSON logs carry trace ids and no secrets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use redis::AsyncCommands;
use testkit::otlp::{BlackHole, Listeners, OtlpReceiver, ReceivedSpan, Store, Transport};
use testkit::process::{GatewayNode, PublisherProcess, Scratch, workspace_bin};
use testkit::{Client, TestRedis, free_port, http, unique_prefix, wait_numsub};
use tokio::net::TcpListener;
use wire::orders::OrderRequest;

/// Every test here ends within this, whatever happens.
const BOUND: Duration = Duration::from_secs(90);
/// Spans leave a node every 100 ms; this is how long a test waits for them.
const SPANS: Duration = Duration::from_secs(20);

fn gateway_bin() -> std::path::PathBuf {
    workspace_bin("gateway", "gateway")
}

fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

/// A fresh sampled (or not) W3C context: (traceparent, trace id, span id).
fn context(sampled: bool) -> (String, String, String) {
    let (trace, span) = (random_hex(16), random_hex(8));
    (format!("00-{trace}-{span}-{}", if sampled { "01" } else { "00" }), trace, span)
}

fn export_env(endpoint: &str, transport: Transport) -> Vec<(&'static str, String)> {
    let protocol = match transport {
        Transport::Grpc => "grpc",
        Transport::Http => "http/protobuf",
    };
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_string()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ]
}

async fn start_node(
    id: &str,
    redis: &str,
    prefix: &str,
    env: &[(&'static str, String)],
    dir: &Path,
) -> GatewayNode {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    GatewayNode::start(&gateway_bin(), id, redis, prefix, &env, dir).await
}

/// What every test here starts from: a receiver, Redis, a prefix, a
/// scratch directory for the nodes' logs.
struct Setup {
    receiver: OtlpReceiver,
    redis: TestRedis,
    prefix: String,
    scratch: Scratch,
}

async fn setup(name: &str) -> Setup {
    assert!(gateway_bin().exists());
    Setup {
        receiver: OtlpReceiver::start().await,
        redis: TestRedis::get().await,
        prefix: unique_prefix(),
        scratch: Scratch::new(name),
    }
}

impl Setup {
    /// One node id, transport and endpoint per OTLP transport.
    fn exporters_of(receiver: &OtlpReceiver, name: &str) -> [(String, Transport, String); 2] {
        [
            (format!("{name}-grpc"), Transport::Grpc, receiver.grpc_endpoint()),
            (format!("{name}-http"), Transport::Http, receiver.http_endpoint()),
        ]
    }
}

fn find<'a>(
    spans: &'a [ReceivedSpan],
    name: &str,
    trace: &str,
    transport: Transport,
) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|s| s.name == name && s.trace_id == trace && s.transport == transport)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_and_publish_spans_continue_the_incoming_context_over_grpc_and_http() {
    let Setup { receiver, redis, prefix, scratch } = setup("telemetry-fanout").await;
    tokio::time::timeout(BOUND, async {
        let mut nodes = Vec::new();
        for (id, transport, endpoint) in Setup::exporters_of(&receiver, "g") {
            let mut env = export_env(&endpoint, transport);
            env.push((
                "OTEL_RESOURCE_ATTRIBUTES",
                format!("deployment.environment=ci,service.instance.id={id}"),
            ));
            // Only messages that carry a sampled context are traced.
            env.push(("GATEWAY_TRACE_QUOTE_RATIO", "0".into()));
            nodes.push((transport, start_node(&id, &redis.url(), &prefix, &env, &scratch.dir).await));
        }
        let topic = "quotes.TRC";
        let mut clients = Vec::new();
        for (_, node) in &nodes {
            let mut c = Client::connect(&node.ws_url()).await;
            c.subscribe(topic).await;
            clients.push(c);
        }
        let mut conn = redis.connection().await;
        let channel = format!("{prefix}{topic}");
        assert_eq!(wait_numsub(&mut conn, &channel, 2).await, 2);

        // Unsampled first, then sampled: both are delivered, one is traced.
        let (unsampled, quiet_trace, _) = context(false);
        let (sampled, trace, parent) = context(true);
        for (seq, tp) in [(1, &unsampled), (2, &sampled)] {
            let env = wire::envelope::encode(topic, seq, wire::now_ms(), r#"{"bid":1}"#, Some(tp));
            let _: i64 = conn.publish(&channel, env).await.unwrap();
        }
        for c in &mut clients {
            for seq in [1, 2] {
                let f = c.frame().await;
                assert_eq!((f.kind.as_str(), f.seq), ("message", Some(seq)), "{f:?}");
            }
        }
        for (transport, node) in &nodes {
            let span = receiver
                .wait_for("the fan-out span", SPANS, |s| {
                    find(s, "gateway.fanout", &trace, *transport).cloned()
                })
                .await;
            assert_eq!(span.parent_span_id, parent, "the publisher's span is the parent: {span:?}");
            assert_eq!(span.kind, "SPAN_KIND_CONSUMER");
            assert_eq!(span.service, "gateway");
            assert_eq!(span.resource.get("deployment.environment").and_then(|v| v.as_str()), Some("ci"));
            assert_eq!(span.attr("node.id").as_deref(), Some(node.node_id.as_str()));
            assert_eq!(span.attr("messaging.destination.name").as_deref(), Some(topic));
            assert_eq!(span.attr("seq").as_deref(), Some("2"));
            assert_eq!(span.attr("subscribers").as_deref(), Some("1"));
            // Queued for the connection's task, or written to its socket by
            // the fan-out itself (an idle connection: the direct path).
            let frames = |name| span.attr(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            assert_eq!(frames("frames.queued") + frames("frames.written"), 1, "{span:?}");
            assert_eq!(span.attr("frames.dropped").as_deref(), Some("0"));
        }
        assert!(
            receiver.spans().iter().all(|s| s.trace_id != quiet_trace),
            "an unsampled context makes no span"
        );

        // POST /publish with a traceparent header: a publish span under it,
        // and every node's fan-out under the publish span.
        let (header, trace, parent) = context(true);
        let body = format!(r#"{{"topic":"{topic}","data":{{"bid":2}}}}"#);
        let (_, publisher_node) = &nodes[0];
        let (status, resp) =
            http(publisher_node.addr, "POST", "/publish", Some(&body), &[("traceparent", &header)]).await;
        assert_eq!(status, 200, "{resp}");
        for c in &mut clients {
            assert_eq!(c.frame().await.kind, "message");
        }
        let publish = receiver
            .wait_for("the publish span", SPANS, |s| {
                find(s, "gateway.publish", &trace, Transport::Grpc).cloned()
            })
            .await;
        assert_eq!(publish.parent_span_id, parent);
        assert_eq!(publish.kind, "SPAN_KIND_SERVER");
        for (transport, _) in &nodes {
            let fanout = receiver
                .wait_for("the fan-out of the HTTP publish", SPANS, |s| {
                    find(s, "gateway.fanout", &trace, *transport).cloned()
                })
                .await;
            assert_eq!(fanout.parent_span_id, publish.span_id, "{fanout:?}");
        }
    })
    .await
    .expect("test bound");
}

/// The one test that runs the publisher for real: both services export
/// (the nodes over gRPC and over HTTP, the publisher over gRPC) and Jaeger
/// would show what the receiver gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quote_and_an_order_are_each_one_trace_from_the_publisher_to_the_client() {
    let Setup { receiver, redis, prefix, scratch } = setup("telemetry-e2e").await;
    tokio::time::timeout(BOUND, async {
        let mut nodes = Vec::new();
        for (id, transport, endpoint) in Setup::exporters_of(&receiver, "e") {
            let node = start_node(&id, &redis.url(), &prefix, &export_env(&endpoint, transport), &scratch.dir).await;
            nodes.push((transport, node));
        }
        let mut publisher_env = export_env(&receiver.grpc_endpoint(), Transport::Grpc);
        publisher_env.extend([
            ("PUBLISHER_QUOTE_RATE", "20".to_string()),
            ("PUBLISHER_SYMBOLS", "AAPL".to_string()),
            ("PUBLISHER_TRACE_QUOTE_RATIO", "1".to_string()),
        ]);
        let publisher_env: Vec<(&str, &str)> = publisher_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let _publisher = PublisherProcess::start(&redis.url(), &prefix, &publisher_env, &scratch.dir).await;

        // A quote: the publisher's span is the parent of both nodes'
        // fan-out spans, in one trace.
        let mut clients = Vec::new();
        for (_, node) in &nodes {
            let mut client = Client::connect(&node.ws_url()).await;
            // Orders first: once quotes flow, a quote may come before the
            // next `subscribed`.
            client.subscribe("orders.acct-t").await;
            client.subscribe("quotes.AAPL").await;
            clients.push(client);
        }
        let (publish, fanouts) = receiver
            .wait_for("a quote traced from the publisher through both nodes", SPANS, |spans| {
                spans.iter().filter(|s| s.name == "publisher.publish").find_map(|p| {
                    let children: Vec<ReceivedSpan> = [Transport::Grpc, Transport::Http]
                        .iter()
                        .filter_map(|t| {
                            spans
                                .iter()
                                .find(|s| s.name == "gateway.fanout" && s.parent_span_id == p.span_id && s.transport == *t)
                                .cloned()
                        })
                        .collect();
                    (children.len() == 2).then(|| (p.clone(), children))
                })
            })
            .await;
        assert_eq!((publish.service.as_str(), publish.kind.as_str()), ("publisher", "SPAN_KIND_PRODUCER"));
        assert_eq!(publish.parent_span_id, "", "a quote starts its trace at the publisher");
        assert_eq!(publish.attr("messaging.destination.name").as_deref(), Some("quotes.AAPL"));
        for fanout in &fanouts {
            assert_eq!(fanout.trace_id, publish.trace_id);
            assert_eq!(fanout.service, "gateway");
            assert_eq!(fanout.attr("messaging.destination.name").as_deref(), Some("quotes.AAPL"));
            assert_eq!(fanout.attr("subscribers").as_deref(), Some("1"), "{fanout:?}");
        }

        // An order from a client that traces: one trace from its frame to
        // the reply and to every update, across both services and nodes.
        let (tp, trace, client_span) = context(true);
        clients[0]
            .send(&format!(
                r#"{{"action":"order","id":"t1","order":{{"account":"acct-t","symbol":"AAPL","side":"buy","qty":10}},"traceparent":"{tp}"}}"#
            ))
            .await;
        let mut statuses = Vec::new();
        let mut replied = false;
        while !(replied && statuses.len() == 3) {
            let f = clients[0].frame().await;
            match f.kind.as_str() {
                "reply" => replied = true,
                "message" if f.topic.as_deref() == Some("orders.acct-t") => {
                    let data: serde_json::Value = serde_json::from_str(f.data.unwrap().get()).unwrap();
                    statuses.push(data["status"].as_str().unwrap().to_string());
                }
                "message" => {}
                other => panic!("unexpected {other}: {f:?}"),
            }
        }
        assert_eq!(statuses, ["new", "partially_filled", "filled"]);
        let in_trace = |spans: &[ReceivedSpan], name: &str| -> Vec<ReceivedSpan> {
            spans.iter().filter(|s| s.trace_id == trace && s.name == name).cloned().collect()
        };
        let (order, service, updates) = receiver
            .wait_for("the order's spans in both services", SPANS, |spans| {
                let order = in_trace(spans, "gateway.order").pop()?;
                let service = in_trace(spans, "publisher.order").pop()?;
                let updates = in_trace(spans, "publisher.order.update");
                // Each update is delivered by both nodes (both subscribe).
                let delivered = in_trace(spans, "gateway.fanout");
                let reply = in_trace(spans, "gateway.order.reply");
                (updates.len() == 3 && delivered.len() == 6 && !reply.is_empty())
                    .then_some((order, service, updates))
            })
            .await;
        let spans = receiver.spans();
        assert_eq!(order.parent_span_id, client_span, "the client's span is the parent");
        assert_eq!((service.service.as_str(), service.parent_span_id.as_str()), ("publisher", order.span_id.as_str()));
        assert_eq!(service.attr("order.result").as_deref(), Some("ok"));
        for name in ["publisher.order.validate", "publisher.order.reply"] {
            let child = in_trace(&spans, name);
            assert_eq!(child.len(), 1, "{name}");
            assert_eq!(child[0].parent_span_id, service.span_id, "{name}");
        }
        assert_eq!(in_trace(&spans, "gateway.order.reply")[0].parent_span_id, order.span_id);
        let mut update_statuses: Vec<String> = updates
            .iter()
            .map(|u| {
                assert_eq!(u.parent_span_id, service.span_id, "updates are children of the order service");
                u.attr("order.status").unwrap()
            })
            .collect();
        update_statuses.sort();
        assert_eq!(update_statuses, ["filled", "new", "partially_filled"]);
        for fanout in in_trace(&spans, "gateway.fanout") {
            assert!(updates.iter().any(|u| u.span_id == fanout.parent_span_id), "{fanout:?}");
            assert_eq!(fanout.attr("messaging.destination.name").as_deref(), Some("orders.acct-t"));
        }
    })
    .await
    .expect("test bound");
}

/// Reads the next order request from the stream after `last`.
async fn next_request(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    last: &mut String,
) -> OrderRequest {
    let reply: redis::streams::StreamReadReply = redis::cmd("XREAD")
        .arg("BLOCK")
        .arg(10_000)
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(key)
        .arg(last.as_str())
        .query_async(conn)
        .await
        .unwrap();
    let entry = reply.keys.first().and_then(|k| k.ids.first()).expect("an order request in time");
    *last = entry.id.clone();
    let json: String = entry.get(wire::orders::REQUEST_FIELD).expect("the req field");
    serde_json::from_str(&json).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_gateway_spans_share_the_clients_trace_over_grpc_and_http() {
    let Setup { receiver, redis, prefix, scratch } = setup("telemetry-orders").await;
    tokio::time::timeout(BOUND, async {
        let mut conn = redis.connection().await;
        let stream = wire::keys::order_requests(&prefix);
        let mut last = "0".to_string();
        for (id, transport, endpoint) in Setup::exporters_of(&receiver, "o") {
            let node = start_node(&id, &redis.url(), &prefix, &export_env(&endpoint, transport), &scratch.dir).await;
            let mut client = Client::connect(&node.ws_url()).await;
            let (tp, trace, parent) = context(true);
            client
                .send(&format!(
                    r#"{{"action":"order","id":"o1","order":{{"symbol":"AAPL","side":"buy","qty":10}},"traceparent":"{tp}"}}"#
                ))
                .await;
            // Stand in for the order service: read the request, check its
            // context, answer on the asking node's channel.
            let request = next_request(&mut conn, &stream, &mut last).await;
            let handed_on = request.traceparent.clone().expect("the request carries a traceparent");
            let parts: Vec<&str> = handed_on.split('-').collect();
            assert_eq!((parts[0], parts[1], parts[3]), ("00", trace.as_str(), "01"), "{handed_on}");
            assert_ne!(parts[2], parent, "the request's parent is the gateway's span, not the client's");
            let reply = format!(r#"{{"corr":"{}","data":{{"status":"accepted"}}}}"#, request.corr);
            let _: i64 = conn.publish(wire::keys::node_replies(&prefix, &request.node), reply).await.unwrap();
            let f = client.frame().await;
            assert_eq!((f.kind.as_str(), f.id.as_ref().map(|i| i.get())), ("reply", Some(r#""o1""#)), "{f:?}");

            let order = receiver
                .wait_for("the gateway's order span", SPANS, |s| find(s, "gateway.order", &trace, transport).cloned())
                .await;
            assert_eq!(order.parent_span_id, parent, "the client's span is the parent");
            assert_eq!(order.span_id, parts[2], "the request carries the order span's context");
            assert_eq!(order.kind, "SPAN_KIND_SERVER");
            assert_eq!(order.attr("outcome").as_deref(), Some("ok"));
            assert_eq!(order.attr("order.corr").as_deref(), Some(request.corr.as_str()));
            let delivery = receiver
                .wait_for("the reply delivery span", SPANS, |s| {
                    find(s, "gateway.order.reply", &trace, transport).cloned()
                })
                .await;
            assert_eq!(delivery.parent_span_id, order.span_id);
            assert!(delivery.end_unix_nano <= order.end_unix_nano, "the order span ends after delivery");

            // An order without a context is a root at the order ratio (all).
            client.send(r#"{"action":"order","id":"o2","order":{"symbol":"AAPL","side":"sell","qty":1}}"#).await;
            let request = next_request(&mut conn, &stream, &mut last).await;
            let root_trace = request.traceparent.clone().expect("a traceparent of the gateway's own trace");
            let root_trace = root_trace.split('-').nth(1).unwrap().to_string();
            let reply = format!(r#"{{"corr":"{}","error":{{"code":"unknown_symbol","message":"no"}}}}"#, request.corr);
            let _: i64 = conn.publish(wire::keys::node_replies(&prefix, &request.node), reply).await.unwrap();
            assert_eq!(client.frame().await.code.as_deref(), Some("unknown_symbol"));
            let root = receiver
                .wait_for("the root order span", SPANS, |s| find(s, "gateway.order", &root_trace, transport).cloned())
                .await;
            assert_eq!(root.parent_span_id, "");
            assert_eq!(root.attr("outcome").as_deref(), Some("refused"));
            let rt = node.metric(r#"gateway_order_round_trip_seconds_count{outcome="ok"}"#).await;
            assert_eq!(rt, 1.0);
        }
    })
    .await
    .expect("test bound");
}

/// Lines of `log` that contain `needle`.
fn log_lines(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_neither_slows_delivery_nor_floods_the_log() {
    let Setup { redis, prefix, scratch, .. } = setup("telemetry-dead-collector").await;
    tokio::time::timeout(BOUND, async {
        // One node exports into a black hole (connections accepted, never
        // answered: each export hangs for the exporter's 10 s timeout), the
        // other to a port where nothing listens (yet).
        let hole = BlackHole::start().await;
        let refused_port = free_port();
        let refused = format!("http://127.0.0.1:{refused_port}");
        let mut nodes = Vec::new();
        for (id, transport, endpoint) in
            [("d-hole", Transport::Grpc, hole.endpoint()), ("d-refused", Transport::Http, refused.clone())]
        {
            let mut env = export_env(&endpoint, transport);
            env.extend([
                ("OTEL_BSP_MAX_QUEUE_SIZE", "16".to_string()),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "10000".to_string()),
                // Every quote is traced, with or without a context.
                ("GATEWAY_TRACE_QUOTE_RATIO", "1".to_string()),
            ]);
            nodes.push(start_node(id, &redis.url(), &prefix, &env, &scratch.dir).await);
        }
        let topic = "quotes.DEAD";
        let mut clients = Vec::new();
        for node in &nodes {
            let mut c = Client::connect(&node.ws_url()).await;
            c.subscribe(topic).await;
            clients.push(c);
        }
        let mut conn = redis.connection().await;
        let channel = format!("{prefix}{topic}");
        assert_eq!(wait_numsub(&mut conn, &channel, 2).await, 2);

        const N: u64 = 600;
        for seq in 1..=N {
            let env = wire::envelope::encode(topic, seq, wire::now_ms(), r#"{"bid":1}"#, None);
            let _: i64 = conn.publish(&channel, env).await.unwrap();
            if seq % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Every message arrives, in order, well within the export timeout:
        // a data path that waited on the exporter would stall for 10 s.
        for c in &mut clients {
            let mut worst = 0;
            for seq in 1..=N {
                let f = c.frame().await;
                assert_eq!((f.kind.as_str(), f.seq), ("message", Some(seq)));
                worst = worst.max(wire::now_ms().saturating_sub(f.ts.unwrap()));
            }
            assert!(worst < 2_000, "a message took {worst} ms from publish to client");
        }
        for node in &nodes {
            let dropped = node.metric(r#"trace_spans_dropped_total{reason="queue_full"}"#).await
                + node.metric(r#"trace_spans_dropped_total{reason="export_failed"}"#).await;
            // At most the queue (16) and one batch (16) can be in flight.
            assert!(dropped >= (N - 32) as f64, "{}: {dropped} spans counted as dropped", node.node_id);
            assert_eq!(node.metric("trace_export_failing").await, 1.0, "{}", node.node_id);
            assert_eq!(node.metric("trace_export_enabled").await, 1.0);
            let log = scratch.dir.join(format!("{}.log", node.node_id));
            assert_eq!(log_lines(&log, "trace export failing"), 1, "one line per outage: {}", node.node_id);
        }

        // The refused collector comes up: export resumes, one line says so.
        let store = Store::new(10_000);
        let bind = TcpListener::bind(("127.0.0.1", refused_port)).await.unwrap();
        let spare = || TcpListener::bind("127.0.0.1:0");
        let listeners = Listeners { grpc: spare().await.unwrap(), http: bind, query: spare().await.unwrap() };
        let receiver = OtlpReceiver::serve(listeners, store).unwrap();
        let node = &nodes[1];
        let log = scratch.dir.join(format!("{}.log", node.node_id));
        let deadline = tokio::time::Instant::now() + SPANS;
        let mut seq = N;
        while log_lines(&log, "trace export recovered") == 0 {
            assert!(tokio::time::Instant::now() < deadline, "export did not recover");
            seq += 1;
            let env = wire::envelope::encode(topic, seq, wire::now_ms(), r#"{"bid":1}"#, None);
            let _: i64 = conn.publish(&channel, env).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(receiver.spans().iter().any(|s| s.name == "gateway.fanout"), "spans arrive again");
        assert_eq!(node.metric("trace_export_failing").await, 0.0);
        assert!(node.metric("trace_spans_exported_total").await >= 1.0);
        assert_eq!(log_lines(&log, "trace export failing"), 1);
        assert_eq!(log_lines(&log, "trace export recovered"), 1);
    })
    .await
    .expect("test bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_trace_ids_and_no_secrets() {
    let Setup { receiver, redis, prefix, scratch } = setup("telemetry-logs").await;
    tokio::time::timeout(BOUND, async {
        let (secret, key) = ("jwt-s3cret-value", "publish-k3y-value");
        let mut env = export_env(&receiver.grpc_endpoint(), Transport::Grpc);
        env.extend([
            ("LOG_FORMAT", "json".to_string()),
            ("RUST_LOG", "info,gateway=debug".to_string()),
            ("GATEWAY_JWT_SECRET", secret.to_string()),
            ("GATEWAY_PUBLISH_API_KEY", key.to_string()),
        ]);
        let node = start_node("logs-1", &redis.url(), &prefix, &env, &scratch.dir).await;
        let jwt = testkit::token(secret, "acct-9");
        let mut client = Client::connect(&format!("{}?token={jwt}", node.ws_url())).await;
        let (tp, trace, _) = context(true);
        client
            .send(&format!(r#"{{"action":"order","id":7,"order":{{"qty":1}},"traceparent":"{tp}"}}"#))
            .await;
        let mut conn = redis.connection().await;
        let request =
            next_request(&mut conn, &wire::keys::order_requests(&prefix), &mut "0".to_string()).await;
        assert_eq!(request.account.as_deref(), Some("acct-9"));
        let reply = format!(r#"{{"corr":"{}","data":{{"ok":true}}}}"#, request.corr);
        let _: i64 = conn.publish(wire::keys::node_replies(&prefix, &request.node), reply).await.unwrap();
        assert_eq!(client.frame().await.kind, "reply");
        let span = receiver
            .wait_for("the order span", SPANS, |s| {
                s.iter().find(|s| s.name == "gateway.order" && s.trace_id == trace).cloned()
            })
            .await;

        let log = std::fs::read_to_string(scratch.dir.join("logs-1.log")).unwrap();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        assert!(lines.iter().any(|l| l["message"] == "gateway listening"), "{log}");
        let submitted = lines
            .iter()
            .find(|l| l["message"] == "order submitted")
            .unwrap_or_else(|| panic!("no 'order submitted' line in {log}"));
        assert_eq!(submitted["trace_id"], trace.as_str(), "{submitted}");
        assert_eq!(submitted["span_id"], span.span_id.as_str(), "{submitted}");
        assert_eq!(submitted["level"], "DEBUG");
        assert!(
            lines.iter().filter(|l| l["message"] == "gateway listening").all(|l| l.get("trace_id").is_none())
        );
        for s in [secret, key, jwt.as_str()] {
            assert!(!log.contains(s), "a secret in the log: {s}");
        }
    })
    .await
    .expect("test bound");
}
