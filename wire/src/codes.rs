//! Stable error codes (`error` frames) and WebSocket close codes.
//!
//! Clients and outside tools switch on these strings and numbers, so they
//! never change meaning once released. The docs' security section lists
//! each with what it protects against.

use std::fmt;

/// The `code` of an `error` frame: a short snake_case word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame is not valid JSON.
    InvalidJson,
    /// Valid JSON, but not an object or a field has the wrong type.
    InvalidFrame,
    /// `action` is missing or not one the gateway knows.
    UnknownAction,
    /// `topic` is missing, empty, too long or has a forbidden character.
    InvalidTopic,
    /// `subscribe` for a topic this connection already holds.
    AlreadySubscribed,
    /// `unsubscribe` for a topic this connection does not hold.
    NotSubscribed,
    /// The connection holds the configured maximum of subscriptions.
    TooManySubscriptions,
    /// A binary frame: the protocol is JSON text only.
    BinaryNotSupported,
    /// The backplane (Redis) refused or could not take the request.
    BackplaneUnavailable,
    /// The action is known but this node does not serve it (yet).
    NotSupported,
    /// Authentication is missing or invalid.
    Unauthorized,
    /// The token is valid but does not grant this topic or action.
    Forbidden,
    /// A request/reply action got no reply in time.
    Timeout,
    /// Too many commands in too short a time.
    RateLimited,
    /// `since` was asked for but history could not be replayed.
    RecoveryFailed,
    /// An order was refused by the order service as malformed.
    InvalidOrder,
    /// An order's `qty` is missing, not a positive integer, or too large.
    InvalidQuantity,
    /// An order's `side` is not `buy` or `sell`.
    InvalidSide,
    /// An order's `symbol` is not one the service trades.
    UnknownSymbol,
    /// An order lacks a required field.
    MissingField,
    /// Something went wrong inside the node; the connection goes on.
    Internal,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidFrame => "invalid_frame",
            ErrorCode::UnknownAction => "unknown_action",
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::BackplaneUnavailable => "backplane_unavailable",
            ErrorCode::NotSupported => "not_supported",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Timeout => "timeout",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::RecoveryFailed => "recovery_failed",
            ErrorCode::InvalidOrder => "invalid_order",
            ErrorCode::InvalidQuantity => "invalid_quantity",
            ErrorCode::InvalidSide => "invalid_side",
            ErrorCode::UnknownSymbol => "unknown_symbol",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::Internal => "internal",
        }
    }

    /// The code named `s`, if it is one of ours.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Every code, for metrics labels and docs.
    pub const ALL: [ErrorCode; 21] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidFrame,
        ErrorCode::UnknownAction,
        ErrorCode::InvalidTopic,
        ErrorCode::AlreadySubscribed,
        ErrorCode::NotSubscribed,
        ErrorCode::TooManySubscriptions,
        ErrorCode::BinaryNotSupported,
        ErrorCode::BackplaneUnavailable,
        ErrorCode::NotSupported,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::Timeout,
        ErrorCode::RateLimited,
        ErrorCode::RecoveryFailed,
        ErrorCode::InvalidOrder,
        ErrorCode::InvalidQuantity,
        ErrorCode::InvalidSide,
        ErrorCode::UnknownSymbol,
        ErrorCode::MissingField,
        ErrorCode::Internal,
    ];
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the gateway closed a WebSocket. Standard codes (RFC 6455) where one
/// fits; 4000–4099 are this gateway's own. A client should reconnect (with
/// jittered backoff and `since`) after every code except 1008 and 4003.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: the client asked to close.
    Normal,
    /// 1002: the client broke RFC 6455 (an unmasked frame, reserved bits or
    /// opcodes, a bad fragment sequence or control frame, a bad close).
    ProtocolError,
    /// 1007: a text frame (or close reason) that is not valid UTF-8.
    InvalidPayload,
    /// 1008: bad or expired token, or a forbidden origin. Do not retry as is.
    PolicyViolation,
    /// 1009: a frame over the configured maximum size.
    MessageTooBig,
    /// 1011: an unexpected error inside the node.
    InternalError,
    /// 1012: the node is shutting down or restarting; reconnect elsewhere.
    ServiceRestart,
    /// 1013: the node is over a limit (connections); try again later.
    TryAgainLater,
    /// 4001: the client did not read fast enough and its queue overflowed;
    /// reconnect and recover with `since`.
    SlowConsumer,
    /// 4002: no pong (or any frame) within the heartbeat timeout.
    HeartbeatTimeout,
    /// 4003: too many protocol violations; do not retry as is.
    TooManyErrors,
}

impl CloseCode {
    pub const fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::ProtocolError => 1002,
            CloseCode::InvalidPayload => 1007,
            CloseCode::PolicyViolation => 1008,
            CloseCode::MessageTooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::ServiceRestart => 1012,
            CloseCode::TryAgainLater => 1013,
            CloseCode::SlowConsumer => 4001,
            CloseCode::HeartbeatTimeout => 4002,
            CloseCode::TooManyErrors => 4003,
        }
    }

    /// The short reason sent in the close frame (also a metrics label).
    pub const fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::InvalidPayload => "invalid_payload",
            CloseCode::PolicyViolation => "policy_violation",
            CloseCode::MessageTooBig => "message_too_big",
            CloseCode::InternalError => "internal_error",
            CloseCode::ServiceRestart => "service_restart",
            CloseCode::TryAgainLater => "try_again_later",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::HeartbeatTimeout => "heartbeat_timeout",
            CloseCode::TooManyErrors => "too_many_errors",
        }
    }
}
