//! Load generator for the gateway.
//!
//! Opens many WebSocket subscribers (spread over worker processes and
//! 127.0.0.x source addresses so 50,000 fit on one machine), optionally
//! publishes at a fixed rate through Redis or `POST /publish` (closed
//! loop), and accounts for every message: end-to-end latency, per-topic
//! `seq` gaps and duplicates, reconnects. One run, or a sweep over
//! connection counts that prints the original benchmark's CSV table.
//!
//! Layout: [`cli`] turns flags into [`settings::Settings`]; [`run`]
//! drives one run's phases over a fleet of [`swarm::Swarm`]s (in this
//! process, or in children via [`workers`]); each [`client`] is one
//! connection's state machine feeding [`stats`]; [`publish`] (with the
//! small [`http`] client) closes the loop; [`report`] renders the result
//! and [`sweep`] repeats runs.
//!
//! Order mode (the request/reply half): order connections are clients
//! holding their account's orders topic and a [`book::Book`] that places
//! orders and checks every answer and lifecycle update exactly once;
//! [`order_stats`] gathers their numbers per process and
//! [`order_report`] renders and judges them.

pub mod book;
pub mod cli;
pub mod client;
pub mod http;
pub mod order_report;
pub mod order_stats;
pub mod publish;
pub mod report;
pub mod run;
pub mod settings;
pub mod stats;
pub mod swarm;
pub mod sweep;
pub mod target;
pub mod token;
pub mod topics;
pub mod workers;

pub use report::Summary;
pub use run::{RunError, run};
pub use settings::Settings;
