//! What the gateway sends to clients: builders for each frame type, and a
//! loose parsed form for clients written in Rust (loadgen, tests).
//!
//! `message` frames are built in [`crate::envelope`]; the builders here
//! cover the control frames, which are rare enough to go through serde.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codes::ErrorCode;

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Control<'a> {
    Welcome {
        node: &'a str,
        session: &'a str,
    },
    Subscribed {
        topic: &'a str,
    },
    Unsubscribed {
        topic: &'a str,
    },
    Pong,
    Error {
        code: &'static str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    Reply {
        id: &'a RawValue,
        data: &'a RawValue,
    },
}

fn encode(frame: &Control<'_>) -> String {
    // These frames hold only strings and already-valid raw JSON, which
    // serde_json always serialises.
    serde_json::to_string(frame).unwrap_or_default()
}

pub fn welcome(node: &str, session: &str) -> String {
    encode(&Control::Welcome { node, session })
}

pub fn subscribed(topic: &str) -> String {
    encode(&Control::Subscribed { topic })
}

pub fn unsubscribed(topic: &str) -> String {
    encode(&Control::Unsubscribed { topic })
}

pub fn pong() -> String {
    encode(&Control::Pong)
}

pub fn error(code: ErrorCode, message: &str, topic: Option<&str>, id: Option<&RawValue>) -> String {
    encode(&Control::Error { code: code.as_str(), message, topic, id })
}

pub fn reply(id: &RawValue, data: &RawValue) -> String {
    encode(&Control::Reply { id, data })
}

/// Any gateway frame, loosely parsed: `kind` is the `type` field and the
/// other fields are present when that type has them.
#[derive(Debug, Deserialize)]
pub struct Frame {
    #[serde(rename = "type")]
    pub kind: String,
    pub topic: Option<String>,
    pub seq: Option<u64>,
    pub ts: Option<u64>,
    pub data: Option<Box<RawValue>>,
    pub code: Option<String>,
    pub message: Option<String>,
    pub id: Option<Box<RawValue>>,
    pub node: Option<String>,
    pub session: Option<String>,
}

impl Frame {
    pub fn parse(text: &str) -> Result<Frame, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_frames_match_the_contract() {
        assert_eq!(welcome("n1", "s1"), r#"{"type":"welcome","node":"n1","session":"s1"}"#);
        assert_eq!(subscribed("quotes.A"), r#"{"type":"subscribed","topic":"quotes.A"}"#);
        assert_eq!(unsubscribed("quotes.A"), r#"{"type":"unsubscribed","topic":"quotes.A"}"#);
        assert_eq!(pong(), r#"{"type":"pong"}"#);
        let id = RawValue::from_string("7".into()).unwrap();
        assert_eq!(
            error(ErrorCode::Timeout, "no reply", None, Some(&id)),
            r#"{"type":"error","code":"timeout","message":"no reply","id":7}"#
        );
        let f = Frame::parse(&error(ErrorCode::InvalidTopic, "bad \"x\"", Some("x"), None)).unwrap();
        assert_eq!((f.kind.as_str(), f.code.as_deref()), ("error", Some("invalid_topic")));
        let data = RawValue::from_string(r#"{"ok":true}"#.into()).unwrap();
        assert_eq!(reply(&id, &data), r#"{"type":"reply","id":7,"data":{"ok":true}}"#);
    }
}
