//! Real processes for multi-node tests: gateway and publisher binaries and
//! an haproxy load balancer, each on its own loopback port, each killed
//! (SIGKILL) by its guard when dropped, even when the test panics.
//!
//! Every process writes its output to a log file in a [`Scratch`]
//! directory; a guard dropped during a panic prints the tail of its log,
//! so a failed test shows what each node said.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::{WAIT, free_port, metric};

/// A temporary directory for one test's configs and logs; removed when
/// dropped unless the test is panicking (then its path is printed).
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("testkit-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A child process, SIGKILLed and reaped when dropped. The one process
/// guard of the tests: started here with its output in a log file
/// ([`Process::spawn`]), or adopted after the test spawned it
/// ([`Process::adopt`]).
pub struct Process {
    name: String,
    child: Option<Child>,
    /// Where its output goes, when started by [`Process::spawn`].
    log: Option<PathBuf>,
}

impl Process {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Process {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        cmd.stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        Process { name: name.to_string(), child: Some(child), log: Some(log.to_path_buf()) }
    }

    /// Guards a child the caller spawned (with its own stdio).
    pub fn adopt(name: &str, child: Child) -> Process {
        Process { name: name.to_string(), child: Some(child), log: None }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal` (a name such as `TERM` or `KILL`) unless the process
    /// has exited: a child not yet reaped keeps its pid, so the signal
    /// cannot reach another process.
    pub fn signal(&mut self, signal: &str) {
        if !self.is_running() {
            return;
        }
        let Some(pid) = self.pid() else { return };
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{signal} {pid}"))
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid} ({}) failed", self.name);
    }

    /// SIGTERM: the process drains and exits on its own.
    pub fn terminate(&mut self) {
        self.signal("TERM");
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `within` for the process to exit; its status, or `None`
    /// if it is still running then.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let Some(log) = &self.log else { return String::new() };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(log) = &self.log
        {
            eprintln!("---- last lines of {} ({}) ----\n{}", self.name, log.display(), self.log_tail(30));
        }
        self.kill();
    }
}

/// One HTTP/1.1 request like [`crate::http`], but `None` instead of a panic
/// when nothing listens or no answer comes within two seconds.
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let work = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let body = body.unwrap_or("");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        if !body.is_empty() {
            req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        req.push_str(body);
        stream.write_all(req.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).to_string();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(2), work).await.ok().flatten()
}

/// A binary of this workspace next to the running test binary
/// (`target/<profile>/deps/<test>` → `target/<profile>/<bin>`), built with
/// `cargo build -p <package> --bin <bin>` when it is missing or older than
/// one of its sources (as listed in cargo's `<bin>.d` beside it): `cargo
/// test -p gateway` does not rebuild another package's binary, and a
/// stale one would disagree with the current code (key names, scripts).
/// Call it before a test's time bound starts: a build takes a while.
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let exe = std::env::current_exe().unwrap();
    let mut dir = exe.parent().unwrap().to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let path = dir.join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    let _one_build = BUILD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !is_stale(&path) {
        return path;
    }
    let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug").to_string();
    let target_dir = dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "-p", package, "--bin", bin, "--target-dir"])
        .arg(target_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!("testkit: building {bin} ({cmd:?})");
    let status = cmd.status().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(status.success() && path.exists(), "{cmd:?} did not build {}", path.display());
    path
}

/// Whether `bin` is missing or older than a source file its dep-info
/// (`<bin>.d`, written by cargo) lists; without dep-info it is trusted.
fn is_stale(bin: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = modified(bin) else { return true };
    let Ok(dep_info) = std::fs::read_to_string(bin.with_extension("d")) else { return false };
    let Some((_, deps)) = dep_info.lines().next().and_then(|l| l.split_once(": ")) else { return false };
    // Paths are separated by spaces; a space inside a path is escaped.
    let deps = deps.replace("\\ ", "\0");
    deps.split_whitespace()
        .map(|p| PathBuf::from(p.replace('\0', " ")))
        .any(|p| modified(&p).is_none_or(|t| t > built))
}

/// The `publisher` binary (see [`workspace_bin`]).
pub fn publisher_bin() -> PathBuf {
    workspace_bin("publisher", "publisher")
}

/// Polls `GET path` on `addr` until it answers 200, failing after `WAIT`
/// or as soon as `process` exits.
async fn wait_http_ok(process: &mut Process, addr: SocketAddr, path: &str, what: &str) {
    let deadline = Instant::now() + WAIT * 2;
    loop {
        if let Some((200, _)) = try_http(addr, "GET", path, None).await {
            return;
        }
        assert!(process.is_running(), "{what} exited before it was ready:\n{}", process.log_tail(20));
        assert!(Instant::now() < deadline, "{what} not ready in time:\n{}", process.log_tail(20));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A `gateway` binary running as its own process on a loopback port.
/// [`GatewayNode::restart`] brings it back on the same port and node id.
pub struct GatewayNode {
    pub node_id: String,
    pub addr: SocketAddr,
    bin: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    process: Option<Process>,
}

impl GatewayNode {
    /// Starts `bin` as node `node_id` on `redis_url` with channel prefix
    /// `prefix` plus `env` (`GATEWAY_*` settings), and waits until its
    /// `/readyz` answers 200. Logs go to `<dir>/<node_id>.log`.
    pub async fn start(
        bin: &Path,
        node_id: &str,
        redis_url: &str,
        prefix: &str,
        env: &[(&str, &str)],
        dir: &Path,
    ) -> GatewayNode {
        let mut all: Vec<(String, String)> = vec![
            ("GATEWAY_NODE_ID".into(), node_id.into()),
            ("GATEWAY_REDIS_URL".into(), redis_url.into()),
            ("GATEWAY_CHANNEL_PREFIX".into(), prefix.into()),
            ("GATEWAY_REDIS_BACKOFF_MAX_MS".into(), "200".into()),
            ("GATEWAY_REDIS_TIMEOUT_MS".into(), "2000".into()),
            ("GATEWAY_PUBLISH_INSECURE".into(), "true".into()),
            ("RUST_LOG".into(), "info".into()),
            ("NO_COLOR".into(), "1".into()),
        ];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut node = GatewayNode {
            node_id: node_id.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            bin: bin.to_path_buf(),
            env: all,
            log: dir.join(format!("{node_id}.log")),
            process: None,
        };
        // A port picked free can be taken by another test before the node
        // binds it: then pick another.
        for attempt in 1..=3 {
            node.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            node.spawn();
            match node.wait_ready_or_exit().await {
                Ok(()) => return node,
                Err(log) if attempt < 3 && log.contains("binding") => continue,
                Err(log) => panic!("gateway {node_id} exited at start:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(&self.bin);
        cmd.env("GATEWAY_LISTEN", self.addr.to_string());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.process = Some(Process::spawn(&format!("gateway {}", self.node_id), cmd, &self.log));
    }

    /// Ready: `Ok`; exited first: `Err(log tail)`.
    async fn wait_ready_or_exit(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + WAIT * 2;
        loop {
            if let Some((200, _)) = try_http(self.addr, "GET", "/readyz", None).await {
                return Ok(());
            }
            let process = self.process.as_mut().unwrap();
            if !process.is_running() {
                return Err(process.log_tail(20));
            }
            assert!(
                Instant::now() < deadline,
                "gateway {} not ready in time:\n{}",
                self.node_id,
                process.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Starts the node again (same port, same id, same settings) after it
    /// exited or was killed, and waits until it is ready.
    pub async fn restart(&mut self) {
        if let Some(p) = self.process.as_mut() {
            assert!(!p.is_running(), "restart of gateway {} while it still runs", self.node_id);
        }
        self.spawn();
        if let Err(log) = self.wait_ready_or_exit().await {
            panic!("gateway {} exited at restart:\n{log}", self.node_id);
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }

    /// SIGTERM: the node drains (1012 to its clients) and exits.
    pub fn terminate(&mut self) {
        if let Some(p) = self.process.as_mut() {
            p.terminate();
        }
    }

    /// SIGKILL: the node vanishes without closing anything.
    pub fn kill(&mut self) {
        if let Some(p) = self.process.as_mut() {
            p.kill();
        }
    }

    /// Waits up to `within` for the node to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        self.process.as_mut()?.wait_exit(within).await
    }

    /// `/readyz` status, `None` when nothing answers.
    pub async fn readyz(&self) -> Option<u16> {
        try_http(self.addr, "GET", "/readyz", None).await.map(|(status, _)| status)
    }

    /// The value of one metric line (0 when absent or unreachable).
    pub async fn metric(&self, name: &str) -> f64 {
        match try_http(self.addr, "GET", "/metrics", None).await {
            Some((200, body)) => metric(&body, name),
            _ => 0.0,
        }
    }

    /// `POST /publish` through this node: status and body.
    pub async fn publish(&self, topic: &str, data: &str) -> (u16, String) {
        let body = format!(r#"{{"topic":"{topic}","data":{data}}}"#);
        try_http(self.addr, "POST", "/publish", Some(&body)).await.unwrap_or((0, String::new()))
    }
}

/// The `publisher` binary as its own process (quote feed, simulated
/// orders, order service).
pub struct PublisherProcess {
    pub addr: SocketAddr,
    pub process: Process,
}

impl PublisherProcess {
    /// Starts it on `redis_url` and `prefix` with symbols AAPL and MSFT, no
    /// quotes and no simulated orders unless `env` sets `PUBLISHER_*`
    /// otherwise, and waits until its `/readyz` answers 200.
    pub async fn start(redis_url: &str, prefix: &str, env: &[(&str, &str)], dir: &Path) -> PublisherProcess {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = Command::new(publisher_bin());
        cmd.env("PUBLISHER_LISTEN", addr.to_string())
            .env("PUBLISHER_REDIS_URL", redis_url)
            .env("PUBLISHER_CHANNEL_PREFIX", prefix)
            .env("PUBLISHER_SYMBOLS", "AAPL,MSFT")
            .env("PUBLISHER_QUOTE_RATE", "0")
            .env("PUBLISHER_ORDER_RATE", "0")
            .env("PUBLISHER_FILL_DELAY_MS", "20")
            .env("PUBLISHER_REDIS_BACKOFF_MAX_MS", "200")
            .env("PUBLISHER_PUBLISH_INSECURE", "true")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut process = Process::spawn("publisher", cmd, &dir.join("publisher.log"));
        wait_http_ok(&mut process, addr, "/readyz", "publisher").await;
        PublisherProcess { addr, process }
    }
}

/// An haproxy process in front of some gateway nodes: `mode http`,
/// WebSocket upgrades passed through (`timeout tunnel`), `balance
/// leastconn`, servers health-checked on `GET /readyz`, and a failed
/// connect retried on another server. Its stats page tells which servers
/// it counts as up.
pub struct Balancer {
    pub addr: SocketAddr,
    pub stats: SocketAddr,
    pub process: Process,
}

impl Balancer {
    /// Starts haproxy (it must be on PATH: `apt-get install haproxy`) in
    /// front of `servers` (name, address) and waits until it counts each
    /// one as UP.
    pub async fn start(servers: &[(&str, SocketAddr)], dir: &Path) -> Balancer {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let stats = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = dir.join("haproxy.cfg");
        std::fs::write(&config, haproxy_config(addr, stats, servers)).unwrap();
        let mut cmd = Command::new(haproxy_bin());
        cmd.arg("-db").arg("-f").arg(&config);
        let mut process = Process::spawn("haproxy", cmd, &dir.join("haproxy.log"));
        wait_http_ok(&mut process, stats, "/stats;csv", "haproxy").await;
        let balancer = Balancer { addr, stats, process };
        for (name, _) in servers {
            balancer.wait_server(name, "UP").await;
        }
        balancer
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Each server's status as haproxy sees it (`UP`, `DOWN`, `UP 1/2`…).
    pub async fn server_states(&self) -> Vec<(String, String)> {
        let Some((200, csv)) = try_http(self.stats, "GET", "/stats;csv", None).await else {
            return Vec::new();
        };
        csv.lines()
            .filter(|l| l.starts_with("gateways,"))
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                let (name, status) = (f.get(1)?, f.get(17)?);
                (*name != "BACKEND" && *name != "FRONTEND").then(|| (name.to_string(), status.to_string()))
            })
            .collect()
    }

    /// Waits until haproxy reports `server` with exactly `status`.
    pub async fn wait_server(&self, server: &str, status: &str) {
        let deadline = Instant::now() + WAIT * 2;
        loop {
            let states = self.server_states().await;
            if states.iter().any(|(n, s)| n == server && s == status) {
                return;
            }
            assert!(Instant::now() < deadline, "haproxy never saw {server} {status}: {states:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// `haproxy` from PATH, else Debian's `/usr/sbin/haproxy`.
fn haproxy_bin() -> PathBuf {
    let on_path = Command::new("haproxy").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if on_path.is_ok() {
        return PathBuf::from("haproxy");
    }
    let debian = PathBuf::from("/usr/sbin/haproxy");
    assert!(
        debian.exists(),
        "haproxy must be installed for this test (apt-get install haproxy; .ci/run installs it)"
    );
    debian
}

/// The balancer's configuration: health checks every 200 ms, two failures
/// mark a server down and two successes up again.
pub fn haproxy_config(addr: SocketAddr, stats: SocketAddr, servers: &[(&str, SocketAddr)]) -> String {
    let mut cfg = format!(
        "global
    maxconn 4000

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h
    timeout client-fin 1s
    timeout server-fin 1s
    retries 3
    option redispatch 1

frontend ws
    bind {addr}
    default_backend gateways

backend gateways
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 200ms fastinter 100ms downinter 200ms fall 2 rise 2
"
    );
    for (name, server) in servers {
        cfg.push_str(&format!("    server {name} {server} check\n"));
    }
    cfg.push_str(&format!(
        "
listen stats
    bind {stats}
    stats enable
    stats uri /stats
"
    ));
    cfg
}
