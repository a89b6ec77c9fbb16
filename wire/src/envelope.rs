//! The backplane envelope: what a backend PUBLISHes on `rt:<topic>`
//! (SPUBLISHes, on a Redis Cluster backplane).
//!
//! `{"topic":…,"seq":…,"ts":…,"data":{…},"traceparent":"…"}`. The gateway
//! parses it once per message, borrowing from the received bytes, and
//! builds the client `message` frame once for all its subscribers; `data`
//! is passed through as raw JSON, never re-parsed or re-serialised.

use std::borrow::Cow;
use std::fmt::Write;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::topic::{self, TopicError};

/// A parsed envelope, borrowing from the payload it was read from.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    #[serde(borrow)]
    pub topic: Cow<'a, str>,
    pub seq: u64,
    pub ts: u64,
    #[serde(borrow)]
    pub data: &'a RawValue,
    /// W3C trace context of the publishing span, when the backend traces.
    #[serde(default, borrow)]
    pub traceparent: Option<Cow<'a, str>>,
}

/// Why an envelope was refused (logged and counted, never delivered).
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("envelope topic is invalid: {0}")]
    Topic(#[from] TopicError),
    #[error("envelope data must be a JSON object")]
    DataNotObject,
    #[error("envelope topic {found:?} does not match its channel's topic {expected:?}")]
    TopicMismatch { expected: String, found: String },
}

impl<'a> Envelope<'a> {
    /// Parses and checks an envelope received on `expected_topic`'s channel.
    pub fn parse(payload: &'a [u8], expected_topic: Option<&str>) -> Result<Self, EnvelopeError> {
        let env: Envelope<'a> = serde_json::from_slice(payload)?;
        topic::validate(&env.topic)?;
        if !env.data.get().starts_with('{') {
            return Err(EnvelopeError::DataNotObject);
        }
        if let Some(expected) = expected_topic
            && expected != env.topic
        {
            return Err(EnvelopeError::TopicMismatch {
                expected: expected.to_owned(),
                found: env.topic.into_owned(),
            });
        }
        Ok(env)
    }

    /// The client `message` frame for this envelope, built by hand so the
    /// payload is copied once and `data` is not re-serialised. Topic names
    /// are validated ASCII without quotes or backslashes, so they need no
    /// escaping.
    pub fn to_message_frame(&self) -> String {
        message_frame(&self.topic, self.seq, self.ts, self.data.get())
    }
}

/// Builds a `message` frame from its parts; `data_json` must be valid JSON.
pub fn message_frame(topic: &str, seq: u64, ts: u64, data_json: &str) -> String {
    let mut out = String::with_capacity(64 + topic.len() + data_json.len());
    out.push_str(r#"{"type":"message","topic":""#);
    out.push_str(topic);
    out.push_str(r#"","seq":"#);
    // Writing into a String cannot fail.
    let _ = write!(out, r#"{seq},"ts":{ts}"#);
    out.push_str(r#","data":"#);
    out.push_str(data_json);
    out.push('}');
    out
}

/// The `seq` of an envelope without parsing it whole, for telling two
/// copies of one message apart (a gateway that reads a shard from two
/// servers). The shape [`encode`] writes (`{"topic":"…","seq":N,…`) is
/// read in place; any other is parsed. None: not an envelope.
pub fn peek_seq(payload: &[u8]) -> Option<u64> {
    const HEAD: &[u8] = br#"{"topic":""#;
    const SEQ: &[u8] = br#","seq":"#;
    if let Some(rest) = payload.strip_prefix(HEAD)
        && let Some(end) = rest.iter().position(|&b| b == b'"')
        && let Some(digits) = rest[end + 1..].strip_prefix(SEQ)
    {
        let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        if len > 0 && matches!(digits.get(len), Some(b',' | b'}')) {
            return std::str::from_utf8(&digits[..len]).ok()?.parse().ok();
        }
    }
    Envelope::parse(payload, None).ok().map(|env| env.seq)
}

/// Builds an envelope from its parts; `data_json` must be a JSON object and
/// `topic` a valid topic name (checked by the caller).
pub fn encode(topic: &str, seq: u64, ts: u64, data_json: &str, traceparent: Option<&str>) -> String {
    let (head, tail) = encode_parts(topic, ts, data_json, traceparent);
    let mut out = String::with_capacity(head.len() + 20 + tail.len());
    out.push_str(&head);
    let _ = write!(out, "{seq}");
    out.push_str(&tail);
    out
}

/// An envelope split around its `seq`, for publishers that let Redis
/// assign the sequence number atomically (`head .. seq .. tail` in Lua).
pub fn encode_parts(topic: &str, ts: u64, data_json: &str, traceparent: Option<&str>) -> (String, String) {
    let head = format!(r#"{{"topic":"{topic}","seq":"#);
    let mut tail = String::with_capacity(32 + data_json.len());
    let _ = write!(tail, r#","ts":{ts},"data":"#);
    tail.push_str(data_json);
    if let Some(tp) = traceparent {
        // traceparent is hex and dashes by the W3C grammar; serde escapes
        // anything else a caller might pass.
        tail.push_str(r#","traceparent":"#);
        tail.push_str(&serde_json::Value::from(tp).to_string());
    }
    tail.push('}');
    (head, tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peeks_the_seq_of_either_shape() {
        let ours = encode("quotes.AAPL", 42, 1, r#"{"seq":7}"#, None);
        assert_eq!(peek_seq(ours.as_bytes()), Some(42));
        let reordered = br#"{"data":{"seq":7},"ts":1,"seq":43,"topic":"quotes.AAPL"}"#;
        assert_eq!(peek_seq(reordered), Some(43), "another encoder's field order is parsed");
        assert_eq!(peek_seq(br#"{"topic":"quotes.AAPL","seq":9x}"#), None);
        assert_eq!(peek_seq(br#"{"corr":"r1","data":{}}"#), None, "an order reply is no envelope");
        assert_eq!(peek_seq(b"12345"), None, "nor is a probe");
    }

    #[test]
    fn parses_contract_example_and_builds_message() {
        let raw = br#"{"topic":"quotes.AAPL","seq":42,"ts":1764470000123,"data":{"symbol":"AAPL","bid":189.1,"ask":189.2},"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#;
        let env = Envelope::parse(raw, Some("quotes.AAPL")).unwrap();
        assert_eq!(env.seq, 42);
        assert!(env.traceparent.is_some());
        let frame = env.to_message_frame();
        assert_eq!(
            frame,
            r#"{"type":"message","topic":"quotes.AAPL","seq":42,"ts":1764470000123,"data":{"symbol":"AAPL","bid":189.1,"ask":189.2}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["data"]["bid"], 189.1);
    }

    #[test]
    fn encode_round_trips() {
        let s = encode("orders.a", 7, 5, r#"{"x":1}"#, Some("00-ab-cd-01"));
        let env = Envelope::parse(s.as_bytes(), Some("orders.a")).unwrap();
        assert_eq!((env.seq, env.ts, env.data.get()), (7, 5, r#"{"x":1}"#));
        assert_eq!(env.traceparent.as_deref(), Some("00-ab-cd-01"));
    }

    #[test]
    fn refuses_bad_envelopes() {
        let cases: [&[u8]; 7] = [
            b"not json",
            br#"[1,2]"#,
            br#"{"topic":"a","seq":-1,"ts":1,"data":{}}"#,
            br#"{"topic":"a","seq":1,"ts":1}"#,
            br#"{"topic":"a b","seq":1,"ts":1,"data":{}}"#,
            br#"{"topic":"a","seq":1,"ts":1,"data":[1]}"#,
            br#"{"topic":"b","seq":1,"ts":1,"data":{}}"#,
        ];
        for c in cases {
            assert!(Envelope::parse(c, Some("a")).is_err(), "{}", String::from_utf8_lossy(c));
        }
    }

    #[test]
    fn escaped_topic_is_still_checked() {
        // "a\u0020b" decodes to "a b": the owned (unescaped) form is validated.
        let raw = br#"{"topic":"a\u0020b","seq":1,"ts":1,"data":{}}"#;
        assert!(Envelope::parse(raw, None).is_err());
    }
}
