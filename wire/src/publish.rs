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

/// Whether an `Authorization` header carries `Bearer <key>`; an empty key
/// means the endpoint is open. Compared in constant time.
pub fn bearer_matches(authorization: Option<&str>, key: &str) -> bool {
    if key.is_empty() {
        return true;
    }
    let given = authorization.and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    given.len() == key.len() && given.bytes().zip(key.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    fn bearer_keys() {
        assert!(bearer_matches(None, ""));
        assert!(bearer_matches(Some("Bearer k"), "k"));
        assert!(!bearer_matches(Some("Bearer x"), "k"));
        assert!(!bearer_matches(Some("k"), "k"));
        assert!(!bearer_matches(None, "k"));
    }
}
