//! The gateway's own WebSocket server layer (RFC 6455), in place of
//! axum's `ws` (tungstenite): what a connection costs is close to what
//! its socket costs.
//!
//! - [`handshake`]: checks the upgrade request and computes the accept key;
//! - [`frame`]: parses client frame headers (every rule of RFC 6455 §5.2
//!   that can be checked there) and encodes server frame headers;
//! - [`message`]: assembles fragmented messages, checks UTF-8 as the
//!   fragments come, and parses close payloads;
//! - [`socket`]: one connection's transport: the TCP stream taken back
//!   from hyper's upgrade, read only when readable, written with one
//!   vectored write per batch.
//!
//! Frame once: a server frame is a 2–10 byte header and the payload. The
//! payload stays the `Bytes` the hub built once per message and shares
//! with every subscriber; the header is computed at write time on the
//! stack and goes out with the payload in the same `writev`, so the bytes
//! on the wire are the same for every subscriber and nothing is copied or
//! allocated per subscriber. (Building header and payload into one buffer
//! in the hub would save computing ten bytes per write, and would change
//! the hub's and outbox's types.)
//!
//! A violation of the protocol by the client ends the connection with the
//! RFC's status code (1002, 1007 or 1009) and a reason saying which rule,
//! never a bare TCP drop.

pub(crate) mod frame;
#[cfg(test)]
mod generic_transport;
pub(crate) mod handshake;
pub(crate) mod message;
pub(crate) mod socket;

pub(crate) use frame::Violation;
pub(crate) use message::Message;
pub(crate) use socket::{Limits, Socket};
