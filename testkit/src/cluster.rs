//! A private Redis Cluster for tests: `n` redis-server masters (and
//! optionally a replica each) on free loopback ports, joined by
//! `redis-cli --cluster create`, each in its own directory, all SIGKILLed
//! when the guard is dropped (also when the test panics).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::Value;
use redis::aio::MultiplexedConnection;

use crate::{WAIT, eventually, free_port, wait_ping};

/// One cluster master.
pub struct ClusterNode {
    pub port: u16,
    /// Cluster bus port.
    bus_port: u16,
    /// Its nodes.conf lives here, so a restart rejoins with its slots.
    dir: PathBuf,
    options: ClusterOptions,
    child: Option<Child>,
}

impl ClusterNode {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        if let Some(ms) = self.options.node_timeout_ms {
            cmd.args(["--cluster-node-timeout", &ms.to_string()]);
        }
        if self.options.replicas > 0 {
            // A replica that never synced may not take over: start the
            // (diskless) first sync at once instead of after 5 s.
            cmd.args(["--repl-diskless-sync-delay", "0"]);
        }
        if !self.options.full_coverage {
            cmd.args(["--cluster-require-full-coverage", "no"]);
        }
        let child = cmd
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(self.dir.join("nodes.conf"))
            // The bus port defaults to port + 10000, which may be taken or
            // above 65535 for an ephemeral port.
            .args(["--cluster-port", &self.bus_port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH (apt-get install redis-server)");
        self.child = Some(child);
    }

    /// SIGKILLs the process (its data is gone; its cluster config stays).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How a test cluster is built.
#[derive(Clone, Copy, Debug)]
pub struct ClusterOptions {
    pub masters: usize,
    /// Replicas per master.
    pub replicas: usize,
    /// `cluster-node-timeout` in ms (None: the server's default, 15 s).
    pub node_timeout_ms: Option<u64>,
    /// `cluster-require-full-coverage`: with `false`, the masters that
    /// are up keep serving their slots while another's are unserved.
    pub full_coverage: bool,
}

impl ClusterOptions {
    pub fn masters(masters: usize) -> Self {
        ClusterOptions { masters, replicas: 0, node_timeout_ms: None, full_coverage: true }
    }
}

pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts `masters` nodes (no replicas), creates the cluster over them
    /// and waits until every node reports `cluster_state:ok`.
    pub async fn start(masters: usize) -> RedisCluster {
        RedisCluster::start_with(ClusterOptions::masters(masters)).await
    }

    /// Starts a cluster built as `options` says and waits until every node
    /// reports `cluster_state:ok`.
    pub async fn start_with(options: ClusterOptions) -> RedisCluster {
        let ClusterOptions { masters, replicas, .. } = options;
        assert!(masters >= 3, "redis-cli --cluster create needs at least 3 masters");
        let dir = std::env::temp_dir().join(format!("testkit-cluster-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        // Built before anything spawns, so a failure below still drops it.
        let mut cluster = RedisCluster { nodes: Vec::new(), dir };
        for _ in 0..masters * (1 + replicas) {
            let port = free_port();
            let dir = cluster.dir.join(port.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            let mut node = ClusterNode { port, bus_port: free_port(), dir, options, child: None };
            node.spawn();
            cluster.nodes.push(node);
        }
        for node in &cluster.nodes {
            wait_ping(node.url()).await;
        }
        let addrs: Vec<String> = cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = tokio::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output();
        let created = tokio::time::timeout(WAIT * 3, created)
            .await
            .expect("redis-cli --cluster create timed out")
            .expect("redis-cli must be on PATH");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        cluster.wait_ok().await;
        if replicas > 0 {
            cluster.wait_replicas_synced().await;
        }
        cluster
    }

    /// Waits until every replica's link to its master is up (it synced).
    async fn wait_replicas_synced(&self) {
        for node in &self.nodes {
            let url = node.url();
            eventually("replicas synced with their master", || {
                let url = url.clone();
                async move {
                    let mut c =
                        redis::Client::open(url).ok()?.get_multiplexed_async_connection().await.ok()?;
                    let info: String =
                        redis::cmd("INFO").arg("replication").query_async(&mut c).await.ok()?;
                    (info.contains("role:master") || info.contains("master_link_status:up")).then_some(())
                }
            })
            .await;
        }
    }

    /// Waits until every running node reports `cluster_state:ok` (all
    /// slots known and served, from each node's point of view); killed
    /// nodes are not asked.
    pub async fn wait_ok(&self) {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let url = node.url();
            eventually("cluster_state:ok", || {
                let url = url.clone();
                async move {
                    let mut c =
                        redis::Client::open(url).ok()?.get_multiplexed_async_connection().await.ok()?;
                    let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await.ok()?;
                    info.contains("cluster_state:ok").then_some(())
                }
            })
            .await;
        }
    }

    /// SIGKILLs master `index`: its slots are unserved until it restarts.
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    /// Restarts a killed master on its port with its cluster config (and
    /// no data), and waits until the cluster is whole again.
    pub async fn restart(&mut self, index: usize) {
        self.nodes[index].spawn();
        wait_ping(self.nodes[index].url()).await;
        self.wait_ok().await;
    }

    /// Every node's URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(ClusterNode::url).collect()
    }

    /// Every node's URL, comma-separated (`redis_url` with `redis_cluster`).
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// A plain connection to one node (commands on keys of other nodes'
    /// slots get MOVED).
    pub async fn node_connection(&self, index: usize) -> MultiplexedConnection {
        redis::Client::open(self.nodes[index].url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// A cluster connection (RESP2, routed by key).
    pub async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        redis::cluster::ClusterClient::new(self.urls()).unwrap().get_async_connection().await.unwrap()
    }

    /// Whether node `index` runs (it was not killed, or was restarted).
    pub fn is_running(&self, index: usize) -> bool {
        self.nodes[index].child.is_some()
    }

    /// The index of a replica of master `master`, from `ROLE` on each node.
    pub async fn replica_of(&self, master: usize) -> usize {
        for index in (0..self.nodes.len()).filter(|&i| self.is_running(i)) {
            let mut c = self.node_connection(index).await;
            let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut c).await.unwrap();
            if let (Some(Value::BulkString(kind)), Some(Value::Int(port))) = (role.first(), role.get(2))
                && kind.as_slice() == b"slave"
                && *port == i64::from(self.nodes[master].port)
            {
                return index;
            }
        }
        panic!("master {master} has no replica");
    }

    /// Runs `CLUSTER FAILOVER` on replica `replica` (a planned switch: it
    /// waits for the master's writes, then takes over its slots).
    pub async fn failover(&self, replica: usize) {
        let mut c = self.node_connection(replica).await;
        let _: String = redis::cmd("CLUSTER").arg("FAILOVER").query_async(&mut c).await.unwrap();
    }

    /// The index in `nodes` of the master serving `key`'s slot (or a
    /// sharded channel's), from `CLUSTER SLOTS` on a running node.
    pub async fn owner_of(&self, key: &str) -> usize {
        match self.try_owner_of(key).await {
            Some(index) => index,
            None => panic!("no master serves the slot of {key}"),
        }
    }

    /// [`RedisCluster::owner_of`], None when no master serves the slot
    /// (or no running node answers).
    pub async fn try_owner_of(&self, key: &str) -> Option<usize> {
        self.resolver().owner_of(key).await
    }

    /// Finds slot owners without borrowing the cluster (for a task that
    /// runs while the test kills nodes).
    pub fn resolver(&self) -> SlotResolver {
        SlotResolver { ports: self.nodes.iter().map(|n| n.port).collect() }
    }

    /// `PUBSUB SHARDNUMSUB channel` on the master that owns the channel:
    /// how many clients there hold a sharded subscription to it.
    pub async fn shard_numsub(&self, channel: &str) -> i64 {
        let mut c = self.node_connection(self.owner_of(channel).await).await;
        let (_, n): (String, i64) =
            redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(channel).query_async(&mut c).await.unwrap();
        n
    }

    /// Polls [`RedisCluster::shard_numsub`] until it equals `want` or WAIT
    /// passes; returns the last value.
    pub async fn wait_shard_numsub(&self, channel: &str, want: i64) -> i64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let n = self.shard_numsub(channel).await;
            if n == want || tokio::time::Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Asks the nodes of a cluster, in turn, who serves a slot.
#[derive(Clone)]
pub struct SlotResolver {
    ports: Vec<u16>,
}

impl SlotResolver {
    /// The index of the master serving `key`'s slot, from `CLUSTER SLOTS`
    /// on the first node that answers; None if none does or no master
    /// serves it.
    pub async fn owner_of(&self, key: &str) -> Option<usize> {
        let slot = wire::keys::cluster_slot(key);
        for port in &self.ports {
            let url = format!("redis://127.0.0.1:{port}");
            let Ok(client) = redis::Client::open(url) else { continue };
            let connect = client.get_multiplexed_async_connection();
            let Ok(Ok(mut c)) = tokio::time::timeout(Duration::from_millis(300), connect).await else {
                continue;
            };
            let cmd = redis::cmd("CLUSTER").arg("SLOTS").clone();
            let asked = cmd.query_async::<Value>(&mut c);
            let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_millis(300), asked).await else {
                continue;
            };
            if let Some(index) = redis_backplane::slots::slot_ranges(&reply)
                .iter()
                .filter(|r| r.contains(slot))
                .find_map(|r| self.ports.iter().position(|p| *p == r.port))
            {
                return Some(index);
            }
            return None;
        }
        None
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
