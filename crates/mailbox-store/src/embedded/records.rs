//! Versioned records of the embedded store ([`MetaStore::put_record`] and
//! friends): the table `records` holds (namespace, key) → (version, score,
//! expiry in Unix ms or 0, listed, value); `record_index` holds
//! (namespace, score, key) for the listed ones, so a listing is one range
//! scan in (score, key) order.
//!
//! [`MetaStore::put_record`]: crate::MetaStore::put_record

use std::ops::RangeInclusive;

use redb::{ReadableTable, TableDefinition};

use std::path::Path;

use redb::Database;

use super::{EmbeddedStore, MARKERS, dberr, now_ms, storage};
use crate::{Error, Record, RecordPut, Result};

/// A row of `records`: (version, score, expiry ms or 0, listed, value).
type Row = (u64, i64, u64, bool, &'static str);
/// (namespace, key) → [`Row`].
const RECORDS: TableDefinition<(&str, &str), Row> = TableDefinition::new("records");
/// (namespace, score, key) of every listed record.
const RECORD_INDEX: TableDefinition<(&str, i64, &str), ()> = TableDefinition::new("record_index");

fn live(expiry: u64, now: u64) -> bool {
    expiry == 0 || expiry > now
}

impl EmbeddedStore {
    pub(super) fn records_get(&self, ns: &str, key: &str) -> Result<Option<Record>> {
        let now = now_ms();
        self.lookup(|txn| {
            let t = match txn.open_table(RECORDS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(dberr(e)),
            };
            let Some(row) = t.get((ns, key)).map_err(dberr)? else {
                return Ok(None);
            };
            let (version, score, expiry, _, value) = row.value();
            Ok(live(expiry, now).then(|| Record {
                version,
                value: value.to_string(),
                score,
            }))
        })
    }

    pub(super) async fn records_put(
        &self,
        ns: &str,
        key: &str,
        expected: u64,
        put: RecordPut,
    ) -> Result<Option<u64>> {
        crate::util::check_record(ns, key, &put)?;
        let w = SmallWrite::Record {
            ns: ns.to_string(),
            key: key.to_string(),
            expected,
            put,
        };
        self.small_write(w).await
    }

    /// A marker write, group-committed like record writes.
    pub(super) async fn marker_put(&self, name: &str, expiry: u64) -> Result<()> {
        let w = SmallWrite::Marker {
            name: name.to_string(),
            expiry,
        };
        self.small_write(w).await.map(|_| ())
    }

    /// Group commit of small writes (records, markers): those arriving
    /// while a commit runs share the next transaction and its fsync (the
    /// queue index and delivery's markers are written per recipient).
    async fn small_write(&self, w: SmallWrite) -> Result<Option<u64>> {
        let (db, path) = (self.db.clone(), self.path.clone());
        self.small
            .submit(w, move |work| small_batch(&db, &path, work))
            .await
            .unwrap_or_else(|| {
                Err(Error::Unavailable(
                    "embedded store committer stopped".into(),
                ))
            })
    }

    pub(super) async fn records_list(
        &self,
        ns: &str,
        scores: RangeInclusive<i64>,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<(String, Record)>> {
        let ns = ns.to_string();
        let now = now_ms();
        self.scan(move |txn| {
            let (t, index) = match (txn.open_table(RECORDS), txn.open_table(RECORD_INDEX)) {
                (Ok(t), Ok(i)) => (t, i),
                (Err(redb::TableError::TableDoesNotExist(_)), _)
                | (_, Err(redb::TableError::TableDoesNotExist(_))) => return Ok(Vec::new()),
                (Err(e), _) | (_, Err(e)) => return Err(dberr(e)),
            };
            let mut out = Vec::new();
            let range = index
                .range((ns.as_str(), *scores.start(), "")..)
                .map_err(dberr)?;
            for row in range.skip(offset as usize) {
                if out.len() as u64 >= limit {
                    break;
                }
                let (k, _) = row.map_err(dberr)?;
                let (n, score, key) = k.value();
                if n != ns || score > *scores.end() {
                    break;
                }
                if let Some(r) = t.get((n, key)).map_err(dberr)? {
                    let (version, score, expiry, _, value) = r.value();
                    if live(expiry, now) {
                        let record = Record {
                            version,
                            value: value.to_string(),
                            score,
                        };
                        out.push((key.to_string(), record));
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn records_count(
        &self,
        ns: &str,
        scores: RangeInclusive<i64>,
    ) -> Result<(u64, Option<i64>)> {
        let ns = ns.to_string();
        self.scan(move |txn| {
            let index = match txn.open_table(RECORD_INDEX) {
                Ok(i) => i,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok((0, None)),
                Err(e) => return Err(dberr(e)),
            };
            let (mut n, mut first) = (0, None);
            let range = index
                .range((ns.as_str(), *scores.start(), "")..)
                .map_err(dberr)?;
            for row in range {
                let (k, _) = row.map_err(dberr)?;
                let (kns, score, _) = k.value();
                if kns != ns || score > *scores.end() {
                    break;
                }
                first.get_or_insert(score);
                n += 1;
            }
            Ok((n, first))
        })
        .await
    }
}

/// One small write of a group commit.
pub(super) enum SmallWrite {
    /// [`crate::MetaStore::put_record`].
    Record {
        ns: String,
        key: String,
        expected: u64,
        put: RecordPut,
    },
    /// [`crate::MetaStore::set_marker`], with its expiry in Unix ms.
    Marker { name: String, expiry: u64 },
}

/// The result of a small write: the new version of a record (`None`: the
/// version did not match), nothing for a marker.
pub(super) type SmallOut = Result<Option<u64>>;

/// Run `work` in one write transaction, in order (a later write sees the
/// earlier ones), and commit once.
fn small_batch(db: &Database, path: &Path, work: Vec<SmallWrite>) -> Vec<SmallOut> {
    let n = work.len();
    let now = now_ms();
    // Expired rows are dropped now and then (every 1024th batch).
    static BATCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prune = BATCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1024 == 1023;
    let res = (|| {
        let txn = db.begin_write().map_err(storage(path))?;
        let mut out = Vec::with_capacity(n);
        {
            let mut t = txn.open_table(RECORDS).map_err(dberr)?;
            let mut index = txn.open_table(RECORD_INDEX).map_err(dberr)?;
            let mut markers = txn.open_table(MARKERS).map_err(dberr)?;
            if prune {
                prune_records(&mut t, &mut index, now)?;
                markers.retain(|_, e| e > now).map_err(dberr)?;
            }
            for w in work {
                out.push(match w {
                    SmallWrite::Record {
                        ns,
                        key,
                        expected,
                        put,
                    } => put_in(&mut t, &mut index, &ns, &key, expected, put, now)?,
                    SmallWrite::Marker { name, expiry } => {
                        markers.insert(name.as_str(), expiry).map_err(dberr)?;
                        None
                    }
                });
            }
        }
        txn.commit().map_err(storage(path))?;
        Ok(out)
    })();
    match res {
        Ok(out) => out.into_iter().map(Ok).collect(),
        Err(e) => {
            let e: Error = e;
            let msg = e.to_string();
            (0..n)
                .map(|_| Err(Error::Unavailable(msg.clone())))
                .collect()
        }
    }
}

type Records<'t> = redb::Table<'t, (&'static str, &'static str), Row>;
type Index<'t> = redb::Table<'t, (&'static str, i64, &'static str), ()>;

fn prune_records(t: &mut Records<'_>, index: &mut Index<'_>, now: u64) -> Result<()> {
    let mut dead = Vec::new();
    for row in t.iter().map_err(dberr)? {
        let (k, v) = row.map_err(dberr)?;
        let (n, k) = k.value();
        let (_, score, expiry, listed, _) = v.value();
        if !live(expiry, now) {
            dead.push((n.to_string(), k.to_string(), score, listed));
        }
    }
    for (n, k, score, listed) in dead {
        t.remove((n.as_str(), k.as_str())).map_err(dberr)?;
        if listed {
            index
                .remove((n.as_str(), score, k.as_str()))
                .map_err(dberr)?;
        }
    }
    Ok(())
}

/// One compare-and-set inside a batch.
fn put_in(
    t: &mut Records<'_>,
    index: &mut Index<'_>,
    ns: &str,
    key: &str,
    expected: u64,
    put: RecordPut,
    now: u64,
) -> Result<Option<u64>> {
    let old = t.get((ns, key)).map_err(dberr)?.map(|r| {
        let (version, score, expiry, listed, _) = r.value();
        (version, score, expiry, listed)
    });
    let current = match old {
        Some((v, _, expiry, _)) if live(expiry, now) => v,
        _ => 0,
    };
    if current != expected {
        return Ok(None);
    }
    if let Some((_, score, _, true)) = old {
        index.remove((ns, score, key)).map_err(dberr)?;
    }
    let version = old.map_or(0, |o| o.0) + 1;
    let expiry = put.ttl.map_or(0, |d| now + (d.as_millis() as u64).max(1));
    t.insert(
        (ns, key),
        (version, put.score, expiry, put.listed, put.value.as_str()),
    )
    .map_err(dberr)?;
    if put.listed {
        index.insert((ns, put.score, key), ()).map_err(dberr)?;
    }
    Ok(Some(version))
}
