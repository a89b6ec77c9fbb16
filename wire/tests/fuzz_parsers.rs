//! Property tests ("fuzzing" on stable Rust: cargo fuzz needs a nightly
//! toolchain this project does not assume) for the two parsers that read
//! untrusted input: client frames and backplane envelopes. Neither may
//! panic on any input, and what they accept must be well-formed.
//! `PROPTEST_CASES=100000 cargo test -p wire --test fuzz_parsers` runs
//! a longer campaign; failures are saved under `proptest-regressions/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use wire::client::{self, Command};
use wire::envelope::{self, Envelope};
use wire::topic;

/// Strings that look like client frames often enough to reach deep paths.
fn frame_like() -> impl Strategy<Value = String> {
    let action = prop_oneof![
        Just("subscribe".to_string()),
        Just("unsubscribe".to_string()),
        Just("ping".to_string()),
        Just("order".to_string()),
        ".{0,12}",
    ];
    let value = prop_oneof![
        Just("null".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        "[a-zA-Z0-9._:-]{0,140}".prop_map(|s| format!("{s:?}")),
        ".{0,40}".prop_map(|s| serde_json::Value::from(s).to_string()),
        Just("{}".to_string()),
        Just("[1,{\"a\":[]}]".to_string()),
    ];
    let field = prop_oneof![
        Just("topic"),
        Just("identifier"),
        Just("since"),
        Just("id"),
        Just("order"),
        Just("action"),
        Just("x")
    ];
    (action, proptest::collection::vec((field, value), 0..5)).prop_map(|(action, fields)| {
        let mut out = format!("{{\"action\":{}", serde_json::Value::from(action));
        for (k, v) in fields {
            out.push_str(&format!(",\"{k}\":{v}"));
        }
        out.push('}');
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn client_parser_never_panics_on_any_text(text in ".{0,300}") {
        let _ = client::parse(&text);
    }

    #[test]
    fn client_parser_accepts_only_well_formed_commands(text in frame_like()) {
        match client::parse(&text) {
            Ok(Command::Subscribe { topic, .. }) | Ok(Command::Unsubscribe { topic }) => {
                prop_assert!(topic::validate(topic.as_str()).is_ok());
            }
            Ok(Command::Order { id, order, .. }) => {
                prop_assert!(order.get().starts_with('{'), "order must be an object");
                let id: serde_json::Value = serde_json::from_str(id.get()).unwrap();
                prop_assert!(id.is_string() || id.is_number());
            }
            Ok(Command::Ping) => {}
            Err(refusal) => {
                // Every refusal becomes an error frame that is valid JSON.
                let frame = wire::server::error(refusal.code, &refusal.message, refusal.topic.as_deref(), refusal.id.as_deref());
                let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
                prop_assert_eq!(v["type"].as_str(), Some("error"));
            }
        }
    }

    #[test]
    fn envelope_parser_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(env) = Envelope::parse(&bytes, None) {
            let frame: serde_json::Value = serde_json::from_str(&env.to_message_frame()).unwrap();
            prop_assert_eq!(frame["type"].as_str(), Some("message"));
        }
    }

    #[test]
    fn envelopes_round_trip(
        topic in "[A-Za-z0-9._:-]{1,128}",
        seq in any::<u64>(),
        ts in any::<u64>(),
        key in ".{0,20}",
        value in any::<f64>().prop_filter("finite", |v| v.is_finite()),
        traceparent in proptest::option::of("[0-9a-f-]{0,60}"),
    ) {
        let data = serde_json::json!({ key.clone(): value }).to_string();
        let raw = envelope::encode(&topic, seq, ts, &data, traceparent.as_deref());
        let env = Envelope::parse(raw.as_bytes(), Some(&topic)).unwrap();
        prop_assert_eq!((env.seq, env.ts), (seq, ts));
        prop_assert_eq!(env.traceparent.as_deref(), traceparent.as_deref());
        let frame: serde_json::Value = serde_json::from_str(&env.to_message_frame()).unwrap();
        prop_assert_eq!(frame["topic"].as_str(), Some(topic.as_str()));
        prop_assert_eq!(&frame["data"], &serde_json::from_str::<serde_json::Value>(&data).unwrap());
    }

    #[test]
    fn topic_rule_is_exactly_the_contracts(name in ".{0,140}") {
        let by_rule = !name.is_empty()
            && name.len() <= 128
            && name.chars().all(|c| c.is_ascii_alphanumeric() || ".:_-".contains(c));
        prop_assert_eq!(topic::validate(&name).is_ok(), by_rule);
    }
}
