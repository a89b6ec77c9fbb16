//! The provisioned Grafana dashboard (`deploy/grafana/dashboards/rtgate.json`)
//! queries only metrics that a live gateway and a live publisher expose,
//! with labels they carry, in PromQL that `promtool` accepts; and the
//! Prometheus scrape config passes `promtool check config`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use gateway::Config;
use testkit::process::{PublisherProcess, Scratch, try_http};
use testkit::{TestGateway, TestRedis, redis_config, unique_prefix};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Every `expr` of every panel (rows included).
fn exprs(panels: &[serde_json::Value], out: &mut Vec<String>) {
    for p in panels {
        if let Some(targets) = p["targets"].as_array() {
            out.extend(targets.iter().filter_map(|t| t["expr"].as_str().map(str::to_owned)));
        }
        if let Some(inner) = p["panels"].as_array() {
            exprs(inner, out);
        }
    }
}

const METRIC_PREFIXES: [&str; 4] = ["gateway_", "publisher_", "process_", "trace_"];
const FUNCTIONS: [&str; 8] = ["histogram_quantile", "sum", "rate", "increase", "max", "min", "avg", "by"];

fn identifiers(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in s.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            cur.push(c);
        } else if !cur.is_empty() {
            if !cur.starts_with(|c: char| c.is_ascii_digit()) {
                out.push(cur.clone());
            }
            cur.clear();
        }
    }
    out
}

/// A query's parts: metric names, the labels its selectors match on (per
/// metric), and the labels it aggregates by.
struct Parsed {
    metrics: BTreeSet<String>,
    selector_labels: Vec<(String, String)>,
    by_labels: BTreeSet<String>,
    /// Identifiers that are neither metrics nor known functions.
    unknown: Vec<String>,
}

fn parse(expr: &str) -> Parsed {
    let mut parsed = Parsed {
        metrics: BTreeSet::new(),
        selector_labels: Vec::new(),
        by_labels: BTreeSet::new(),
        unknown: Vec::new(),
    };
    // The query without selector bodies and ranges, which hold label
    // names and values, not metric names.
    let mut rest = String::new();
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        match c {
            '{' => {
                let metric = identifiers(&rest).last().cloned().unwrap_or_default();
                let body: String = chars.by_ref().take_while(|&c| c != '}').collect();
                for matcher in body.split(',') {
                    let label = matcher.split(['=', '!', '~']).next().unwrap_or("").trim();
                    if !label.is_empty() {
                        parsed.selector_labels.push((metric.clone(), label.to_string()));
                    }
                }
                rest.push(' ');
            }
            '[' => {
                chars.by_ref().take_while(|&c| c != ']').for_each(drop);
                rest.push(' ');
            }
            _ => rest.push(c),
        }
    }
    // `by (a, b)` lists are label names.
    let mut remaining = rest;
    while let Some(at) = remaining.find("by (") {
        let Some(close) = remaining[at..].find(')').map(|e| at + e) else { break };
        for label in remaining[at + 4..close].split(',') {
            parsed.by_labels.insert(label.trim().to_string());
        }
        remaining.replace_range(at..=close, " ");
    }
    for id in identifiers(&remaining) {
        if METRIC_PREFIXES.iter().any(|p| id.starts_with(p)) {
            parsed.metrics.insert(id);
        } else if !FUNCTIONS.contains(&id.as_str()) {
            parsed.unknown.push(id);
        }
    }
    parsed
}

/// A `/metrics` page: families with their type, and the label names of
/// each sample name.
struct Exposition {
    families: BTreeMap<String, String>,
    samples: BTreeMap<String, BTreeSet<String>>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut families = BTreeMap::new();
        let mut samples: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    families.insert(name.to_string(), kind.to_string());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let name_end = line.find(['{', ' ']).unwrap_or(line.len());
                let labels = samples.entry(line[..name_end].to_string()).or_default();
                if line[name_end..].starts_with('{') {
                    let body = &line[name_end + 1..line.find('}').unwrap_or(line.len())];
                    for pair in body.split(',') {
                        if let Some((k, _)) = pair.split_once('=') {
                            labels.insert(k.trim().to_string());
                        }
                    }
                }
            }
        }
        Exposition { families, samples }
    }

    fn has(&self, metric: &str) -> bool {
        self.samples.contains_key(metric)
            || self.families.iter().any(|(family, kind)| match kind.as_str() {
                "counter" => metric == format!("{family}_total"),
                "histogram" => ["_bucket", "_sum", "_count"].iter().any(|s| metric == format!("{family}{s}")),
                _ => metric == family,
            })
    }

    /// Label names of `metric`'s samples (none known if it has none yet).
    fn labels(&self, metric: &str) -> Option<&BTreeSet<String>> {
        self.samples.get(metric)
    }
}

#[test]
fn prometheus_config_passes_promtool() {
    let file = repo().join("deploy/prometheus/prometheus.yml");
    let out = Command::new("promtool").arg("check").arg("config").arg(&file).output().expect(
        "promtool (Debian package prometheus) must be installed: it checks the scrape config and dashboard queries",
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_live_metrics() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/dashboards/rtgate.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(dashboard["uid"], "rtgate");
    let mut queries = Vec::new();
    exprs(dashboard["panels"].as_array().unwrap(), &mut queries);
    assert!(queries.len() >= 20, "{} queries", queries.len());

    // Syntax: every query as a recording rule, checked by promtool.
    let scratch = Scratch::new("dashboard");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        let q = q.replace("$__rate_interval", "1m");
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(&q).unwrap()
        ));
    }
    let rules_file = scratch.path("rules.yml");
    std::fs::write(&rules_file, rules).unwrap();
    let out = Command::new("promtool").arg("check").arg("rules").arg(&rules_file).output().expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Live pages: a gateway in-process on Redis (the backplane's per-shard
    // figures exist only there), the publisher as its process.
    // Labelled counters appear with their first event, so cause one of
    // each: an upgrade refused by origin, an error frame, a close.
    let redis = TestRedis::get().await;
    let prefix = unique_prefix();
    let config = Config {
        allowed_origins: vec!["https://ok.example".into()],
        max_client_errors: 1,
        ..redis_config(&redis.url(), &prefix)
    };
    let gateway = TestGateway::start(config).await;
    let mut request = gateway.ws_url().into_client_request().unwrap();
    request.headers_mut().insert("Origin", "https://elsewhere.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_err(), "a foreign origin is refused");
    let mut client = gateway.client().await;
    client.expect_error("garbage", "invalid_json").await;
    assert_eq!(client.close_code().await, Some(4003));
    let (status, page) = gateway.get("/metrics").await;
    assert_eq!(status, 200);
    let gateway_page = Exposition::parse(&page);
    let publisher = PublisherProcess::start(&redis.url(), &prefix, &[], &scratch.dir).await;
    // One order request, as a gateway would send it, so the publisher's
    // replies-by-code counter has a sample.
    let request = wire::orders::OrderRequest {
        corr: "dash-1".into(),
        node: "dashboard".into(),
        account: None,
        order: serde_json::value::RawValue::from_string(r#"{"symbol":"AAPL","side":"buy","qty":1}"#.into())
            .unwrap(),
        ts: wire::now_ms(),
        traceparent: None,
    };
    let mut conn = redis.connection().await;
    let _: String = redis::cmd("XADD")
        .arg(wire::keys::order_requests(&prefix))
        .arg("*")
        .arg(wire::orders::REQUEST_FIELD)
        .arg(serde_json::to_string(&request).unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();
    let addr = publisher.addr;
    let page = testkit::eventually("the publisher's reply counted", || async move {
        let (_, page) = try_http(addr, "GET", "/metrics", None).await?;
        page.contains("publisher_replies_total{").then_some(page)
    })
    .await;
    let publisher_page = Exposition::parse(&page);

    let mut checked = BTreeSet::new();
    for q in &queries {
        let parsed = parse(q);
        assert!(parsed.unknown.is_empty(), "unknown names {:?} in {q}", parsed.unknown);
        assert!(!parsed.metrics.is_empty(), "no metric in {q}");
        let pages: Vec<(&str, &Exposition)> = parsed
            .metrics
            .iter()
            .map(|m| {
                if m.starts_with("publisher_") {
                    ("publisher", &publisher_page)
                } else {
                    ("gateway", &gateway_page)
                }
            })
            .collect();
        for (metric, (service, page)) in parsed.metrics.iter().zip(&pages) {
            assert!(page.has(metric), "{metric} (in {q}) is not on a live {service} /metrics");
            if !metric.starts_with("gateway_") && !metric.starts_with("publisher_") {
                assert!(
                    gateway_page.has(metric) && publisher_page.has(metric),
                    "{metric} is on both services"
                );
            }
            checked.insert(metric.clone());
        }
        for (metric, label) in &parsed.selector_labels {
            let page = if metric.starts_with("publisher_") { &publisher_page } else { &gateway_page };
            if let Some(labels) = page.labels(metric) {
                assert!(
                    labels.contains(label),
                    "{metric} has no label {label:?} (in {q}); it has {labels:?}"
                );
            }
        }
        // Aggregation labels: Prometheus adds job and instance; histograms have le.
        for label in parsed.by_labels.iter().filter(|l| !["job", "instance", "le"].contains(&l.as_str())) {
            let carried = parsed.metrics.iter().any(|m| {
                let page = if m.starts_with("publisher_") { &publisher_page } else { &gateway_page };
                page.labels(m).is_some_and(|l| l.contains(label))
                    || page
                        .labels(&format!("{}_bucket", m.trim_end_matches("_count")))
                        .is_some_and(|l| l.contains(label))
            });
            assert!(carried, "no metric of {q} carries label {label:?}");
        }
    }
    for needed in [
        "gateway_connections",
        "gateway_subscriptions",
        "gateway_frames_sent_total",
        "gateway_socket_writes_total",
        "gateway_closes_total",
        "gateway_backplane_up",
        "gateway_publish_latency_seconds_bucket",
        "gateway_fanout_duration_seconds_bucket",
        "gateway_queue_wait_seconds_bucket",
        "gateway_order_round_trip_seconds_bucket",
        "gateway_frames_direct_total",
        "gateway_backplane_shard_up",
        "publisher_order_update_write_seconds_bucket",
        "process_open_fds",
        "trace_spans_dropped_total",
    ] {
        assert!(checked.contains(needed), "the dashboard shows {needed}");
    }
}

#[test]
fn the_query_parser_sees_metrics_labels_and_strays() {
    let p = parse(
        r#"histogram_quantile(0.99, sum by (le, family) (rate(gateway_x_seconds_bucket{family="quotes"}[1m]))) + nosuch"#,
    );
    assert_eq!(p.metrics.iter().collect::<Vec<_>>(), ["gateway_x_seconds_bucket"]);
    assert_eq!(p.selector_labels, [("gateway_x_seconds_bucket".to_string(), "family".to_string())]);
    assert_eq!(p.by_labels.iter().collect::<Vec<_>>(), ["family", "le"]);
    assert_eq!(p.unknown, ["nosuch"]);
    let page = Exposition::parse(
        "# TYPE gateway_c counter\ngateway_c_total{code=\"a\"} 1\n# TYPE gateway_h histogram\n",
    );
    assert!(page.has("gateway_c_total") && page.has("gateway_h_bucket") && !page.has("gateway_c"));
}
