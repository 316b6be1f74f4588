//! Message bodies, content-addressed, on the `object_store` crate.
//!
//! A body's key is `msg/sha256/<first two hex digits>/<64 hex digits>` of
//! the SHA-256 of its bytes (docs/architecture.md invariant 4). Writes are therefore
//! idempotent (a retried PUT writes the same bytes under the same key) and
//! one message to 50 local recipients is stored once. Reads verify the hash.
//!
//! Reference counts live in the metadata store (updated atomically with the
//! append or expunge that adds or drops a reference); [`BlobStore::gc`]
//! deletes blobs that are older than a grace period and unreferenced. The
//! grace period covers the window between the PUT by smtp-ingress and the
//! first append by the router, and blobs of messages refused after the PUT
//! (`451` answers), which never got a reference at all.

#![warn(missing_docs)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use posthorn_runtime::group_commit::{GroupCommit, blocking};

/// Errors of the blob store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No blob with this key.
    #[error("blob {0} not found")]
    NotFound(String),
    /// The stored bytes do not hash to their key.
    #[error("blob {0} is corrupt (SHA-256 mismatch)")]
    Corrupt(String),
    /// A malformed key was given.
    #[error("invalid blob key {0:?}")]
    InvalidKey(String),
    /// The backend failed or could not be reached; retrying may help.
    #[error("object storage unavailable: {0}")]
    Unavailable(String),
    /// Bad configuration.
    #[error("object storage configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether retrying may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// The content-addressed key of `bytes`.
pub fn key_for(bytes: &[u8]) -> String {
    // ring's SHA-256 (assembly, AVX2 where available) rather than the
    // portable `sha2`: it is on every message's path, twice (PUT and read).
    let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes));
    format!("msg/sha256/{}/{}", &digest[..2], digest)
}

fn check_key(key: &str) -> Result<ObjPath> {
    let ok = key.len() == 11 + 3 + 64
        && key.starts_with("msg/sha256/")
        && key[11..13] == key[14..16]
        && key.as_bytes()[13] == b'/'
        && key[14..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(ObjPath::from(key))
    } else {
        Err(Error::InvalidKey(key.to_string()))
    }
}

/// Content-addressed blob storage over any `object_store` backend.
#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    /// Where it points, for error messages (`s3 http://host/bucket`, `local /dir`).
    describe: String,
    /// The directory of a local store: reads go straight to the file (one
    /// blocking call instead of object_store's open, stat and read steps).
    local_dir: Option<Arc<std::path::PathBuf>>,
    /// How PUTs of a local store are written and made durable.
    local_put: Option<Arc<LocalPut>>,
    /// Recently read blobs (see [`BlobStore::with_cache`]).
    cache: Option<Arc<std::sync::Mutex<Cache>>>,
}

/// PUTs of a local store: each body is written to its file (see
/// [`write_blob`]) without an fsync of its own; writers then share one
/// `syncfs(2)` of the store's filesystem (a group commit), which makes every
/// file, rename and new directory written before it durable. Under load one
/// flush covers many messages instead of two fsyncs (file and directory) for
/// each. The store's directory should be on a filesystem of its own (a
/// volume): `syncfs` also flushes whatever else is dirty there.
struct LocalPut {
    /// The store's directory, open (the handle `syncfs` needs).
    root: std::fs::File,
    sync: Arc<GroupCommit<(), std::result::Result<(), String>>>,
}

/// Bodies up to this size are written by the task that stores them.
const INLINE_WRITE_MAX: usize = 64 * 1024;

/// Write `bytes` to `dir/key`, creating the parent directory when missing.
/// No fsync: see [`LocalPut`].
///
/// A new blob is created in place (`O_EXCL`): one open, one write. If the
/// file exists with these bytes (the same body stored before, or by a
/// concurrent writer), it is left alone: replacing it would let a crash
/// before the flush swap a durable blob for an unwritten one on filesystems
/// that persist a rename before the data. A file with other bytes (partial,
/// left by a crash or a failed write, never acknowledged) is replaced
/// through a staging file `dir/key#<digits>` (the name `object_store` uses
/// for its own staging files, which listings skip) and a rename.
fn write_blob(dir: &std::path::Path, key: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dest = dir.join(key);
    loop {
        let open = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dest);
        match open {
            // On a failed write the partial file stays (removing it could
            // remove a concurrent writer's complete replacement); the next
            // PUT of this body replaces it, GC collects it otherwise.
            Ok(mut f) => return f.write_all(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => break,
            Err(e) => return Err(e),
        }
    }
    if std::fs::read(&dest).is_ok_and(|b| b == bytes) {
        return Ok(());
    }
    replace_staged(&dest, bytes)
}

/// Replace `dest` by a staging file holding `bytes`, renamed over it.
fn replace_staged(dest: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    loop {
        let mut staged = dest.as_os_str().to_owned();
        staged.push(format!(
            "#{}{:010}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let open = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staged);
        match open {
            Ok(mut f) => {
                let written = f.write_all(bytes).and_then(|()| {
                    drop(f);
                    std::fs::rename(&staged, dest)
                });
                if written.is_err() {
                    let _ = std::fs::remove_file(&staged);
                }
                return written;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
}

/// A byte-bounded cache of verified blobs, evicting the oldest insert first
/// (blobs are immutable, so there is nothing to invalidate).
struct Cache {
    max_bytes: usize,
    bytes: usize,
    map: std::collections::HashMap<String, Bytes>,
    order: std::collections::VecDeque<String>,
}

impl Cache {
    fn get(&self, key: &str) -> Option<Bytes> {
        self.map.get(key).cloned()
    }

    fn insert(&mut self, key: &str, b: &Bytes) {
        if b.len() > self.max_bytes / 8 || self.map.contains_key(key) {
            return;
        }
        while self.bytes + b.len() > self.max_bytes {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(v) = self.map.remove(&old) {
                self.bytes -= v.len();
            }
        }
        self.bytes += b.len();
        self.map.insert(key.to_string(), b.clone());
        self.order.push_back(key.to_string());
    }
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobStore({})", self.describe)
    }
}

impl BlobStore {
    /// Blobs in a local directory (created if missing): the embedded
    /// backend, made durable by a shared `syncfs` (see [`LocalPut`]).
    pub fn local(dir: &std::path::Path) -> Result<Self> {
        Self::local_with(dir, posthorn_config::BlobSync::Syncfs)
    }

    /// Blobs in a local directory (created if missing), made durable as
    /// `sync` says: one shared `syncfs` per group of writers (see
    /// [`LocalPut`]), or an fsync of each file and its directory.
    pub fn local_with(dir: &std::path::Path, sync: posthorn_config::BlobSync) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Config(format!("cannot create {}: {e}", dir.display())))?;
        // fsync file and directory before a PUT returns: a `250` must mean
        // the body is on disk (docs/architecture.md invariant 1), as S3 guarantees.
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?
            .with_fsync(true);
        let root = std::fs::File::open(dir)
            .map_err(|e| Error::Config(format!("cannot open {}: {e}", dir.display())))?;
        Ok(BlobStore {
            store: Arc::new(store),
            describe: format!("local {}", dir.display()),
            local_dir: Some(Arc::new(dir.to_path_buf())),
            local_put: (sync == posthorn_config::BlobSync::Syncfs).then(|| {
                Arc::new(LocalPut {
                    root,
                    sync: Arc::new(GroupCommit::new()),
                })
            }),
            cache: None,
        })
    }

    /// Blobs in memory (tests).
    pub fn memory() -> Self {
        BlobStore {
            store: Arc::new(object_store::memory::InMemory::new()),
            describe: "memory".into(),
            local_dir: None,
            local_put: None,
            cache: None,
        }
    }

    /// Blobs in an S3-compatible bucket.
    pub fn s3(cfg: &posthorn_config::S3Config) -> Result<Self> {
        let mut secret = cfg.secret_access_key.clone();
        if !cfg.secret_access_key_file.is_empty() {
            secret = std::fs::read_to_string(&cfg.secret_access_key_file)
                .map_err(|e| {
                    Error::Config(format!(
                        "s3.secret_access_key_file {}: {e}",
                        cfg.secret_access_key_file
                    ))
                })?
                .trim()
                .to_string();
        }
        let mut b = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_allow_http(cfg.allow_http)
            .with_virtual_hosted_style_request(!cfg.path_style)
            .with_unsigned_payload(!cfg.sign_payload)
            // Bounded retries: SMTP must answer `451` within seconds when S3 is down.
            .with_retry(object_store::RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(5),
                ..Default::default()
            });
        if !cfg.endpoint.is_empty() {
            b = b.with_endpoint(&cfg.endpoint);
        }
        if !cfg.access_key_id.is_empty() {
            b = b
                .with_access_key_id(&cfg.access_key_id)
                .with_secret_access_key(secret);
        }
        let store = b.build().map_err(|e| Error::Config(e.to_string()))?;
        Ok(BlobStore {
            store: Arc::new(store),
            describe: format!("s3 {} bucket {}", cfg.endpoint, cfg.bucket),
            local_dir: None,
            local_put: None,
            cache: None,
        })
    }

    fn map_err(&self, key: &str, e: object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { .. } => Error::NotFound(key.to_string()),
            other => Error::Unavailable(format!("{}: {other}", self.describe)),
        }
    }

    /// Whether the backend answers (for `/readyz`): a HEAD of a key that
    /// need not exist ("not found" is an answer too). Cheap on any store,
    /// unlike a LIST, which some S3 servers answer by walking the bucket.
    pub async fn ping(&self) -> Result<()> {
        match self.store.head(&ObjPath::from("ping")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.map_err("ping", e)),
        }
    }

    /// Store `bytes`; returns its key once the backend confirmed the write.
    pub async fn put(&self, bytes: Bytes) -> Result<String> {
        let key = key_for(&bytes);
        if let (Some(dir), Some(local)) = (&self.local_dir, &self.local_put) {
            // A typical body goes into the page cache right here: handing
            // the task to another thread (`block_in_place`) and back cost
            // more in wake-ups than the write (no fsync here; that is the
            // group's). Large bodies, which may wait for writeback, do not
            // hold up the worker.
            let written = if bytes.len() <= INLINE_WRITE_MAX {
                write_blob(dir, &key, &bytes)
            } else {
                let (dir, k) = (dir.clone(), key.clone());
                blocking(move || write_blob(&dir, &k, &bytes)).await
            };
            written.map_err(|e| Error::Unavailable(format!("{}: {key}: {e}", self.describe)))?;
            let l = local.clone();
            let synced = local
                .sync
                .submit((), move |reqs: Vec<()>| {
                    let r = rustix::fs::syncfs(&l.root).map_err(|e| format!("syncfs: {e}"));
                    vec![r; reqs.len()]
                })
                .await
                .unwrap_or_else(|| Err("shutting down".into()));
            synced.map_err(|e| Error::Unavailable(format!("{}: {e}", self.describe)))?;
            return Ok(key);
        }
        let path = ObjPath::from(key.as_str());
        self.store
            .put(&path, PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| self.map_err(&key, e))?;
        Ok(key)
    }

    /// This store with a per-process cache of up to `max_bytes` of recently
    /// read blobs (`0`: none). Blobs are content-addressed and immutable,
    /// so a cached blob is never stale. Blobs over 1/8 of the cache are not
    /// kept.
    pub fn with_cache(&self, max_bytes: usize) -> BlobStore {
        let mut b = self.clone();
        b.cache = (max_bytes > 0).then(|| {
            Arc::new(std::sync::Mutex::new(Cache {
                max_bytes,
                bytes: 0,
                map: std::collections::HashMap::new(),
                order: std::collections::VecDeque::new(),
            }))
        });
        b
    }

    /// Read a whole blob and verify its hash (from the cache, if enabled
    /// and it holds the blob).
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        if let Some(c) = &self.cache
            && let Some(b) = c.lock().unwrap_or_else(|p| p.into_inner()).get(key)
        {
            return Ok(b);
        }
        let b = self.get_uncached(key).await?;
        if let Some(c) = &self.cache {
            c.lock().unwrap_or_else(|p| p.into_inner()).insert(key, &b);
        }
        Ok(b)
    }

    async fn get_uncached(&self, key: &str) -> Result<Bytes> {
        let path = check_key(key)?;
        if let Some(dir) = &self.local_dir {
            // `check_key` allows only `msg/sha256/xx/<hex>`: no traversal.
            let file = dir.join(key);
            let read = tokio::task::spawn_blocking(move || std::fs::read(file))
                .await
                .map_err(|e| Error::Unavailable(format!("{}: {e}", self.describe)))?;
            let bytes = match read {
                Ok(b) => Bytes::from(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::NotFound(key.to_string()));
                }
                Err(e) => return Err(Error::Unavailable(format!("{}: {e}", self.describe))),
            };
            if key_for(&bytes) != key {
                return Err(Error::Corrupt(key.to_string()));
            }
            return Ok(bytes);
        }
        let got = self
            .store
            .get(&path)
            .await
            .map_err(|e| self.map_err(key, e))?;
        let bytes = got.bytes().await.map_err(|e| self.map_err(key, e))?;
        if key_for(&bytes) != key {
            return Err(Error::Corrupt(key.to_string()));
        }
        Ok(bytes)
    }

    /// Read a byte range of a blob (IMAP partial fetch); not hash-verified.
    pub async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes> {
        let path = check_key(key)?;
        self.store
            .get_range(&path, range)
            .await
            .map_err(|e| self.map_err(key, e))
    }

    /// Whether a blob exists.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        let path = check_key(key)?;
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.map_err(key, e)),
        }
    }

    /// Delete a blob (missing is not an error).
    pub async fn delete(&self, key: &str) -> Result<()> {
        let path = check_key(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.map_err(key, e)),
        }
    }

    /// Delete every blob last written more than `grace` ago for which
    /// `is_referenced(key)` answers `false`. Returns the keys deleted.
    /// `is_referenced` must consult the metadata store's reference count;
    /// an error there skips the blob (never deletes on doubt).
    pub async fn gc<F, Fut, E>(&self, grace: Duration, is_referenced: F) -> Result<Vec<String>>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = std::result::Result<bool, E>>,
    {
        let cutoff = SystemTime::now() - grace;
        let prefix = ObjPath::from("msg/sha256");
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.map_err("msg/", e))?;
        let mut deleted = Vec::new();
        for meta in metas {
            let modified: SystemTime = meta.last_modified.into();
            if modified > cutoff {
                continue;
            }
            let key = meta.location.to_string();
            if check_key(&key).is_err() {
                continue;
            }
            // An error (store unreachable) counts as referenced: never delete on doubt.
            if let Ok(false) = is_referenced(key.clone()).await {
                self.delete(&key).await?;
                tracing::debug!(blob = %key, "collected unreferenced blob");
                deleted.push(key);
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cache_serves_and_evicts() {
        let dir = tempfile::tempdir().unwrap();
        let plain = BlobStore::local(dir.path()).unwrap();
        let cached = plain.with_cache(8 * 100);
        let a = plain.put(Bytes::from(vec![b'a'; 100])).await.unwrap();
        let b = plain.put(Bytes::from(vec![b'b'; 100])).await.unwrap();
        assert_eq!(cached.get(&a).await.unwrap().len(), 100);
        // Served from the cache even once the file is gone.
        let file = dir.path().join(&a);
        std::fs::remove_file(&file).unwrap();
        assert_eq!(cached.get(&a).await.unwrap()[0], b'a');
        assert!(matches!(plain.get(&a).await, Err(Error::NotFound(_))));
        // Filling it past its size evicts the oldest entry.
        for i in 0..8u8 {
            let k = plain.put(Bytes::from(vec![i; 100])).await.unwrap();
            cached.get(&k).await.unwrap();
        }
        assert!(matches!(cached.get(&a).await, Err(Error::NotFound(_))));
        assert_eq!(cached.get(&b).await.unwrap()[0], b'b');
        // Too big for the cache: read every time, never kept.
        let big = plain.put(Bytes::from(vec![b'x'; 200])).await.unwrap();
        cached.get(&big).await.unwrap();
        std::fs::remove_file(dir.path().join(&big)).unwrap();
        assert!(cached.get(&big).await.is_err());
    }

    fn files_under(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p.to_string_lossy().into_owned());
            }
        }
        out
    }

    async fn concurrent_local_puts(sync: posthorn_config::BlobSync) {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local_with(dir.path(), sync).unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        // 40 writers, pairs of them with the same body (the same key written
        // twice at once), small bodies written inline and large ones on
        // the blocking pool.
        for i in 0..40usize {
            let store = store.clone();
            tasks.spawn(async move {
                let len = if (i / 2) % 2 == 0 {
                    2 * INLINE_WRITE_MAX
                } else {
                    5000
                };
                let body = Bytes::from(vec![b'a' + (i / 2) as u8; len]);
                let key = store.put(body.clone()).await.unwrap();
                (key, body)
            });
        }
        while let Some(r) = tasks.join_next().await {
            let (key, body) = r.unwrap();
            assert_eq!(key, key_for(&body));
            assert_eq!(store.get(&key).await.unwrap(), body);
        }
        let files = files_under(dir.path());
        assert_eq!(files.len(), 20, "{files:?}");
        assert!(files.iter().all(|f| !f.contains('#')), "{files:?}");

        // A staging file left by a crash is not a blob: GC neither lists
        // nor deletes it, and a PUT of that body still lands.
        let body = Bytes::from_static(b"crashed before the rename");
        let key = key_for(&body);
        let staged = dir.path().join(format!("{key}#12345"));
        std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
        std::fs::write(&staged, &body[..5]).unwrap();
        let deleted = store
            .gc(Duration::ZERO, |_| async { Ok::<_, ()>(true) })
            .await
            .unwrap();
        assert!(deleted.is_empty());
        assert_eq!(store.put(body.clone()).await.unwrap(), key);
        assert_eq!(store.get(&key).await.unwrap(), body);
        assert!(staged.exists());

        // A partial blob left by a crash (renamed, never flushed) is
        // replaced by the next PUT of that body; with `syncfs` a complete
        // one is kept as it is (same inode: not rewritten; with `fsync`
        // object_store rewrites it, flushed before the rename).
        let body = Bytes::from_static(b"renamed but never flushed");
        let key = key_for(&body);
        let path = dir.path().join(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &body[..7]).unwrap();
        assert!(matches!(store.get(&key).await, Err(Error::Corrupt(_))));
        store.put(body.clone()).await.unwrap();
        assert_eq!(store.get(&key).await.unwrap(), body);
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(&path).unwrap().ino();
        store.put(body.clone()).await.unwrap();
        if sync == posthorn_config::BlobSync::Syncfs {
            assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_puts_on_a_multi_threaded_runtime() {
        concurrent_local_puts(posthorn_config::BlobSync::Syncfs).await;
        concurrent_local_puts(posthorn_config::BlobSync::Fsync).await;
    }

    #[tokio::test]
    async fn local_puts_on_a_current_thread_runtime() {
        concurrent_local_puts(posthorn_config::BlobSync::Syncfs).await;
        concurrent_local_puts(posthorn_config::BlobSync::Fsync).await;
    }

    #[test]
    fn key_shape() {
        // SHA-256("abc") from FIPS 180-2, appendix B.1.
        let k = key_for(b"abc");
        assert_eq!(
            k,
            "msg/sha256/ba/ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(check_key(&k).is_ok());
        assert!(check_key("msg/sha256/../etc/passwd").is_err());
        assert!(
            check_key(
                "msg/sha256/aa/ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
            )
            .is_err()
        );
    }
}
