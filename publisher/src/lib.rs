//! The market-data publisher and order service.
//!
//! It publishes on the Redis backplane of `shared/spec/protocol.md`:
//! a random-walk [`feed`] of quotes on `quotes.<SYMBOL>`, order lifecycles
//! on `orders.<ACCOUNT>` (written once each, with history, through
//! [`order_updates`] and the scripts in [`redis_writer`]), answers to the
//! gateways' order requests ([`order_service`]), and an HTTP API
//! ([`http`]). [`server`] glues them together; [`bench`] measures the
//! feed's publish rate.

pub mod backplane;
pub mod bench;
pub mod config;
pub mod engine;
pub mod feed;
pub mod http;
pub mod market;
pub mod metrics;
pub mod order_desk;
pub mod order_service;
pub mod order_stream;
pub mod order_updates;
pub mod orders;
pub mod outage;
pub mod redis_link;
pub mod redis_writer;
pub mod server;
pub mod simulator;
pub mod state;

pub use config::Config;
pub use engine::Engine;
pub use server::{Running, run, start};
