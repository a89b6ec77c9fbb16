//! The opening handshake, server side (RFC 6455 §4.2): which upgrade
//! requests are accepted, and the `101 Switching Protocols` answer.
//!
//! No subprotocol and no extension is ever negotiated (as before with
//! axum's `ws`: the protocol is JSON text): offers of either (browsers
//! offer `permessage-deflate`) are left unanswered, which the client
//! takes as none.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

/// The GUID a server appends to the client's key (§1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade request is refused; each is answered with its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("a WebSocket upgrade must be a GET")]
    NotGet,
    #[error("a WebSocket upgrade needs HTTP/1.1")]
    NotHttp11,
    #[error("`Connection` header did not include `upgrade`")]
    Connection,
    #[error("`Upgrade` header did not include `websocket`")]
    Upgrade,
    #[error("`Sec-WebSocket-Version` must be 13")]
    Version,
    #[error("`Sec-WebSocket-Key` missing or not 16 bytes in base64")]
    Key,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = match self {
            Refusal::NotGet => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::Version => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        };
        let mut response = (status, self.to_string()).into_response();
        if self == Refusal::Version {
            // §4.4: say which version this server speaks.
            response.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        response
    }
}

/// Checks an upgrade request; returns the `Sec-WebSocket-Accept` value.
pub(crate) fn check(method: &Method, version: Version, headers: &HeaderMap) -> Result<String, Refusal> {
    if method != Method::GET {
        return Err(Refusal::NotGet);
    }
    if version != Version::HTTP_11 {
        return Err(Refusal::NotHttp11);
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(Refusal::Connection);
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(Refusal::Upgrade);
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
        return Err(Refusal::Version);
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY).ok_or(Refusal::Key)?;
    match STANDARD.decode(key.as_bytes()) {
        Ok(raw) if raw.len() == 16 => Ok(accept_key(key.as_bytes())),
        _ => Err(Refusal::Key),
    }
}

/// The `101` answer to an accepted request.
pub(crate) fn switching(accept: &str) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// base64(SHA-1(key + GUID)) (§4.2.2).
pub(crate) fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    STANDARD.encode(sha.finalize())
}

/// Whether a comma-separated header (any of its lines) lists `token`.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(*k, HeaderValue::from_static(v));
        }
        headers
    }

    const GOOD: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn the_rfc_example_key() {
        let accept = check(&Method::GET, Version::HTTP_11, &request(&GOOD)).unwrap();
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn refusals() {
        let h = request(&GOOD);
        assert_eq!(check(&Method::POST, Version::HTTP_11, &h), Err(Refusal::NotGet));
        assert_eq!(check(&Method::GET, Version::HTTP_10, &h), Err(Refusal::NotHttp11));
        for (i, want) in
            [Refusal::Connection, Refusal::Upgrade, Refusal::Version, Refusal::Key].into_iter().enumerate()
        {
            let mut pairs = GOOD.to_vec();
            pairs.remove(i);
            assert_eq!(check(&Method::GET, Version::HTTP_11, &request(&pairs)), Err(want));
        }
        let mut pairs = GOOD.to_vec();
        pairs[3].1 = "c2hvcnQ=";
        assert_eq!(check(&Method::GET, Version::HTTP_11, &request(&pairs)), Err(Refusal::Key));
        let response = Refusal::Version.into_response();
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(response.headers()[header::SEC_WEBSOCKET_VERSION], "13");
    }
}
