//! The Redis keys both services' configs share (`redis_url`,
//! `redis_cluster`, `redis_sentinels`, `redis_sentinel_master`,
//! `channel_prefix`): what values work, checked at start by the same code
//! in the gateway and the publisher, and how a `redis_url` is shown
//! without its password.

use crate::sentinel::SentinelConfig;

/// The seed nodes of a Redis Cluster: `url` split at commas, blanks dropped.
pub fn seeds(url: &str) -> impl Iterator<Item = &str> {
    url.split(',').map(str::trim).filter(|u| !u.is_empty())
}

/// Why `redis_url` cannot work: one server needs a `redis://`,
/// `rediss://` or `unix://` URL; a cluster (`cluster`) at least one seed,
/// each reached over TCP (there is no `unix://` seed).
pub fn check_url(url: &str, cluster: bool) -> Result<(), String> {
    if cluster {
        if seeds(url).next().is_none() {
            return Err("redis_cluster needs at least one seed node".into());
        }
        if let Some(seed) = seeds(url).find(|u| !(u.starts_with("redis://") || u.starts_with("rediss://"))) {
            return Err(format!("seed {seed:?} must start with redis:// or rediss://"));
        }
    } else if !["redis://", "rediss://", "unix://"].iter().any(|s| url.starts_with(s)) {
        return Err("must start with redis://, rediss:// or unix://".into());
    }
    Ok(())
}

/// `host:port` (`[v6]:port` too) split, or why it is not one.
pub fn host_port(entry: &str) -> Result<(&str, u16), String> {
    let bad = || format!("{entry:?} is not HOST:PORT");
    let (host, port) = entry.rsplit_once(':').ok_or_else(bad)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains(['/', '@', ' ']) {
        return Err(bad());
    }
    Ok((host, port))
}

/// Why the Sentinel keys cannot work, with the key to name. Without
/// `sentinels` the other two must be empty; with them, `master` is
/// required, `redis_cluster` is off, `wait_replicas` is 1 to 64, and `redis_url` (which then gives
/// only scheme, credentials and database) is empty or a TCP URL.
pub fn check_sentinel(
    sentinels: &str,
    master: &str,
    wait_replicas: u32,
    url: &str,
    cluster: bool,
) -> Result<(), (&'static str, String)> {
    if !(1..=64).contains(&wait_replicas) {
        return Err(("redis_sentinel_wait_replicas", format!("{wait_replicas} is outside 1..=64")));
    }
    if seeds(sentinels).next().is_none() {
        if !master.is_empty() {
            return Err(("redis_sentinel_master", "is set, but redis_sentinels lists no sentinel".into()));
        }
        return Ok(());
    }
    if cluster {
        return Err(("redis_sentinels", "cannot be used with redis_cluster".into()));
    }
    for entry in seeds(sentinels) {
        host_port(entry).map_err(|e| ("redis_sentinels", e))?;
    }
    if master.is_empty() || master.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(("redis_sentinel_master", "must name the master (non-empty, without spaces)".into()));
    }
    if !(url.is_empty() || url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err((
            "redis_url",
            "must be empty or start with redis:// or rediss:// with redis_sentinels".into(),
        ));
    }
    Ok(())
}

/// The Redis keys of a service's config, as read (both services have
/// the same ones): checked and turned into a [`SentinelConfig`] here.
#[derive(Debug, Clone, Copy)]
pub struct RedisKeys<'a> {
    pub url: &'a str,
    pub cluster: bool,
    pub sentinels: &'a str,
    pub sentinel_master: &'a str,
    pub sentinel_password: &'a str,
    pub sentinel_wait_replicas: u32,
}

impl<'a> RedisKeys<'a> {
    /// Why these keys cannot work, with the key to name. An empty
    /// `redis_url` without cluster or Sentinel passes unless `url_required`
    /// (the gateway's in-memory backplane).
    pub fn check(&self, url_required: bool) -> Result<(), (&'static str, String)> {
        check_sentinel(
            self.sentinels,
            self.sentinel_master,
            self.sentinel_wait_replicas,
            self.url,
            self.cluster,
        )?;
        if self.sentinel().is_none() && (url_required || self.cluster || !self.url.is_empty()) {
            check_url(self.url, self.cluster).map_err(|e| ("redis_url", e))?;
        }
        Ok(())
    }

    /// The Sentinel keys, when the master is found through Sentinel.
    pub fn sentinel(&self) -> Option<SentinelConfig<'a>> {
        SentinelConfig::from_keys(
            self.sentinels,
            self.sentinel_master,
            self.sentinel_password,
            self.sentinel_wait_replicas,
        )
    }
}

/// Why `channel_prefix` cannot work.
pub fn check_prefix(prefix: &str, cluster: bool) -> Result<(), String> {
    if prefix.is_empty() || prefix.chars().any(char::is_whitespace) {
        return Err("must be non-empty, without spaces".into());
    }
    // A brace in the prefix would change which part of a key Redis
    // Cluster hashes, and a topic's keys would leave its channel's slot.
    if cluster && prefix.contains(['{', '}']) {
        return Err("must not contain { or } with redis_cluster".into());
    }
    Ok(())
}

/// `url` (one URL or a comma-separated seed list) with the password of
/// each URL replaced, for `Debug` output and logs.
pub fn redacted_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let url = redact_user_info(url);
    // `unix://` URLs carry the password as a query parameter.
    let Some(q) = url.find('?') else { return url };
    let query = url[q + 1..]
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k == "pass" || k == "password" => format!("{k}=<redacted>"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("{}?{query}", &url[..q])
}

fn redact_user_info(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..].find(['/', '?']).map_or(url.len(), |i| scheme_end + i);
    let Some(at) = url[scheme_end..authority_end].rfind('@').map(|i| scheme_end + i) else {
        return url.to_owned();
    };
    // `user:password@` or `password@` (redis-rs reads a lone name as a
    // user without password, but either may be secret): keep the user.
    match url[scheme_end..at].find(':').map(|i| scheme_end + i) {
        Some(colon) => format!("{}:<redacted>{}", &url[..colon], &url[at..]),
        None => format!("{}<redacted>{}", &url[..scheme_end], &url[at..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_needs_tcp_seeds() {
        let cases = [
            (",", true, false),
            (" , ", true, false),
            ("", true, false),
            ("redis://a:1,unix:///tmp/r.sock", true, false),
            ("redis://a:1, rediss://b:2,", true, true),
            ("unix:///tmp/r.sock", false, true),
            ("http://x", false, false),
        ];
        for (url, cluster, ok) in cases {
            assert_eq!(check_url(url, cluster).is_ok(), ok, "{url:?} cluster={cluster}");
        }
    }

    #[test]
    fn sentinel_rules() {
        let ok = |s, m, u, c| check_sentinel(s, m, 1, u, c).map_err(|(key, _)| key);
        assert_eq!(
            check_sentinel("a:1", "m", 0, "", false).map_err(|(k, _)| k),
            Err("redis_sentinel_wait_replicas")
        );
        assert_eq!(ok("", "", "redis://x:1", false), Ok(()));
        assert_eq!(ok("a:1, [::1]:26379,", "mymaster", "", false), Ok(()));
        assert_eq!(ok("a:1", "mymaster", "rediss://:p@x/0", false), Ok(()));
        assert_eq!(ok("", "mymaster", "", false), Err("redis_sentinel_master"));
        assert_eq!(ok("a:1", "", "", false), Err("redis_sentinel_master"));
        assert_eq!(ok("a:1", "my master", "", false), Err("redis_sentinel_master"));
        assert_eq!(ok("a:1", "m", "", true), Err("redis_sentinels"));
        assert_eq!(ok("a", "m", "", false), Err("redis_sentinels"));
        assert_eq!(ok("a:0", "m", "", false), Err("redis_sentinels"));
        assert_eq!(ok("redis://a:1", "m", "", false), Err("redis_sentinels"));
        assert_eq!(ok("a:1", "m", "unix:///tmp/s", false), Err("redis_url"));
    }

    #[test]
    fn prefix_rules() {
        let cases = [
            ("rt:", true, true),
            ("", false, false),
            ("a b", false, false),
            ("rt{x}:", false, true),
            ("rt{x}:", true, false),
        ];
        for (prefix, cluster, ok) in cases {
            assert_eq!(check_prefix(prefix, cluster).is_ok(), ok, "{prefix:?} cluster={cluster}");
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redacted_url("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        assert_eq!(redacted_url("redis://:hunter2@h:1"), "redis://:<redacted>@h:1");
        assert_eq!(redacted_url("rediss://app:hunter2@h:1/0"), "rediss://app:<redacted>@h:1/0");
        assert_eq!(
            redacted_url("redis://a:p@x:1,redis://b:q@y:2"),
            "redis://a:<redacted>@x:1,redis://b:<redacted>@y:2"
        );
        assert_eq!(redacted_url("unix:///tmp/r.sock?db=1&pass=s"), "unix:///tmp/r.sock?db=1&pass=<redacted>");
    }
}
