//! The Lua scripts every writer runs to publish, so `seq`, history and
//! snapshots stay consistent whoever publishes on a topic (the publisher's
//! feed and order service, the publisher's and the gateway's
//! `POST /publish`).
//!
//! `seq` is assigned inside Redis, atomically with the PUBLISH, by `INCR`
//! on the topic's counter ([`crate::keys::seq_counter`]), so it never goes
//! backwards on a topic whoever publishes and however often they restart.
//! Every key a script touches carries the topic's channel as its
//! `{hash tag}` ([`crate::keys`]), so each call, its PUBLISH included,
//! stays within one Redis Cluster slot. The publish command is an
//! argument ([`PublishCommand`]): `PUBLISH` on a single Redis, `SPUBLISH`
//! on a Redis Cluster, whose sharded pub/sub only delivers what was
//! SPUBLISHed (and keeps each message on the shard that owns its slot).
//!
//! * [`BATCH_SCRIPT`] (quotes and topics without history): takes `n`
//!   numbers with `INCRBY`, publishes the `n` envelopes and, for quotes,
//!   stores the last one as the topic's snapshot.
//! * [`UPDATE_SCRIPT`] (order updates): INCRs, XADDs to the history with id
//!   `0-<seq>`, PUBLISHes, and records the update's id in a dedupe marker,
//!   so a retry after an ambiguous failure returns the original `seq`
//!   instead of writing the update twice.

/// How long a dedupe marker outlives its update: far longer than any
/// retry of that update can take.
pub const DEDUPE_TTL_SECS: u64 = 3600;

/// The command a script publishes with, passed as its first ARGV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishCommand {
    /// Classic pub/sub, on a single Redis (the contract's `PUBLISH`).
    Publish,
    /// Sharded pub/sub, on a Redis Cluster (Redis 7 and later).
    SPublish,
}

impl PublishCommand {
    /// `SPublish` when the backplane is a Redis Cluster.
    pub fn for_cluster(cluster: bool) -> Self {
        if cluster { PublishCommand::SPublish } else { PublishCommand::Publish }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PublishCommand::Publish => "PUBLISH",
            PublishCommand::SPublish => "SPUBLISH",
        }
    }
}

/// KEYS: seq counter, last-value key. ARGV: publish command
/// ([`PublishCommand`]), channel, envelope head, store-last flag, floor,
/// then one envelope tail per message.
///
/// The floor (0: none) is the highest `seq` the writer may have handed
/// out on the topic: a counter below it (a Sentinel failover promoted a
/// replica that missed the last writes) is first raised to it, so a
/// `seq` already delivered is never given to other content.
pub const BATCH_SCRIPT: &str = r"
if ARGV[1] ~= 'PUBLISH' and ARGV[1] ~= 'SPUBLISH' then
  return redis.error_reply('ERR first argument must be PUBLISH or SPUBLISH')
end
local n = #ARGV - 5
local floor = tonumber(ARGV[5]) or 0
if floor > 0 and (tonumber(redis.call('GET', KEYS[1])) or 0) < floor then
  redis.call('SET', KEYS[1], floor)
end
local last = redis.call('INCRBY', KEYS[1], n)
local env
for i = 1, n do
  env = ARGV[3] .. (last - n + i) .. ARGV[5 + i]
  redis.call(ARGV[1], ARGV[2], env)
end
if ARGV[4] == '1' then
  redis.call('SET', KEYS[2], env)
end
return last
";

/// KEYS: seq counter, history stream, dedupe marker. ARGV: publish
/// command ([`PublishCommand`]), channel, envelope head, envelope tail,
/// history maxlen, marker TTL (s), floor (as for [`BATCH_SCRIPT`]),
/// publish flag (`1`: publish now; `0`: the caller publishes once a
/// replica has the write, see `redis_backplane::scripts`).
/// Returns {seq, 1 if this update had already been written}.
///
/// Both scripts refuse any other first argument before writing anything
/// (Lua errors do not roll back earlier writes), so a caller still
/// using an older argument layout fails cleanly.
///
/// A counter that fell behind its history (deleted or evicted while the
/// stream survived) would make every XADD fail; the script then moves the
/// counter past the stream's last id once, instead of failing forever.
pub const UPDATE_SCRIPT: &str = r"
if ARGV[1] ~= 'PUBLISH' and ARGV[1] ~= 'SPUBLISH' then
  return redis.error_reply('ERR first argument must be PUBLISH or SPUBLISH')
end
local done = redis.call('GET', KEYS[3])
if done then
  return {tonumber(done), 1}
end
local floor = tonumber(ARGV[7]) or 0
if floor > 0 and (tonumber(redis.call('GET', KEYS[1])) or 0) < floor then
  redis.call('SET', KEYS[1], floor)
end
local seq = redis.call('INCR', KEYS[1])
local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '0-' .. seq, 'env', ARGV[3] .. seq .. ARGV[4])
if type(added) == 'table' and added.err then
  local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  local last = top[1] and tonumber(string.match(top[1][1], '^0%-(%d+)$'))
  if not last or last < seq then
    return redis.error_reply(added.err)
  end
  redis.call('SET', KEYS[1], last)
  seq = redis.call('INCR', KEYS[1])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '0-' .. seq, 'env', ARGV[3] .. seq .. ARGV[4])
end
redis.call('SET', KEYS[3], seq, 'NX', 'EX', ARGV[6])
if ARGV[8] == '1' then
  redis.call(ARGV[1], ARGV[2], ARGV[3] .. seq .. ARGV[4])
end
return {seq, 0}
";
