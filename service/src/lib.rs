//! Plumbing shared by the service binaries (gateway, publisher, loadgen):
//! layered configuration ([`config`]), the shutdown signal ([`shutdown`])
//! and telemetry set-up with the process metrics ([`telemetry`]).
//!
//! Kept apart from `wire`, which holds the protocol only and does no I/O.

pub mod config;
pub mod shutdown;
pub mod telemetry;

pub use config::{ConfigError, Layers};
pub use shutdown::shutdown_signal;
