//! A node at its open-file limit, as a real process under `ulimit -n`:
//! it refuses what it cannot hold with HTTP 503, backs off instead of
//! spinning when accept() itself fails (EMFILE), and its existing clients
//! are not disturbed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::process::Process;
use testkit::*;

/// Starts the gateway binary with at most `files` open files.
async fn gateway_with_file_limit(files: u32, extra_env: &[(&str, &str)]) -> (Process, std::net::SocketAddr) {
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {files} && exec \"$0\"", files = files))
        .arg(env!("CARGO_BIN_EXE_gateway"))
        .env("GATEWAY_LISTEN", addr.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let process = Process::adopt("gateway", cmd.spawn().unwrap());
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "gateway did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (process, addr)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[tokio::test]
async fn automatic_limit_refuses_with_503_below_the_file_limit() {
    // 64 files: the automatic max_connections is 48.
    let (_gw, addr) = gateway_with_file_limit(64, &[]).await;
    let url = format!("ws://{addr}/ws");
    let mut clients = Vec::new();
    for _ in 0..48 {
        clients.push(Client::connect(&url).await);
    }
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected HTTP 503, got {:?}", other.map(|_| ())),
    }
    for c in clients.iter_mut().take(5) {
        c.send(r#"{"action":"ping"}"#).await;
        assert_eq!(c.frame().await.kind, "pong");
    }
}

#[tokio::test]
async fn accept_failures_back_off_and_spare_existing_clients() {
    // max_connections above what the files allow: accept() hits EMFILE.
    let (gw, addr) = gateway_with_file_limit(48, &[("GATEWAY_MAX_CONNECTIONS", "1000")]).await;
    let url = format!("ws://{addr}/ws");
    let mut clients = Vec::new();
    // Fill the process up; later attempts fail or hang in the backlog.
    for _ in 0..60 {
        match tokio::time::timeout(Duration::from_millis(500), tokio_tungstenite::connect_async(&url)).await {
            Ok(Ok((ws, _))) => clients.push(Client { ws }),
            _ => break,
        }
    }
    assert!(clients.len() >= 30, "only {} clients got in", clients.len());
    // At the limit, the node must not spin on accept errors.
    let before = cpu_ticks(gw.pid().unwrap());
    let pending: Vec<_> =
        (0..5).map(|_| tokio::spawn(tokio_tungstenite::connect_async(url.clone()))).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(gw.pid().unwrap()) - before;
    assert!(used < 50, "gateway burned {used} ticks (1/100 s) in 2 s while at its file limit");
    // Existing clients are served throughout.
    for c in clients.iter_mut() {
        c.send(r#"{"action":"ping"}"#).await;
    }
    for c in clients.iter_mut() {
        assert_eq!(c.frame().await.kind, "welcome");
        assert_eq!(c.frame().await.kind, "pong");
    }
    // Once files free up, waiting clients get in.
    clients.truncate(clients.len() - 10);
    let mut joined = 0;
    for p in pending {
        if let Ok(Ok(Ok(_))) = tokio::time::timeout(WAIT, p).await {
            joined += 1;
        }
    }
    assert!(joined >= 1, "no waiting client got in after files were freed");
}
