//! Where a connection to "the" Redis goes: one fixed server
//! (`redis_url`), or the master Redis Sentinel names now
//! (`redis_sentinels` + `redis_sentinel_master`). Every connection of
//! both services (pools, the gateway's pub/sub links and its order
//! connection) asks a [`Target`] for its client each time it connects,
//! so after a failover every reconnect lands on the new master.
//!
//! Resolution asks the sentinels in their configured order; the first
//! that names an address wins, and that address must answer `ROLE` with
//! `master` (a sentinel with a stale view must not send us to a
//! replica). With Sentinel, `redis_url` gives only the data connection's
//! scheme (TLS or not), user, password and database; its host is not used.
//!
//! A small resolver here rather than redis-rs's `sentinel` module: that
//! one's `SentinelClient` resolves through `&mut self` (every reconnect
//! of every connection would queue behind one async lock), bounds no
//! step by a timeout, and hands out a client fixed to one address, while
//! each of our connection kinds needs the address again at each connect.

use std::sync::Arc;
use std::time::Duration;

use redis::{Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo, Value};
use tokio::time::timeout;

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis sentinel: {0}")]
    Sentinel(String),
}

/// The Sentinel keys of a service's config.
#[derive(Debug, Clone, Copy)]
pub struct SentinelConfig<'a> {
    /// `host:port` of each sentinel, comma-separated, asked in this order.
    pub sentinels: &'a str,
    /// The master's name in the sentinels' configuration.
    pub master: &'a str,
    /// `requirepass` of the sentinels themselves; empty: none.
    pub password: &'a str,
    /// Replicas an order update must reach before it is published.
    pub wait_replicas: u32,
}

impl<'a> SentinelConfig<'a> {
    /// The Sentinel keys of a config, when `sentinels` lists any.
    pub fn from_keys(
        sentinels: &'a str,
        master: &'a str,
        password: &'a str,
        wait_replicas: u32,
    ) -> Option<Self> {
        crate::settings::seeds(sentinels).next().map(|_| SentinelConfig {
            sentinels,
            master,
            password,
            wait_replicas,
        })
    }
}

/// Where connections go; cheap to clone.
#[derive(Clone)]
pub enum Target {
    /// One fixed server (boxed: a client is large, the enum is cloned).
    Direct(Box<Client>),
    /// Whichever server the sentinels name master at each connect.
    Sentinel(Arc<Sentinel>),
}

impl Target {
    /// The target of `url`, through the sentinels of `sentinel` if any;
    /// each resolution step is bounded by `limit`.
    pub fn open(
        url: &str,
        sentinel: Option<SentinelConfig<'_>>,
        limit: Duration,
    ) -> Result<Target, ConnectError> {
        match sentinel {
            None => Ok(Target::Direct(Box::new(Client::open(url)?))),
            Some(config) => Ok(Target::Sentinel(Arc::new(Sentinel::new(url, config, limit)?))),
        }
    }

    /// A client for the server to connect to now.
    pub async fn client(&self) -> Result<Client, ConnectError> {
        match self {
            Target::Direct(client) => Ok(Client::clone(client)),
            Target::Sentinel(sentinel) => sentinel.master().await,
        }
    }

    /// Whether the sentinels now name a master other than `addr` (the
    /// address of a client [`Target::client`] gave). False for a fixed
    /// server, and when no sentinel answers (nothing is known to differ).
    pub async fn moved_from(&self, addr: &ConnectionAddr) -> bool {
        let Target::Sentinel(sentinel) = self else { return false };
        match sentinel.named().await {
            Some((host, port)) => match addr {
                ConnectionAddr::Tcp(h, p) | ConnectionAddr::TcpTls { host: h, port: p, .. } => {
                    *h != host || *p != port
                }
                // A Unix socket (never named by a sentinel) or a new kind.
                _ => false,
            },
            None => false,
        }
    }

    /// Whether the server may change under a connection (a failover):
    /// then a kept connection is checked with `ROLE`, not only `PING`.
    pub fn moves(&self) -> bool {
        matches!(self, Target::Sentinel(_))
    }
}

/// The sentinels of one master and how to reach what they name.
pub struct Sentinel {
    sentinels: Vec<(String, Client)>,
    master: String,
    /// The data connection as `redis_url` gives it; its address is
    /// replaced by the one the sentinels name.
    data: ConnectionInfo,
    limit: Duration,
}

impl Sentinel {
    fn new(url: &str, config: SentinelConfig<'_>, limit: Duration) -> Result<Sentinel, ConnectError> {
        // An empty `redis_url` means plain TCP without a password.
        let url = if url.is_empty() { "redis://127.0.0.1" } else { url };
        let data = url.into_connection_info()?;
        let mut auth = RedisConnectionInfo::default();
        if !config.password.is_empty() {
            auth = auth.set_password(config.password);
        }
        let mut sentinels = Vec::new();
        for entry in crate::settings::seeds(config.sentinels) {
            let (host, port) = crate::settings::host_port(entry).map_err(ConnectError::Sentinel)?;
            // The sentinels speak TLS when the data connection does.
            let info =
                data.clone().set_addr(same_scheme(data.addr(), host, port)).set_redis_settings(auth.clone());
            sentinels.push((entry.to_owned(), Client::open(info)?));
        }
        if sentinels.is_empty() {
            return Err(ConnectError::Sentinel("no sentinel address".into()));
        }
        Ok(Sentinel { sentinels, master: config.master.to_owned(), data, limit })
    }

    /// A client for the master the first answering sentinel names, once
    /// that server confirmed it is master.
    pub async fn master(&self) -> Result<Client, ConnectError> {
        let mut errors = Vec::new();
        for (name, sentinel) in &self.sentinels {
            match timeout(self.limit, self.ask(sentinel)).await {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(e)) => errors.push(format!("{name}: {e}")),
                Err(_) => errors.push(format!("{name}: timed out")),
            }
        }
        Err(ConnectError::Sentinel(format!("no master for {:?}: {}", self.master, errors.join("; "))))
    }

    /// The master's address as the first answering sentinel names it
    /// (not checked with `ROLE`: to notice that it moved).
    pub async fn named(&self) -> Option<(String, u16)> {
        for (_, sentinel) in &self.sentinels {
            if let Ok(Ok(named)) = timeout(self.limit, self.ask_address(sentinel)).await {
                return Some(named);
            }
        }
        None
    }

    async fn ask_address(&self, sentinel: &Client) -> Result<(String, u16), ConnectError> {
        let mut conn = sentinel.get_multiplexed_async_connection().await?;
        let named: Option<(String, String)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query_async(&mut conn)
            .await?;
        let Some((host, port)) = named else {
            return Err(ConnectError::Sentinel(format!("does not know master {:?}", self.master)));
        };
        let port: u16 = port.parse().map_err(|_| ConnectError::Sentinel(format!("named port {port:?}")))?;
        Ok((host, port))
    }

    async fn ask(&self, sentinel: &Client) -> Result<Client, ConnectError> {
        let (host, port) = self.ask_address(sentinel).await?;
        let client = Client::open(self.data.clone().set_addr(same_scheme(self.data.addr(), &host, port)))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let role: Value = redis::cmd("ROLE").query_async(&mut conn).await?;
        if is_master(&role) {
            Ok(client)
        } else {
            Err(ConnectError::Sentinel(format!("{host}:{port}, named master, is not master ({role:?})")))
        }
    }
}

/// `host:port` reached as `like` is (TLS settings kept).
fn same_scheme(like: &ConnectionAddr, host: &str, port: u16) -> ConnectionAddr {
    match like {
        ConnectionAddr::TcpTls { insecure, tls_params, .. } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    }
}

/// Whether a `ROLE` reply says master.
pub fn is_master(role: &Value) -> bool {
    let Value::Array(items) = role else { return false };
    match items.first() {
        Some(Value::BulkString(b)) => b == b"master",
        Some(Value::SimpleString(s)) => s == "master",
        _ => false,
    }
}

/// Whether `e` means the server is no longer master (`-READONLY` from a
/// demoted master that is still reachable): reconnect and re-resolve.
pub fn is_readonly(e: &redis::RedisError) -> bool {
    e.code() == Some("READONLY")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_role_replies() {
        let master = Value::Array(vec![Value::BulkString(b"master".to_vec()), Value::Int(10)]);
        let replica = Value::Array(vec![Value::BulkString(b"slave".to_vec())]);
        assert!(is_master(&master));
        assert!(!is_master(&replica));
        assert!(!is_master(&Value::Nil));
    }

    #[test]
    fn sentinels_keep_the_data_scheme() {
        let tls = "rediss://:pw@x:1/2".into_connection_info().unwrap();
        assert!(matches!(same_scheme(tls.addr(), "h", 7), ConnectionAddr::TcpTls { port: 7, .. }));
        let plain = "redis://x:1".into_connection_info().unwrap();
        assert_eq!(same_scheme(plain.addr(), "h", 7), ConnectionAddr::Tcp("h".into(), 7));
    }

    #[test]
    fn needs_a_sentinel() {
        let config = SentinelConfig { sentinels: " , ", master: "m", password: "", wait_replicas: 1 };
        assert!(Target::open("", Some(config), Duration::from_secs(1)).is_err());
        let config =
            SentinelConfig { sentinels: "127.0.0.1:26379", master: "m", password: "s", wait_replicas: 1 };
        assert!(
            Target::open("redis://:p@ignored:1/0", Some(config), Duration::from_secs(1)).unwrap().moves()
        );
    }
}
