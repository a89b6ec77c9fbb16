//! Request/reply between gateways and the order service, through Redis.
//!
//! A gateway XADDs an [`OrderRequest`] (field `req`, JSON) to the stream
//! [`crate::keys::order_requests`]; order-service replicas read it through
//! one consumer group, so each request is served once and a crashed
//! replica's pending ones are claimed by another. The service PUBLISHes an
//! [`OrderReply`] (JSON) on the asking node's channel
//! [`crate::keys::node_replies`] (SPUBLISHes it on a Redis Cluster, where
//! gateways subscribe with SSUBSCRIBE), and the gateway hands it to the
//! connection that asked, matched by `corr`. The order's lifecycle then
//! travels as ordinary envelopes on `orders.<account>`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Stream field holding the request JSON.
pub const REQUEST_FIELD: &str = "req";

/// Consumer group of the order service on the request stream.
pub const CONSUMER_GROUP: &str = "order-service";

#[derive(Debug, Serialize, Deserialize)]
pub struct OrderRequest {
    /// Correlation id chosen by the gateway, unique per node.
    pub corr: String,
    /// Node id of the gateway that asked: where the reply goes.
    pub node: String,
    /// Account the order acts for: the token's `sub` when authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The client's `order` object, verbatim.
    pub order: Box<RawValue>,
    /// When the gateway received it (Unix ms); the service may drop
    /// requests older than the gateway's reply timeout.
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// The service's answer: `data` on success, or `error` with a stable code
/// (see [`crate::ErrorCode`]: `invalid_order`, `invalid_quantity`,
/// `invalid_side`, `unknown_symbol`, `missing_field`, …).
#[derive(Debug, Serialize, Deserialize)]
pub struct OrderReply {
    pub corr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ReplyError>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReplyError {
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_reply_round_trip() {
        let req = OrderRequest {
            corr: "n1-7".into(),
            node: "n1".into(),
            account: Some("acct1".into()),
            order: RawValue::from_string(r#"{"symbol":"AAPL","side":"buy","qty":10}"#.into()).unwrap(),
            ts: 1,
            traceparent: None,
        };
        let text = serde_json::to_string(&req).unwrap();
        let back: OrderRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back.order.get(), req.order.get());
        let reply: OrderReply = serde_json::from_str(
            r#"{"corr":"n1-7","error":{"code":"invalid_side","message":"side must be buy or sell"}}"#,
        )
        .unwrap();
        assert_eq!(reply.error.map(|e| e.code).as_deref(), Some("invalid_side"));
    }
}
