//! Segments, indexes, catalogs and the manifest on an object store (S3 and
//! S3-compatible stores: MinIO, Cloudflare R2, Ceph RGW …) through `object_store`.
//!
//! [`ObjectVfs`] implements [`Vfs`] by mapping the engine's paths under the data
//! directory to keys under the URL's prefix, so the engine writes the same files to
//! either place. The WAL stays on the local disk (an object cannot be appended to or
//! fsynced): a write is acknowledged by the local WAL, and a flush PUTs the segment
//! files, then replaces `MANIFEST` with a conditional PUT (`If-Match` on the ETag this
//! process last saw, `If-None-Match: *` for the first one). A second server writing
//! the same prefix therefore fails its next manifest replacement instead of silently
//! dropping the other's segments. Object PUTs are atomic, so no temp-and-rename.
//!
//! Reads are ranged GETs in aligned blocks, kept in a bounded in-memory LRU cache:
//! segment files never change once written, so a cached block never goes stale.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use parking_lot::Mutex;

use crate::lru::Lru;
use crate::vfs::{AppendFile, ReadAt, Vfs};

/// Where segment files live when not on the local disk.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectStoreConfig {
    /// `s3://bucket/prefix` (the prefix may be empty).
    pub url: String,
    /// Store options by `object_store`'s names (`endpoint`, `region`,
    /// `access_key_id`, `secret_access_key`, `allow_http`, …); the `AWS_*`
    /// environment variables fill in what is not given here.
    pub options: BTreeMap<String, String>,
    /// Bytes of object blocks cached in memory for reads.
    pub cache_bytes: usize,
}

impl ObjectStoreConfig {
    pub fn new(url: impl Into<String>) -> Self {
        ObjectStoreConfig {
            url: url.into(),
            options: BTreeMap::new(),
            cache_bytes: 256 << 20,
        }
    }
}

/// Size of one cached read block.
const BLOCK: u64 = 1 << 20;

/// The object-store side of a data directory.
pub struct ObjectVfs {
    store: Arc<dyn ObjectStore>,
    /// The local data directory the engine's paths start with.
    root: PathBuf,
    prefix: ObjPath,
    url: String,
    runtime: Option<tokio::runtime::Runtime>,
    cache: Arc<BlockCache>,
    /// Object sizes seen (objects never change size once written).
    sizes: Mutex<HashMap<ObjPath, u64>>,
}

impl fmt::Debug for ObjectVfs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectVfs").field("url", &self.url).finish()
    }
}

impl Drop for ObjectVfs {
    fn drop(&mut self) {
        // Never blocks, so dropping the engine inside an async context is fine.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn unsupported(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{what} is not possible on an object store (the WAL stays on local disk)"),
    )
}

fn to_io(e: object_store::Error) -> io::Error {
    use object_store::Error as E;
    let kind = match &e {
        E::NotFound { .. } => io::ErrorKind::NotFound,
        E::AlreadyExists { .. } | E::Precondition { .. } => io::ErrorKind::AlreadyExists,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => io::ErrorKind::PermissionDenied,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

impl ObjectVfs {
    /// Connects to the store named by `config.url` for the data directory `root`.
    /// Fails (naming the URL) when the URL is not an `s3://` URL or the bucket
    /// cannot be listed.
    pub fn connect(config: &ObjectStoreConfig, root: &Path) -> io::Result<Self> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        let url = config.url.trim();
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            bad(format!(
                "object_store.url {url:?}: only s3:// URLs are supported (AWS S3 and \
                 S3-compatible stores such as MinIO or R2 through `endpoint`)"
            ))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad(format!("object_store.url {url:?}: no bucket name")));
        }
        // Transient failures (5xx, SlowDown, dropped connections) are retried with
        // backoff: 5 times within a minute, so a dead endpoint fails a start in ~3 s.
        let retry = object_store::RetryConfig {
            max_retries: 5,
            retry_timeout: std::time::Duration::from_secs(60),
            ..Default::default()
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry);
        for (k, v) in &config.options {
            let key = k.parse().map_err(|_| {
                bad(format!(
                    "object_store.{k}: not an S3 option (e.g. endpoint, region, \
                     access_key_id, secret_access_key, allow_http)"
                ))
            })?;
            builder = builder.with_config(key, v);
        }
        let store = builder
            .build()
            .map_err(|e| bad(format!("object_store.url {url:?}: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sonde-objstore")
            .enable_all()
            .build()?;
        let vfs = ObjectVfs {
            store: Arc::new(store),
            root: root.to_path_buf(),
            prefix: ObjPath::from(prefix.trim_matches('/')),
            url: url.to_string(),
            runtime: Some(runtime),
            cache: Arc::new(BlockCache::new(config.cache_bytes)),
            sizes: Mutex::new(HashMap::new()),
        };
        // Fail at start, not at the first flush, when the bucket is unreachable.
        let (store, prefix) = (vfs.store.clone(), vfs.prefix.clone());
        vfs.block(async move { store.list_with_delimiter(Some(&prefix)).await })
            .map_err(|e| {
                io::Error::new(
                    to_io(e).kind(),
                    format!("object_store.url {url:?}: cannot list the bucket"),
                )
            })?;
        Ok(vfs)
    }

    /// Runs `fut` on the store's own runtime and waits for it, so the engine's
    /// synchronous code can call it from any thread, async worker threads included.
    fn block<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime
            .as_ref()
            .expect("runtime lives until drop")
            .spawn(async move {
                let _ = tx.send(fut.await);
            });
        rx.recv().expect("object store task finished")
    }

    /// The object key of a path under the data directory.
    fn key(&self, path: &Path) -> io::Result<ObjPath> {
        let rel = path.strip_prefix(&self.root).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is outside the data directory", path.display()),
            )
        })?;
        let mut parts: Vec<String> = self
            .prefix
            .parts()
            .map(|p| p.as_ref().to_string())
            .collect();
        for c in rel.components() {
            parts.push(c.as_os_str().to_string_lossy().into_owned());
        }
        Ok(ObjPath::from_iter(parts))
    }

    fn size(&self, key: &ObjPath) -> io::Result<u64> {
        if let Some(n) = self.sizes.lock().get(key) {
            return Ok(*n);
        }
        let (store, k) = (self.store.clone(), key.clone());
        let meta = self
            .block(async move { store.head(&k).await })
            .map_err(to_io)?;
        self.sizes.lock().insert(key.clone(), meta.size);
        Ok(meta.size)
    }

    fn forget(&self, key: &ObjPath) {
        self.sizes.lock().remove(key);
        self.cache.remove_object(key);
    }

    fn put(&self, key: ObjPath, data: &[u8], mode: PutMode) -> io::Result<Option<String>> {
        self.forget(&key);
        let store = self.store.clone();
        let payload = PutPayload::from(Bytes::copy_from_slice(data));
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        let r = self
            .block(async move { store.put_opts(&key, payload, opts).await })
            .map_err(to_io)?;
        Ok(r.e_tag)
    }
}

impl Vfs for ObjectVfs {
    fn create_dir_all(&self, _path: &Path) -> io::Result<()> {
        Ok(()) // keys have no directories
    }
    fn create_append(&self, _path: &Path) -> io::Result<Box<dyn AppendFile>> {
        Err(unsupported("appending to a file"))
    }
    fn write_synced(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.put(self.key(path)?, data, PutMode::Overwrite)
            .map(|_| ())
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.read_versioned(path).map(|(d, _)| d)
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadAt>> {
        let key = self.key(path)?;
        let len = self.size(&key)?;
        let runtime = self.runtime.as_ref().expect("runtime").handle().clone();
        Ok(Arc::new(ObjectFile {
            store: self.store.clone(),
            key,
            len,
            cache: self.cache.clone(),
            runtime,
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (f, t) = (self.key(from)?, self.key(to)?);
        self.forget(&f);
        self.forget(&t);
        let store = self.store.clone();
        self.block(async move {
            store.copy(&f, &t).await?;
            store.delete(&f).await
        })
        .map_err(to_io)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let key = self.key(path)?;
        self.forget(&key);
        let store = self.store.clone();
        self.block(async move { store.delete(&key).await })
            .map_err(to_io)
    }
    fn truncate(&self, _path: &Path, _len: u64) -> io::Result<()> {
        Err(unsupported("truncating a file"))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let key = self.key(dir)?;
        let store = self.store.clone();
        let listing = self
            .block(async move { store.list_with_delimiter(Some(&key)).await })
            .map_err(to_io)?;
        let mut out: Vec<String> = listing
            .common_prefixes
            .iter()
            .chain(listing.objects.iter().map(|o| &o.location))
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(()) // a completed PUT is durable
    }
    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.write_synced(path, data)
    }
    fn read_versioned(&self, path: &Path) -> io::Result<(Vec<u8>, Option<String>)> {
        let key = self.key(path)?;
        let store = self.store.clone();
        self.block(async move {
            let r = store.get(&key).await?;
            let tag = r.meta.e_tag.clone();
            Ok((r.bytes().await?.to_vec(), tag))
        })
        .map_err(to_io)
    }
    fn age(&self, path: &Path) -> io::Result<Option<std::time::Duration>> {
        let key = self.key(path)?;
        let store = self.store.clone();
        let meta = self
            .block(async move { store.head(&key).await })
            .map_err(to_io)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        let ms = (now - meta.last_modified.timestamp_millis()).max(0);
        Ok(Some(std::time::Duration::from_millis(ms as u64)))
    }
    fn version(&self, path: &Path) -> io::Result<Option<String>> {
        let key = self.key(path)?;
        let store = self.store.clone();
        match self.block(async move { store.head(&key).await }) {
            Ok(meta) => Ok(meta.e_tag),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(to_io(e)),
        }
    }
    fn replace_if(
        &self,
        path: &Path,
        data: &[u8],
        expected: Option<&str>,
    ) -> io::Result<Option<String>> {
        let mode = match expected {
            None => PutMode::Create,
            Some(tag) => PutMode::Update(UpdateVersion {
                e_tag: Some(tag.to_string()),
                version: None,
            }),
        };
        self.put(self.key(path)?, data, mode)
    }
}

/// One object opened for positional reads through the block cache.
struct ObjectFile {
    store: Arc<dyn ObjectStore>,
    key: ObjPath,
    len: u64,
    cache: Arc<BlockCache>,
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for ObjectFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectFile({}, {} bytes)", self.key, self.len)
    }
}

impl ReadAt for ObjectFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        if end > self.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read past the end of {} ({end} > {})", self.key, self.len),
            ));
        }
        if buf.is_empty() {
            return Ok(());
        }
        let (first, last) = (offset / BLOCK, (end - 1) / BLOCK);
        let mut blocks: Vec<Option<Bytes>> = (first..=last)
            .map(|b| self.cache.get(&self.key, b))
            .collect();
        let missing: Vec<u64> = (first..=last)
            .filter(|b| blocks[(b - first) as usize].is_none())
            .collect();
        if !missing.is_empty() {
            let ranges: Vec<std::ops::Range<u64>> = missing
                .iter()
                .map(|b| b * BLOCK..((b + 1) * BLOCK).min(self.len))
                .collect();
            let (store, key) = (self.store.clone(), self.key.clone());
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            self.runtime.spawn(async move {
                let _ = tx.send(store.get_ranges(&key, &ranges).await);
            });
            let got = rx
                .recv()
                .map_err(|_| io::Error::other("object store runtime stopped"))?
                .map_err(to_io)?;
            for (b, data) in missing.into_iter().zip(got) {
                self.cache.insert(&self.key, b, data.clone());
                blocks[(b - first) as usize] = Some(data);
            }
        }
        let mut written = 0;
        for (i, block) in blocks.into_iter().enumerate() {
            let block = block.expect("every block fetched");
            let block_start = (first + i as u64) * BLOCK;
            let from = (offset + written as u64 - block_start) as usize;
            let n = (block.len() - from).min(buf.len() - written);
            buf[written..written + n].copy_from_slice(&block[from..from + n]);
            written += n;
        }
        Ok(())
    }
    fn len(&self) -> u64 {
        self.len
    }
}

/// A least-recently-used cache of object blocks, bounded in bytes.
struct BlockCache {
    blocks: Mutex<Lru<(ObjPath, u64), Bytes>>,
}

impl BlockCache {
    fn new(capacity: usize) -> Self {
        BlockCache {
            blocks: Mutex::new(Lru::new(capacity)),
        }
    }

    fn get(&self, key: &ObjPath, block: u64) -> Option<Bytes> {
        self.blocks.lock().get(&(key.clone(), block))
    }

    fn insert(&self, key: &ObjPath, block: u64, data: Bytes) {
        let weight = data.len();
        self.blocks
            .lock()
            .insert((key.clone(), block), data, weight);
    }

    fn remove_object(&self, key: &ObjPath) {
        self.blocks.lock().retain(|(k, _)| k != key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_cache_evicts_least_recently_used() {
        let c = BlockCache::new(10);
        let k = ObjPath::from("a");
        c.insert(&k, 0, Bytes::from_static(b"12345"));
        c.insert(&k, 1, Bytes::from_static(b"12345"));
        assert!(c.get(&k, 0).is_some()); // 0 is now newer than 1
        c.insert(&k, 2, Bytes::from_static(b"12345"));
        assert!(c.get(&k, 1).is_none());
        assert!(c.get(&k, 0).is_some() && c.get(&k, 2).is_some());
        c.remove_object(&k);
        assert!(c.get(&k, 0).is_none());
        assert_eq!(c.blocks.lock().weight(), 0);
    }

    #[test]
    fn only_s3_urls() {
        let e =
            ObjectVfs::connect(&ObjectStoreConfig::new("gs://b/p"), Path::new("/d")).unwrap_err();
        assert!(e.to_string().contains("only s3://"), "{e}");
    }
}
