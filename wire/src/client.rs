//! What clients send: one JSON object per text frame, parsed into a
//! [`Command`] or refused with a stable [`ErrorCode`].
//!
//! Parsing is two steps so every refusal is precise: first into a loose
//! struct of optional fields (bad JSON vs wrong shape), then into the
//! command the `action` names (unknown action, missing or bad topic).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codes::ErrorCode;
use crate::topic::Topic;

/// A well-formed client command.
#[derive(Debug)]
pub enum Command {
    Subscribe {
        topic: Topic,
        since: Option<u64>,
    },
    Unsubscribe {
        topic: Topic,
    },
    Ping,
    /// Request/reply: `id` is echoed back verbatim (string or number).
    Order {
        id: Box<RawValue>,
        order: Box<RawValue>,
        /// The client's W3C trace context, when it traces (optional, an
        /// addition to the contract: older clients simply omit it).
        traceparent: Option<String>,
    },
}

/// Why a frame was refused; `topic` / `id` are echoed in the error frame
/// when the client sent them, so it can tell which request failed.
#[derive(Debug)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    pub topic: Option<String>,
    pub id: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Loose<'a> {
    #[serde(borrow)]
    action: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    topic: Option<std::borrow::Cow<'a, str>>,
    /// The original benchmark client's name for `topic`.
    #[serde(borrow)]
    identifier: Option<std::borrow::Cow<'a, str>>,
    since: Option<u64>,
    id: Option<Box<RawValue>>,
    order: Option<Box<RawValue>>,
    #[serde(borrow)]
    traceparent: Option<std::borrow::Cow<'a, str>>,
}

/// Parses one client text frame.
pub fn parse(text: &str) -> Result<Command, Refusal> {
    let refuse = |code, message: String| Refusal { code, message, topic: None, id: None };
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') {
        // Distinguish "not JSON at all" from "JSON but not an object".
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => refuse(ErrorCode::InvalidFrame, "frame must be a JSON object".into()),
            Err(e) => refuse(ErrorCode::InvalidJson, format!("malformed JSON: {e}")),
        });
    }
    let loose: Loose<'_> = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            refuse(ErrorCode::InvalidFrame, format!("wrong field type: {e}"))
        } else {
            refuse(ErrorCode::InvalidJson, format!("malformed JSON: {e}"))
        }
    })?;
    let Some(action) = loose.action.as_deref() else {
        return Err(refuse(ErrorCode::UnknownAction, "missing \"action\"".into()));
    };
    match action {
        "subscribe" => Ok(Command::Subscribe { topic: topic_field(&loose)?, since: loose.since }),
        "unsubscribe" => Ok(Command::Unsubscribe { topic: topic_field(&loose)? }),
        "ping" => Ok(Command::Ping),
        "order" => {
            let Some(id) = loose.id else {
                return Err(refuse(ErrorCode::InvalidFrame, "order needs an \"id\"".into()));
            };
            if !(id.get().starts_with('"') || id.get().starts_with(|c: char| c == '-' || c.is_ascii_digit()))
            {
                return Err(refuse(ErrorCode::InvalidFrame, "\"id\" must be a string or a number".into()));
            }
            match loose.order {
                Some(order) if order.get().starts_with('{') => {
                    Ok(Command::Order { id, order, traceparent: loose.traceparent.map(|t| t.into_owned()) })
                }
                _ => Err(Refusal {
                    code: ErrorCode::InvalidFrame,
                    message: "order needs an \"order\" object".into(),
                    topic: None,
                    id: Some(id),
                }),
            }
        }
        other => Err(refuse(ErrorCode::UnknownAction, format!("unknown action {:?}", truncate(other, 64)))),
    }
}

fn topic_field(loose: &Loose<'_>) -> Result<Topic, Refusal> {
    let raw = match (&loose.topic, &loose.identifier) {
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => {
            return Err(Refusal {
                code: ErrorCode::InvalidTopic,
                message: "missing \"topic\"".into(),
                topic: None,
                id: None,
            });
        }
    };
    Topic::parse(raw).map_err(|e| Refusal {
        code: ErrorCode::InvalidTopic,
        message: e.to_string(),
        // Echo the offending name only when it is short enough to be useful.
        topic: Some(truncate(raw, 128).to_owned()),
        id: None,
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A client command as a value, for clients written in Rust (loadgen, tests).
#[derive(Debug, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Outgoing<'a> {
    Subscribe {
        topic: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    Unsubscribe {
        topic: &'a str,
    },
    Ping,
    Order {
        id: &'a str,
        order: &'a serde_json::Value,
        /// The client's trace context, when it traces the order.
        #[serde(skip_serializing_if = "Option::is_none")]
        traceparent: Option<&'a str>,
    },
}

impl Outgoing<'_> {
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        match parse(text) {
            Err(r) => r.code,
            Ok(c) => panic!("{text} parsed as {c:?}"),
        }
    }

    #[test]
    fn parses_every_action() {
        assert!(matches!(
            parse(r#"{"action":"subscribe","topic":"quotes.AAPL"}"#),
            Ok(Command::Subscribe { since: None, .. })
        ));
        assert!(matches!(
            parse(r#"{"action":"subscribe","identifier":"quotes.AAPL","since":41}"#),
            Ok(Command::Subscribe { since: Some(41), .. })
        ));
        assert!(matches!(parse(r#"{"action":"unsubscribe","topic":"x"}"#), Ok(Command::Unsubscribe { .. })));
        assert!(matches!(parse(r#"{"action":"ping"}"#), Ok(Command::Ping)));
        match parse(r#"{"action":"order","id":"c1","order":{"qty":1}}"#) {
            Ok(Command::Order { id, order, traceparent: None }) => {
                assert_eq!(id.get(), r#""c1""#);
                assert_eq!(order.get(), r#"{"qty":1}"#);
            }
            other => panic!("{other:?}"),
        }
        let traced = r#"{"action":"order","id":2,"order":{},"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#;
        match parse(traced) {
            Ok(Command::Order { traceparent: Some(tp), .. }) => assert!(tp.ends_with("-01")),
            other => panic!("{other:?}"),
        }
        let wrong_type = r#"{"action":"order","id":2,"order":{},"traceparent":7}"#;
        assert!(matches!(parse(wrong_type), Err(Refusal { code: ErrorCode::InvalidFrame, .. })));
    }

    #[test]
    fn refuses_with_precise_codes() {
        assert_eq!(code("{not json"), ErrorCode::InvalidJson);
        assert_eq!(code("nope"), ErrorCode::InvalidJson);
        assert_eq!(code("[1,2]"), ErrorCode::InvalidFrame);
        assert_eq!(code("42"), ErrorCode::InvalidFrame);
        assert_eq!(code(r#"{"action":5}"#), ErrorCode::InvalidFrame);
        assert_eq!(code(r#"{"topic":"x"}"#), ErrorCode::UnknownAction);
        assert_eq!(code(r#"{"action":"fly"}"#), ErrorCode::UnknownAction);
        assert_eq!(code(r#"{"action":"subscribe"}"#), ErrorCode::InvalidTopic);
        assert_eq!(code(r#"{"action":"subscribe","topic":""}"#), ErrorCode::InvalidTopic);
        assert_eq!(code(r#"{"action":"subscribe","topic":"a b"}"#), ErrorCode::InvalidTopic);
        assert_eq!(code(r#"{"action":"subscribe","topic":7}"#), ErrorCode::InvalidFrame);
        assert_eq!(code(r#"{"action":"subscribe","topic":"x","since":-1}"#), ErrorCode::InvalidFrame);
        assert_eq!(code(r#"{"action":"order","order":{}}"#), ErrorCode::InvalidFrame);
        assert_eq!(code(r#"{"action":"order","id":"1"}"#), ErrorCode::InvalidFrame);
        assert_eq!(code(r#"{"action":"order","id":{},"order":{}}"#), ErrorCode::InvalidFrame);
    }

    #[test]
    fn outgoing_round_trips() {
        let s = Outgoing::Subscribe { topic: "quotes.X", since: Some(3) }.to_json();
        assert!(matches!(parse(&s), Ok(Command::Subscribe { since: Some(3), .. })));
    }
}
