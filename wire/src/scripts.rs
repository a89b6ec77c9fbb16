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
//!   instead of writing the update twice. [`UPDATES_SCRIPT`] does the
//!   same for many updates in one call (the order service's batches).

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

/// The Lua both update scripts share: `write_update(...)` writes one
/// update once and returns `{seq, duplicate}`, or an error reply (a
/// table with `err`) before writing anything of that update.
///
/// A counter that fell behind its history (deleted or evicted while the
/// stream survived) would make every XADD fail; the function then moves
/// the counter past the stream's last id once, instead of failing forever.
macro_rules! write_update_lua {
    () => {
        r"
local function write_update(counter, history, marker, command, channel, head, tail, maxlen, ttl, floor, publish)
  local done = redis.call('GET', marker)
  if done then
    return {tonumber(done), 1}
  end
  floor = tonumber(floor) or 0
  if floor > 0 and (tonumber(redis.call('GET', counter)) or 0) < floor then
    redis.call('SET', counter, floor)
  end
  local seq = redis.call('INCR', counter)
  local env = head .. seq .. tail
  local added = redis.pcall('XADD', history, 'MAXLEN', '~', maxlen, '0-' .. seq, 'env', env)
  if type(added) == 'table' and added.err then
    local top = redis.call('XREVRANGE', history, '+', '-', 'COUNT', 1)
    local last = top[1] and tonumber(string.match(top[1][1], '^0%-(%d+)$'))
    if not last or last < seq then
      return redis.error_reply(added.err)
    end
    redis.call('SET', counter, last)
    seq = redis.call('INCR', counter)
    env = head .. seq .. tail
    redis.call('XADD', history, 'MAXLEN', '~', maxlen, '0-' .. seq, 'env', env)
  end
  redis.call('SET', marker, seq, 'NX', 'EX', ttl)
  if publish == '1' then
    redis.call(command, channel, env)
  end
  return {seq, 0}
end
"
    };
}

/// Both scripts refuse any other first argument before writing anything
/// (Lua errors do not roll back earlier writes), so a caller still
/// using an older argument layout fails cleanly.
macro_rules! check_command_lua {
    () => {
        r"
if ARGV[1] ~= 'PUBLISH' and ARGV[1] ~= 'SPUBLISH' then
  return redis.error_reply('ERR first argument must be PUBLISH or SPUBLISH')
end
"
    };
}

/// KEYS: seq counter, history stream, dedupe marker. ARGV: publish
/// command ([`PublishCommand`]), channel, envelope head, envelope tail,
/// history maxlen, marker TTL (s), floor (as for [`BATCH_SCRIPT`]),
/// publish flag (`1`: publish now; `0`: the caller publishes once a
/// replica has the write, see `redis_backplane::scripts`).
/// Returns {seq, 1 if this update had already been written}.
pub const UPDATE_SCRIPT: &str = concat!(
    check_command_lua!(),
    write_update_lua!(),
    r"
return write_update(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
"
);

/// [`UPDATE_SCRIPT`] for many updates in one call, in order: what one
/// call per update costs Redis beyond the writes themselves (parsing the
/// call, starting the script, its reply) is paid once per call.
///
/// KEYS: per update its seq counter, history stream and dedupe marker
/// (the three keys of [`UPDATE_SCRIPT`]). ARGV: publish command, history
/// maxlen, marker TTL (s), publish flag, then per update its channel,
/// envelope head, envelope tail and floor. Returns one {seq, duplicate}
/// per update.
///
/// Each update is written exactly as by [`UPDATE_SCRIPT`] (its history
/// entry and PUBLISH in one step, its marker, its topic's next `seq`). If
/// one fails, the call stops there with its error: the updates before it
/// are written (a retry finds their markers), none after it is, so a
/// topic's later update never takes a `seq` before an earlier one.
/// A call may name keys of several topics (one Redis, where a script may
/// touch any key); on a cluster callers keep each call to one slot.
pub const UPDATES_SCRIPT: &str = concat!(
    check_command_lua!(),
    write_update_lua!(),
    r"
local n = #KEYS / 3
if n ~= math.floor(n) or #ARGV ~= 4 + 4 * n then
  return redis.error_reply('ERR want 3 keys and 4 arguments per update')
end
local replies = {}
for i = 0, n - 1 do
  local k, a = 3 * i, 4 + 4 * i
  local written = write_update(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], ARGV[1], ARGV[a + 1], ARGV[a + 2],
    ARGV[a + 3], ARGV[2], ARGV[3], ARGV[a + 4], ARGV[4])
  if written.err then
    return written
  end
  replies[i + 1] = written
end
return replies
"
);
