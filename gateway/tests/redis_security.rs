//! Redis AUTH/ACL users and TLS (`rediss://`), with the gateway as a real
//! process: it connects and serves, and no secret shows in its logs or
//! `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::process::Process;
use testkit::*;

/// Starts the gateway binary; its stderr (logs) goes to `log`.
async fn gateway(env: &[(&str, &str)], log: &Path) -> (Process, std::net::SocketAddr) {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.env("GATEWAY_LISTEN", addr.to_string())
        .env("GATEWAY_REDIS_BACKOFF_MAX_MS", "200")
        .env("GATEWAY_PUBLISH_INSECURE", "true")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let process = Process::adopt("gateway", cmd.spawn().unwrap());
    eventually("the gateway to listen", || async move { tokio::net::TcpStream::connect(addr).await.ok() })
        .await;
    (process, addr)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gw-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn ready(addr: std::net::SocketAddr) -> u16 {
    http(addr, "GET", "/readyz", None, &[]).await.0
}

#[tokio::test]
async fn acl_user_in_the_url_and_no_secret_in_logs_or_metrics() {
    let redis = RedisServer::start(false).await;
    let mut admin = redis.connection().await.unwrap();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "gw", "on", ">s3cret-pw", "~*", "&*", "+@all"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: () = redis::cmd("ACL").arg(&["SETUSER", "default", "off"]).query_async(&mut admin).await.unwrap();
    let dir = temp_dir("acl");

    // Wrong password: the node runs, is not ready, and says so without the secret.
    let bad_url = format!("redis://gw:wrong-pw@127.0.0.1:{}", redis.port);
    let (bad, bad_addr) = gateway(&[("GATEWAY_REDIS_URL", &bad_url)], &dir.join("bad.log")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ready(bad_addr).await, 503);
    drop(bad);

    let url = format!("redis://gw:s3cret-pw@127.0.0.1:{}", redis.port);
    let (_gw, addr) = gateway(
        &[("GATEWAY_REDIS_URL", &url), ("GATEWAY_PUBLISH_API_KEY", "api-k3y")],
        &dir.join("good.log"),
    )
    .await;
    eventually("ready", || async move { (ready(addr).await == 200).then_some(()) }).await;
    let mut c = Client::connect(&format!("ws://{addr}/ws")).await;
    c.subscribe("quotes.ACL").await;
    let body = r#"{"topic":"quotes.ACL","data":{"p":1}}"#;
    let (status, _) =
        http(addr, "POST", "/publish", Some(body), &[("Authorization", "Bearer api-k3y")]).await;
    assert_eq!(status, 200);
    assert_eq!(c.frame().await.seq, Some(1));

    let (_, metrics) = http(addr, "GET", "/metrics", None, &[]).await;
    for file in ["bad.log", "good.log"] {
        let log = std::fs::read_to_string(dir.join(file)).unwrap();
        for secret in ["s3cret-pw", "wrong-pw", "api-k3y"] {
            assert!(!log.contains(secret), "{file} shows {secret}");
            assert!(!metrics.contains(secret));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A CA and a server certificate for localhost / 127.0.0.1, by openssl.
fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let out =
            Command::new("openssl").args(args).current_dir(dir).output().expect("openssl must be on PATH");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ]);
}

#[tokio::test]
async fn rediss_url_with_a_private_ca() {
    let dir = temp_dir("tls");
    make_certs(&dir);
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--tls-auth-clients", "no", "--dir"])
        .arg(&dir)
        .arg("--tls-cert-file")
        .arg(dir.join("server.pem"))
        .arg("--tls-key-file")
        .arg(dir.join("server.key"))
        .arg("--tls-ca-cert-file")
        .arg(dir.join("ca.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _redis = Process::adopt("redis-server", child);
    let url = format!("rediss://localhost:{port}");
    let ca = dir.join("ca.pem");
    // The CA is trusted the standard way: SSL_CERT_FILE.
    let (_gw, addr) =
        gateway(&[("GATEWAY_REDIS_URL", &url), ("SSL_CERT_FILE", ca.to_str().unwrap())], &dir.join("gw.log"))
            .await;
    eventually("ready over TLS", || async move { (ready(addr).await == 200).then_some(()) }).await;
    let mut c = Client::connect(&format!("ws://{addr}/ws")).await;
    c.subscribe("quotes.TLS").await;
    let (status, body) =
        http(addr, "POST", "/publish", Some(r#"{"topic":"quotes.TLS","data":{"p":1}}"#), &[]).await;
    assert_eq!(status, 200, "{body}");
    let m = c.frame().await;
    assert_eq!((m.topic.as_deref(), m.seq), (Some("quotes.TLS"), Some(1)));
    let _ = std::fs::remove_dir_all(dir);
}
