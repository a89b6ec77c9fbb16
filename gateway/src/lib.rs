//! A stateless WebSocket pub/sub gateway node.
//!
//! Clients speak the JSON protocol of `shared/spec/protocol.md` on `/ws`
//! (or `/channels`). The [`hub`] knows who is subscribed here, the
//! [`broker`] carries messages between nodes (Redis or in-memory), each
//! [`connection`] runs one socket, and [`server`] glues them together.

pub mod auth;
pub mod broker;
pub mod config;
pub mod connection;
pub mod demo;
pub mod http;
pub mod hub;
pub mod listener;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod page;
pub mod requests;
pub mod server;
pub mod subscribers;

pub use config::Config;
pub use server::run;
