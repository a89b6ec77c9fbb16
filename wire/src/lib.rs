//! Wire types shared by the gateway, the publisher and the load generator.
//!
//! This crate is the Rust face of `shared/spec/protocol.md`: topic rules,
//! the client protocol (what clients send, what the gateway answers), the
//! backplane envelope that backends publish on Redis, the stable error and
//! close codes, and the Redis key names every service agrees on. Nothing
//! here does I/O, so the parsers can be fuzzed and unit-tested alone.

pub mod client;
pub mod codes;
pub mod envelope;
pub mod keys;
pub mod orders;
pub mod publish;
pub mod scripts;
pub mod server;
pub mod topic;

pub use codes::{CloseCode, ErrorCode};
pub use envelope::Envelope;
pub use topic::{Topic, TopicError, TopicFamily};

/// Milliseconds since the Unix epoch, the unit of every `ts` on the wire.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
