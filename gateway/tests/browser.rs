//! The quote page in a real browser: Debian's Chromium, driven by
//! playwright-core (`tests/browser/page.test.mjs`), against the gateway
//! binary as a process. Twice: the one-command demo (no settings at all:
//! in-memory backplane, the publisher's engine in the node, demo tokens),
//! and a gateway with JWT auth on Redis with the `publisher` binary (the
//! page takes a token from the user). In both the page loads, the AAPL
//! row ticks with the feed's values, a symbol is subscribed and another
//! unsubscribed from the keyboard, an order is placed and fills; then the
//! gateway restarts and the page reconnects, and on Redis an order in
//! flight across the restart shows each of its updates exactly once.
//!
//! Screenshots are kept in `target/tmp/browser/`. Needs `chromium` and
//! `node` (apt) and `npm ci` in `tests/browser` (`.ci/run` and
//! `scripts/test` do it); a missing one fails the test, it never skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use testkit::RedisServer;
use testkit::process::{GatewayNode, PublisherProcess, Scratch, workspace_bin};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// The most one scenario may take, browser start included.
const BOUND: Duration = Duration::from_secs(150);
const SECRET: &str = "browser-test-secret";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(path.exists(), "{} not found: apt-get install chromium (.ci/run installs it)", path.display());
    path
}

fn check_driver() {
    let modules = browser_dir().join("node_modules/playwright-core");
    assert!(
        modules.exists(),
        "playwright-core missing: run `npm ci --prefix gateway/tests/browser` (.ci/run and scripts/test do)"
    );
}

/// Runs the page test against `gateway`, restarting it (SIGKILL, then a
/// new process on the same port) when the script asks.
async fn run_page_test(gateway: &mut GatewayNode, scenario: &str, token: Option<&str>) {
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    let mut cmd = Command::new("node");
    cmd.arg(browser_dir().join("page.test.mjs"))
        .args(["--url", &format!("http://{}/", gateway.addr), "--scenario", scenario, "--artifacts"])
        .arg(&artifacts)
        .env("CHROMIUM", chromium())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(token) = token {
        cmd.args(["--token", token]);
    }
    let mut child = cmd.spawn().expect("node must be installed (apt-get install nodejs)");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut transcript = Vec::new();
    let work = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            println!("page: {line}");
            if line == "RESTART" {
                // SIGKILL (reaped at once): nothing is closed cleanly.
                gateway.kill();
                // Down long enough for an order update or two to be
                // published meanwhile (the page must get them back).
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                gateway.restart().await;
                stdin.write_all(b"go\n").await.unwrap();
            }
            transcript.push(line);
        }
        child.wait().await.unwrap()
    };
    let status = tokio::time::timeout(BOUND, work).await.expect("the page test exceeded its time bound");
    println!("screenshots in {}", artifacts.display());
    assert!(
        status.success() && transcript.last().is_some_and(|l| l == "PASS"),
        "the page test failed:\n{}",
        transcript.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_command_demo_page_shows_live_quotes_and_fills_orders() {
    check_driver();
    let bin = workspace_bin("gateway", "gateway");
    let scratch = Scratch::new("browser-demo");
    // Exactly the README's first command: no settings but the port (and a
    // short drain so the restart is quick).
    let mut gateway =
        GatewayNode::start(&bin, "demo", "", "rt:", &[("GATEWAY_DRAIN_MS", "500")], &scratch.dir).await;
    let (status, body) = testkit::http(gateway.addr, "GET", "/readyz", None, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""backplane":"memory""#), "{body}");
    run_page_test(&mut gateway, "demo", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_on_redis_with_the_publisher_loses_no_order_update_across_a_gateway_restart() {
    check_driver();
    let bin = workspace_bin("gateway", "gateway");
    let scratch = Scratch::new("browser-redis");
    let redis = RedisServer::start(false).await;
    let prefix = testkit::unique_prefix();
    let _publisher = PublisherProcess::start(
        &redis.url(),
        &prefix,
        &[
            ("PUBLISHER_SYMBOLS", "AAPL,MSFT,NVDA,GOOG"),
            ("PUBLISHER_QUOTE_RATE", "80"),
            ("PUBLISHER_ORDER_RATE", "2"),
            ("PUBLISHER_ACCOUNTS", "5"),
            // Slow enough that an order's lifecycle spans the restart.
            ("PUBLISHER_FILL_DELAY_MS", "1200"),
        ],
        &scratch.dir,
    )
    .await;
    let env = [("GATEWAY_JWT_SECRET", SECRET), ("GATEWAY_DRAIN_MS", "500")];
    let mut gateway = GatewayNode::start(&bin, "web", &redis.url(), &prefix, &env, &scratch.dir).await;
    let (status, _) = testkit::http(gateway.addr, "GET", "/demo/token", None, &[]).await;
    assert_eq!(status, 404, "no demo tokens with an operator's jwt_secret and Redis");
    let exp = wire::now_ms() / 1000 + 3600;
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"sub": "web-1", "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    run_page_test(&mut gateway, "redis", Some(&token)).await;
}
