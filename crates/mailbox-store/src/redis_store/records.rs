//! Versioned records in Redis ([`MetaStore::put_record`] and friends).
//!
//! | key | type | content |
//! |---|---|---|
//! | `rec:{<ns>}:<key>` | hash | `v` (version), `s` (score), `val` (the document); a `PX` expiry for records written with a TTL |
//! | `rec:{<ns>}` | sorted set | key → score, for the listed records (scores below 2^53: exact as doubles) |
//!
//! Both carry the hash tag `{<ns>}`: one namespace lives in one Cluster
//! slot, so a write (record + index) is one atomic script. A listed record
//! never expires (`util::check_record`), so the index holds no dead keys.
//!
//! [`MetaStore::put_record`]: crate::MetaStore::put_record

use std::ops::RangeInclusive;
use std::sync::LazyLock;

use redis::Script;

use super::{RedisStore, corrupt, v_arr, v_int, v_str};
use crate::{Record, RecordPut, Result};

/// KEYS[1] = record, KEYS[2] = index; ARGV: expected version, value,
/// score, listed (0/1), ttl ms (0: none), key. Returns the new version or
/// -1 when the version did not match.
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if cur ~= tonumber(ARGV[1]) then return -1 end
redis.call('ZREM', KEYS[2], ARGV[6])
redis.call('HSET', KEYS[1], 'v', cur + 1, 's', ARGV[3], 'val', ARGV[2])
if ARGV[4] == '1' then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[6]) end
if ARGV[5] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[5]) else redis.call('PERSIST', KEYS[1]) end
return cur + 1
"#,
    )
});

/// KEYS[1] = index; ARGV: offset, limit, record key prefix, min and max
/// score. Returns
/// [key, version, score, value, ...] in index order (the records share
/// the index's slot).
static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local keys = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[4], ARGV[5], 'LIMIT', tonumber(ARGV[1]), tonumber(ARGV[2]))
local out = {}
for _, k in ipairs(keys) do
  local r = redis.call('HMGET', ARGV[3] .. k, 'v', 's', 'val')
  if r[1] then
    out[#out + 1] = k; out[#out + 1] = r[1]; out[#out + 1] = r[2]; out[#out + 1] = r[3]
  end
end
return out
"#,
    )
});

fn record_key(ns: &str, key: &str) -> String {
    format!("rec:{{{ns}}}:{key}")
}

fn index_key(ns: &str) -> String {
    format!("rec:{{{ns}}}")
}

impl RedisStore {
    pub(super) async fn records_get(&self, ns: &str, key: &str) -> Result<Option<Record>> {
        check_names(ns, key)?;
        let v: Vec<Option<String>> = self
            .cmd(
                redis::cmd("HMGET")
                    .arg(record_key(ns, key))
                    .arg("v")
                    .arg("s")
                    .arg("val"),
            )
            .await?;
        match v.as_slice() {
            [Some(version), Some(score), Some(value)] => Ok(Some(Record {
                version: version.parse().map_err(|_| corrupt("record version"))?,
                score: score.parse().map_err(|_| corrupt("record score"))?,
                value: value.clone(),
            })),
            _ => Ok(None),
        }
    }

    pub(super) async fn records_put(
        &self,
        ns: &str,
        key: &str,
        expected: u64,
        put: RecordPut,
    ) -> Result<Option<u64>> {
        crate::util::check_record(ns, key, &put)?;
        let ttl = put.ttl.map_or(0, |d| d.as_millis().max(1));
        let v = self
            .script(
                &PUT,
                &[&record_key(ns, key), &index_key(ns)],
                &[
                    &expected.to_string(),
                    &put.value,
                    &put.score.to_string(),
                    if put.listed { "1" } else { "0" },
                    &ttl.to_string(),
                    key,
                ],
            )
            .await?;
        let v = v_int(&v)?;
        Ok((v > 0).then_some(v as u64))
    }

    pub(super) async fn records_list(
        &self,
        ns: &str,
        scores: RangeInclusive<i64>,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<(String, Record)>> {
        check_names(ns, "-")?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let prefix = format!("rec:{{{ns}}}:");
        let v = self
            .script(
                &LIST,
                &[&index_key(ns)],
                &[
                    &offset.to_string(),
                    &limit.to_string(),
                    &prefix,
                    &scores.start().to_string(),
                    &scores.end().to_string(),
                ],
            )
            .await?;
        let v = v_arr(v)?;
        v.chunks(4)
            .map(|c| match c {
                [k, version, score, value] => Ok((
                    v_str(k)?,
                    Record {
                        version: v_int(version)? as u64,
                        score: v_int(score)?,
                        value: v_str(value)?,
                    },
                )),
                _ => Err(corrupt("record listing")),
            })
            .collect()
    }

    pub(super) async fn records_count(
        &self,
        ns: &str,
        scores: RangeInclusive<i64>,
    ) -> Result<(u64, Option<i64>)> {
        check_names(ns, "-")?;
        let (min, max) = (scores.start().to_string(), scores.end().to_string());
        let n: u64 = self
            .cmd(redis::cmd("ZCOUNT").arg(index_key(ns)).arg(&min).arg(&max))
            .await?;
        let first: Vec<(String, f64)> = self
            .cmd(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(index_key(ns))
                    .arg(&min)
                    .arg(&max)
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(1),
            )
            .await?;
        Ok((n, first.first().map(|(_, s)| *s as i64)))
    }
}

fn check_names(ns: &str, key: &str) -> Result<()> {
    let probe = RecordPut {
        value: String::new(),
        score: 0,
        listed: false,
        ttl: None,
    };
    crate::util::check_record(ns, key, &probe)
}
