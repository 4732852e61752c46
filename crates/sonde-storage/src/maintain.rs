//! Background maintenance of persisted segments: compaction, retention and deletes.
//!
//! All three are one operation, [`Inner::rewrite`]: stream the series of a run of
//! segments of one (tenant, day) through a k-way merge (the same merge a scan does:
//! newest write of a timestamp wins, delta sums add, event rows are all kept), drop
//! what a filter says to drop, and write one new segment. The manifest swap that
//! replaces the inputs with the output is atomic (see [`crate::manifest`]); the output
//! takes the position of its inputs in the manifest's segment list, which is the
//! merge order readers use, so a run must be contiguous within its (tenant, day).
//!
//! Files of replaced segments are not deleted at the swap: a query may still hold the
//! previous manifest and open them. They go to a trash list and are deleted once no
//! manifest older than the swap is alive. A crash leaves them behind as orphans, which
//! opening the store removes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sonde_types::{DAY_MS, FieldDef, Labels, MetricKind, TimestampMs, day_of};

use crate::catalog::{self, DayCatalog};
use crate::engine::Inner;
use crate::manifest::{Manifest, SegmentMeta};
use crate::postings::Matcher;
use crate::segment::SegmentWriter;
use crate::segment::index::SegmentIndex;
use crate::segment::reader::{SeriesRead, read_series};
use crate::series::SeriesData;
use crate::{Error, Result, Storage};

/// Rows read from the inputs per merge step (bounds a rewrite's memory).
const MERGE_BATCH_ROWS: usize = 256 * 1024;

/// When segments are merged.
#[derive(Debug, Clone)]
pub struct CompactionConfig {
    /// Run compaction (and retention) in the background.
    pub enabled: bool,
    /// How often the background pass runs.
    pub interval: Duration,
    /// Largest segment compaction writes (compressed bytes, estimated from its
    /// inputs). Segments of at least half this size are left alone.
    pub target_bytes: u64,
    /// A (tenant, day) is compacted once it has this many small segments in a row;
    /// a day that has ended is compacted from two.
    pub min_inputs: usize,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            enabled: true,
            interval: Duration::from_secs(60),
            target_bytes: 256 << 20,
            min_inputs: 4,
        }
    }
}

/// How long data is kept. Expiry works on whole days: a day's data goes once the
/// day's last millisecond is older than the retention.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Default for every table of every tenant; `None` keeps data forever.
    pub raw: Option<Duration>,
    /// Per-tenant overrides.
    pub tenants: BTreeMap<String, Duration>,
    /// Per-table overrides: key `table` (any tenant) or `tenant/table`, which wins.
    pub tables: BTreeMap<String, Duration>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            raw: Some(Duration::from_secs(15 * 86_400)),
            tenants: BTreeMap::new(),
            tables: BTreeMap::new(),
        }
    }
}

impl RetentionConfig {
    /// The retention of a table in ms; `None`: forever.
    pub fn of(&self, tenant: &str, table: &str) -> Option<i64> {
        let d = self
            .tables
            .get(&format!("{tenant}/{table}"))
            .or_else(|| self.tables.get(table))
            .or_else(|| self.tenants.get(tenant))
            .copied()
            .or(self.raw)?;
        Some(d.as_millis().min(i64::MAX as u128) as i64)
    }

    /// The oldest timestamp `tenant`'s `table` accepts at `now`.
    pub fn oldest(&self, tenant: &str, table: &str, now: TimestampMs) -> Option<TimestampMs> {
        self.of(tenant, table).map(|r| now.saturating_sub(r))
    }

    /// Whether a whole day of the table has expired at `now`.
    pub(crate) fn day_expired(
        &self,
        tenant: &str,
        table: &str,
        day: i64,
        now: TimestampMs,
    ) -> bool {
        self.oldest(tenant, table, now)
            .is_some_and(|oldest| day * DAY_MS + DAY_MS - 1 < oldest)
    }
}

/// A table of a merge plan.
#[derive(Debug, Clone)]
pub(crate) struct PlanTable {
    pub name: String,
    pub kind: MetricKind,
    pub fields: Vec<FieldDef>,
    /// The series order every input has for this table ([`crate::order`]).
    pub order: Vec<String>,
}

/// Where merged series go: a segment writer (compaction, rewrites) or the rollup
/// builder.
pub(crate) trait MergeSink {
    /// Starts a table (its series come in `t.order`); `false` skips it (its series
    /// are not read).
    fn begin_table(&mut self, t: &PlanTable) -> Result<bool>;
    fn series(&mut self, labels: &Labels, data: &SeriesData) -> Result<()>;
}

impl MergeSink for SegmentWriter {
    fn begin_table(&mut self, t: &PlanTable) -> Result<bool> {
        SegmentWriter::begin_table(self, &t.name, t.kind, &t.fields, &t.order);
        Ok(true)
    }
    fn series(&mut self, labels: &Labels, data: &SeriesData) -> Result<()> {
        self.push_series(labels, data)
    }
}

/// Why segments are replaced (decides what happens to the day's rollups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    Compaction,
    Retention,
    Delete,
}

/// What a rewrite keeps of one series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    All,
    Nothing,
    /// Everything except the rows in `[start, end]`.
    Outside(TimestampMs, TimestampMs),
}

/// Keeps every table but `dropped` (whole tables leave a segment).
pub(crate) fn keep_except<'a>(dropped: &'a BTreeSet<&str>) -> impl Fn(&str, &Labels) -> Keep + 'a {
    move |t, _| {
        if dropped.contains(t) {
            Keep::Nothing
        } else {
            Keep::All
        }
    }
}

/// What a maintenance call did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MaintenanceStats {
    /// Segments merged away by compaction, and segments it wrote.
    pub compacted_inputs: usize,
    pub compacted_outputs: usize,
    /// Segments dropped whole (retention, deletes).
    pub dropped_segments: usize,
    /// Segments rewritten without some series or tables (retention, deletes).
    pub rewritten_segments: usize,
    /// Rows removed by retention or deletes.
    pub removed_rows: u64,
}

impl MaintenanceStats {
    fn add(&mut self, o: &MaintenanceStats) {
        self.compacted_inputs += o.compacted_inputs;
        self.compacted_outputs += o.compacted_outputs;
        self.dropped_segments += o.dropped_segments;
        self.rewritten_segments += o.rewritten_segments;
        self.removed_rows += o.removed_rows;
    }
}

/// Files of replaced segments, waiting for the manifests that name them to die.
#[derive(Debug, Default)]
pub(crate) struct Trash {
    /// Replaced manifests that may still be held by readers.
    retired: Vec<(u64, Weak<Manifest>)>,
    /// (generation of the manifest that stopped naming them, relative paths).
    files: Vec<(u64, Vec<String>)>,
}

impl Trash {
    /// Files no manifest ever named (a build that lost a race): deleted at the next
    /// sweep.
    pub(crate) fn discard_now(&mut self, files: Vec<String>) {
        self.files.push((0, files));
    }

    pub(crate) fn retire(&mut self, old: &Arc<Manifest>) {
        self.retired.push((old.generation, Arc::downgrade(old)));
        self.retired.retain(|(_, w)| w.strong_count() > 0);
    }
}

impl Inner {
    /// Stores `m` as the next manifest generation (durably), makes it current, and
    /// trashes `trash` (files `m` no longer names). Call with the flush lock held.
    pub(crate) fn install(&self, mut m: Manifest, trash: Vec<String>) -> Result<Arc<Manifest>> {
        m.generation += 1;
        m.next_segment_id = m.next_segment_id.max(self.peek_segment_id());
        m.store(
            self.vfs.as_ref(),
            &self.dir,
            &mut self.manifest_version.lock(),
        )?;
        let generation = m.generation;
        let m = Arc::new(m);
        let old = {
            let mut st = self.state.write();
            let old = std::mem::replace(&mut st.manifest, m.clone());
            let mut t = self.trash.lock();
            t.retire(&old);
            t.files.push((generation, trash));
            old
        };
        // Whatever took the segments out (compaction, retention, deletes, rollup
        // expiry), their cached indexes and footers go with them; readers that still
        // hold one keep their own reference.
        let live: BTreeSet<u64> = m.segments.iter().map(|s| s.id).collect();
        let (mut indexes, mut footers) = (self.index_cache.lock(), self.footer_cache.lock());
        for id in old
            .segments
            .iter()
            .map(|s| s.id)
            .filter(|id| !live.contains(id))
        {
            indexes.remove(&id);
            footers.remove(&id);
        }
        Ok(m)
    }

    /// Deletes trashed files no live manifest names any more.
    pub(crate) fn sweep(&self) {
        let ready: Vec<String> = {
            let mut t = self.trash.lock();
            t.retired.retain(|(_, w)| w.strong_count() > 0);
            let oldest_live = t.retired.iter().map(|(g, _)| *g).min();
            let (ready, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut t.files)
                .into_iter()
                .partition(|(g, _)| oldest_live.is_none_or(|o| o >= *g));
            t.files = keep;
            ready.into_iter().flat_map(|(_, f)| f).collect()
        };
        for rel in ready {
            let p = self.dir.join(&rel);
            match self.vfs.remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(file = %rel, error = %e, "removing replaced segment"),
            }
        }
    }

    /// The fields of `table` present in any of `metas`: in the table's schema order
    /// (and type) where registered, then the others (rollup fields) in file order.
    fn fields_in(&self, tenant: &str, table: &str, metas: &[&SegmentMeta]) -> Vec<FieldDef> {
        let mut present: Vec<FieldDef> = Vec::new();
        for m in metas {
            for t in m.tables.iter().filter(|t| t.name == table) {
                for f in t.field_defs() {
                    if !present.iter().any(|g| g.name == f.name) {
                        present.push(f);
                    }
                }
            }
        }
        let registered = self
            .schemas
            .read()
            .get(tenant)
            .and_then(|t| t.get(table))
            .map(|s| s.fields.clone())
            .unwrap_or_default();
        let mut out: Vec<FieldDef> = registered
            .into_iter()
            .filter(|f| present.iter().any(|g| g.name == f.name))
            .collect();
        for f in present {
            if !out.iter().any(|g| g.name == f.name) {
                out.push(f);
            }
        }
        out
    }

    /// What merging `inputs` produces: tables (name order) with kind, fields and
    /// series order, and every tag key. The inputs (one (tenant, day)) must agree on
    /// each table's order: a flush takes the order the day's segments already have.
    pub(crate) fn merge_plan(
        &self,
        inputs: &[SegmentMeta],
    ) -> Result<(Vec<PlanTable>, BTreeSet<String>)> {
        let tenant = inputs.first().map_or("", |s| s.tenant.as_str());
        let metas: Vec<&SegmentMeta> = inputs.iter().collect();
        let mut tables: BTreeMap<&str, (MetricKind, BTreeSet<String>, &[String])> = BTreeMap::new();
        for m in inputs {
            for t in &m.tables {
                let e = tables
                    .entry(t.name.as_str())
                    .or_insert_with(|| (t.kind(), BTreeSet::new(), &t.order));
                e.1.extend(t.tags.iter().cloned());
                if e.2 != t.order.as_slice() {
                    return Err(Error::format(
                        Path::new(&m.path),
                        format!(
                            "table {} is sorted by {:?} here and by {:?} in another segment of the same day",
                            t.name, t.order, e.2
                        ),
                    ));
                }
            }
        }
        let mut tag_keys = BTreeSet::new();
        let mut plan = Vec::new();
        for (&name, (kind, tags, order)) in &tables {
            tag_keys.extend(tags.iter().cloned());
            plan.push(PlanTable {
                name: name.to_string(),
                kind: *kind,
                fields: self.fields_in(tenant, name, &metas),
                order: order.to_vec(),
            });
        }
        Ok((plan, tag_keys))
    }

    /// Streams the merged series of `inputs` (a contiguous run of one (tenant, day),
    /// oldest first) table by table into `sink`, without what `keep` drops. Returns
    /// the number of input rows.
    pub(crate) fn merge_into(
        &self,
        inputs: &[SegmentMeta],
        plan: &[PlanTable],
        keep: &dyn Fn(&str, &Labels) -> Keep,
        sink: &mut dyn MergeSink,
    ) -> Result<u64> {
        let indexes: Vec<Arc<SegmentIndex>> = inputs
            .iter()
            .map(|s| self.segment_index(s.id, &s.index_path))
            .collect::<Result<_>>()?;
        let mut input_rows = 0u64;
        for t in plan {
            if !sink.begin_table(t)? {
                continue;
            }
            // Per input, its series of this table (in the table's order), merged:
            // (labels, [(input, ordinal)]).
            let parts: Vec<Option<&crate::segment::index::IndexTable>> =
                indexes.iter().map(|i| i.table(&t.name)).collect();
            let lists: Vec<Vec<&Labels>> = parts
                .iter()
                .map(|p| p.map_or_else(Vec::new, |p| p.series.iter().map(|s| &s.labels).collect()))
                .collect();
            let mut batch: Vec<(&Labels, Vec<(usize, u32)>)> = Vec::new();
            let mut batch_rows = 0usize;
            for (labels, from) in crate::order::merge(&t.order, &lists) {
                let from: Vec<(usize, u32)> = from
                    .into_iter()
                    .map(|(i, pos)| {
                        let rows = parts[i].expect("listed").series[pos].rows as usize;
                        batch_rows += rows;
                        input_rows += rows as u64;
                        (i, pos as u32)
                    })
                    .collect();
                batch.push((labels, from));
                if batch_rows >= MERGE_BATCH_ROWS {
                    self.merge_batch(inputs, &parts, t, &batch, keep, sink)?;
                    batch.clear();
                    batch_rows = 0;
                }
            }
            if !batch.is_empty() {
                self.merge_batch(inputs, &parts, t, &batch, keep, sink)?;
            }
        }
        Ok(input_rows)
    }

    /// Writes an encoded segment's files into its (tenant, day) directory under a new
    /// id (`suffix` tells tiers apart), synced; returns its manifest entry.
    pub(crate) fn write_segment_files(
        &self,
        tenant: &str,
        day: i64,
        suffix: &str,
        enc: crate::segment::EncodedSegment,
    ) -> Result<(SegmentMeta, SegmentIndex)> {
        // On an object store, a server whose manifest was replaced by another one
        // must not write: its segment ids are the other server's too.
        crate::manifest::Manifest::check_version(
            self.vfs.as_ref(),
            &self.dir,
            self.manifest_version.lock().as_deref(),
        )?;
        let id = self.next_segment_id();
        let rel_dir = format!("segments/{tenant}/{day}");
        let abs_dir = self.dir.join(&rel_dir);
        self.vfs
            .create_dir_all(&abs_dir)
            .map_err(|e| Error::io("creating segment directory", &abs_dir, e))?;
        let path = format!("{rel_dir}/{id:016}{suffix}.parquet");
        let index_path = format!("{rel_dir}/{id:016}{suffix}.sidx");
        let index_bytes = enc.index.encode();
        let bytes = match &enc.written {
            // Already written and synced under a temporary name.
            Some((tmp, len)) => {
                let p = self.dir.join(&path);
                self.vfs
                    .rename(tmp, &p)
                    .map_err(|e| Error::io("renaming segment", &p, e))?;
                *len
            }
            None => {
                let p = self.dir.join(&path);
                self.vfs
                    .write_synced(&p, &enc.parquet)
                    .map_err(|e| Error::io("writing segment", &p, e))?;
                enc.parquet.len() as u64
            }
        };
        let p = self.dir.join(&index_path);
        self.vfs
            .write_synced(&p, &index_bytes)
            .map_err(|e| Error::io("writing segment", &p, e))?;
        self.vfs
            .sync_dir(&abs_dir)
            .map_err(|e| Error::io("syncing segment directory", &abs_dir, e))?;
        let meta = SegmentMeta {
            id,
            tenant: tenant.to_string(),
            day,
            path,
            index_path,
            rows: enc.rows,
            series: enc.tables.iter().map(|t| t.series).sum(),
            bytes,
            index_bytes: index_bytes.len() as u64,
            min_time: enc.min_time,
            max_time: enc.max_time,
            tables: enc.tables,
        };
        Ok((meta, enc.index))
    }

    /// Merges `inputs` (a contiguous run of one (tenant, day), oldest first) into one
    /// new segment without what `keep` drops. Writes and syncs the files; does not
    /// touch the manifest. `None` when nothing is left.
    pub(crate) fn rewrite(
        &self,
        inputs: &[SegmentMeta],
        keep: &dyn Fn(&str, &Labels) -> Keep,
    ) -> Result<Option<(SegmentMeta, SegmentIndex, u64)>> {
        let first = inputs.first().expect("at least one input");
        let (tenant, day) = (first.tenant.as_str(), first.day);
        let (plan, tag_keys) = self.merge_plan(inputs)?;
        // Bytes fields (sketches of rollup segments) have a column of their own.
        let (mut field_names, mut bytes_fields) = (BTreeSet::new(), BTreeSet::new());
        for f in plan.iter().flat_map(|t| t.fields.iter()) {
            match f.ty {
                sonde_types::FieldType::Bytes => bytes_fields.insert(f.name.clone()),
                _ => field_names.insert(f.name.clone()),
            };
        }
        let mut w = SegmentWriter::with_bytes_fields(
            &tag_keys,
            &field_names,
            &bytes_fields,
            &self.config.segment,
        )?;
        let input_rows = self.merge_into(inputs, &plan, keep, &mut w)?;
        let output_rows = w.rows();
        let removed = input_rows.saturating_sub(output_rows);
        if output_rows == 0 {
            return Ok(None);
        }
        let (meta, index) = self.write_segment_files(tenant, day, "", w.finish()?)?;
        Ok(Some((meta, index, removed)))
    }

    /// Reads one batch of merged series from the inputs and writes what `keep` keeps.
    fn merge_batch(
        &self,
        inputs: &[SegmentMeta],
        parts: &[Option<&crate::segment::index::IndexTable>],
        t: &PlanTable,
        batch: &[(&Labels, Vec<(usize, u32)>)],
        keep: &dyn Fn(&str, &Labels) -> Keep,
        sink: &mut dyn MergeSink,
    ) -> Result<()> {
        let (fields, kind, table) = (&t.fields, t.kind, t.name.as_str());
        // Which series of the batch to read from each input.
        let mut wanted: Vec<Vec<u32>> = vec![Vec::new(); inputs.len()];
        let mut decisions = Vec::with_capacity(batch.len());
        for (labels, from) in batch {
            let k = keep(table, labels);
            decisions.push(k);
            if k != Keep::Nothing {
                for &(i, o) in from {
                    wanted[i].push(o);
                }
            }
        }
        // Rows per input, in ordinal order (= the table's order).
        let mut read: Vec<std::vec::IntoIter<(Labels, SeriesData)>> = Vec::new();
        for (i, ords) in wanted.iter().enumerate() {
            let rows = match (&parts[i], ords.is_empty()) {
                (Some(it), false) => {
                    read_series(
                        self.vfs.as_ref(),
                        &SeriesRead {
                            path: self.dir.join(&inputs[i].path),
                            footer: &self.segment_footer(inputs[i].id, &inputs[i].path)?,
                            table: it,
                            ordinals: ords,
                            fields,
                            start: i64::MIN,
                            end: i64::MAX,
                        },
                    )?
                    .0
                }
                _ => Vec::new(),
            };
            read.push(rows.into_iter());
        }
        for ((labels, from), k) in batch.iter().zip(decisions) {
            if k == Keep::Nothing {
                continue;
            }
            let mut data: Option<SeriesData> = None;
            for &(i, _) in from {
                let (l, d) = read[i].next().ok_or_else(|| {
                    Error::format(
                        Path::new(&inputs[i].path),
                        "segment returned fewer series than its index lists",
                    )
                })?;
                debug_assert_eq!(&l, *labels);
                match &mut data {
                    None => data = Some(d),
                    Some(all) => all.extend(&d),
                }
            }
            let Some(data) = data else { continue };
            let data = if from.len() > 1 && !data.ordered {
                data.normalized(kind).into_owned()
            } else {
                data
            };
            match k {
                Keep::All => sink.series(labels, &data)?,
                Keep::Outside(a, b) => {
                    let mut kept = if a > i64::MIN {
                        data.time_slice(i64::MIN, a - 1)
                    } else {
                        SeriesData::new()
                    };
                    if b < i64::MAX {
                        kept.extend(&data.time_slice(b + 1, i64::MAX));
                    }
                    sink.series(labels, &kept)?;
                }
                Keep::Nothing => {}
            }
        }
        Ok(())
    }

    /// Replaces the segments `removed` with `added` (put where the first removed one
    /// was, else appended) in one durable manifest swap; rebuilds the catalogs of
    /// `days` from their remaining segments. Fails if a removed segment is gone.
    pub(crate) fn swap_segments(
        &self,
        removed: &[u64],
        added: Option<(SegmentMeta, SegmentIndex)>,
        rebuild_days: &BTreeSet<(String, i64)>,
        why: Why,
    ) -> Result<()> {
        let _flush = self.flush_lock.lock();
        let mut m = (*self.state.read().manifest).clone();
        let pos = m.segments.iter().position(|s| removed.contains(&s.id));
        let gone: Vec<SegmentMeta> = m
            .segments
            .iter()
            .filter(|s| removed.contains(&s.id))
            .cloned()
            .collect();
        if gone.len() != removed.len() {
            return Err(Error::Closed(
                "a segment being rewritten left the manifest".into(),
            ));
        }
        m.segments.retain(|s| !removed.contains(&s.id));
        let added_id = added.as_ref().map(|(meta, _)| meta.id);
        if let Some((meta, index)) = added {
            let at = pos.unwrap_or(m.segments.len()).min(m.segments.len());
            self.index_cache.lock().insert(meta.id, Arc::new(index));
            m.segments.insert(at, meta);
        }
        let mut trash: Vec<String> = gone
            .iter()
            .flat_map(|s| [s.path.clone(), s.index_path.clone()])
            .collect();
        // Rollups of the days touched.
        let touched: BTreeSet<(String, i64)> =
            gone.iter().map(|s| (s.tenant.clone(), s.day)).collect();
        let raw_left =
            |m: &Manifest, t: &str, d: i64| m.segments.iter().any(|s| s.tenant == t && s.day == d);
        let left: BTreeSet<(String, i64)> = touched
            .iter()
            .filter(|(t, d)| raw_left(&m, t, *d))
            .cloned()
            .collect();
        m.rollups.retain_mut(|r| {
            let key = (r.segment.tenant.clone(), r.segment.day);
            if !touched.contains(&key) {
                return true;
            }
            match why {
                // Compaction: same rows under new ids. Retention: the rollup keeps
                // what expired from raw (tiers live longer), so it stays current for
                // what is left; once the day has no raw data it is all there is.
                Why::Compaction | Why::Retention => {
                    // Only when the rollup saw every replaced segment: merging in one
                    // it did not see leaves it stale (its sources no longer match).
                    let saw_all = removed.iter().all(|id| r.sources.contains(id));
                    if saw_all
                        && let Some(first) = r.sources.iter().position(|id| removed.contains(id))
                    {
                        r.sources.retain(|id| !removed.contains(id));
                        if let Some(id) = added_id {
                            r.sources.insert(first.min(r.sources.len()), id);
                        }
                    }
                    if why == Why::Retention && !left.contains(&key) {
                        r.raw_expired = true;
                    }
                    true
                }
                // Rows deleted: a stale rollup is rebuilt from what remains; a day
                // with nothing left loses its rollups.
                Why::Delete => {
                    let keep = left.contains(&key) || r.raw_expired;
                    if !keep {
                        trash.extend([r.segment.path.clone(), r.segment.index_path.clone()]);
                    }
                    keep
                }
            }
        });
        let m = self.install(m, trash)?;
        for (tenant, day) in rebuild_days {
            let segs: Vec<&SegmentMeta> = m
                .segments
                .iter()
                .filter(|s| &s.tenant == tenant && s.day == *day)
                .collect();
            let mut cat = DayCatalog::default();
            let mut seen = BTreeSet::new();
            for s in segs {
                let idx = self.segment_index(s.id, &s.index_path)?;
                for t in &idx.tables {
                    for se in &t.series {
                        if seen.insert((t.name.clone(), se.labels.clone())) {
                            cat.series.push((t.name.clone(), se.labels.clone()));
                        }
                    }
                }
            }
            catalog::replace(self.vfs.as_ref(), &self.dir, tenant, *day, &cat)?;
            self.catalog_cache.lock().invalidate(tenant, *day);
        }
        Ok(())
    }

    /// The segments of each (tenant, day), in manifest (merge) order.
    fn partitions(&self) -> BTreeMap<(String, i64), Vec<SegmentMeta>> {
        let m = self.state.read().manifest.clone();
        let mut out: BTreeMap<(String, i64), Vec<SegmentMeta>> = BTreeMap::new();
        for s in &m.segments {
            out.entry((s.tenant.clone(), s.day))
                .or_default()
                .push(s.clone());
        }
        out
    }

    /// Merges runs of small segments (see [`CompactionConfig`]).
    pub(crate) fn compact(&self) -> Result<MaintenanceStats> {
        let _m = self.maint_lock.lock();
        let cfg = &self.config.compaction;
        let today = day_of(self.clock.now_ms());
        let mut stats = MaintenanceStats::default();
        for ((tenant, day), segs) in self.partitions() {
            if *self.stop.lock() {
                break;
            }
            let min_inputs = if day < today {
                2
            } else {
                cfg.min_inputs.max(2)
            };
            for run in plan_runs(&segs, cfg.target_bytes, min_inputs) {
                let ids: Vec<u64> = run.iter().map(|s| s.id).collect();
                let out = self.rewrite(run, &|_, _| Keep::All)?;
                let wrote = out.is_some();
                self.swap_segments(
                    &ids,
                    out.map(|(m, i, _)| (m, i)),
                    &BTreeSet::new(),
                    Why::Compaction,
                )?;
                tracing::info!(%tenant, day, inputs = ids.len(), "compacted segments");
                stats.compacted_inputs += ids.len();
                stats.compacted_outputs += usize::from(wrote);
            }
        }
        self.sweep();
        self.maint_totals.lock().add(&stats);
        Ok(stats)
    }

    /// Drops expired days: whole segments when every table in them expired, else a
    /// rewrite without the expired tables. Catalogs of emptied days are removed.
    pub(crate) fn enforce_retention(&self) -> Result<MaintenanceStats> {
        // Tiers that left out a table for saving too little take it in before its
        // raw rows go (normally done a day ahead; this covers a missed day).
        self.build_rollups(true)?;
        let _m = self.maint_lock.lock();
        let now = self.clock.now_ms();
        let ret = &self.config.retention;
        let mut stats = MaintenanceStats::default();
        for ((tenant, day), segs) in self.partitions() {
            for seg in segs {
                let expired: BTreeSet<&str> = seg
                    .tables
                    .iter()
                    .filter(|t| ret.day_expired(&tenant, &t.name, day, now))
                    .map(|t| t.name.as_str())
                    .collect();
                if expired.is_empty() {
                    continue;
                }
                let days = BTreeSet::from([(tenant.clone(), day)]);
                if expired.len() == seg.tables.len() {
                    self.swap_segments(&[seg.id], None, &days, Why::Retention)?;
                    stats.dropped_segments += 1;
                    stats.removed_rows += seg.rows;
                } else {
                    let out = self.rewrite(std::slice::from_ref(&seg), &keep_except(&expired))?;
                    let removed = out.as_ref().map_or(seg.rows, |o| o.2);
                    self.swap_segments(
                        &[seg.id],
                        out.map(|(m, i, _)| (m, i)),
                        &days,
                        Why::Retention,
                    )?;
                    stats.rewritten_segments += 1;
                    stats.removed_rows += removed;
                }
                tracing::info!(%tenant, day, segment = seg.id, "retention expired data");
            }
        }
        self.sweep();
        self.maint_totals.lock().add(&stats);
        Ok(stats)
    }

    /// Rewrites every segment of `tenant` holding a series `keep` drops rows of.
    /// `select` picks, per segment index, whether it may hold such a series.
    fn delete_where(
        &self,
        tenant: &str,
        select: &dyn Fn(&SegmentIndex, &SegmentMeta) -> bool,
        keep: &dyn Fn(&str, &Labels) -> Keep,
    ) -> Result<MaintenanceStats> {
        let _m = self.maint_lock.lock();
        let mut stats = MaintenanceStats::default();
        for ((t, day), segs) in self.partitions() {
            if t != tenant {
                continue;
            }
            for seg in segs {
                let idx = self.segment_index(seg.id, &seg.index_path)?;
                if !select(&idx, &seg) {
                    continue;
                }
                let days = BTreeSet::from([(t.clone(), day)]);
                let out = self.rewrite(std::slice::from_ref(&seg), keep)?;
                let removed = out.as_ref().map_or(seg.rows, |o| o.2);
                if removed == 0 {
                    // Nothing matched after all: drop the copy, keep the original.
                    if let Some((m, _, _)) = out {
                        for rel in [&m.path, &m.index_path] {
                            let _ = self.vfs.remove_file(&self.dir.join(rel));
                        }
                    }
                    continue;
                }
                match out {
                    Some((m, i, _)) => {
                        self.swap_segments(&[seg.id], Some((m, i)), &days, Why::Delete)?;
                        stats.rewritten_segments += 1;
                    }
                    None => {
                        self.swap_segments(&[seg.id], None, &days, Why::Delete)?;
                        stats.dropped_segments += 1;
                    }
                }
                stats.removed_rows += removed;
            }
        }
        self.sweep();
        self.maint_totals.lock().add(&stats);
        Ok(stats)
    }
}

impl Inner {
    /// Removes every rollup of `tenant`.
    fn drop_rollups(&self, tenant: &str) -> Result<()> {
        let _m = self.maint_lock.lock();
        let _flush = self.flush_lock.lock();
        let mut m = (*self.state.read().manifest).clone();
        let mut trash = Vec::new();
        m.rollups.retain(|r| {
            let gone = r.segment.tenant == tenant;
            if gone {
                trash.extend([r.segment.path.clone(), r.segment.index_path.clone()]);
            }
            !gone
        });
        if !trash.is_empty() {
            self.install(m, trash)?;
        }
        self.sweep();
        Ok(())
    }

    /// Deletes from the rollups that are all that is left of their day (raw data
    /// expired): whole series, or the buckets starting inside `[start, end]`.
    fn delete_from_expired_rollups(
        &self,
        tenant: &str,
        keep: &dyn Fn(&str, &Labels) -> Keep,
    ) -> Result<u64> {
        let _m = self.maint_lock.lock();
        let rollups: Vec<crate::manifest::RollupMeta> = self
            .state
            .read()
            .manifest
            .rollups
            .iter()
            .filter(|r| r.segment.tenant == tenant && r.raw_expired)
            .cloned()
            .collect();
        let mut removed = 0;
        for r in rollups {
            let out = self.rewrite(std::slice::from_ref(&r.segment), keep)?;
            let gone = out.as_ref().map_or(r.segment.rows, |o| o.2);
            if gone == 0 {
                if let Some((m, _, _)) = out {
                    self.trash.lock().discard_now(vec![m.path, m.index_path]);
                }
                continue;
            }
            removed += gone;
            let _flush = self.flush_lock.lock();
            let mut m = (*self.state.read().manifest).clone();
            let trash = vec![r.segment.path.clone(), r.segment.index_path.clone()];
            m.rollups.retain(|x| x.segment.id != r.segment.id);
            if let Some((seg, index, _)) = out {
                self.index_cache.lock().insert(seg.id, Arc::new(index));
                m.rollups.push(crate::manifest::RollupMeta {
                    segment: seg,
                    ..r.clone()
                });
            }
            self.install(m, trash)?;
        }
        self.sweep();
        Ok(removed)
    }
}

/// Contiguous runs of small segments to merge, each run's bytes at most `target`
/// (a run of one is never returned).
fn plan_runs(segs: &[SegmentMeta], target: u64, min_inputs: usize) -> Vec<&[SegmentMeta]> {
    let small = |s: &SegmentMeta| s.bytes < target / 2;
    let mut out = Vec::new();
    let mut i = 0;
    while i < segs.len() {
        if !small(&segs[i]) {
            i += 1;
            continue;
        }
        let mut j = i;
        let mut bytes = 0u64;
        while j < segs.len() && small(&segs[j]) && (j == i || bytes + segs[j].bytes <= target) {
            bytes += segs[j].bytes;
            j += 1;
        }
        if j - i >= min_inputs {
            out.push(&segs[i..j]);
        }
        i = j.max(i + 1);
    }
    out
}

pub(crate) fn maintenance_thread(inner: Arc<Inner>) {
    let interval = inner.config.compaction.interval;
    loop {
        {
            let mut stop = inner.stop.lock();
            if *stop {
                return;
            }
            inner.wake_maint.wait_for(&mut stop, interval);
            if *stop {
                return;
            }
        }
        if let Err(e) = inner.enforce_retention() {
            tracing::error!(error = %e, "retention pass failed; will retry");
        }
        if let Err(e) = inner.expire_rollups() {
            tracing::error!(error = %e, "rollup retention failed; will retry");
        }
        if let Err(e) = inner.compact() {
            tracing::error!(error = %e, "compaction failed; will retry");
        }
        if let Err(e) = inner.build_rollups(false) {
            tracing::error!(error = %e, "building rollups failed; will retry");
        }
    }
}

impl Storage {
    /// Totals of compaction, retention and deletes since the store opened.
    pub fn maintenance_totals(&self) -> MaintenanceStats {
        self.inner.maint_totals.lock().clone()
    }

    /// Runs one compaction pass now (the background pass runs every
    /// `compaction.interval`).
    pub fn compact(&self) -> Result<MaintenanceStats> {
        self.inner.compact()
    }

    /// Drops expired data now (the background pass runs every `compaction.interval`).
    pub fn enforce_retention(&self) -> Result<MaintenanceStats> {
        self.inner.enforce_retention()
    }

    /// Applies the rollup tiers' retention now (per tier, tenant and table; the
    /// background pass runs it after raw retention). Returns the rollup segments
    /// dropped or rewritten.
    pub fn expire_rollups(&self) -> Result<usize> {
        self.inner.expire_rollups()
    }

    /// Deletes every row of `tenant`, persisted or not, acknowledged before the call.
    /// Writes that race with the call may survive it.
    pub fn delete_tenant(&self, tenant: &str) -> Result<MaintenanceStats> {
        self.flush()?;
        let stats = self
            .inner
            .delete_where(tenant, &|_, _| true, &|_, _| Keep::Nothing)?;
        self.inner.drop_rollups(tenant)?;
        let dir = self.inner.dir.join("catalog").join(tenant);
        if let Ok(days) = self.inner.vfs.list(&dir) {
            for d in days {
                let _ = self.inner.vfs.remove_file(&dir.join(d));
            }
        }
        Ok(stats)
    }

    /// Deletes the rows in `[start, end]` of the series of `table` that match every
    /// matcher, from every segment (the head is flushed first, so rows acknowledged
    /// before the call are included).
    pub fn delete_series(
        &self,
        tenant: &str,
        table: &str,
        matchers: &[Matcher],
        start: TimestampMs,
        end: TimestampMs,
    ) -> Result<MaintenanceStats> {
        self.flush()?;
        let select = |idx: &SegmentIndex, seg: &SegmentMeta| {
            seg.max_time >= start
                && seg.min_time <= end
                && idx
                    .table(table)
                    .is_some_and(|t| !t.select(matchers, start, end).is_empty())
        };
        let keep = |t: &str, labels: &Labels| {
            if t != table || !matchers.iter().all(|m| m.matches_series(t, labels)) {
                Keep::All
            } else if start == i64::MIN && end == i64::MAX {
                Keep::Nothing
            } else {
                Keep::Outside(start, end)
            }
        };
        let mut stats = self.inner.delete_where(tenant, &select, &keep)?;
        stats.removed_rows += self.inner.delete_from_expired_rollups(tenant, &keep)?;
        Ok(stats)
    }
}

/// Segments per (tenant, day) a query may have to open after compaction, at most:
/// the large ones (≥ target/2 each) plus fewer than `min_inputs` small ones.
pub fn max_segments_per_day(day_bytes: u64, cfg: &CompactionConfig) -> u64 {
    day_bytes / (cfg.target_bytes / 2).max(1) + cfg.min_inputs as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(id: u64, bytes: u64) -> SegmentMeta {
        SegmentMeta {
            id,
            tenant: "t".into(),
            day: 1,
            path: String::new(),
            index_path: String::new(),
            rows: 1,
            series: 1,
            bytes,
            index_bytes: 0,
            min_time: 0,
            max_time: 0,
            tables: Vec::new(),
        }
    }

    #[test]
    fn runs_are_contiguous_small_and_bounded() {
        let segs: Vec<_> = [10, 10, 10, 90, 10, 10, 10, 10, 10]
            .iter()
            .enumerate()
            .map(|(i, &b)| seg(i as u64, b))
            .collect();
        let runs = plan_runs(&segs, 100, 2);
        let ids: Vec<Vec<u64>> = runs
            .iter()
            .map(|r| r.iter().map(|s| s.id).collect())
            .collect();
        assert_eq!(ids, vec![vec![0, 1, 2], vec![4, 5, 6, 7, 8]]);
        // Bounded by the target: 45-byte segments pair up.
        let segs: Vec<_> = (0..5).map(|i| seg(i, 45)).collect();
        let runs = plan_runs(&segs, 100, 2);
        assert_eq!(runs.len(), 2);
        assert!(runs.iter().all(|r| r.len() == 2));
        // Fewer than min_inputs: nothing.
        assert!(plan_runs(&segs[..3], 1000, 4).is_empty());
    }

    #[test]
    fn retention_overrides() {
        let mut r = RetentionConfig::default();
        r.tenants.insert("a".into(), Duration::from_secs(86_400));
        r.tables
            .insert("calls".into(), Duration::from_secs(2 * 86_400));
        r.tables
            .insert("a/calls".into(), Duration::from_secs(3 * 86_400));
        assert_eq!(r.of("b", "x"), Some(15 * DAY_MS));
        assert_eq!(r.of("a", "x"), Some(DAY_MS));
        assert_eq!(r.of("b", "calls"), Some(2 * DAY_MS));
        assert_eq!(r.of("a", "calls"), Some(3 * DAY_MS));
        let now = 10 * DAY_MS + 5;
        // Day 8 ends at 9·DAY−1 < now − 1 day: expired for tenant a, not for b.
        assert!(r.day_expired("a", "x", 8, now));
        assert!(!r.day_expired("a", "x", 9, now));
        assert!(!r.day_expired("b", "x", 8, now));
    }
}
