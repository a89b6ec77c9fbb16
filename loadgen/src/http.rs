//! A minimal HTTP/1.1 keep-alive client for `POST /publish`: one request
//! at a time on one connection, `Content-Length` or chunked responses.
//!
//! Hand-written because the publisher needs exactly this and nothing
//! more; each publishing task owns one client, so the connection is
//! reused for every request and never shared.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::target::{Endpoint, TargetError};

/// Largest response head and body accepted; `/publish` answers are tiny.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("connect {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("malformed response: {0}")]
    Malformed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

pub struct HttpClient {
    endpoint: Endpoint,
    addr: SocketAddr,
    /// `Host` header value.
    host: String,
    auth: Option<String>,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
}

impl HttpClient {
    /// Parses and resolves `url`; connects lazily on the first request.
    pub async fn new(url: &str, bearer: Option<&str>, timeout: Duration) -> Result<Self, HttpError> {
        let endpoint = Endpoint::parse(url, &["http"], 80)?;
        let addr = endpoint.resolve().await?;
        let host = if endpoint.host.contains(':') {
            format!("[{}]:{}", endpoint.host, endpoint.port)
        } else {
            format!("{}:{}", endpoint.host, endpoint.port)
        };
        Ok(HttpClient {
            endpoint,
            addr,
            host,
            auth: bearer.map(|k| format!("Bearer {k}")),
            timeout,
            conn: None,
        })
    }

    /// Opens the connection now, so an unreachable endpoint shows at once.
    pub async fn connect(&mut self) -> Result<(), HttpError> {
        if self.conn.is_none() {
            let stream = tokio::time::timeout(self.timeout, TcpStream::connect(self.addr))
                .await
                .map_err(|_| HttpError::Timeout(self.timeout))?
                .map_err(|source| HttpError::Connect { addr: self.addr, source })?;
            stream.set_nodelay(true)?;
            self.conn = Some(BufReader::new(stream));
        }
        Ok(())
    }

    /// POSTs a JSON body to the endpoint's path. A kept-alive connection
    /// the server closed while idle fails before any answer; that case is
    /// retried once on a fresh connection.
    pub async fn post_json(&mut self, body: &[u8]) -> Result<Response, HttpError> {
        let reused = self.conn.is_some();
        match self.try_post(body).await {
            Err(HttpError::Io(e)) if reused && is_stale_connection(&e) => {
                self.conn = None;
                self.try_post(body).await
            }
            other => other,
        }
    }

    async fn try_post(&mut self, body: &[u8]) -> Result<Response, HttpError> {
        self.connect().await?;
        let timeout = self.timeout;
        let result = match self.conn.as_mut() {
            Some(conn) => {
                let head =
                    request_head(&self.endpoint.path_and_query, &self.host, self.auth.as_deref(), body.len());
                tokio::time::timeout(timeout, exchange(conn, head.as_bytes(), body))
                    .await
                    .unwrap_or(Err(HttpError::Timeout(timeout)))
            }
            None => Err(HttpError::Malformed("not connected".into())),
        };
        match result {
            Ok((response, keep_alive)) => {
                if !keep_alive {
                    self.conn = None;
                }
                Ok(response)
            }
            Err(e) => {
                // The connection's state is unknown after any failure.
                self.conn = None;
                Err(e)
            }
        }
    }
}

fn is_stale_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe)
}

fn request_head(path: &str, host: &str, auth: Option<&str>, len: usize) -> String {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n"
    );
    if let Some(auth) = auth {
        head.push_str("Authorization: ");
        head.push_str(auth);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

/// Writes one request and reads its response; returns whether the
/// connection may be reused.
async fn exchange(
    conn: &mut BufReader<TcpStream>,
    head: &[u8],
    body: &[u8],
) -> Result<(Response, bool), HttpError> {
    let stream = conn.get_mut();
    stream.write_all(head).await?;
    stream.write_all(body).await?;
    read_response(conn).await
}

/// Reads one HTTP/1.1 response from `r`.
pub async fn read_response<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<(Response, bool), HttpError> {
    let mut line = String::new();
    let mut head_len = 0;
    read_head_line(r, &mut line, &mut head_len).await?;
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or("");
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| HttpError::Malformed(format!("status line {:?}", line.trim_end())))?;
    let mut keep_alive = version == "HTTP/1.1";
    let mut length: Option<usize> = None;
    let mut chunked = false;
    loop {
        read_head_line(r, &mut line, &mut head_len).await?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            return Err(HttpError::Malformed(format!("header {header:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value.parse().map_err(|_| HttpError::Malformed(format!("content-length {value:?}")))?;
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                keep_alive = false;
            } else if v.contains("keep-alive") {
                keep_alive = true;
            }
        }
    }
    let body = if chunked {
        read_chunked(r).await?
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(HttpError::Malformed(format!("body of {n} bytes")));
        }
        let mut body = vec![0; n];
        r.read_exact(&mut body).await?;
        body
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        // Body until close: read it all, and the connection is spent.
        keep_alive = false;
        let mut body = Vec::new();
        r.take(MAX_BODY as u64).read_to_end(&mut body).await?;
        body
    };
    Ok((Response { status, body }, keep_alive))
}

/// Reads one line of the response head, keeping the head bounded.
async fn read_head_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut String,
    head_len: &mut usize,
) -> Result<(), HttpError> {
    line.clear();
    let n = (&mut *r).take((MAX_HEAD - *head_len) as u64 + 1).read_line(line).await?;
    if n == 0 {
        return Err(HttpError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    *head_len += n;
    if *head_len > MAX_HEAD {
        return Err(HttpError::Malformed("response head too large".into()));
    }
    Ok(())
}

async fn read_chunked<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).await?;
        let size_text = line.trim_end().split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Malformed(format!("chunk size {size_text:?}")))?;
        if body.len() + size > MAX_BODY {
            return Err(HttpError::Malformed("chunked body too large".into()));
        }
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                if r.read_line(&mut line).await? == 0 || line.trim_end().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).await?;
        line.clear();
        r.read_line(&mut line).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(raw: &str) -> Result<(Response, bool), HttpError> {
        let mut r = BufReader::new(raw.as_bytes());
        read_response(&mut r).await
    }

    #[tokio::test]
    async fn content_length_and_keep_alive() {
        let (resp, keep) =
            parse("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\n{\"a\"}")
                .await
                .unwrap();
        assert_eq!((resp.status, resp.body.as_slice(), keep), (200, &b"{\"a\"}"[..], true));
        let (_, keep) =
            parse("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").await.unwrap();
        assert!(!keep);
    }

    #[tokio::test]
    async fn chunked_and_read_to_close() {
        let (resp, _) =
            parse("HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n")
                .await
                .unwrap();
        assert_eq!((resp.status, resp.body.as_slice()), (503, &b"abcde"[..]));
        let (resp, keep) = parse("HTTP/1.0 200 OK\r\n\r\nrest").await.unwrap();
        assert_eq!((resp.body.as_slice(), keep), (&b"rest"[..], false));
    }

    #[tokio::test]
    async fn garbage_is_refused() {
        assert!(matches!(parse("SSH-2.0-OpenSSH\r\n\r\n").await, Err(HttpError::Malformed(_))));
        assert!(matches!(parse("HTTP/1.1 200 OK\r\nbad header\r\n\r\n").await, Err(HttpError::Malformed(_))));
        assert!(matches!(parse("HTTP/1.1 200 OK\r\n").await, Err(HttpError::Io(_))));
    }

    #[tokio::test]
    async fn talks_to_a_real_server_and_reuses_the_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut r = BufReader::new(stream);
            for i in 0..3 {
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).await.unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).await.unwrap();
                let answer = format!("{{\"seq\":{i}}}");
                let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}", answer.len());
                r.get_mut().write_all(resp.as_bytes()).await.unwrap();
            }
        });
        let mut c = HttpClient::new(&format!("http://{addr}/publish"), Some("k"), Duration::from_secs(5))
            .await
            .unwrap();
        for i in 0..3 {
            let resp = c.post_json(br#"{"topic":"t","data":{}}"#).await.unwrap();
            assert_eq!(resp.body, format!("{{\"seq\":{i}}}").into_bytes());
        }
        server.await.unwrap();
    }
}
