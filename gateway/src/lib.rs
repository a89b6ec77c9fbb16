//! A stateless WebSocket pub/sub gateway node.
//!
//! Clients speak the JSON protocol of `shared/spec/protocol.md` on `/ws`
//! (or `/channels`). The [`hub`] knows who is subscribed here, the
//! `broker` carries messages between nodes (Redis or in-memory) and
//! delivers what it receives to `inbound`, `topics` turns the hub's
//! first / last subscriber into the broker's subscriptions, each
//! `connection` runs one socket, and `server` glues them together.
//!
//! Modules are crate-private unless used outside: [`config`] (tests and
//! the testkit build configs), [`hub`], [`outbox`] and [`metrics`] (the
//! ingest benchmark), and [`run`] with [`raise_open_file_limit`] (the
//! binary).

pub(crate) mod auth;
pub(crate) mod broker;
pub mod config;
pub(crate) mod connection;
pub(crate) mod demo;
pub(crate) mod history;
pub(crate) mod http;
pub mod hub;
pub(crate) mod inbound;
pub(crate) mod listener;
pub mod metrics;
pub(crate) mod node;
pub mod outbox;
pub(crate) mod page;
pub(crate) mod requests;
pub(crate) mod server;
pub(crate) mod subscribers;
pub(crate) mod topics;
pub(crate) mod ws;

pub use config::Config;
pub use node::raise_open_file_limit;
pub use server::run;
