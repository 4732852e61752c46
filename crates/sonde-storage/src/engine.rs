//! [`Storage`]: open and recover, write (WAL thread with group commit), flush.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use sonde_types::{
    Clock, DAY_MS, FieldDef, FieldType, Limits, MetricKind, SystemClock, TableBatch, TimestampMs,
    WriteBatch, day_of,
};

use crate::catalog;
use crate::codec::{self, RecordKeys};
use crate::dedup::DedupSet;
use crate::head::Head;
use crate::maintain::{CompactionConfig, RetentionConfig, Trash};
use crate::manifest::Manifest;
use crate::segment::{self, SeriesRows, TableChunk, WriteOptions};
use crate::vfs::{OsVfs, Vfs};
use crate::volume::{VolumeConfig, VolumeCounters};
use crate::wal::{self, WalWriter};
use crate::{Error, Result};

/// When a write is acknowledged relative to fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Acknowledge only after fsync (group commit across concurrent writers). Nothing
    /// acknowledged is lost, even on power loss. The default.
    Always,
    /// Acknowledge once written to the OS; fsync every interval. A process crash loses
    /// nothing; a power loss may lose up to the interval's worth of writes.
    Interval(Duration),
}

/// Storage settings. `Config::new(dir)` gives production defaults.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub fsync: FsyncPolicy,
    /// Roll to a new WAL file past this size.
    pub wal_file_bytes: u64,
    /// Flush the head into segments once its samples take this many bytes (the series
    /// registry, which stays in memory across flushes, is not counted).
    pub max_head_bytes: usize,
    /// … or once its oldest write is this old.
    pub max_head_age: Duration,
    /// How long a write may wait for a flush to make room before it fails with
    /// [`Error::HeadFull`].
    pub head_full_timeout: Duration,
    /// Run the background flusher (size and age bounds). Tests that want to control
    /// flushes turn it off and call [`Storage::flush`].
    pub background_flush: bool,
    pub limits: Limits,
    pub segment: WriteOptions,
    /// How long a deduplication key (idempotency key, LLM call id) is remembered.
    pub dedup_window: Duration,
    pub compaction: CompactionConfig,
    pub retention: RetentionConfig,
    pub volume: VolumeConfig,
    pub rollups: crate::rollup::RollupConfig,
    /// Keep segments, indexes, catalogs and the manifest on an object store instead
    /// of the data directory (the WAL stays local).
    pub object_store: Option<crate::objstore::ObjectStoreConfig>,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            fsync: FsyncPolicy::Always,
            wal_file_bytes: 64 << 20,
            max_head_bytes: 256 << 20,
            max_head_age: Duration::from_secs(15 * 60),
            head_full_timeout: Duration::from_secs(30),
            background_flush: true,
            limits: Limits::default(),
            segment: WriteOptions::default(),
            dedup_window: Duration::from_secs(3600),
            compaction: CompactionConfig::default(),
            retention: RetentionConfig::default(),
            volume: VolumeConfig::default(),
            rollups: Default::default(),
            object_store: None,
        }
    }
}

/// What an acknowledged write got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteReceipt {
    /// The WAL sequence number of the write.
    pub seq: u64,
    pub rows: usize,
    pub samples: usize,
}

/// What a flush did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlushStats {
    pub segments: usize,
    pub rows: u64,
    pub bytes: u64,
    pub wal_files_removed: usize,
}

/// A table [`Storage::write_tables`] did not store, and why.
#[derive(Debug)]
pub struct TableRejection {
    pub table: String,
    pub samples: usize,
    pub error: Error,
}

/// What [`Storage::write_tables`] did.
#[derive(Debug, Default)]
pub struct TablesOutcome {
    /// The write of the accepted tables; `None` when nothing was written.
    pub receipt: Option<WriteReceipt>,
    /// A deduplication key was already claimed: nothing was stored.
    pub duplicate: bool,
    pub rejected: Vec<TableRejection>,
}

/// The logical schema of a table: its kind, fields and every tag key seen.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    pub kind: MetricKind,
    pub fields: Vec<FieldDef>,
    pub tags: BTreeSet<String>,
}

/// A head that no longer takes writes, waiting to be persisted.
#[derive(Debug)]
pub(crate) struct Frozen {
    pub head: Head,
    /// Every WAL record ≤ this is in `head` or already persisted.
    pub watermark: u64,
}

/// What readers snapshot: swapped atomically under one lock.
#[derive(Debug)]
pub(crate) struct ReadState {
    pub active: Arc<RwLock<Head>>,
    pub frozen: Vec<Arc<Frozen>>,
    pub manifest: Arc<Manifest>,
}

type Reply<T> = SyncSender<Result<T>>;

enum WalMsg {
    Append {
        tenant: String,
        batch: WriteBatch,
        payload: Vec<u8>,
        keys: RecordKeys,
        /// `None`: a key was already claimed, nothing was written.
        reply: Reply<Option<u64>>,
    },
    /// Cut the WAL and freeze the active head (if it holds anything).
    Rotate(Reply<Option<Arc<Frozen>>>),
    Shutdown(Reply<()>),
}

#[derive(Debug)]
pub(crate) struct Inner {
    /// Where segments, indexes, catalogs, keys and the manifest live: the local disk
    /// or an object store.
    pub vfs: Arc<dyn Vfs>,
    /// Where the WAL lives: always a file system.
    pub wal_vfs: Arc<dyn Vfs>,
    /// Version of the manifest last loaded or stored (an object store's ETag), for
    /// the conditional replacement. Held while the manifest is stored.
    pub manifest_version: Mutex<Option<String>>,
    /// The data-directory lock (released when the store is dropped).
    data_lock: Mutex<Option<std::fs::File>>,
    pub dir: PathBuf,
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    pub state: RwLock<ReadState>,
    pub schemas: RwLock<HashMap<String, BTreeMap<String, TableSchema>>>,
    pub index_cache: Mutex<crate::scan::IndexCache>,
    pub footer_cache: Mutex<crate::scan::FooterCache>,
    /// Decoded day catalogs, dropped when a flush adds to them.
    pub catalog_cache: Mutex<crate::catalog::CatalogCache>,
    pub dedup: Mutex<DedupSet>,
    /// Held while a manifest is replaced (flush, or a maintenance swap).
    pub flush_lock: Mutex<()>,
    /// Serialises maintenance rewrites (compaction, retention, deletes).
    pub maint_lock: Mutex<()>,
    /// Next segment id (the manifest stores it on every replacement).
    next_id: std::sync::atomic::AtomicU64,
    pub trash: Mutex<Trash>,
    pub volume: VolumeCounters,
    /// What compaction, retention and deletes did since the store opened.
    pub maint_totals: Mutex<crate::maintain::MaintenanceStats>,
    /// When the current day's rollups were last built, per (tenant, day).
    pub rollup_built: Mutex<HashMap<(String, i64), i64>>,
    pub wake_maint: Condvar,
    /// Set when the WAL failed: the engine refuses writes from then on.
    failed: Mutex<Option<String>>,
    pub stop: Mutex<bool>,
    wake: Condvar,
}

/// The storage engine. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Storage {
    pub(crate) inner: Arc<Inner>,
    wal_tx: Mutex<Option<Sender<WalMsg>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for WalMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WalMsg::Append { .. } => "Append",
            WalMsg::Rotate(_) => "Rotate",
            WalMsg::Shutdown(_) => "Shutdown",
        })
    }
}

impl Storage {
    /// Opens (or creates) a store on the local disk with the system clock.
    pub fn open(config: Config) -> Result<Self> {
        let lock = lock_data_dir(&config.data_dir)?;
        let wal_vfs: Arc<dyn Vfs> = Arc::new(OsVfs);
        let store: Arc<dyn Vfs> = match &config.object_store {
            Some(oc) => {
                tracing::info!(url = %oc.url, "segments and manifest on the object store; WAL in the data directory");
                Arc::new(
                    crate::objstore::ObjectVfs::connect(oc, &config.data_dir).map_err(|e| {
                        Error::io("connecting to the object store", &config.data_dir, e)
                    })?,
                )
            }
            None => wal_vfs.clone(),
        };
        let storage = Self::open_parts(config, wal_vfs, store, Arc::new(SystemClock))?;
        *storage.inner.data_lock.lock() = Some(lock);
        Ok(storage)
    }

    /// Opens with an explicit file system and clock; recovers from the WAL.
    pub fn open_with(config: Config, vfs: Arc<dyn Vfs>, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::open_parts(config, vfs.clone(), vfs, clock)
    }

    /// Opens with the WAL on `wal_vfs` and everything else on `vfs`.
    pub fn open_parts(
        config: Config,
        wal_vfs: Arc<dyn Vfs>,
        vfs: Arc<dyn Vfs>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let dir = config.data_dir.clone();
        let wal_dir = dir.join("wal");
        for d in [&dir, &wal_dir] {
            wal_vfs
                .create_dir_all(d)
                .map_err(|e| Error::io("creating directory", d, e))?;
        }
        for d in [&dir.join("segments"), &dir.join("catalog")] {
            vfs.create_dir_all(d)
                .map_err(|e| Error::io("creating directory", d, e))?;
        }
        wal_vfs
            .sync_dir(&dir)
            .map_err(|e| Error::io("syncing data directory", &dir, e))?;
        let (manifest, manifest_version) = Manifest::load(vfs.as_ref(), &dir)?;
        remove_orphans(vfs.as_ref(), &dir, &manifest)?;

        let mut schemas: HashMap<String, BTreeMap<String, TableSchema>> = HashMap::new();
        for seg in &manifest.segments {
            for t in &seg.tables {
                merge_schema(
                    schemas.entry(seg.tenant.clone()).or_default(),
                    &t.name,
                    t.kind(),
                    &t.field_defs(),
                    t.tags.iter().cloned(),
                );
            }
        }

        let mut head = Head::default();
        let mut dedup = DedupSet::load(vfs.as_ref(), &dir)?;
        let now = clock.now_ms();
        let stats = wal::replay(
            wal_vfs.as_ref(),
            &wal_dir,
            manifest.wal_watermark,
            |seq, payload| {
                let (tenant, batch, keys) = codec::decode_batch(payload)
                    .map_err(|e| Error::format(&wal_dir, format!("WAL record {seq}: {e}")))?;
                for k in &keys.keys {
                    dedup.insert(&tenant, k, keys.written_ms);
                }
                register_batch(schemas.entry(tenant.clone()).or_default(), &batch);
                head.apply(&tenant, &batch, seq, now);
                Ok(())
            },
        )?;
        if stats.records > 0 || stats.truncated_bytes > 0 {
            tracing::info!(
                records = stats.records,
                truncated_bytes = stats.truncated_bytes,
                last_seq = stats.last_seq,
                "replayed WAL"
            );
        }
        let next_seq = stats.last_seq.max(manifest.wal_watermark) + 1;
        let writer =
            WalWriter::create(wal_vfs.as_ref(), &wal_dir, next_seq, config.wal_file_bytes)?;
        let next_segment_id = manifest.next_segment_id.max(1);

        let inner = Arc::new(Inner {
            vfs,
            wal_vfs,
            manifest_version: Mutex::new(manifest_version),
            data_lock: Mutex::new(None),
            dir,
            clock,
            state: RwLock::new(ReadState {
                active: Arc::new(RwLock::new(head)),
                frozen: Vec::new(),
                manifest: Arc::new(manifest),
            }),
            schemas: RwLock::new(schemas),
            index_cache: Mutex::new(Default::default()),
            footer_cache: Mutex::new(Default::default()),
            catalog_cache: Mutex::new(Default::default()),
            dedup: Mutex::new(dedup),
            flush_lock: Mutex::new(()),
            maint_lock: Mutex::new(()),
            next_id: std::sync::atomic::AtomicU64::new(next_segment_id),
            trash: Mutex::new(Trash::default()),
            volume: VolumeCounters::default(),
            maint_totals: Mutex::new(Default::default()),
            rollup_built: Mutex::new(HashMap::new()),
            wake_maint: Condvar::new(),
            failed: Mutex::new(None),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            config,
        });
        let (tx, rx) = mpsc::channel();
        let mut threads = Vec::new();
        let wal_inner = inner.clone();
        threads.push(
            std::thread::Builder::new()
                .name("sonde-wal".into())
                .spawn(move || wal_thread(wal_inner, writer, rx))
                .map_err(|e| Error::io("spawning WAL thread", Path::new("-"), e))?,
        );
        let storage = Storage {
            inner,
            wal_tx: Mutex::new(Some(tx)),
            threads: Mutex::new(Vec::new()),
        };
        if storage.inner.config.background_flush {
            let tx = storage.wal_tx.lock().clone().expect("just created");
            let inner = storage.inner.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("sonde-flush".into())
                    .spawn(move || flush_thread(inner, tx))
                    .map_err(|e| Error::io("spawning flush thread", Path::new("-"), e))?,
            );
        }
        if storage.inner.config.compaction.enabled {
            let inner = storage.inner.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("sonde-maintain".into())
                    .spawn(move || crate::maintain::maintenance_thread(inner))
                    .map_err(|e| Error::io("spawning maintenance thread", Path::new("-"), e))?,
            );
        }
        *storage.threads.lock() = threads;
        Ok(storage)
    }

    /// Validates and stores a batch. Returns once the batch is acknowledged: durable
    /// under [`FsyncPolicy::Always`], written to the OS under `Interval`; in both cases
    /// readable by [`Storage::scan`]. A rejected batch stores nothing.
    pub fn write(&self, tenant: &str, batch: WriteBatch) -> Result<WriteReceipt> {
        let receipt = self.write_with_keys(tenant, batch, Vec::new())?;
        Ok(receipt.expect("a write without keys is never a duplicate"))
    }

    /// Like [`Storage::write`], claiming deduplication `keys`: if any of them was
    /// claimed by an acknowledged write within `dedup_window`, nothing is stored and
    /// the result is `Ok(None)`. Claims are atomic (checked in WAL order) and as
    /// durable as the write.
    pub fn write_with_keys(
        &self,
        tenant: &str,
        mut batch: WriteBatch,
        keys: Vec<String>,
    ) -> Result<Option<WriteReceipt>> {
        sonde_types::validate_tenant(tenant)?;
        let now = self.inner.clock.now_ms();
        self.shape(tenant, &mut batch.tables);
        batch.validate(&self.inner.config.limits, now)?;
        for t in &batch.tables {
            self.check_retention(tenant, t, now)?;
        }
        self.check_schema(tenant, &batch)?;
        self.check_cardinality(tenant, &batch)?;
        self.append(tenant, batch, keys, now)
    }

    /// Applies the volume controls: ingest rules, then overflow routing. Tables left
    /// without series are removed.
    fn shape(&self, tenant: &str, tables: &mut Vec<TableBatch>) {
        let vol = &self.inner.config.volume;
        if vol.rules.is_empty() && !vol.overflow {
            return;
        }
        let counters = &self.inner.volume;
        for t in tables.iter_mut() {
            vol.apply_rules(t, counters);
        }
        tables.retain(|t| !t.series.is_empty());
        if vol.overflow {
            let st = self.inner.state.read();
            let head = st.active.read();
            let default = self.inner.config.limits.max_series_per_table;
            for t in tables.iter_mut() {
                let cap = vol.cap(&t.table, default);
                vol.overflow(&head, tenant, t, cap, counters);
            }
        }
    }

    /// Rejects samples older than the table's retention: they would be deleted at the
    /// next retention pass.
    fn check_retention(&self, tenant: &str, t: &TableBatch, now: TimestampMs) -> Result<()> {
        let ret = &self.inner.config.retention;
        let Some(oldest) = ret.oldest(tenant, &t.table, now) else {
            return Ok(());
        };
        for s in &t.series {
            if let Some(&ts) = s.timestamps.iter().find(|&&ts| ts < oldest) {
                let days = ret.of(tenant, &t.table).unwrap_or(0) as f64 / DAY_MS as f64;
                return Err(Error::Invalid(sonde_types::Error::invalid(
                    format!("table {:?} series {} timestamp", t.table, s.labels),
                    format!("{ts} is older than the table's retention ({days} days)"),
                )));
            }
        }
        Ok(())
    }

    /// What the ingest volume controls did since the store opened.
    pub fn volume_stats(&self) -> crate::volume::VolumeStats {
        self.inner.volume.snapshot()
    }

    /// Validates each table on its own, stores the valid ones in one write (one WAL
    /// record, acknowledged like [`Storage::write_with_keys`]) and returns the others
    /// with their errors — the partial acceptance the network protocols offer,
    /// validating every table exactly once. Errors that concern the whole write
    /// (tenant, head full, shutdown, I/O) fail the call and store nothing.
    pub fn write_tables(
        &self,
        tenant: &str,
        mut tables: Vec<TableBatch>,
        keys: Vec<String>,
    ) -> Result<TablesOutcome> {
        sonde_types::validate_tenant(tenant)?;
        let now = self.inner.clock.now_ms();
        self.shape(tenant, &mut tables);
        let limits = &self.inner.config.limits;
        let vol = &self.inner.config.volume;
        let mut out = TablesOutcome::default();
        // Keeps the tables `check` accepts (each checked as a batch of its own) and
        // records the others as rejections.
        let mut screen = |tables: Vec<TableBatch>, check: &dyn Fn(&WriteBatch) -> Result<()>| {
            let mut one = WriteBatch {
                tables: Vec::with_capacity(1),
            };
            let mut kept = Vec::with_capacity(tables.len());
            for t in tables {
                one.tables.push(t);
                let checked = check(&one);
                let t = one.tables.pop().expect("pushed above");
                match checked {
                    Ok(()) => kept.push(t),
                    Err(e) => out.rejected.push(TableRejection {
                        samples: t.sample_count(),
                        table: t.table,
                        error: e,
                    }),
                }
            }
            kept
        };
        // Checks of the table alone first, without locks; then, under the head's
        // read lock held only that long, the checks against what is stored (the
        // WAL thread needs the write lock to apply the previous write).
        let passed = screen(tables, &|one| {
            one.validate(limits, now)?;
            self.check_retention(tenant, &one.tables[0], now)
        });
        let batch = {
            let st = self.inner.state.read();
            let head = st.active.read();
            let schemas = self.inner.schemas.read();
            let existing = schemas.get(tenant);
            WriteBatch {
                tables: screen(passed, &|one| {
                    if let Some(s) = existing {
                        schema_conflicts(s, one)?;
                    }
                    cardinality(&head, tenant, one, limits, vol)
                }),
            }
        };
        if batch.tables.is_empty() {
            return Ok(out);
        }
        let samples = batch.sample_count();
        if samples > limits.max_samples_per_batch {
            return Err(Error::Invalid(sonde_types::Error::limit(
                "samples per write",
                samples,
                limits.max_samples_per_batch,
            )));
        }
        // Registering under the write lock re-checks conflicts with tables that
        // concurrent writes created meanwhile.
        self.check_schema(tenant, &batch)?;
        out.receipt = self.append(tenant, batch, keys, now)?;
        out.duplicate = out.receipt.is_none();
        Ok(out)
    }

    /// Appends a validated batch to the WAL and the head; `None` if a key was taken.
    fn append(
        &self,
        tenant: &str,
        batch: WriteBatch,
        keys: Vec<String>,
        now: TimestampMs,
    ) -> Result<Option<WriteReceipt>> {
        self.wait_for_head_room()?;
        let rows = batch.row_count();
        let samples = batch.sample_count();
        let keys = RecordKeys {
            written_ms: now,
            keys,
        };
        let payload = codec::encode_batch_compressed(tenant, &batch, &keys);
        let (reply, rx) = mpsc::sync_channel(1);
        self.send(WalMsg::Append {
            tenant: tenant.to_string(),
            batch,
            payload,
            keys,
            reply,
        })?;
        let Some(seq) = rx.recv().map_err(|_| self.closed_error())?? else {
            return Ok(None);
        };
        Ok(Some(WriteReceipt { seq, rows, samples }))
    }

    fn check_cardinality(&self, tenant: &str, batch: &WriteBatch) -> Result<()> {
        let st = self.inner.state.read();
        let head = st.active.read();
        cardinality(
            &head,
            tenant,
            batch,
            &self.inner.config.limits,
            &self.inner.config.volume,
        )
    }

    /// Backpressure: while the active head is full and an earlier head is still being
    /// flushed, writers wait (up to `head_full_timeout`) instead of growing memory
    /// without bound.
    fn wait_for_head_room(&self) -> Result<()> {
        let limit = self.inner.config.max_head_bytes;
        let deadline = Instant::now() + self.inner.config.head_full_timeout;
        loop {
            let (active, frozen) = {
                let st = self.inner.state.read();
                let active = st.active.read().sample_bytes();
                (active, st.frozen.len())
            };
            if active < limit || frozen == 0 {
                return Ok(());
            }
            self.inner.wake.notify_one();
            if Instant::now() >= deadline {
                return Err(Error::HeadFull {
                    bytes: active,
                    limit,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn send(&self, msg: WalMsg) -> Result<()> {
        if let Some(reason) = self.inner.failed.lock().clone() {
            return Err(Error::Closed(reason));
        }
        let tx = self.wal_tx.lock();
        let tx = tx
            .as_ref()
            .ok_or_else(|| Error::Closed("shut down".into()))?;
        tx.send(msg).map_err(|_| self.closed_error())
    }

    fn closed_error(&self) -> Error {
        Error::Closed(
            self.inner
                .failed
                .lock()
                .clone()
                .unwrap_or_else(|| "shut down".into()),
        )
    }

    /// Rejects fields whose type conflicts with the table's, then records new fields
    /// and tags so concurrent writers agree. (An i64 field written as f64 is widened.)
    fn check_schema(&self, tenant: &str, batch: &WriteBatch) -> Result<()> {
        let mut schemas = self.inner.schemas.write();
        let tables = schemas.entry(tenant.to_string()).or_default();
        schema_conflicts(tables, batch)?;
        register_batch(tables, batch);
        Ok(())
    }

    /// Persists everything acknowledged so far into segments and returns once the
    /// manifest naming them is durable.
    pub fn flush(&self) -> Result<FlushStats> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.send(WalMsg::Rotate(reply))?;
        rx.recv().map_err(|_| self.closed_error())??;
        flush_frozen(&self.inner)
    }

    /// Whether a deduplication key was claimed by an acknowledged write within the
    /// window.
    pub fn key_seen(&self, tenant: &str, key: &str) -> bool {
        let window = self.inner.config.dedup_window.as_millis() as i64;
        self.inner
            .dedup
            .lock()
            .contains(tenant, key, self.inner.clock.now_ms(), window)
    }

    /// The segment ids whose parsed footers are cached, ascending (a diagnostic:
    /// each is a segment of the current manifest; a segment a manifest swap removes
    /// leaves the cache with it).
    pub fn cached_footer_ids(&self) -> Vec<u64> {
        self.inner.footer_cache.lock().ids()
    }

    /// The current manifest (live segments).
    pub fn manifest(&self) -> Arc<Manifest> {
        self.inner.state.read().manifest.clone()
    }

    /// Bytes held by the active head.
    pub fn head_bytes(&self) -> usize {
        self.inner.state.read().active.read().bytes()
    }

    /// Tables of a tenant with their schemas.
    pub fn tables(&self, tenant: &str) -> BTreeMap<String, TableSchema> {
        self.inner
            .schemas
            .read()
            .get(tenant)
            .cloned()
            .unwrap_or_default()
    }

    /// Tenants that have written anything.
    pub fn tenants(&self) -> Vec<String> {
        let mut t: Vec<String> = self.inner.schemas.read().keys().cloned().collect();
        t.sort();
        t
    }

    /// The schema of one of a tenant's tables, if it exists.
    pub fn table_schema(&self, tenant: &str, table: &str) -> Option<TableSchema> {
        self.inner.schemas.read().get(tenant)?.get(table).cloned()
    }

    /// The kind of a tenant's table, if it exists.
    pub fn table_kind(&self, tenant: &str, table: &str) -> Option<MetricKind> {
        Some(self.inner.schemas.read().get(tenant)?.get(table)?.kind)
    }

    /// The validation limits every write is checked against.
    pub fn limits(&self) -> &Limits {
        &self.inner.config.limits
    }

    /// The storage clock's current time (ms).
    pub fn now_ms(&self) -> TimestampMs {
        self.inner.clock.now_ms()
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Stops background work and makes the WAL durable. Called by `Drop` too.
    pub fn close(&self) -> Result<()> {
        *self.inner.stop.lock() = true;
        self.inner.wake.notify_all();
        self.inner.wake_maint.notify_all();
        let tx = self.wal_tx.lock().take();
        let mut result = Ok(());
        if let Some(tx) = tx {
            let (reply, rx) = mpsc::sync_channel(1);
            if tx.send(WalMsg::Shutdown(reply)).is_ok() {
                result = rx.recv().unwrap_or(Ok(()));
            }
        }
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        // Unlock explicitly rather than by closing the descriptor: a child process
        // spawned by another thread of this process (fork, then exec) briefly holds a
        // copy of every descriptor, and a flock lives until its last copy closes, so a
        // plain close could leave the directory locked for a moment after `close`.
        if let Some(lock) = self.inner.data_lock.lock().take() {
            let _ = lock.unlock();
        }
        result
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing storage");
        }
    }
}

/// The cardinality cap: a table may not grow past `max_series_per_table` (or its
/// per-table cap) active series; with overflow routing on, the overflow series may
/// come on top. (Concurrent writers of new series may overshoot it by their batches.)
fn cardinality(
    head: &Head,
    tenant: &str,
    batch: &WriteBatch,
    limits: &Limits,
    vol: &VolumeConfig,
) -> Result<()> {
    for t in &batch.tables {
        let cap = vol.cap(&t.table, limits.max_series_per_table) + usize::from(vol.overflow);
        let th = head.table(tenant, &t.table);
        let existing = th.map_or(0, |th| th.series.len());
        if existing + t.series.len() <= cap {
            // Even if every series were new the cap would hold: no lookups (they
            // were a tenth of remote-write ingest CPU).
            continue;
        }
        let new = t
            .series
            .iter()
            .filter(|s| th.is_none_or(|th| !th.contains(&s.labels)))
            .map(|s| &s.labels)
            .collect::<std::collections::HashSet<_>>()
            .len();
        if new > 0 && existing + new > cap {
            return Err(Error::Invalid(sonde_types::Error::limit(
                format!("table {:?} active series", t.table),
                existing + new,
                cap,
            )));
        }
    }
    Ok(())
}

fn merge_schema(
    tables: &mut BTreeMap<String, TableSchema>,
    name: &str,
    kind: MetricKind,
    fields: &[FieldDef],
    tags: impl Iterator<Item = String>,
) {
    let s = tables
        .entry(name.to_string())
        .or_insert_with(|| TableSchema {
            kind,
            fields: Vec::new(),
            tags: BTreeSet::new(),
        });
    for f in fields {
        match s.fields.iter_mut().find(|g| g.name == f.name) {
            Some(g) if g.ty == FieldType::I64 && f.ty == FieldType::F64 => g.ty = FieldType::F64,
            Some(_) => {}
            None => s.fields.push(f.clone()),
        }
    }
    s.tags.extend(tags);
}

/// A field written as i64 into an f64 field, or a field named like one of the table's
/// tags.
fn schema_conflicts(tables: &BTreeMap<String, TableSchema>, batch: &WriteBatch) -> Result<()> {
    for t in &batch.tables {
        let Some(s) = tables.get(&t.table) else {
            continue;
        };
        if s.kind != t.kind {
            return Err(Error::Invalid(sonde_types::Error::Invalid {
                field: format!("table {:?} kind", t.table),
                reason: format!(
                    "the table holds {} data; got {}",
                    s.kind.as_str(),
                    t.kind.as_str()
                ),
            }));
        }
        for f in &t.fields {
            if let Some(g) = s.fields.iter().find(|g| g.name == f.name)
                && g.ty == FieldType::F64
                && f.ty == FieldType::I64
            {
                return Err(Error::FieldTypeConflict {
                    table: t.table.clone(),
                    field: f.name.clone(),
                    existing: g.ty,
                    got: f.ty,
                });
            }
            if s.tags.contains(&f.name) {
                return Err(Error::Invalid(sonde_types::Error::Invalid {
                    field: format!("table {:?} field {:?}", t.table, f.name),
                    reason: "is already a tag of this table".into(),
                }));
            }
        }
    }
    Ok(())
}

fn register_batch(tables: &mut BTreeMap<String, TableSchema>, batch: &WriteBatch) {
    for t in &batch.tables {
        let mut tags = BTreeSet::new();
        // Series of one table mostly share their label names: a set of names equal to
        // the previous series' adds nothing.
        let mut last: Option<&sonde_types::Labels> = None;
        for s in &t.series {
            if last.is_some_and(|l| l.same_names(&s.labels)) {
                continue;
            }
            for (k, _) in s.labels.iter() {
                if !tags.contains(k) {
                    tags.insert(k.to_string());
                }
            }
            last = Some(&s.labels);
        }
        merge_schema(tables, &t.table, t.kind, &t.fields, tags.into_iter());
    }
}

/// Takes `dir/LOCK` (creating the directory) so a second server cannot open the same
/// data directory; the lock is the kernel's and goes away with the process.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", dir, e))?;
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("opening lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::io(
            "data directory is in use by another process",
            &path,
            std::io::Error::new(std::io::ErrorKind::WouldBlock, "locked"),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("locking", &path, e)),
    }
}

/// How old an unreferenced object must be before opening the store deletes it.
const ORPHAN_GRACE: Duration = Duration::from_secs(3600);

/// Removes segment files the manifest does not name (left by a crash mid-flush) and
/// temporary files.
fn remove_orphans(vfs: &dyn Vfs, dir: &Path, manifest: &Manifest) -> Result<()> {
    let live: BTreeSet<&str> = manifest
        .segments
        .iter()
        .chain(manifest.rollups.iter().map(|r| &r.segment))
        .flat_map(|s| [s.path.as_str(), s.index_path.as_str()])
        .collect();
    let seg_dir = dir.join("segments");
    let list = |p: &Path| vfs.list(p).map_err(|e| Error::io("listing", p, e));
    for tenant in list(&seg_dir)? {
        for day in list(&seg_dir.join(&tenant))? {
            let day_dir = seg_dir.join(&tenant).join(&day);
            for f in list(&day_dir)? {
                let rel = format!("segments/{tenant}/{day}/{f}");
                let p = day_dir.join(&f);
                if !live.contains(rel.as_str()) {
                    // On an object store a recent one may be another server's flush
                    // in progress (a misconfiguration the manifest's conditional PUT
                    // reports); leave it to a later start.
                    let age = vfs
                        .age(&p)
                        .map_err(|e| Error::io("checking orphan", &p, e))?;
                    if age.is_some_and(|a| a < ORPHAN_GRACE) {
                        continue;
                    }
                    tracing::info!(file = %rel, "removing file not in the manifest");
                    vfs.remove_file(&p)
                        .map_err(|e| Error::io("removing orphan", &p, e))?;
                }
            }
        }
    }
    Ok(())
}

/// An append waiting in the WAL thread: tenant, batch, encoded payload, keys, reply.
type Pending = (String, WriteBatch, Vec<u8>, RecordKeys, Reply<Option<u64>>);

fn wal_thread(inner: Arc<Inner>, mut writer: WalWriter, rx: Receiver<WalMsg>) {
    let vfs = inner.wal_vfs.clone();
    let interval = match inner.config.fsync {
        FsyncPolicy::Always => None,
        FsyncPolicy::Interval(d) => Some(d),
    };
    let mut dirty = false;
    let mut last_sync = Instant::now();
    let fail = |inner: &Inner, e: &Error| {
        tracing::error!(error = %e, "WAL failure; refusing further writes");
        *inner.failed.lock() = Some(format!("WAL failure: {e}"));
    };
    loop {
        let first = match interval {
            Some(d) if dirty => match rx.recv_timeout(d.saturating_sub(last_sync.elapsed())) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = writer.sync() {
                        fail(&inner, &e);
                        return;
                    }
                    dirty = false;
                    last_sync = Instant::now();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
            _ => match rx.recv() {
                Ok(m) => m,
                Err(_) => break,
            },
        };
        let mut msgs = vec![first];
        while msgs.len() < 4096 {
            match rx.try_recv() {
                Ok(m) => msgs.push(m),
                Err(_) => break,
            }
        }
        let mut appends: Vec<Pending> = Vec::new();
        let mut control = Vec::new();
        let drain = |appends: &mut Vec<Pending>,
                     writer: &mut WalWriter,
                     dirty: &mut bool,
                     last_sync: &mut Instant|
         -> Result<()> {
            // Claims first, in WAL order: a write whose key is taken is answered now.
            {
                let window = inner.config.dedup_window.as_millis() as i64;
                let now = inner.clock.now_ms();
                let mut dedup = inner.dedup.lock();
                appends.retain(|(tenant, _, _, keys, reply)| {
                    if keys
                        .keys
                        .iter()
                        .any(|k| dedup.contains(tenant, k, now, window))
                    {
                        let _ = reply.send(Ok(None));
                        return false;
                    }
                    for k in &keys.keys {
                        dedup.insert(tenant, k, keys.written_ms);
                    }
                    true
                });
            }
            if appends.is_empty() {
                return Ok(());
            }
            let res = writer
                .append(vfs.as_ref(), appends.iter().map(|a| a.2.as_slice()))
                .and_then(|first| {
                    let sync_now = match interval {
                        None => true,
                        Some(d) => last_sync.elapsed() >= d,
                    };
                    if sync_now {
                        writer.sync()?;
                        *dirty = false;
                        *last_sync = Instant::now();
                    } else {
                        *dirty = true;
                    }
                    Ok(first)
                });
            match res {
                Ok(first) => {
                    let now = inner.clock.now_ms();
                    let st = inner.state.read();
                    let mut head = st.active.write();
                    // Writers are answered before their batches are applied, but
                    // under the head's write lock: a reader that starts after the
                    // answer waits for the lock, so it still sees the write, and the
                    // writer's next request is decoded while this one is applied.
                    for (i, (_, _, _, _, reply)) in appends.iter().enumerate() {
                        let _ = reply.send(Ok(Some(first + i as u64)));
                    }
                    for (i, (tenant, batch, _, _, _)) in appends.iter().enumerate() {
                        head.apply(tenant, batch, first + i as u64, now);
                    }
                    if head.sample_bytes() >= inner.config.max_head_bytes {
                        inner.wake.notify_one();
                    }
                    // The batches are freed after the head's lock is released, so
                    // readers and the next writes' checks need not wait for it:
                    // freeing a request's 10k one-sample series (memory the request
                    // threads allocated) was a quarter of the apply in a profile.
                    drop(head);
                    drop(st);
                    appends.clear();
                    Ok(())
                }
                Err(e) => {
                    for (_, _, _, _, reply) in appends.drain(..) {
                        let _ = reply.send(Err(Error::Closed(format!("WAL failure: {e}"))));
                    }
                    Err(e)
                }
            }
        };
        for m in msgs {
            match m {
                WalMsg::Append {
                    tenant,
                    batch,
                    payload,
                    keys,
                    reply,
                } => appends.push((tenant, batch, payload, keys, reply)),
                other => {
                    if let Err(e) = drain(&mut appends, &mut writer, &mut dirty, &mut last_sync) {
                        fail(&inner, &e);
                        return;
                    }
                    control.push(other);
                    for c in control.drain(..) {
                        match c {
                            WalMsg::Rotate(reply) => {
                                let r = rotate(&inner, &mut writer);
                                if let Err(e) = &r {
                                    fail(&inner, e);
                                }
                                let failed = r.is_err();
                                let _ = reply.send(r);
                                if failed {
                                    return;
                                }
                            }
                            WalMsg::Shutdown(reply) => {
                                let _ = reply.send(writer.sync());
                                return;
                            }
                            WalMsg::Append { .. } => unreachable!(),
                        }
                    }
                }
            }
        }
        if let Err(e) = drain(&mut appends, &mut writer, &mut dirty, &mut last_sync) {
            fail(&inner, &e);
            return;
        }
    }
    let _ = writer.sync();
}

/// Cuts the WAL and moves the active head to the frozen list, atomically for readers.
fn rotate(inner: &Inner, writer: &mut WalWriter) -> Result<Option<Arc<Frozen>>> {
    let mut st = inner.state.write();
    if st.active.read().is_empty() {
        return Ok(None);
    }
    writer.rotate(inner.wal_vfs.as_ref())?;
    let head = st.active.write().cut();
    let frozen = Arc::new(Frozen {
        head,
        watermark: writer.next_seq() - 1,
    });
    st.frozen.push(frozen.clone());
    Ok(Some(frozen))
}

fn flush_thread(inner: Arc<Inner>, tx: Sender<WalMsg>) {
    loop {
        {
            let mut stop = inner.stop.lock();
            if *stop {
                return;
            }
            inner.wake.wait_for(&mut stop, Duration::from_secs(1));
            if *stop {
                return;
            }
        }
        let (bytes, first) = {
            let st = inner.state.read();
            let h = st.active.read();
            (h.sample_bytes(), h.first_write_ms)
        };
        let age_ms = first.map_or(0, |f| inner.clock.now_ms() - f);
        let over_age = age_ms >= inner.config.max_head_age.as_millis() as i64;
        if bytes < inner.config.max_head_bytes && !(first.is_some() && over_age) {
            continue;
        }
        let (reply, rx) = mpsc::sync_channel(1);
        if tx.send(WalMsg::Rotate(reply)).is_err() {
            return;
        }
        match rx.recv() {
            Ok(Ok(_)) => {}
            _ => return,
        }
        match flush_frozen(&inner) {
            Ok(s) => tracing::info!(
                segments = s.segments,
                rows = s.rows,
                bytes = s.bytes,
                "flushed head"
            ),
            Err(e) => tracing::error!(error = %e, "background flush failed; will retry"),
        }
    }
}

/// Persists every frozen head, oldest first.
fn flush_frozen(inner: &Inner) -> Result<FlushStats> {
    let _guard = inner.flush_lock.lock();
    let mut total = FlushStats::default();
    loop {
        let next = inner.state.read().frozen.first().cloned();
        let Some(frozen) = next else { break };
        let s = persist(inner, &frozen)?;
        total.segments += s.segments;
        total.rows += s.rows;
        total.bytes += s.bytes;
        total.wal_files_removed += s.wal_files_removed;
    }
    Ok(total)
}

/// Groups a head's rows into per-(tenant, day) table chunks, each sorted in the
/// order the table has in that day's segments of `manifest`, or, for a table new to
/// the day, an order chosen from its series ([`crate::order`]). Series inside one
/// day are borrowed, not copied.
fn partitions<'h>(
    head: &'h Head,
    manifest: &Manifest,
) -> BTreeMap<(&'h str, i64), Vec<TableChunk<'h>>> {
    let mut out: BTreeMap<(&str, i64), Vec<TableChunk<'_>>> = BTreeMap::new();
    for (tenant, tables) in &head.tenants {
        for (name, th) in tables {
            // Per day, the series with rows in it (and whether they span other days).
            let mut by_day: BTreeMap<i64, Vec<(usize, bool)>> = BTreeMap::new();
            for (i, (_, data)) in th.series.iter().enumerate() {
                let Some((lo, hi)) = data.time_range() else {
                    continue;
                };
                let (first, last) = (day_of(lo), day_of(hi));
                for day in first..=last {
                    by_day.entry(day).or_default().push((i, first != last));
                }
            }
            for (day, members) in by_day {
                let labels: Vec<&sonde_types::Labels> =
                    members.iter().map(|&(i, _)| &th.series[i].0).collect();
                let order = existing_order(manifest, tenant, day, name)
                    .unwrap_or_else(|| crate::order::choose(labels.iter().copied()));
                let series = crate::order::sorted_positions(&order, &labels)
                    .into_iter()
                    .map(|p| {
                        let (i, spans_days) = members[p];
                        let (labels, data) = &th.series[i];
                        let day_cut = spans_days.then_some(day);
                        (labels, SeriesRows::Head { data, day: day_cut })
                    })
                    .collect();
                out.entry((tenant.as_str(), day))
                    .or_default()
                    .push(TableChunk {
                        name: name.as_str(),
                        kind: th.kind,
                        fields: &th.fields,
                        order,
                        series,
                    });
            }
        }
    }
    out
}

/// The order `table` has in the segments of (`tenant`, `day`), if any has it.
fn existing_order(manifest: &Manifest, tenant: &str, day: i64, table: &str) -> Option<Vec<String>> {
    manifest
        .segments
        .iter()
        .filter(|s| s.tenant == tenant && s.day == day)
        .flat_map(|s| &s.tables)
        .find(|t| t.name == table)
        .map(|t| t.order.clone())
}

impl Inner {
    /// Takes the next segment id.
    pub(crate) fn next_segment_id(&self) -> u64 {
        self.next_id
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }
    /// The id the next segment will get.
    pub(crate) fn peek_segment_id(&self) -> u64 {
        self.next_id.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn persist(inner: &Inner, frozen: &Arc<Frozen>) -> Result<FlushStats> {
    let vfs = inner.vfs.as_ref();
    // The manifest is re-read under the flush lock (held by the caller), so a
    // maintenance swap between flushes is never lost.
    let mut manifest = (*inner.state.read().manifest).clone();
    let mut stats = FlushStats::default();
    let mut synced_dirs = BTreeSet::new();
    for ((tenant, day), chunks) in partitions(&frozen.head, &manifest) {
        // Straight to a file where the store has files (an object store takes the
        // bytes in one PUT): a flush of 100k series then never holds the whole file.
        let tmp = inner
            .dir
            .join(format!("segments/{tenant}/{day}/flush.parquet.tmp"));
        let parent = tmp.parent().expect("segment path has a parent");
        let file = match vfs
            .create_dir_all(parent)
            .and_then(|_| vfs.create_append(&tmp))
        {
            Ok(f) => Some((f, tmp.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => None,
            Err(e) => return Err(Error::io("creating segment", &tmp, e)),
        };
        let enc = segment::encode_segment_to(&chunks, &inner.config.segment, file)?;
        if enc.rows == 0 {
            if enc.written.is_some() {
                let _ = vfs.remove_file(&tmp);
            }
            continue;
        }
        // Writes and syncs the files and their day directory; the parents below.
        let (meta, index) = inner.write_segment_files(tenant, day, "", enc)?;
        synced_dirs.insert(inner.dir.join(format!("segments/{tenant}")));
        catalog::update(vfs, &inner.dir, tenant, day, &index)?;
        inner.catalog_cache.lock().invalidate(tenant, day);
        inner.index_cache.lock().insert(meta.id, Arc::new(index));
        stats.segments += 1;
        stats.rows += meta.rows;
        stats.bytes += meta.bytes;
        manifest.segments.push(meta);
    }
    synced_dirs.insert(inner.dir.join("segments"));
    // Deepest first, so a directory's entry is durable in its parent after its content.
    for d in synced_dirs.iter().rev() {
        vfs.sync_dir(d)
            .map_err(|e| Error::io("syncing segment directory", d, e))?;
    }
    // Keys claimed by the WAL records this manifest retires must outlive them.
    // (A snapshot, so writers do not wait for the file.)
    let keys = {
        let mut dedup = inner.dedup.lock();
        dedup.prune(
            inner.clock.now_ms(),
            inner.config.dedup_window.as_millis() as i64,
        );
        dedup.clone()
    };
    keys.store(vfs, &inner.dir)?;
    manifest.generation += 1;
    manifest.next_segment_id = manifest.next_segment_id.max(inner.peek_segment_id());
    manifest.wal_watermark = manifest.wal_watermark.max(frozen.watermark);
    manifest.store(vfs, &inner.dir, &mut inner.manifest_version.lock())?;
    let watermark = manifest.wal_watermark;
    {
        let mut st = inner.state.write();
        let old = std::mem::replace(&mut st.manifest, Arc::new(manifest));
        inner.trash.lock().retire(&old);
        st.frozen.retain(|f| !Arc::ptr_eq(f, frozen));
    }
    stats.wal_files_removed =
        wal::remove_below(inner.wal_vfs.as_ref(), &inner.dir.join("wal"), watermark)?;
    Ok(stats)
}
