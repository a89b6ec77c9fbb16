//! The Lua scripts every writer runs to publish, so `seq`, history and
//! snapshots stay consistent whoever publishes on a topic (the publisher's
//! feed and order service, the publisher's and the gateway's
//! `POST /publish`).
//!
//! `seq` is assigned inside Redis, atomically with the PUBLISH, by `INCR`
//! on the topic's counter ([`crate::keys::seq_counter`]), so it never goes
//! backwards on a topic whoever publishes and however often they restart.
//! Every key a script touches carries the topic as its `{hash tag}`, so
//! each call stays within one Redis Cluster slot.
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

/// KEYS: seq counter, last-value key. ARGV: channel, envelope head,
/// store-last flag, then one envelope tail per message.
pub const BATCH_SCRIPT: &str = r"
local n = #ARGV - 3
local last = redis.call('INCRBY', KEYS[1], n)
local env
for i = 1, n do
  env = ARGV[2] .. (last - n + i) .. ARGV[3 + i]
  redis.call('PUBLISH', ARGV[1], env)
end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[2], env)
end
return last
";

/// KEYS: seq counter, history stream, dedupe marker. ARGV: channel,
/// envelope head, envelope tail, history maxlen, marker TTL (s).
/// Returns {seq, 1 if this update had already been written}.
///
/// A counter that fell behind its history (deleted or evicted while the
/// stream survived) would make every XADD fail; the script then moves the
/// counter past the stream's last id once, instead of failing forever.
pub const UPDATE_SCRIPT: &str = r"
local done = redis.call('GET', KEYS[3])
if done then
  return {tonumber(done), 1}
end
local seq = redis.call('INCR', KEYS[1])
local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '0-' .. seq, 'env', ARGV[2] .. seq .. ARGV[3])
if type(added) == 'table' and added.err then
  local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  local last = top[1] and tonumber(string.match(top[1][1], '^0%-(%d+)$'))
  if not last or last < seq then
    return redis.error_reply(added.err)
  end
  redis.call('SET', KEYS[1], last)
  seq = redis.call('INCR', KEYS[1])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '0-' .. seq, 'env', ARGV[2] .. seq .. ARGV[3])
end
redis.call('SET', KEYS[3], seq, 'NX', 'EX', ARGV[5])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. seq .. ARGV[3])
return {seq, 0}
";
