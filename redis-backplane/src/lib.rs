//! The one home of what the gateway and the publisher both know about
//! Redis, so a change to how either talks to it is made once:
//!
//! * [`scripts`]: the calls of the publish scripts (`wire::scripts` holds
//!   their Lua text), with their KEYS/ARGV layout written once;
//! * [`slots`]: reading a `CLUSTER SLOTS` reply;
//! * [`pool`]: building a connection pool to one server, and a cluster
//!   client;
//! * [`sentinel`]: where a connection goes (one fixed server, or the
//!   master Redis Sentinel names at each connect);
//! * [`shared`]: one multiplexed connection many callers share, that
//!   reconnects (through its target) after it broke;
//! * [`settings`]: validating the Redis keys of a service's config
//!   (`redis_url`, `redis_cluster`, `channel_prefix`) and showing a
//!   `redis_url` without its password.
//!
//! Key and channel names stay in `wire::keys` (the load generator and the
//! tests need them without a Redis client).

pub mod pool;
pub mod scripts;
pub mod sentinel;
pub mod settings;
pub mod shared;
pub mod slots;

pub use pool::{Pool, PoolError, PoolOptions, cluster_client, pool};
pub use scripts::{PublishCommand, Scripts};
pub use sentinel::{ConnectError, SentinelConfig, Target};
pub use shared::SharedConnection;
