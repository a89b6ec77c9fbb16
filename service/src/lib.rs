//! Plumbing shared by the service binaries (gateway, publisher, loadgen):
//! layered configuration ([`config`]) and its [`secret`]s, the shutdown
//! signal ([`shutdown`]), telemetry set-up with the process metrics
//! ([`telemetry`]) and the retry schedule ([`backoff`]).
//!
//! Kept apart from `wire`, which holds the protocol only and does no I/O.

pub mod backoff;
pub mod config;
pub mod secret;
pub mod shutdown;
pub mod telemetry;

pub use backoff::Backoff;
pub use config::{ConfigError, Layers};
pub use secret::Secret;
pub use shutdown::shutdown_signal;
