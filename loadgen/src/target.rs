//! Where traffic goes: parsing target URLs, the loopback-only policy, and
//! opening TCP connections from a chosen 127.0.0.x source address.
//!
//! A load generator pointed at the wrong host is an attack, so every
//! target (gateway, publish endpoint, Redis) must be on this machine
//! unless `--allow-remote` says otherwise, and that is decided from the
//! URL alone, before any name is resolved or packet sent.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::http::Uri;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("{url:?} is not a valid URL: {reason}")]
    Invalid { url: String, reason: String },
    #[error("{url:?}: scheme must be {expected}")]
    Scheme { url: String, expected: &'static str },
    #[error(
        "{url:?} is not on this machine (only 127.0.0.0/8, ::1 and localhost are allowed); \
         pass --allow-remote to load a remote target"
    )]
    Remote { url: String },
    #[error("{url:?}: cannot resolve {host:?}: {reason}")]
    Resolve { url: String, host: String, reason: String },
}

/// A parsed `scheme://host:port/path?query` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL as given, for messages and requests.
    pub url: String,
    pub scheme: String,
    /// Host without IPv6 brackets.
    pub host: String,
    pub port: u16,
    pub path_and_query: String,
}

impl Endpoint {
    /// Parses `url`, whose scheme must be one of `schemes`; the first
    /// scheme's `default_port` applies when none is given.
    pub fn parse(
        url: &str,
        schemes: &'static [&'static str],
        default_port: u16,
    ) -> Result<Self, TargetError> {
        let invalid = |reason: String| TargetError::Invalid { url: url.to_owned(), reason };
        let uri: Uri = url.parse().map_err(|e| invalid(format!("{e}")))?;
        let scheme = uri.scheme_str().ok_or_else(|| invalid("no scheme".into()))?.to_ascii_lowercase();
        if !schemes.contains(&scheme.as_str()) {
            let expected = match schemes {
                ["ws"] => "ws:// (TLS is not supported; point at the plain port)",
                ["http"] => "http://",
                _ => "redis:// (or unix://)",
            };
            return Err(TargetError::Scheme { url: url.to_owned(), expected });
        }
        let host = uri.host().ok_or_else(|| invalid("no host".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        if host.is_empty() {
            return Err(invalid("no host".into()));
        }
        let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
        Ok(Endpoint {
            url: url.to_owned(),
            scheme,
            host,
            port: uri.port_u16().unwrap_or(default_port),
            path_and_query,
        })
    }

    /// Whether the host is this machine by its spelling alone.
    pub fn is_local(&self) -> bool {
        is_local_host(&self.host)
    }

    /// Refuses a remote host unless allowed.
    pub fn check_allowed(&self, allow_remote: bool) -> Result<(), TargetError> {
        if allow_remote || self.is_local() {
            Ok(())
        } else {
            Err(TargetError::Remote { url: self.url.clone() })
        }
    }

    /// The address to connect to. Local names never go through DNS, and
    /// IPv4 is preferred so 127.0.0.x source addresses can be used.
    pub async fn resolve(&self) -> Result<SocketAddr, TargetError> {
        if self.host.eq_ignore_ascii_case("localhost") {
            return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.port));
        }
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        let fail =
            |reason: String| TargetError::Resolve { url: self.url.clone(), host: self.host.clone(), reason };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| fail(e.to_string()))?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| fail("no addresses".into()))
    }
}

/// `localhost`, or an IP literal in 127.0.0.0/8 or `::1`.
pub fn is_local_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(IpAddr::V6(v6)) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        Err(_) => false,
    }
}

/// Checks a Redis URL against the same policy (`unix://` is local).
pub fn check_redis_url(url: &str, allow_remote: bool) -> Result<(), TargetError> {
    if url.starts_with("unix://") {
        return Ok(());
    }
    Endpoint::parse(url, &["redis", "rediss"], 6379)?.check_allowed(allow_remote)
}

/// The source address for connection `conn` when connecting to `dest`:
/// one of `spread` loopback addresses 127.0.0.1.., so each gets its own
/// ephemeral port range; none for remote or IPv6 targets.
pub fn source_for(conn: u64, spread: u32, dest: SocketAddr) -> Option<Ipv4Addr> {
    match dest.ip() {
        IpAddr::V4(v4) if v4.is_loopback() && spread > 0 => {
            let i = (conn % u64::from(spread.min(254))) as u8;
            Some(Ipv4Addr::new(127, 0, 0, 1 + i))
        }
        _ => None,
    }
}

/// Opens a TCP connection to `dest`, bound to `source` first when given.
pub async fn connect_from(source: Option<Ipv4Addr>, dest: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if dest.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    }
    let stream = socket.connect(dest).await?;
    // Subscribe frames are tiny; do not let Nagle hold them back.
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ws_urls() {
        let e = Endpoint::parse("ws://127.0.0.1:8080/ws?x=1", &["ws"], 80).unwrap();
        assert_eq!((e.host.as_str(), e.port, e.path_and_query.as_str()), ("127.0.0.1", 8080, "/ws?x=1"));
        let e = Endpoint::parse("ws://[::1]/ws", &["ws"], 80).unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 80));
        assert!(matches!(
            Endpoint::parse("wss://localhost/ws", &["ws"], 80),
            Err(TargetError::Scheme { .. })
        ));
        assert!(matches!(Endpoint::parse("not a url", &["ws"], 80), Err(TargetError::Invalid { .. })));
    }

    #[test]
    fn only_loopback_is_allowed_without_the_flag() {
        for local in ["localhost", "LOCALHOST", "127.0.0.1", "127.3.4.5", "::1", "[::1]", "::ffff:127.0.0.1"]
        {
            assert!(is_local_host(local), "{local}");
        }
        for remote in ["10.0.0.1", "192.168.1.1", "8.8.8.8", "example.com", "localhost.example.com", "::2"] {
            assert!(!is_local_host(remote), "{remote}");
        }
        let e = Endpoint::parse("ws://10.1.2.3:8080/ws", &["ws"], 80).unwrap();
        assert!(matches!(e.check_allowed(false), Err(TargetError::Remote { .. })));
        assert!(e.check_allowed(true).is_ok());
        assert!(check_redis_url("redis://127.0.0.1:6379/0", false).is_ok());
        assert!(check_redis_url("redis://:secret@redis.default.svc:6379", false).is_err());
        assert!(check_redis_url("unix:///tmp/redis.sock", false).is_ok());
    }

    #[test]
    fn source_addresses_spread_over_loopback_only() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(source_for(0, 16, local), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(source_for(17, 16, local), Some(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(source_for(5, 0, local), None);
        assert_eq!(source_for(5, 16, "[::1]:80".parse().unwrap()), None);
        assert_eq!(source_for(5, 16, "10.0.0.1:80".parse().unwrap()), None);
    }

    #[tokio::test]
    async fn local_names_resolve_without_dns() {
        let e = Endpoint::parse("ws://localhost:9/ws", &["ws"], 80).unwrap();
        assert_eq!(e.resolve().await.unwrap(), "127.0.0.1:9".parse().unwrap());
    }
}
