//! The Redis [`MetaStore`], for Redis standalone or Redis Cluster.
//!
//! # Keyspace
//!
//! `<a>` is the normalised account address (`alice@example.test`), `<id>` a
//! mailbox id (a per-account counter, never reused), `<k>` a blob key.
//! Addresses, domains and blob keys are validated to contain no braces,
//! whitespace or control characters, so a hash tag can never be escaped.
//!
//! Per account — every key carries the hash tag `{<a>}`, so all of an
//! account's keys live in one Cluster slot and every multi-key update of one
//! account is a single Lua script (atomic, one slot):
//!
//! | key | type | content |
//! |---|---|---|
//! | `acct:{<a>}` | hash | `password_hash`, `max_bytes`, `max_messages` (empty = unlimited), `usage_bytes`, `usage_messages`, `next_mbid` (mailbox id counter), `last_uidv` (last UIDVALIDITY handed out) |
//! | `mboxes:{<a>}` | hash | mailbox name → mailbox id |
//! | `mbox:{<a>}:<id>` | hash | `name`, `uidvalidity`, `uidnext`, `hms` (HIGHESTMODSEQ), `exists`, `unseen`, `su` (special-use or empty), `sub` (0/1) |
//! | `uids:{<a>}:<id>` | sorted set | member and score = UID of each message (UID ranges) |
//! | `mst:{<a>}:<id>` | hash | UID → `"<modseq> <size> <blob key> <flag> <flag> ..."` (the mutable state and what EXPUNGE needs) |
//! | `msg:{<a>}:<id>` | hash | UID → JSON `{internal_date, header_prefix, envelope, bodystructure}` (immutable; `header_prefix` = per-copy trace header lines shown before the blob, absent in older records = empty) |
//! | `expunged:{<a>}:<id>` | sorted set | member = expunged UID, score = MODSEQ of the expunge (QRESYNC) |
//! | `dedupe:{<a>}` | hash | dedupe key (`<message id>/<recipient>`) → UID it got |
//!
//! Messages are keyed by mailbox id, not by name, so RENAME only rewrites
//! `mboxes:{<a>}` and the `name` field. MODSEQ (< 2^53) and sizes are exact in
//! Lua numbers.
//!
//! Global directory — one hash tag `{posthorn}` so the directory scripts
//! (domain removal checks the account index atomically) run on one slot:
//!
//! | key | type | content |
//! |---|---|---|
//! | `{posthorn}:domains` | set | local domains |
//! | `{posthorn}:accounts` | set | account index (a superset: see below) |
//! | `{posthorn}:aliases` | hash | alias address or `@domain` → JSON list of targets |
//! | `{posthorn}:blobs:zero` | sorted set | blob key → Unix time its count dropped to 0 (GC index) |
//!
//! Blobs — one key each, in its own slot:
//!
//! | key | type | content |
//! |---|---|---|
//! | `blob:{<k>}` | hash | `refs` (reference count), `zero` (Unix time it dropped to 0) |
//!
//! Leases — one key each: `lease:{<name>}` = owner, with a `PX` expiry
//! (e.g. the POP3 maildrop lock `lease:{pop3:<a>}`).
//!
//! Markers — one key each: `marker:{<name>}` = 1, with a `PX` expiry
//! (e.g. delivery's `delivered/<message id>/<recipient hash>`).
//!
//! Records — `rec:{<ns>}:<key>` and the index `rec:{<ns>}`
//! (`redis_store/records.rs`).
//!
//! # What is atomic, and the crash windows
//!
//! A Lua script runs atomically; with `appendfsync always` it is durable when
//! its reply arrives. Steps that touch several slots are ordered so that a
//! crash (or a lost reply) between them can only leave a blob count too HIGH
//! (GC delayed — a leak, never data loss) or a harmless index entry:
//!
//! - **append**: the blob count is incremented *before* the append script.
//!   If the script reports a duplicate (or a definite "not found"), the count
//!   is decremented again. If the script's outcome is unknown (connection
//!   lost) nothing is decremented: the count may stay one too high.
//! - **expunge / delete mailbox / remove account**: the script returns the blob
//!   keys it dropped, then each count is decremented. A crash in between
//!   leaves counts too high.
//! - **blob count reaching 0**: the decrement script records `zero`, then the
//!   key is added to `{posthorn}:blobs:zero`. A crash in between leaves the
//!   blob unindexed (leaked, not lost). [`MetaStore::forget_blob`] deletes the
//!   blob hash only if `refs` is still 0, then removes the index entry.
//!   [`MetaStore::gc_candidates`] re-checks every indexed blob's hash, so
//!   stale index entries (re-referenced blobs) are never returned.
//! - **accounts**: `add_account` first registers the address in
//!   `{posthorn}:accounts` (atomically with the check that the domain is
//!   local), then creates the account's keys. `remove_account` deletes the
//!   keys, then the index entry. So the index may hold an address whose
//!   account does not exist (a "phantom"); `list_accounts` and
//!   `remove_domain` check and ignore or clean phantoms.
//!
//! Dedupe keys are kept for the life of the account (no expiry yet).
//! Append does not enforce the quota; callers compare [`MetaStore::get_usage`]
//! with the quota before appending.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Script, Value};
use serde::{Deserialize, Serialize};

mod records;

use crate::util::{
    account_id, alias_id, check_blob_key, check_flags, dedup_flags, domain_id, domain_of, is_seen,
    now_secs,
};
use crate::{
    Account, Alias, AppendOutcome, DEFAULT_MAILBOXES, Error, FlagOp, FlagUpdate, MailboxInfo,
    MessageMeta, MetaStore, NewMessage, Quota, Record, RecordPut, Result, SpecialUse, Usage,
    validate_mailbox_name,
};

const DOMAINS: &str = "{posthorn}:domains";
const ACCOUNTS: &str = "{posthorn}:accounts";
const ALIASES: &str = "{posthorn}:aliases";
const BLOBS_ZERO: &str = "{posthorn}:blobs:zero";

fn tag(account: &str) -> String {
    format!("{{{account}}}")
}
fn acct_key(account: &str) -> String {
    format!("acct:{{{account}}}")
}
fn blob_key(key: &str) -> String {
    format!("blob:{{{key}}}")
}

/// Shared Lua prelude of the per-account scripts: `KEYS[1]` is `acct:{<a>}`,
/// `ARGV[1]` the hash tag `{<a>}`.
const PRELUDE: &str = r#"
local T = ARGV[1]
local ACCT = KEYS[1]
local MBOXES = 'mboxes:' .. T
local DEDUPE = 'dedupe:' .. T
local function mbkey(id) return 'mbox:' .. T .. ':' .. id end
local function uidskey(id) return 'uids:' .. T .. ':' .. id end
local function msgkey(id) return 'msg:' .. T .. ':' .. id end
local function stkey(id) return 'mst:' .. T .. ':' .. id end
local function expkey(id) return 'expunged:' .. T .. ':' .. id end
local function split(s)
  local t = {}
  for w in string.gmatch(s, '%S+') do t[#t + 1] = w end
  return t
end
local function is_seen(flags)
  for _, f in ipairs(flags) do
    if string.lower(f) == '\\seen' then return true end
  end
  return false
end
local function new_uidv(now)
  local last = tonumber(redis.call('HGET', ACCT, 'last_uidv') or '0')
  local v = now
  if v <= last then v = last + 1 end
  if v > 4294967295 then v = 1 end
  redis.call('HSET', ACCT, 'last_uidv', v)
  return v
end
local function create_mbox(name, su, sub, now)
  local id = redis.call('HINCRBY', ACCT, 'next_mbid', 1)
  redis.call('HSET', MBOXES, name, id)
  redis.call('HSET', mbkey(id), 'name', name, 'uidvalidity', new_uidv(now), 'uidnext', 1,
    'hms', 1, 'exists', 0, 'unseen', 0, 'su', su, 'sub', sub)
  return id
end
local function info(id)
  return redis.call('HMGET', mbkey(id), 'name', 'uidvalidity', 'uidnext', 'hms', 'exists',
    'unseen', 'su', 'sub')
end
local function purge(id, blobs)
  local st = redis.call('HGETALL', stkey(id))
  local bytes, n = 0, 0
  for i = 2, #st, 2 do
    local p = split(st[i])
    bytes = bytes + tonumber(p[2])
    n = n + 1
    blobs[#blobs + 1] = p[3]
  end
  if n > 0 then
    redis.call('HINCRBY', ACCT, 'usage_bytes', -bytes)
    redis.call('HINCRBY', ACCT, 'usage_messages', -n)
  end
  redis.call('DEL', mbkey(id), uidskey(id), msgkey(id), stkey(id), expkey(id))
end
"#;

fn account_script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

/// ARGV: tag, password hash, now, (name, special-use)...
/// KEYS[1] = lease key, ARGV[1] = owner, ARGV[2] = ttl ms. Take the lease
/// if free, expired (PX does that) or already ours; 1 if held by us now.
static LEASE_ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#,
    )
});

/// KEYS[1] = lease key, ARGV[1] = owner: delete only if ours.
static LEASE_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

static CREATE_ACCOUNT: LazyLock<Script> = LazyLock::new(|| {
    account_script(
        r#"
if redis.call('EXISTS', ACCT) == 1 then return 0 end
redis.call('HSET', ACCT, 'password_hash', ARGV[2], 'max_bytes', '', 'max_messages', '',
  'usage_bytes', 0, 'usage_messages', 0, 'next_mbid', 0, 'last_uidv', 0)
local now = tonumber(ARGV[3])
for i = 4, #ARGV, 2 do create_mbox(ARGV[i], ARGV[i + 1], 1, now) end
return 1
"#,
    )
});

/// ARGV: tag. Returns nil if absent, else the blob keys dropped.
static REMOVE_ACCOUNT: LazyLock<Script> = LazyLock::new(|| {
    account_script(
        r#"
if redis.call('EXISTS', ACCT) == 0 then return false end
local blobs = {}
local m = redis.call('HGETALL', MBOXES)
for i = 2, #m, 2 do purge(m[i], blobs) end
redis.call('DEL', ACCT, MBOXES, DEDUPE)
return blobs
"#,
    )
});

/// ARGV: tag, (field, value)... Sets fields of an existing account.
static SET_ACCOUNT_FIELDS: LazyLock<Script> = LazyLock::new(|| {
    account_script(
        r#"
if redis.call('EXISTS', ACCT) == 0 then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', ACCT, ARGV[i], ARGV[i + 1]) end
return 1
"#,
    )
});

/// ARGV: tag, name, special-use, now. Returns -1 (no account), -3 (exists)
/// or the new mailbox's info.
static CREATE_MAILBOX: LazyLock<Script> = LazyLock::new(|| {
    account_script(
        r#"
if redis.call('EXISTS', ACCT) == 0 then return -1 end
if redis.call('HEXISTS', MBOXES, ARGV[2]) == 1 then return -3 end
return info(create_mbox(ARGV[2], ARGV[3], 0, tonumber(ARGV[4])))
"#,
    )
});

/// ARGV: tag, name. Returns nil or the mailbox info.
static GET_MAILBOX: LazyLock<Script> = LazyLock::new(|| {
    account_script(
        r#"
local id = redis.call('HGET', MBOXES, ARGV[2])
if not id then return false end
return info(id)
"#,
    )
});

/// ARGV: tag. Returns nil (no account) or all mailbox infos.
static LIST_MAILBOXES: LazyLock<Script> = LazyLock::new(|| {
    account_script(
        r#"
if redis.call('EXISTS', ACCT) == 0 then return false end
local out = {}
local m = redis.call('HGETALL', MBOXES)
for i = 2, #m, 2 do out[#out + 1] = info(m[i]) end
return out
"#,
    )
});

/// ARGV: tag, name, 0/1. Returns 1, -2 (no mailbox).
static SET_SUBSCRIBED: LazyLock<Script> = LazyLock::new(|| {
    account_script(
        r#"
local id = redis.call('HGET', MBOXES, ARGV[2])
if not id then return -2 end
redis.call('HSET', mbkey(id), 'sub', ARGV[3])
return 1
"#,
    )
});

/// ARGV: tag, name. Returns {-1} / {-2} or {1, blob keys dropped}.
static DELETE_MAILBOX: LazyLock<Script> = LazyLock::new(|| {
    account_script(
        r#"
if redis.call('EXISTS', ACCT) == 0 then return {-1} end
local id = redis.call('HGET', MBOXES, ARGV[2])
if not id then return {-2} end
local blobs = {}
purge(id, blobs)
redis.call('HDEL', MBOXES, ARGV[2])
return {1, blobs}
"#,
    )
});

/// ARGV: tag, from, to, now. Returns 1, -1, -2 (no source) or -3 (target
/// exists).
static RENAME_MAILBOX: LazyLock<Script> = LazyLock::new(|| {
    account_script(
        r#"
if redis.call('EXISTS', ACCT) == 0 then return -1 end
local from, to = ARGV[2], ARGV[3]
local id = redis.call('HGET', MBOXES, from)
if not id then return -2 end
if redis.call('HEXISTS', MBOXES, to) == 1 then return -3 end
if from == 'INBOX' then
  local sub = redis.call('HGET', mbkey(id), 'sub')
  redis.call('HDEL', MBOXES, 'INBOX')
  redis.call('HSET', MBOXES, to, id)
  redis.call('HSET', mbkey(id), 'name', to, 'su', '')
  create_mbox('INBOX', '', sub, tonumber(ARGV[4]))
  return 1
end
local all = redis.call('HGETALL', MBOXES)
local prefix = from .. '/'
local moves = {}
for i = 1, #all, 2 do
  local n = all[i]
  if n == from or string.sub(n, 1, #prefix) == prefix then
    local nn = to .. string.sub(n, #from + 1)
    if redis.call('HEXISTS', MBOXES, nn) == 1 then return -3 end
    moves[#moves + 1] = {n, nn, all[i + 1]}
  end
end
for _, m in ipairs(moves) do redis.call('HDEL', MBOXES, m[1]) end
for _, m in ipairs(moves) do
  redis.call('HSET', MBOXES, m[2], m[3])
  redis.call('HSET', mbkey(m[3]), 'name', m[2])
end
return 1
"#,
    )
});

/// ARGV: tag, mailbox, dedupe key ('' = none), flags (space-joined), seen
/// (0/1), size, blob key, JSON data.
/// Returns {-1} no account, {-2} no mailbox, {-4} UIDs exhausted,
/// {0, uid} duplicate, {1, uid, modseq} appended.
static APPEND: LazyLock<Script> = LazyLock::new(|| {
    account_script(
        r#"
if redis.call('EXISTS', ACCT) == 0 then return {-1} end
local id = redis.call('HGET', MBOXES, ARGV[2])
if not id then return {-2} end
if ARGV[3] ~= '' then
  local prev = redis.call('HGET', DEDUPE, ARGV[3])
  if prev then return {0, tonumber(prev)} end
end
local mb = mbkey(id)
local uid = tonumber(redis.call('HGET', mb, 'uidnext'))
if uid >= 4294967295 then return {-4} end
redis.call('HSET', mb, 'uidnext', uid + 1)
local modseq = redis.call('HINCRBY', mb, 'hms', 1)
redis.call('HINCRBY', mb, 'exists', 1)
if ARGV[5] == '0' then redis.call('HINCRBY', mb, 'unseen', 1) end
redis.call('ZADD', uidskey(id), uid, uid)
redis.call('HSET', msgkey(id), uid, ARGV[8])
local st = modseq .. ' ' .. ARGV[6] .. ' ' .. ARGV[7]
if ARGV[4] ~= '' then st = st .. ' ' .. ARGV[4] end
redis.call('HSET', stkey(id), uid, st)
redis.call('HINCRBY', ACCT, 'usage_bytes', ARGV[6])
redis.call('HINCRBY', ACCT, 'usage_messages', 1)
if ARGV[3] ~= '' then redis.call('HSET', DEDUPE, ARGV[3], uid) end
return {1, uid, modseq}
"#,
    )
});

/// ARGV: tag, mailbox, lo, hi. Returns nil (no mailbox) or {uid, state, data}...
static FETCH: LazyLock<Script> = LazyLock::new(|| {
    account_script(
        r#"
local id = redis.call('HGET', MBOXES, ARGV[2])
if not id then return false end
local uids = redis.call('ZRANGEBYSCORE', uidskey(id), ARGV[3], ARGV[4])
local out = {}
for _, u in ipairs(uids) do
  out[#out + 1] = {u, redis.call('HGET', stkey(id), u), redis.call('HGET', msgkey(id), u)}
end
return out
"#,
    )
});

/// ARGV: tag, mailbox, op (set/add/remove), unchanged-since ('' = none),
/// number of flags, flags..., uids... Returns nil (no mailbox) or
/// {uid, modseq, applied, flags}...
static STORE_FLAGS: LazyLock<Script> = LazyLock::new(|| {
    account_script(
        r#"
local id = redis.call('HGET', MBOXES, ARGV[2])
if not id then return false end
local mb = mbkey(id)
local op = ARGV[3]
local us = tonumber(ARGV[4])
local nf = tonumber(ARGV[5])
local flags = {}
for i = 6, 5 + nf do flags[#flags + 1] = ARGV[i] end
local function has(list, f)
  local lf = string.lower(f)
  for _, x in ipairs(list) do
    if string.lower(x) == lf then return true end
  end
  return false
end
local out = {}
for i = 6 + nf, #ARGV do
  local uid = ARGV[i]
  local st = redis.call('HGET', stkey(id), uid)
  if st then
    local p = split(st)
    local modseq, size, blob = tonumber(p[1]), p[2], p[3]
    local cur = {}
    for j = 4, #p do cur[#cur + 1] = p[j] end
    if us and modseq > us then
      out[#out + 1] = {tonumber(uid), modseq, 0, table.concat(cur, ' ')}
    else
      local new = {}
      if op == 'set' then
        for _, f in ipairs(flags) do
          if not has(new, f) then new[#new + 1] = f end
        end
      elseif op == 'add' then
        for _, f in ipairs(cur) do new[#new + 1] = f end
        for _, f in ipairs(flags) do
          if not has(new, f) then new[#new + 1] = f end
        end
      else
        for _, f in ipairs(cur) do
          if not has(flags, f) then new[#new + 1] = f end
        end
      end
      local a, b = table.concat(cur, ' '), table.concat(new, ' ')
      if a ~= b then
        local was, now = is_seen(cur), is_seen(new)
        if was and not now then redis.call('HINCRBY', mb, 'unseen', 1) end
        if now and not was then redis.call('HINCRBY', mb, 'unseen', -1) end
        modseq = redis.call('HINCRBY', mb, 'hms', 1)
        local s = modseq .. ' ' .. size .. ' ' .. blob
        if b ~= '' then s = s .. ' ' .. b end
        redis.call('HSET', stkey(id), uid, s)
      end
      out[#out + 1] = {tonumber(uid), modseq, 1, b}
    end
  end
end
return out
"#,
    )
});

/// ARGV: tag, mailbox, uids... Returns nil (no account or mailbox) or
/// {uid, blob key}... of the messages removed.
static EXPUNGE: LazyLock<Script> = LazyLock::new(|| {
    account_script(
        r#"
if redis.call('EXISTS', ACCT) == 0 then return false end
local id = redis.call('HGET', MBOXES, ARGV[2])
if not id then return false end
local mb = mbkey(id)
local out = {}
local bytes, n = 0, 0
for i = 3, #ARGV do
  local uid = ARGV[i]
  local st = redis.call('HGET', stkey(id), uid)
  if st then
    local p = split(st)
    local flags = {}
    for j = 4, #p do flags[#flags + 1] = p[j] end
    local modseq = redis.call('HINCRBY', mb, 'hms', 1)
    redis.call('ZADD', expkey(id), modseq, uid)
    redis.call('ZREM', uidskey(id), uid)
    redis.call('HDEL', stkey(id), uid)
    redis.call('HDEL', msgkey(id), uid)
    redis.call('HINCRBY', mb, 'exists', -1)
    if not is_seen(flags) then redis.call('HINCRBY', mb, 'unseen', -1) end
    bytes = bytes + tonumber(p[2])
    n = n + 1
    out[#out + 1] = {tonumber(uid), p[3]}
  end
end
if n > 0 then
  redis.call('HINCRBY', ACCT, 'usage_bytes', -bytes)
  redis.call('HINCRBY', ACCT, 'usage_messages', -n)
end
return out
"#,
    )
});

/// ARGV: tag, mailbox, modseq. Returns nil (no mailbox) or the UIDs.
static EXPUNGED_SINCE: LazyLock<Script> = LazyLock::new(|| {
    account_script(
        r#"
local id = redis.call('HGET', MBOXES, ARGV[2])
if not id then return false end
return redis.call('ZRANGEBYSCORE', expkey(id), '(' .. ARGV[3], '+inf')
"#,
    )
});

/// KEYS: blob hash.
static BLOB_INCR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = redis.call('HINCRBY', KEYS[1], 'refs', 1)
redis.call('HDEL', KEYS[1], 'zero')
return n
"#,
    )
});

/// KEYS: blob hash; ARGV: now. Returns 1 if the count dropped to 0.
static BLOB_DECR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = redis.call('HINCRBY', KEYS[1], 'refs', -1)
if n <= 0 then
  redis.call('HSET', KEYS[1], 'refs', 0, 'zero', ARGV[1])
  return 1
end
return 0
"#,
    )
});

/// KEYS: blob hash. Deletes it if its count is 0; returns 1 if so.
static BLOB_FORGET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = tonumber(redis.call('HGET', KEYS[1], 'refs') or '0')
if n > 0 then return 0 end
redis.call('DEL', KEYS[1])
return 1
"#,
    )
});

/// KEYS: domains, accounts; ARGV: domain, account. Registers the account in
/// the index if its domain is local; returns 0 if not.
static REGISTER_ACCOUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"#,
    )
});

/// KEYS: domains, accounts; ARGV: domain. Returns -2 (absent), -5 (has
/// accounts) or 1.
static REMOVE_DOMAIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return -2 end
local suffix = '@' .. ARGV[1]
for _, a in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if string.sub(a, -#suffix) == suffix then return -5 end
end
redis.call('SREM', KEYS[1], ARGV[1])
return 1
"#,
    )
});

/// Standalone (auto-reconnecting) or Cluster connection; both are
/// [`ConnectionLike`], so scripts are invoked the same way.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis (standalone or Cluster) metadata store. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    endpoint: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Strip a password from a URL for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

fn map_err(endpoint: &str, e: RedisError) -> Error {
    match e.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => {
            Error::Corrupt(format!("redis {endpoint}: {e}"))
        }
        _ => Error::Unavailable(format!("redis {endpoint}: {e}")),
    }
}

fn corrupt(what: &str) -> Error {
    Error::Corrupt(format!("redis: unexpected reply ({what})"))
}

fn v_int(v: &Value) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt("integer expected")),
        Value::SimpleString(s) => s.parse().map_err(|_| corrupt("integer expected")),
        _ => Err(corrupt("integer expected")),
    }
}

fn v_str(v: &Value) -> Result<String> {
    match v {
        Value::BulkString(b) => {
            String::from_utf8(b.clone()).map_err(|_| corrupt("UTF-8 string expected"))
        }
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        _ => Err(corrupt("string expected")),
    }
}

fn v_arr(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Ok(a),
        _ => Err(corrupt("array expected")),
    }
}

fn v_opt_arr(v: Value) -> Result<Option<Vec<Value>>> {
    match v {
        Value::Nil => Ok(None),
        v => v_arr(v).map(Some),
    }
}

fn su_str(su: Option<SpecialUse>) -> &'static str {
    match su {
        None => "",
        Some(SpecialUse::All) => "All",
        Some(SpecialUse::Archive) => "Archive",
        Some(SpecialUse::Drafts) => "Drafts",
        Some(SpecialUse::Flagged) => "Flagged",
        Some(SpecialUse::Junk) => "Junk",
        Some(SpecialUse::Sent) => "Sent",
        Some(SpecialUse::Trash) => "Trash",
    }
}

fn su_parse(s: &str) -> Result<Option<SpecialUse>> {
    Ok(match s {
        "" => None,
        "All" => Some(SpecialUse::All),
        "Archive" => Some(SpecialUse::Archive),
        "Drafts" => Some(SpecialUse::Drafts),
        "Flagged" => Some(SpecialUse::Flagged),
        "Junk" => Some(SpecialUse::Junk),
        "Sent" => Some(SpecialUse::Sent),
        "Trash" => Some(SpecialUse::Trash),
        _ => return Err(corrupt("special-use")),
    })
}

/// Parse the reply of the Lua `info(id)` helper.
fn parse_info(v: Value) -> Result<MailboxInfo> {
    let a = v_arr(v)?;
    if a.len() != 8 {
        return Err(corrupt("mailbox info"));
    }
    let n = |i: usize| v_int(&a[i]);
    Ok(MailboxInfo {
        name: v_str(&a[0])?,
        uidvalidity: n(1)? as u32,
        uidnext: n(2)? as u32,
        highest_modseq: n(3)? as u64,
        exists: n(4)?.max(0) as u32,
        unseen: n(5)?.max(0) as u32,
        special_use: su_parse(&v_str(&a[6])?)?,
        subscribed: n(7)? != 0,
    })
}

/// The immutable part of a message, stored as JSON in `msg:{<a>}:<id>`.
#[derive(Serialize, Deserialize)]
struct MsgData {
    internal_date: i64,
    /// Per-copy header lines read before the blob; absent in older records.
    #[serde(default)]
    header_prefix: String,
    envelope: Option<String>,
    bodystructure: Option<String>,
}

/// Parsed `mst` state: modseq, size, blob key, flags.
fn parse_state(s: &str) -> Result<(u64, u64, String, Vec<String>)> {
    let mut it = s.split_whitespace();
    let modseq = it.next().and_then(|x| x.parse().ok());
    let size = it.next().and_then(|x| x.parse().ok());
    let blob = it.next();
    match (modseq, size, blob) {
        (Some(m), Some(sz), Some(b)) => Ok((m, sz, b.to_string(), it.map(String::from).collect())),
        _ => Err(corrupt("message state")),
    }
}

fn mailbox_not_found(account: &str, name: &str) -> Error {
    Error::NotFound(format!("mailbox {name:?} of {account}"))
}

fn account_not_found(account: &str) -> Error {
    Error::NotFound(format!("account {account}"))
}

impl RedisStore {
    /// Connect to a standalone Redis (`redis://[:password@]host:port[/db]`,
    /// `rediss://` for TLS if enabled). Reconnects automatically.
    pub async fn connect(url: &str) -> Result<Self> {
        let endpoint = redact(url);
        let client = redis::Client::open(url).map_err(|e| Error::Invalid {
            what: "redis url",
            reason: format!("{endpoint}: {e}"),
        })?;
        // Bounded start-up: the caller retries with its own backoff and
        // reports the endpoint; a request never waits more than 5 s.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
            .set_response_timeout(Some(std::time::Duration::from_secs(5)));
        let cm = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| map_err(&endpoint, e))?;
        Ok(Self {
            conn: Conn::Single(cm),
            endpoint,
        })
    }

    /// Connect to a Redis Cluster given some of its nodes' URLs.
    pub async fn connect_cluster(urls: &[String]) -> Result<Self> {
        let endpoint = format!(
            "cluster [{}]",
            urls.iter()
                .map(|u| redact(u))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let client =
            redis::cluster::ClusterClient::new(urls.to_vec()).map_err(|e| Error::Invalid {
                what: "redis cluster urls",
                reason: format!("{endpoint}: {e}"),
            })?;
        let conn = client
            .get_async_connection()
            .await
            .map_err(|e| map_err(&endpoint, e))?;
        Ok(Self {
            conn: Conn::Cluster(conn),
            endpoint,
        })
    }

    fn err(&self) -> impl Fn(RedisError) -> Error + '_ {
        |e| map_err(&self.endpoint, e)
    }

    async fn cmd<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        let mut c = self.conn.clone();
        cmd.query_async(&mut c).await.map_err(self.err())
    }

    async fn script(&self, script: &Script, keys: &[&str], args: &[&str]) -> Result<Value> {
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(*a);
        }
        let mut c = self.conn.clone();
        inv.invoke_async(&mut c).await.map_err(self.err())
    }

    /// Run a per-account script: KEYS[1] = `acct:{<a>}`, ARGV[1] = `{<a>}`.
    async fn acct_script(&self, script: &Script, account: &str, args: &[&str]) -> Result<Value> {
        let key = acct_key(account);
        let t = tag(account);
        let mut all = Vec::with_capacity(args.len() + 1);
        all.push(t.as_str());
        all.extend_from_slice(args);
        self.script(script, &[&key], &all).await
    }

    async fn blob_incr(&self, key: &str) -> Result<()> {
        self.script(&BLOB_INCR, &[&blob_key(key)], &[]).await?;
        Ok(())
    }

    async fn blob_decr(&self, key: &str) -> Result<()> {
        let now = now_secs().to_string();
        let v = self.script(&BLOB_DECR, &[&blob_key(key)], &[&now]).await?;
        if v_int(&v)? == 1 {
            self.cmd::<i64>(redis::cmd("ZADD").arg(BLOBS_ZERO).arg(&now).arg(key))
                .await?;
        }
        Ok(())
    }

    /// Decrement each blob of a list reply (strings).
    async fn blob_decr_all(&self, blobs: Vec<Value>) -> Result<()> {
        for b in blobs {
            self.blob_decr(&v_str(&b)?).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl MetaStore for RedisStore {
    async fn ping(&self) -> Result<()> {
        let _: String = self.cmd(&redis::cmd("PING")).await?;
        Ok(())
    }

    async fn add_domain(&self, domain: &str) -> Result<()> {
        let d = domain_id(domain)?;
        let n: i64 = self.cmd(redis::cmd("SADD").arg(DOMAINS).arg(&d)).await?;
        if n == 0 {
            return Err(Error::AlreadyExists(format!("domain {d}")));
        }
        Ok(())
    }

    async fn remove_domain(&self, domain: &str) -> Result<()> {
        let d = domain_id(domain)?;
        // Clean phantom index entries (see module docs) first.
        let accounts: Vec<String> = self.cmd(redis::cmd("SMEMBERS").arg(ACCOUNTS)).await?;
        for a in accounts.iter().filter(|a| domain_of(a) == d) {
            let exists: i64 = self.cmd(redis::cmd("EXISTS").arg(acct_key(a))).await?;
            if exists == 0 {
                let _: i64 = self.cmd(redis::cmd("SREM").arg(ACCOUNTS).arg(a)).await?;
            }
        }
        let v = self
            .script(&REMOVE_DOMAIN, &[DOMAINS, ACCOUNTS], &[&d])
            .await?;
        match v_int(&v)? {
            1 => Ok(()),
            -2 => Err(Error::NotFound(format!("domain {d}"))),
            _ => Err(Error::Invalid {
                what: "domain removal",
                reason: format!("domain {d} still has accounts"),
            }),
        }
    }

    async fn list_domains(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = self.cmd(redis::cmd("SMEMBERS").arg(DOMAINS)).await?;
        v.sort();
        Ok(v)
    }

    async fn is_local_domain(&self, domain: &str) -> Result<bool> {
        let Ok(d) = domain_id(domain) else {
            return Ok(false);
        };
        let n: i64 = self
            .cmd(redis::cmd("SISMEMBER").arg(DOMAINS).arg(&d))
            .await?;
        Ok(n == 1)
    }

    async fn add_account(&self, address: &str, password_hash: &str) -> Result<()> {
        let a = account_id(address)?;
        let dom = domain_of(&a).to_string();
        let v = self
            .script(&REGISTER_ACCOUNT, &[DOMAINS, ACCOUNTS], &[&dom, &a])
            .await?;
        if v_int(&v)? == 0 {
            return Err(Error::UnknownDomain(dom));
        }
        let now = now_secs().to_string();
        let mut args: Vec<&str> = vec![password_hash, &now];
        for (name, su) in DEFAULT_MAILBOXES {
            args.push(name);
            args.push(su_str(*su));
        }
        let v = self.acct_script(&CREATE_ACCOUNT, &a, &args).await?;
        if v_int(&v)? == 0 {
            return Err(Error::AlreadyExists(format!("account {a}")));
        }
        Ok(())
    }

    async fn get_account(&self, address: &str) -> Result<Option<Account>> {
        let Ok(a) = account_id(address) else {
            return Ok(None);
        };
        let v: Vec<Option<String>> = self
            .cmd(
                redis::cmd("HMGET")
                    .arg(acct_key(&a))
                    .arg("password_hash")
                    .arg("max_bytes")
                    .arg("max_messages"),
            )
            .await?;
        let [Some(hash), max_bytes, max_messages] =
            <[Option<String>; 3]>::try_from(v).map_err(|_| corrupt("HMGET"))?
        else {
            return Ok(None);
        };
        let lim = |s: Option<String>| -> Result<Option<u64>> {
            match s.as_deref() {
                None | Some("") => Ok(None),
                Some(s) => s.parse().map(Some).map_err(|_| corrupt("quota")),
            }
        };
        Ok(Some(Account {
            address: a,
            password_hash: hash,
            quota: Quota {
                max_bytes: lim(max_bytes)?,
                max_messages: lim(max_messages)?,
            },
        }))
    }

    async fn remove_account(&self, address: &str) -> Result<()> {
        let a = account_id(address)?;
        let v = self.acct_script(&REMOVE_ACCOUNT, &a, &[]).await?;
        let Some(blobs) = v_opt_arr(v)? else {
            // Clean a phantom index entry, if any.
            let _: i64 = self.cmd(redis::cmd("SREM").arg(ACCOUNTS).arg(&a)).await?;
            return Err(account_not_found(&a));
        };
        self.blob_decr_all(blobs).await?;
        let _: i64 = self.cmd(redis::cmd("SREM").arg(ACCOUNTS).arg(&a)).await?;
        Ok(())
    }

    async fn list_accounts(&self, domain: Option<&str>) -> Result<Vec<String>> {
        let d = match domain {
            Some(d) => Some(domain_id(d)?),
            None => None,
        };
        let all: Vec<String> = self.cmd(redis::cmd("SMEMBERS").arg(ACCOUNTS)).await?;
        let mut out = Vec::new();
        for a in all {
            if d.as_deref().is_some_and(|d| domain_of(&a) != d) {
                continue;
            }
            let exists: i64 = self.cmd(redis::cmd("EXISTS").arg(acct_key(&a))).await?;
            if exists == 1 {
                out.push(a);
            }
        }
        out.sort();
        Ok(out)
    }

    async fn set_password(&self, address: &str, password_hash: &str) -> Result<()> {
        let a = account_id(address)?;
        let v = self
            .acct_script(&SET_ACCOUNT_FIELDS, &a, &["password_hash", password_hash])
            .await?;
        if v_int(&v)? == 0 {
            return Err(account_not_found(&a));
        }
        Ok(())
    }

    async fn set_quota(&self, address: &str, quota: Quota) -> Result<()> {
        let a = account_id(address)?;
        let mb = quota.max_bytes.map(|n| n.to_string()).unwrap_or_default();
        let mm = quota
            .max_messages
            .map(|n| n.to_string())
            .unwrap_or_default();
        let v = self
            .acct_script(
                &SET_ACCOUNT_FIELDS,
                &a,
                &["max_bytes", &mb, "max_messages", &mm],
            )
            .await?;
        if v_int(&v)? == 0 {
            return Err(account_not_found(&a));
        }
        Ok(())
    }

    async fn get_usage(&self, address: &str) -> Result<Usage> {
        let a = account_id(address)?;
        let v: Vec<Option<u64>> = self
            .cmd(
                redis::cmd("HMGET")
                    .arg(acct_key(&a))
                    .arg("usage_bytes")
                    .arg("usage_messages"),
            )
            .await?;
        match v.as_slice() {
            [Some(bytes), Some(messages)] => Ok(Usage {
                bytes: *bytes,
                messages: *messages,
            }),
            _ => Err(account_not_found(&a)),
        }
    }

    async fn set_alias(&self, alias: &Alias) -> Result<()> {
        let a = alias_id(&alias.address)?;
        let targets = serde_json::to_string(&alias.targets)
            .map_err(|e| Error::Corrupt(format!("encoding alias: {e}")))?;
        let _: i64 = self
            .cmd(redis::cmd("HSET").arg(ALIASES).arg(&a).arg(targets))
            .await?;
        Ok(())
    }

    async fn get_alias(&self, address: &str) -> Result<Option<Alias>> {
        let Ok(a) = alias_id(address) else {
            return Ok(None);
        };
        let v: Option<String> = self.cmd(redis::cmd("HGET").arg(ALIASES).arg(&a)).await?;
        match v {
            None => Ok(None),
            Some(j) => Ok(Some(Alias {
                address: a,
                targets: serde_json::from_str(&j)
                    .map_err(|e| Error::Corrupt(format!("alias: {e}")))?,
            })),
        }
    }

    async fn remove_alias(&self, address: &str) -> Result<()> {
        let a = alias_id(address)?;
        let n: i64 = self.cmd(redis::cmd("HDEL").arg(ALIASES).arg(&a)).await?;
        if n == 0 {
            return Err(Error::NotFound(format!("alias {a}")));
        }
        Ok(())
    }

    async fn list_aliases(&self) -> Result<Vec<Alias>> {
        let all: Vec<(String, String)> = self.cmd(redis::cmd("HGETALL").arg(ALIASES)).await?;
        let mut out = Vec::with_capacity(all.len());
        for (address, j) in all {
            out.push(Alias {
                address,
                targets: serde_json::from_str(&j)
                    .map_err(|e| Error::Corrupt(format!("alias: {e}")))?,
            });
        }
        out.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(out)
    }

    async fn create_mailbox(
        &self,
        account: &str,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> Result<MailboxInfo> {
        let a = account_id(account)?;
        let name = validate_mailbox_name(name)?;
        let now = now_secs().to_string();
        let v = self
            .acct_script(&CREATE_MAILBOX, &a, &[&name, su_str(special_use), &now])
            .await?;
        match v {
            Value::Int(-1) => Err(account_not_found(&a)),
            Value::Int(_) => Err(Error::AlreadyExists(format!("mailbox {name:?} of {a}"))),
            v => parse_info(v),
        }
    }

    async fn delete_mailbox(&self, account: &str, name: &str) -> Result<()> {
        let a = account_id(account)?;
        let name = validate_mailbox_name(name)?;
        if name == "INBOX" {
            return Err(Error::Invalid {
                what: "mailbox deletion",
                reason: "INBOX cannot be deleted".into(),
            });
        }
        let mut v = v_arr(self.acct_script(&DELETE_MAILBOX, &a, &[&name]).await?)?;
        match v.first().map(v_int).transpose()? {
            Some(1) if v.len() == 2 => {
                let blobs = v_arr(v.pop().unwrap_or_default())?;
                self.blob_decr_all(blobs).await
            }
            Some(-1) => Err(account_not_found(&a)),
            Some(-2) => Err(mailbox_not_found(&a, &name)),
            _ => Err(corrupt("delete mailbox")),
        }
    }

    async fn rename_mailbox(&self, account: &str, from: &str, to: &str) -> Result<()> {
        let a = account_id(account)?;
        let from = validate_mailbox_name(from)?;
        let to = validate_mailbox_name(to)?;
        crate::embedded::check_rename(&from, &to)?;
        let now = now_secs().to_string();
        let v = self
            .acct_script(&RENAME_MAILBOX, &a, &[&from, &to, &now])
            .await?;
        match v_int(&v)? {
            1 => Ok(()),
            -1 => Err(account_not_found(&a)),
            -2 => Err(mailbox_not_found(&a, &from)),
            _ => Err(Error::AlreadyExists(format!(
                "mailbox {to:?} (or an inferior) of {a}"
            ))),
        }
    }

    async fn list_mailboxes(&self, account: &str) -> Result<Vec<MailboxInfo>> {
        let a = account_id(account)?;
        let v = self.acct_script(&LIST_MAILBOXES, &a, &[]).await?;
        let Some(list) = v_opt_arr(v)? else {
            return Err(account_not_found(&a));
        };
        let mut out = list
            .into_iter()
            .map(parse_info)
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|x, y| x.name.cmp(&y.name));
        Ok(out)
    }

    async fn get_mailbox(&self, account: &str, name: &str) -> Result<Option<MailboxInfo>> {
        let a = account_id(account)?;
        let name = validate_mailbox_name(name)?;
        let v = self.acct_script(&GET_MAILBOX, &a, &[&name]).await?;
        match v {
            Value::Nil => Ok(None),
            v => parse_info(v).map(Some),
        }
    }

    async fn set_subscribed(&self, account: &str, name: &str, subscribed: bool) -> Result<()> {
        let a = account_id(account)?;
        let name = validate_mailbox_name(name)?;
        let sub = if subscribed { "1" } else { "0" };
        let v = self.acct_script(&SET_SUBSCRIBED, &a, &[&name, sub]).await?;
        match v_int(&v)? {
            1 => Ok(()),
            _ => Err(mailbox_not_found(&a, &name)),
        }
    }

    async fn append(&self, account: &str, mailbox: &str, msg: NewMessage) -> Result<AppendOutcome> {
        let a = account_id(account)?;
        let name = validate_mailbox_name(mailbox)?;
        check_blob_key(&msg.blob_key)?;
        check_flags(&msg.flags)?;
        if msg.dedupe_key.as_deref() == Some("") {
            return Err(Error::Invalid {
                what: "dedupe key",
                reason: "empty".into(),
            });
        }
        let flags = dedup_flags(&msg.flags);
        let data = serde_json::to_string(&MsgData {
            internal_date: msg.internal_date,
            header_prefix: msg.header_prefix,
            envelope: msg.envelope,
            bodystructure: msg.bodystructure,
        })
        .map_err(|e| Error::Corrupt(format!("encoding message: {e}")))?;
        let joined = flags.join(" ");
        let seen = if is_seen(&flags) { "1" } else { "0" };
        let size = msg.size.to_string();
        let dedupe = msg.dedupe_key.as_deref().unwrap_or("");

        // Count the reference first: a crash after this leaves the count too
        // high (GC delayed), never too low.
        self.blob_incr(&msg.blob_key).await?;
        let v = self
            .acct_script(
                &APPEND,
                &a,
                &[&name, dedupe, &joined, seen, &size, &msg.blob_key, &data],
            )
            .await?;
        let v = v_arr(v)?;
        let code = v.first().map(v_int).transpose()?;
        match code {
            Some(1) if v.len() == 3 => Ok(AppendOutcome::Appended {
                uid: v_int(&v[1])? as u32,
                modseq: v_int(&v[2])? as u64,
            }),
            Some(0) if v.len() == 2 => {
                self.blob_decr(&msg.blob_key).await?;
                Ok(AppendOutcome::Duplicate {
                    uid: v_int(&v[1])? as u32,
                })
            }
            Some(-1) => {
                self.blob_decr(&msg.blob_key).await?;
                Err(account_not_found(&a))
            }
            Some(-2) => {
                self.blob_decr(&msg.blob_key).await?;
                Err(mailbox_not_found(&a, &name))
            }
            Some(-4) => {
                self.blob_decr(&msg.blob_key).await?;
                Err(Error::Invalid {
                    what: "append",
                    reason: format!("mailbox {name:?} has used up its UIDs"),
                })
            }
            _ => Err(corrupt("append")),
        }
    }

    async fn fetch(
        &self,
        account: &str,
        mailbox: &str,
        lo: u32,
        hi: u32,
    ) -> Result<Vec<MessageMeta>> {
        let a = account_id(account)?;
        let name = validate_mailbox_name(mailbox)?;
        let (lo_s, hi_s) = (lo.to_string(), hi.to_string());
        let v = self.acct_script(&FETCH, &a, &[&name, &lo_s, &hi_s]).await?;
        let Some(rows) = v_opt_arr(v)? else {
            return Err(mailbox_not_found(&a, &name));
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let r = v_arr(row)?;
            if r.len() != 3 {
                return Err(corrupt("fetch row"));
            }
            let uid = v_int(&r[0])? as u32;
            let (modseq, size, blob_key, flags) = parse_state(&v_str(&r[1])?)?;
            let data: MsgData = serde_json::from_str(&v_str(&r[2])?)
                .map_err(|e| Error::Corrupt(format!("message data: {e}")))?;
            out.push(MessageMeta {
                uid,
                modseq,
                flags,
                internal_date: data.internal_date,
                size,
                blob_key,
                header_prefix: data.header_prefix,
                envelope: data.envelope,
                bodystructure: data.bodystructure,
            });
        }
        Ok(out)
    }

    async fn store_flags(
        &self,
        account: &str,
        mailbox: &str,
        uids: &[u32],
        op: FlagOp,
        flags: &[String],
        unchanged_since: Option<u64>,
    ) -> Result<Vec<FlagUpdate>> {
        let a = account_id(account)?;
        let name = validate_mailbox_name(mailbox)?;
        check_flags(flags)?;
        let mut uids = uids.to_vec();
        uids.sort_unstable();
        uids.dedup();
        let op = match op {
            FlagOp::Set => "set",
            FlagOp::Add => "add",
            FlagOp::Remove => "remove",
        };
        let us = unchanged_since.map(|u| u.to_string()).unwrap_or_default();
        let nf = flags.len().to_string();
        let uid_strs: Vec<String> = uids.iter().map(|u| u.to_string()).collect();
        let mut args: Vec<&str> = vec![&name, op, &us, &nf];
        args.extend(flags.iter().map(String::as_str));
        args.extend(uid_strs.iter().map(String::as_str));
        let v = self.acct_script(&STORE_FLAGS, &a, &args).await?;
        let Some(rows) = v_opt_arr(v)? else {
            return Err(mailbox_not_found(&a, &name));
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let r = v_arr(row)?;
            if r.len() != 4 {
                return Err(corrupt("store row"));
            }
            out.push(FlagUpdate {
                uid: v_int(&r[0])? as u32,
                modseq: v_int(&r[1])? as u64,
                applied: v_int(&r[2])? == 1,
                flags: v_str(&r[3])?.split_whitespace().map(String::from).collect(),
            });
        }
        Ok(out)
    }

    async fn expunge(&self, account: &str, mailbox: &str, uids: &[u32]) -> Result<Vec<u32>> {
        let a = account_id(account)?;
        let name = validate_mailbox_name(mailbox)?;
        let mut uids = uids.to_vec();
        uids.sort_unstable();
        uids.dedup();
        let uid_strs: Vec<String> = uids.iter().map(|u| u.to_string()).collect();
        let mut args: Vec<&str> = vec![&name];
        args.extend(uid_strs.iter().map(String::as_str));
        let v = self.acct_script(&EXPUNGE, &a, &args).await?;
        let Some(rows) = v_opt_arr(v)? else {
            return Err(mailbox_not_found(&a, &name));
        };
        let mut removed = Vec::with_capacity(rows.len());
        let mut blobs = Vec::with_capacity(rows.len());
        for row in rows {
            let r = v_arr(row)?;
            if r.len() != 2 {
                return Err(corrupt("expunge row"));
            }
            removed.push(v_int(&r[0])? as u32);
            blobs.push(v_str(&r[1])?);
        }
        for b in blobs {
            self.blob_decr(&b).await?;
        }
        Ok(removed)
    }

    async fn expunged_since(&self, account: &str, mailbox: &str, modseq: u64) -> Result<Vec<u32>> {
        let a = account_id(account)?;
        let name = validate_mailbox_name(mailbox)?;
        let m = modseq.to_string();
        let v = self.acct_script(&EXPUNGED_SINCE, &a, &[&name, &m]).await?;
        let Some(rows) = v_opt_arr(v)? else {
            return Err(mailbox_not_found(&a, &name));
        };
        let mut out = rows
            .iter()
            .map(|r| v_int(r).map(|u| u as u32))
            .collect::<Result<Vec<_>>>()?;
        out.sort_unstable();
        Ok(out)
    }

    async fn blob_refs(&self, blob_key: &str) -> Result<u64> {
        check_blob_key(blob_key)?;
        let v: Option<u64> = self
            .cmd(redis::cmd("HGET").arg(self::blob_key(blob_key)).arg("refs"))
            .await?;
        Ok(v.unwrap_or(0))
    }

    async fn gc_candidates(&self, before: i64) -> Result<Vec<String>> {
        let keys: Vec<String> = self
            .cmd(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(BLOBS_ZERO)
                    .arg("-inf")
                    .arg(before),
            )
            .await?;
        let mut out = Vec::new();
        for k in keys {
            let v: (Option<u64>, Option<i64>) = self
                .cmd(
                    redis::cmd("HMGET")
                        .arg(blob_key(&k))
                        .arg("refs")
                        .arg("zero"),
                )
                .await?;
            match v {
                (None, _) => out.push(k),
                (Some(0), z) if z.is_none_or(|z| z <= before) => out.push(k),
                _ => {}
            }
        }
        Ok(out)
    }

    async fn forget_blob(&self, blob_key: &str) -> Result<bool> {
        check_blob_key(blob_key)?;
        let v = self
            .script(&BLOB_FORGET, &[&self::blob_key(blob_key)], &[])
            .await?;
        if v_int(&v)? == 1 {
            let _: i64 = self
                .cmd(redis::cmd("ZREM").arg(BLOBS_ZERO).arg(blob_key))
                .await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn acquire_lease(
        &self,
        name: &str,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<bool> {
        check_tag_safe("lease name", name)?;
        let key = format!("lease:{{{name}}}");
        let ms = ttl.as_millis().max(1).to_string();
        let v = self.script(&LEASE_ACQUIRE, &[&key], &[owner, &ms]).await?;
        Ok(v_int(&v)? == 1)
    }

    async fn set_marker(&self, name: &str, ttl: std::time::Duration) -> Result<()> {
        crate::util::check_marker_name(name)?;
        let key = format!("marker:{{{name}}}");
        let ms = ttl.as_millis().max(1).to_string();
        let _: () = self
            .cmd(redis::cmd("SET").arg(&key).arg("1").arg("PX").arg(&ms))
            .await?;
        Ok(())
    }

    async fn has_marker(&self, name: &str) -> Result<bool> {
        crate::util::check_marker_name(name)?;
        let key = format!("marker:{{{name}}}");
        let n: i64 = self.cmd(redis::cmd("EXISTS").arg(&key)).await?;
        Ok(n == 1)
    }

    async fn get_record(&self, ns: &str, key: &str) -> Result<Option<Record>> {
        self.records_get(ns, key).await
    }

    async fn put_record(
        &self,
        ns: &str,
        key: &str,
        expected: u64,
        put: RecordPut,
    ) -> Result<Option<u64>> {
        self.records_put(ns, key, expected, put).await
    }

    async fn list_records(
        &self,
        ns: &str,
        scores: std::ops::RangeInclusive<i64>,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<(String, Record)>> {
        self.records_list(ns, scores, offset, limit).await
    }

    async fn count_records(
        &self,
        ns: &str,
        scores: std::ops::RangeInclusive<i64>,
    ) -> Result<(u64, Option<i64>)> {
        self.records_count(ns, scores).await
    }

    async fn release_lease(&self, name: &str, owner: &str) -> Result<()> {
        check_tag_safe("lease name", name)?;
        let key = format!("lease:{{{name}}}");
        self.script(&LEASE_RELEASE, &[&key], &[owner]).await?;
        Ok(())
    }
}

/// Refuse names that could escape a `{hash tag}`.
fn check_tag_safe(what: &'static str, s: &str) -> Result<()> {
    if s.is_empty()
        || s.chars()
            .any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control())
    {
        return Err(Error::Invalid {
            what,
            reason: format!("{s:?} is empty or has braces, spaces or control characters"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_redaction() {
        assert_eq!(acct_key("a@b"), "acct:{a@b}");
        assert_eq!(tag("a@b"), "{a@b}");
        assert_eq!(blob_key("abc"), "blob:{abc}");
        assert_eq!(redact("redis://:pw@host:6379"), "redis://***@host:6379");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }

    #[test]
    fn state_parsing() {
        let (m, s, b, f) = parse_state("7 120 sha \\Seen $X").unwrap();
        assert_eq!((m, s, b.as_str()), (7, 120, "sha"));
        assert_eq!(f, vec!["\\Seen", "$X"]);
        assert!(parse_state("7 x").is_err());
    }

    #[test]
    fn msg_data_without_header_prefix_decodes() {
        let d: MsgData =
            serde_json::from_str(r#"{"internal_date":5,"envelope":null,"bodystructure":"(b)"}"#)
                .unwrap();
        assert_eq!(d.header_prefix, "");
        assert_eq!(d.internal_date, 5);
    }
}
