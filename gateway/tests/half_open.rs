//! A flood of half-open connections against a node with its default
//! settings, as a real process under a small open-file limit: one address
//! opens sockets that send the first lines of a WebSocket handshake and
//! then nothing, more of them than the node has files, and opens a new
//! one each time the node closes one. Meanwhile well-behaved clients from
//! other addresses keep connecting, subscribing and receiving the demo
//! feed's quotes; long-lived ones receive throughout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use testkit::process::{Process, Scratch, try_http};
use testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::Instant;

/// The node's open-file limit: its automatic max_connections is 768.
const FILES: usize = 1024;
/// Half-open sockets the attacker keeps trying to hold: more than the
/// node has files.
const FLOOD: usize = FILES + 200;
/// Long enough for the node's 10 s request timeout to close the first
/// wave and the attacker to renew it.
const RUN: Duration = Duration::from_secs(16);
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// One half-open socket: connected from `ATTACKER`, half a request sent.
/// Resolves when the node closes it.
async fn half_open(addr: SocketAddr, opened: Arc<AtomicUsize>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ATTACKER, 0)).unwrap();
    let Ok(mut tcp) = socket.connect(addr).await else { return };
    let head = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
    if tcp.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    opened.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 512];
    // Whatever the node answers (a refusal, or nothing), wait for the close.
    while let Ok(n) = tcp.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_from_one_address_do_not_keep_others_out() {
    let scratch = Scratch::new("half-open");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // Default settings: nothing but the port (the demo feed supplies quotes).
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {FILES} && exec \"$0\""))
        .arg(env!("CARGO_BIN_EXE_gateway"))
        .env("GATEWAY_LISTEN", addr.to_string())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    let _gateway = Process::spawn("gateway", cmd, &scratch.path("gateway.log"));
    let deadline = Instant::now() + WAIT;
    while try_http(addr, "GET", "/readyz", None).await.is_none_or(|(status, _)| status != 200) {
        assert!(Instant::now() < deadline, "gateway did not start");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // Two clients that stay the whole time and must keep receiving.
    let mut steady = Vec::new();
    for i in 0..2u8 {
        let mut c = Client::connect_from(addr, IpAddr::V4(Ipv4Addr::new(127, 0, 1, i + 1))).await.unwrap();
        c.send(r#"{"action":"subscribe","topic":"quotes.AAPL"}"#).await;
        assert_eq!(c.frame().await.kind, "subscribed");
        steady.push(c);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (stop, opened) = (Arc::clone(&stop), Arc::clone(&opened));
        tokio::spawn(async move {
            let mut held = tokio::task::JoinSet::new();
            while !stop.load(Ordering::Relaxed) {
                while held.len() < FLOOD {
                    held.spawn(half_open(addr, Arc::clone(&opened)));
                }
                // Renew each socket the node closes.
                tokio::select! {
                    _ = held.join_next() => {}
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            held.abort_all();
        })
    };

    let started = Instant::now();
    let mut newcomers = 0u32;
    let mut steady_frames = [0u32; 2];
    while started.elapsed() < RUN {
        // A newcomer from its own address: it gets in, subscribes, receives.
        newcomers += 1;
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 2, (newcomers % 250) as u8 + 1));
        let t = Instant::now();
        let mut c = Client::connect_from(addr, source)
            .await
            .unwrap_or_else(|e| panic!("newcomer {newcomers} refused at {:?}: {e}", started.elapsed()));
        c.send(r#"{"action":"subscribe","topic":"quotes.MSFT"}"#).await;
        assert_eq!(c.frame().await.kind, "subscribed");
        assert_eq!(c.frame().await.kind, "message", "newcomer {newcomers} got no quote");
        assert!(t.elapsed() < Duration::from_secs(3), "newcomer {newcomers} took {:?}", t.elapsed());
        // The steady clients are still receiving.
        for (i, c) in steady.iter_mut().enumerate() {
            let frame = c.frame().await;
            assert_eq!(frame.kind, "message");
            steady_frames[i] += 1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    flood.await.unwrap();

    let (_, metrics) = http(addr, "GET", "/metrics", None, &[]).await;
    let opened = opened.load(Ordering::Relaxed);
    println!("{newcomers} newcomers served; the attacker opened {opened} half-open sockets");
    assert!(newcomers >= 20, "only {newcomers} newcomers in {RUN:?}");
    assert!(opened > FLOOD, "the flood never renewed its sockets ({opened} opened)");
    let timeouts = metric(&metrics, "gateway_request_timeouts_total");
    assert!(timeouts >= 1.0, "no unfinished request was timed out:\n{metrics}");
    let fds = metric(&metrics, "process_open_fds");
    assert!(fds < (FILES - 100) as f64, "the node holds {fds} files of {FILES}");
}
