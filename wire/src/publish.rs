//! The body of `POST /publish`, served alike by the gateway and the
//! publisher: `{"topic", "data": {…}, "traceparent"?, "id"?}`, and the
//! Bearer-key check that guards it.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::codes::ErrorCode;
use crate::topic::{self, Topic};

/// A checked publish request, borrowing from the body.
#[derive(Debug)]
pub struct PublishRequest<'a> {
    pub topic: Topic,
    /// A JSON object.
    pub data: &'a RawValue,
    pub traceparent: Option<Cow<'a, str>>,
    /// Idempotency key for `orders.*`: the same id is published once.
    pub id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default, borrow)]
    traceparent: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
}

/// Parses and checks a body; the error is the code and message to answer
/// with (HTTP 400).
pub fn parse(body: &[u8]) -> Result<PublishRequest<'_>, (ErrorCode, String)> {
    let req: Body<'_> = serde_json::from_slice(body).map_err(|e| {
        let code = if e.is_data() { ErrorCode::InvalidFrame } else { ErrorCode::InvalidJson };
        (code, e.to_string())
    })?;
    let topic = Topic::parse(&req.topic).map_err(|e| (ErrorCode::InvalidTopic, e.to_string()))?;
    if !req.data.get().starts_with('{') {
        return Err((ErrorCode::InvalidFrame, "data must be a JSON object".into()));
    }
    if let Some(id) = &req.id
        && topic::validate(id).is_err()
    {
        return Err((ErrorCode::InvalidFrame, "id must be 1-128 characters of A-Z a-z 0-9 . _ : -".into()));
    }
    Ok(PublishRequest { topic, data: req.data, traceparent: req.traceparent, id: req.id })
}

/// Why a `POST /publish` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No key is configured and the endpoint was not opened: closed to all.
    Closed,
    /// A key is configured and the request did not carry it.
    WrongKey,
}

impl Denied {
    /// The HTTP status a service answers with: 403 closed, 401 wrong key.
    pub fn status(self) -> u16 {
        match self {
            Denied::Closed => 403,
            Denied::WrongKey => 401,
        }
    }

    /// The code and message a service answers with.
    pub fn explain(self) -> (ErrorCode, &'static str) {
        match self {
            Denied::Closed => (
                ErrorCode::Forbidden,
                "POST /publish is closed: set publish_api_key (and send Authorization: Bearer <key>), \
                 or publish_insecure = true to open it to anyone who reaches this port",
            ),
            Denied::WrongKey => (ErrorCode::Unauthorized, "missing or wrong Bearer key"),
        }
    }
}

/// Checks a `POST /publish` request's `Authorization` header: with a `key`
/// configured it must carry `Bearer <key>` (compared in constant time);
/// without one the endpoint is closed unless the operator opened it
/// (`open`). Secure by default: anyone who reaches the port could
/// otherwise push prices to every client.
pub fn authorize(authorization: Option<&str>, key: &str, open: bool) -> Result<(), Denied> {
    if key.is_empty() {
        return if open { Ok(()) } else { Err(Denied::Closed) };
    }
    let given = authorization.and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    let same = given.len() == key.len()
        && given.bytes().zip(key.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if same { Ok(()) } else { Err(Denied::WrongKey) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let ok =
            parse(br#"{"topic":"orders.a","data":{"x":1},"id":"u-1","traceparent":"00-a-b-01"}"#).unwrap();
        assert_eq!(
            (ok.topic.as_str(), ok.data.get(), ok.id.as_deref()),
            ("orders.a", r#"{"x":1}"#, Some("u-1"))
        );
        let code = |b: &[u8]| parse(b).unwrap_err().0;
        assert_eq!(code(b"nope"), ErrorCode::InvalidJson);
        assert_eq!(code(br#"{"topic":"a"}"#), ErrorCode::InvalidFrame);
        assert_eq!(code(br#"{"topic":"a b","data":{}}"#), ErrorCode::InvalidTopic);
        assert_eq!(code(br#"{"topic":"a","data":[1]}"#), ErrorCode::InvalidFrame);
        assert_eq!(code(br#"{"topic":"a","data":{},"id":"x y"}"#), ErrorCode::InvalidFrame);
    }

    #[test]
    fn bearer_keys_and_a_closed_default() {
        assert_eq!(authorize(None, "", false), Err(Denied::Closed), "no key, not opened: closed");
        assert_eq!(authorize(Some("Bearer x"), "", false), Err(Denied::Closed));
        assert_eq!(authorize(None, "", true), Ok(()), "opened explicitly");
        assert_eq!(authorize(Some("Bearer k"), "k", false), Ok(()));
        assert_eq!(authorize(Some("Bearer k"), "k", true), Ok(()));
        assert_eq!(authorize(None, "k", true), Err(Denied::WrongKey), "a key wins over open");
        assert_eq!(authorize(Some("Bearer x"), "k", false), Err(Denied::WrongKey));
        assert_eq!(authorize(Some("k"), "k", false), Err(Denied::WrongKey));
        assert_eq!(authorize(Some("Bearer kk"), "k", false), Err(Denied::WrongKey));
    }
}
