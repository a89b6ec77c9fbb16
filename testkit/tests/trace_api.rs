//! The trace API the publisher uses (`service::telemetry::trace`), in a
//! process of its own (telemetry is process-global and configured by the
//! environment): this test re-runs its own binary as that process with
//! `OTEL_*` set, once per OTLP transport and once without an endpoint,
//! and checks what testkit's OTLP receiver got.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use service::telemetry::trace::{self, Kind, Role};
use testkit::otlp::{OtlpReceiver, Transport};

const CHILD: &str = "TRACE_API_CHILD";
const INCOMING_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INCOMING_SPAN: &str = "00f067aa0ba902b7";

/// The child's part: make spans through the API, print their contexts.
fn scenario() {
    let settings = service::telemetry::Settings { quote_ratio: 1.0, order_ratio: 1.0, ..Default::default() };
    service::telemetry::init_with("trace-api", &settings).unwrap();
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() {
        assert!(!trace::enabled());
        assert!(trace::publish("quotes.A", None).is_none(), "no endpoint: no span");
        assert!(trace::sample(Kind::Order, Some(&incoming(true))).is_none());
        println!("RESULT {{}}");
        return;
    }
    assert!(trace::enabled());
    let published = trace::publish("quotes.A", None).expect("a root at quote ratio 1");
    let publish_tp = published.traceparent.clone();
    drop(published);
    let order = trace::start("order_service", Role::Consumer, Kind::Order, Some(&incoming(true))).unwrap();
    drop(trace::child("validate", Role::Internal, &order));
    let order_tp = trace::traceparent(&order).unwrap();
    trace::set_attribute(&order, "order.id", "o-1");
    let update = trace::start("order_update", Role::Producer, Kind::Order, Some(&order_tp)).unwrap();
    trace::link(&update, &publish_tp);
    let update_ids = trace::ids(&update).unwrap();
    drop(update);
    drop(order);
    assert!(trace::start("unsampled", Role::Internal, Kind::Order, Some(&incoming(false))).is_none());
    service::telemetry::shutdown();
    println!(
        "RESULT {}",
        serde_json::json!({"publish": publish_tp, "order": order_tp, "update_span": update_ids.1})
    );
}

fn incoming(sampled: bool) -> String {
    format!("00-{INCOMING_TRACE}-{INCOMING_SPAN}-{}", if sampled { "01" } else { "00" })
}

fn run_child(env: &[(&str, String)]) -> serde_json::Value {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "the_publisher_api_makes_the_spans_it_says", "--nocapture"]).env(CHILD, "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")).unwrap_or_else(|| panic!("{stdout}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn the_publisher_api_makes_the_spans_it_says() {
    if std::env::var_os(CHILD).is_some() {
        return scenario();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = rt.block_on(OtlpReceiver::start());
    assert_eq!(run_child(&[]), serde_json::json!({}));
    for (transport, endpoint, protocol) in [
        (Transport::Grpc, receiver.grpc_endpoint(), "grpc"),
        (Transport::Http, receiver.http_endpoint(), "http/protobuf"),
    ] {
        let got = run_child(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.into()),
            ("OTEL_SERVICE_NAME", "publisher-under-test".into()),
        ]);
        let tp =
            |key: &str| -> Vec<String> { got[key].as_str().unwrap().split('-').map(str::to_owned).collect() };
        let (publish, order) = (tp("publish"), tp("order"));
        rt.block_on(receiver.wait_for("the API's spans", Duration::from_secs(10), |spans| {
            let mine: Vec<_> = spans.iter().filter(|s| s.transport == transport).collect();
            (mine.len() >= 4).then_some(())
        }));
        let spans: Vec<_> = receiver.spans().into_iter().filter(|s| s.transport == transport).collect();
        let by_name = |name: &str| {
            spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("{name}: {spans:#?}"))
        };
        let p = by_name("publisher.publish");
        assert_eq!(
            (p.trace_id.as_str(), p.span_id.as_str(), p.parent_span_id.as_str()),
            (publish[1].as_str(), publish[2].as_str(), "")
        );
        assert_eq!(p.kind, "SPAN_KIND_PRODUCER");
        assert_eq!(p.service, "publisher-under-test");
        assert_eq!(p.attr("messaging.destination.name").as_deref(), Some("quotes.A"));
        let o = by_name("order_service");
        assert_eq!((o.trace_id.as_str(), o.parent_span_id.as_str()), (INCOMING_TRACE, INCOMING_SPAN));
        assert_eq!(o.span_id, order[2]);
        assert_eq!(o.attr("order.id").as_deref(), Some("o-1"));
        assert_eq!(by_name("validate").parent_span_id, o.span_id);
        let u = by_name("order_update");
        assert_eq!(
            (u.trace_id.as_str(), u.parent_span_id.as_str()),
            (INCOMING_TRACE, o.span_id.as_str()),
            "same trace as the order"
        );
        assert_eq!(u.span_id, got["update_span"].as_str().unwrap());
        assert_eq!(u.links, [(publish[1].clone(), publish[2].clone())]);
        assert!(spans.iter().all(|s| s.name != "unsampled"));
    }
}
