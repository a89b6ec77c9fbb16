//! A private Redis Sentinel setup for tests: one redis-server master, its
//! replicas and a few sentinels (`redis-server --sentinel`, so the
//! redis-server package alone is enough; Debian's `redis-sentinel` is the
//! same binary), on free loopback ports, each with its own directory and
//! log, each SIGKILLed when the guard is dropped. The data servers and
//! the sentinels each have a password, so the tests cover both.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use crate::process::Process;
use crate::{WAIT, eventually, free_port, wait_ping};

/// The master's name in the sentinels' configuration.
pub const MASTER: &str = "mymaster";
/// `requirepass` of the data servers (and their `masterauth`).
pub const DATA_PASSWORD: &str = "data-pw";
/// `requirepass` of the sentinels.
pub const SENTINEL_PASSWORD: &str = "sentinel-pw";

pub struct SentinelGroup {
    /// Data servers: port and process (`None` once killed).
    pub servers: Vec<(u16, Option<Process>)>,
    pub sentinels: Vec<(u16, Process)>,
    dir: PathBuf,
}

impl SentinelGroup {
    /// A master and `replicas` replicas, watched by `sentinels` sentinels
    /// (quorum: a majority) that call the master down after 2 s (at 1 s a
    /// loaded 2-core machine saw a promoted master called down again, a
    /// second failover); returns
    /// once every sentinel knows the replicas and the other sentinels.
    pub async fn start(replicas: usize, sentinels: usize, dir: &Path) -> SentinelGroup {
        let mut group = SentinelGroup { servers: Vec::new(), sentinels: Vec::new(), dir: dir.to_path_buf() };
        let master = free_port();
        group.spawn_server(master, None);
        wait_ping(data_url(master)).await;
        for _ in 0..replicas {
            let port = free_port();
            group.spawn_server(port, Some(master));
        }
        for &(port, _) in &group.servers {
            wait_ping(data_url(port)).await;
        }
        eventually("the replicas to sync", || async move {
            let info = info_replication(master).await?;
            let synced =
                info.lines().filter(|l| l.starts_with("slave") && l.contains("state=online")).count();
            (synced == replicas).then_some(())
        })
        .await;
        let quorum = sentinels / 2 + 1;
        for i in 0..sentinels {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{port}.conf"));
            // The sentinel rewrites this file as it learns: it must be writable.
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nrequirepass {SENTINEL_PASSWORD}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {master} {quorum}\n\
                     sentinel auth-pass {MASTER} {DATA_PASSWORD}\n\
                     sentinel down-after-milliseconds {MASTER} 2000\n\
                     sentinel failover-timeout {MASTER} 5000\n\
                     sentinel parallel-syncs {MASTER} 2\n",
                    dir.display()
                ),
            )
            .unwrap();
            let mut cmd = Command::new("redis-server");
            cmd.arg(&conf).arg("--sentinel");
            let log = dir.join(format!("sentinel-{i}.log"));
            group.sentinels.push((port, Process::spawn(&format!("sentinel {port}"), cmd, &log)));
        }
        let others = sentinels - 1;
        for &(port, _) in &group.sentinels {
            eventually_long("each sentinel to know the replicas and the other sentinels", || async move {
                let mut c = sentinel_conn(port).await?;
                let fields: Vec<String> =
                    redis::cmd("SENTINEL").arg("master").arg(MASTER).query_async(&mut c).await.ok()?;
                let get =
                    |k: &str| fields.iter().position(|f| f == k).and_then(|i| fields.get(i + 1)).cloned();
                let known = get("num-slaves")? == replicas.to_string()
                    && get("num-other-sentinels")? == others.to_string();
                known.then_some(())
            })
            .await;
        }
        group
    }

    fn spawn_server(&mut self, port: u16, replica_of: Option<u16>) {
        let dir = self.dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--requirepass", DATA_PASSWORD, "--masterauth", DATA_PASSWORD])
            // Replicas sync at once, without a dump on disk.
            .args(["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&dir);
        if let Some(master) = replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        let log = self.dir.join(format!("redis-{port}.log"));
        self.servers.push((port, Some(Process::spawn(&format!("redis {port}"), cmd, &log))));
    }

    /// `host:port` of every sentinel, comma-separated (`redis_sentinels`).
    pub fn sentinel_list(&self) -> String {
        self.sentinels.iter().map(|(p, _)| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// The data connection's URL for the services: password only (the
    /// host is the master Sentinel names).
    pub fn redis_url() -> String {
        format!("redis://:{DATA_PASSWORD}@127.0.0.1")
    }

    /// The master's port as the first answering sentinel names it.
    pub async fn master_port(&self) -> Option<u16> {
        for &(port, _) in &self.sentinels {
            if let Some(named) = named_master(port).await {
                return Some(named);
            }
        }
        None
    }

    /// SIGKILLs the data server on `port`.
    pub fn kill_server(&mut self, port: u16) {
        if let Some((_, process)) = self.servers.iter_mut().find(|(p, _)| *p == port)
            && let Some(mut process) = process.take()
        {
            process.kill();
        }
    }

    /// Asks the first sentinel for a failover (`SENTINEL FAILOVER`): a
    /// replica is promoted and the old master, still running, turns replica.
    pub async fn force_failover(&self) {
        let mut c = sentinel_conn(self.sentinels[0].0).await.expect("a sentinel");
        let _: () = redis::cmd("SENTINEL").arg("FAILOVER").arg(MASTER).query_async(&mut c).await.unwrap();
    }

    /// Failovers so far, as the first answering sentinel counts them
    /// (the master's `config-epoch`).
    pub async fn failovers(&self) -> u64 {
        for &(port, _) in &self.sentinels {
            let Some(mut c) = sentinel_conn(port).await else { continue };
            let fields: Option<Vec<String>> =
                redis::cmd("SENTINEL").arg("master").arg(MASTER).query_async(&mut c).await.ok();
            let epoch = fields.and_then(|f| {
                let i = f.iter().position(|k| k == "config-epoch")?;
                f.get(i + 1)?.parse().ok()
            });
            if let Some(epoch) = epoch {
                return epoch;
            }
        }
        0
    }

    /// Waits until every sentinel names a master other than `old` and that
    /// server answers `ROLE` master; returns its port.
    pub async fn wait_new_master(&self, old: u16, within: Duration) -> u16 {
        let deadline = Instant::now() + within;
        loop {
            let mut named = Vec::new();
            for &(port, _) in &self.sentinels {
                named.push(named_master(port).await);
            }
            if let Some(Some(new)) = named.first().copied()
                && new != old
                && named.iter().all(|n| *n == Some(new))
                && let Some(mut c) = data_conn(new).await
                && let Ok(role) = redis::cmd("ROLE").query_async::<redis::Value>(&mut c).await
                && redis_backplane::sentinel::is_master(&role)
            {
                return new;
            }
            assert!(Instant::now() < deadline, "no new master within {within:?}: sentinels name {named:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn data_url(port: u16) -> String {
    format!("redis://:{DATA_PASSWORD}@127.0.0.1:{port}")
}

/// A connection to the data server on `port`.
pub async fn data_conn(port: u16) -> Option<MultiplexedConnection> {
    let client = redis::Client::open(data_url(port)).ok()?;
    tokio::time::timeout(Duration::from_secs(1), client.get_multiplexed_async_connection()).await.ok()?.ok()
}

/// The master's port as the sentinel on `port` names it.
async fn named_master(port: u16) -> Option<u16> {
    let mut c = sentinel_conn(port).await?;
    let named: Option<(String, String)> =
        redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(MASTER).query_async(&mut c).await.ok()?;
    named?.1.parse().ok()
}

async fn sentinel_conn(port: u16) -> Option<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://:{SENTINEL_PASSWORD}@127.0.0.1:{port}")).ok()?;
    tokio::time::timeout(Duration::from_secs(1), client.get_multiplexed_async_connection()).await.ok()?.ok()
}

async fn info_replication(port: u16) -> Option<String> {
    let mut c = data_conn(port).await?;
    redis::cmd("INFO").arg("replication").query_async(&mut c).await.ok()
}

/// As [`eventually`], with three times its patience: sentinels find each
/// other through hello messages every 2 s.
async fn eventually_long<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT * 3;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
