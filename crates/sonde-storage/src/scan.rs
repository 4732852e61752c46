//! The read path: one table's matching series over a time range, merged from the
//! segments (pruned by time through the manifest, by tags through each segment's
//! index), the frozen heads and the active head.
//!
//! Sources are merged oldest first (segments in id order, then frozen heads, then the
//! active head), so after normalization the newest write of a timestamp wins, delta
//! sums add across sources, and event rows are all kept.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBufferBuilder, DictionaryArray, Float64Array, Int32Array, Int64Array,
    RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit};
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use sonde_types::{FieldDef, FieldType, Labels, TIME_COLUMN, TimestampMs};

use crate::engine::TableSchema;
use crate::head::TableHead;
use crate::par::PARALLEL_MIN_SERIES;
use crate::postings::Matcher;
use crate::segment::index::SegmentIndex;
use crate::segment::reader::{SeriesRead, read_series_parts};
use crate::series::{Column, SeriesData, Values};
use crate::{Error, Result, Storage};

/// Series entries of decoded segment indexes kept in memory (a decoded series entry
/// is a label set plus postings, ~100–300 bytes: about 100–300 MB at the bound).
const INDEX_CACHE_SERIES: usize = 1_000_000;

/// Decoded segment indexes by segment id — whole, or one table's part (a query of one
/// table decodes only that part of a segment shared by many) — bounded by their total
/// series count (a 30-day query touches 30 raw and 60 rollup indexes; one 100k-series
/// index is tens of MB).
#[derive(Debug, Default)]
pub(crate) struct IndexCache {
    /// Key: (segment id, table name; "" for the whole index).
    map: std::collections::BTreeMap<(u64, String), Arc<SegmentIndex>>,
    series: usize,
}

impl IndexCache {
    pub fn get(&self, id: &u64) -> Option<&Arc<SegmentIndex>> {
        self.map.get(&(*id, String::new()))
    }
    pub fn insert(&mut self, id: u64, idx: Arc<SegmentIndex>) {
        self.insert_part(id, String::new(), idx);
    }
    /// A table's part, or the whole index when that is cached.
    pub fn get_table(&self, id: u64, table: &str) -> Option<&Arc<SegmentIndex>> {
        self.get(&id)
            .or_else(|| self.map.get(&(id, table.to_string())))
    }
    pub fn insert_table(&mut self, id: u64, table: &str, idx: Arc<SegmentIndex>) {
        self.insert_part(id, table.to_string(), idx);
    }
    fn insert_part(&mut self, id: u64, part: String, idx: Arc<SegmentIndex>) {
        let n = idx.series_count();
        if self.series + n > INDEX_CACHE_SERIES {
            // Evict until half the budget is free (any order: ids are not recency).
            let keys: Vec<(u64, String)> = self.map.keys().cloned().collect();
            for old in keys {
                if self.series + n <= INDEX_CACHE_SERIES / 2 {
                    break;
                }
                if let Some(prev) = self.map.remove(&old) {
                    self.series -= prev.series_count();
                }
            }
        }
        if let Some(prev) = self.map.insert((id, part), idx) {
            self.series -= prev.series_count();
        }
        self.series += n;
    }
    /// Forgets everything cached of segment `id`.
    pub fn remove(&mut self, id: &u64) {
        let keys: Vec<(u64, String)> = self
            .map
            .range((*id, String::new())..)
            .take_while(|(k, _)| k.0 == *id)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some(prev) = self.map.remove(&k) {
                self.series -= prev.series_count();
            }
        }
    }
}

/// Bytes of parsed segment footers kept in memory ([`FooterCache`]). A footer with its
/// offset index is ~0.1–1 MB for a 100k-series day, so this holds a month of days.
const FOOTER_CACHE_BYTES: usize = 64 << 20;

/// Parsed segment footers by segment id ([`crate::segment::reader::load_footer`]),
/// bounded by their size in memory.
#[derive(Debug, Default)]
pub(crate) struct FooterCache {
    map: BTreeMap<u64, (ArrowReaderMetadata, usize)>,
    bytes: usize,
}

impl FooterCache {
    fn get(&self, id: u64) -> Option<ArrowReaderMetadata> {
        self.map.get(&id).map(|(f, _)| f.clone())
    }
    fn insert(&mut self, id: u64, footer: ArrowReaderMetadata) {
        let n = footer.metadata().memory_size();
        if self.bytes + n > FOOTER_CACHE_BYTES {
            // Evict until half the budget is free (any order: ids are not recency).
            while self.bytes + n > FOOTER_CACHE_BYTES / 2 {
                let Some((_, (_, old))) = self.map.pop_first() else {
                    break;
                };
                self.bytes -= old;
            }
        }
        if let Some((_, old)) = self.map.insert(id, (footer, n)) {
            self.bytes -= old;
        }
        self.bytes += n;
    }
    /// The segment ids whose footers are cached.
    pub fn ids(&self) -> Vec<u64> {
        self.map.keys().copied().collect()
    }
    /// Forgets segment `id`'s footer.
    pub fn remove(&mut self, id: &u64) {
        if let Some((_, old)) = self.map.remove(id) {
            self.bytes -= old;
        }
    }
}

/// What to read: a table, tag matchers, and an inclusive time range.
#[derive(Debug, Clone)]
pub struct ScanRequest {
    pub table: String,
    pub matchers: Vec<Matcher>,
    pub start: TimestampMs,
    pub end: TimestampMs,
    /// Fields to read (in table order); `None` reads all. Segment reads fetch only
    /// the column chunks of these fields.
    pub fields: Option<Vec<String>>,
    /// Threads a segment read may use (its series split into contiguous parts).
    pub threads: usize,
}

impl ScanRequest {
    pub fn new(table: impl Into<String>, start: TimestampMs, end: TimestampMs) -> Self {
        ScanRequest {
            table: table.into(),
            matchers: Vec::new(),
            start,
            end,
            fields: None,
            threads: 1,
        }
    }
    /// Reads only these fields.
    pub fn with_fields(mut self, fields: Vec<String>) -> Self {
        self.fields = Some(fields);
        self
    }
    /// Reads each segment's series on up to `threads` threads.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }
    pub fn with(mut self, m: Matcher) -> Self {
        self.matchers.push(m);
        self
    }
}

/// What a scan touched, for `EXPLAIN ANALYZE` and selectivity tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScanStats {
    /// Segments of the tenant that hold the table.
    pub segments_total: usize,
    pub segments_pruned_by_time: usize,
    /// Segments whose index matched no series.
    pub segments_pruned_by_index: usize,
    pub segments_read: usize,
    /// Total size of the segment files that were opened.
    pub segment_bytes: u64,
    /// Bytes actually read from segment files.
    pub bytes_read: u64,
    pub series: usize,
    pub rows: usize,
}

/// The merged result of a scan.
#[derive(Debug)]
pub struct ScanOutput {
    pub schema: TableSchema,
    /// Matching series, sorted by labels, rows sorted by time.
    pub series: Vec<(Labels, SeriesData)>,
    pub stats: ScanStats,
}

/// One segment's part of a scan: the series its index selected, not yet read.
struct SegmentRead {
    path: std::path::PathBuf,
    index: Arc<SegmentIndex>,
    footer: ArrowReaderMetadata,
    ordinals: Vec<u32>,
    /// The table's series order in this segment ([`crate::order`]).
    order: Vec<String>,
}

/// What a scan will read: the head rows (taken at the snapshot) and the segments
/// with matching series, oldest first.
struct ScanPlan {
    schema: TableSchema,
    stats: ScanStats,
    segments: Vec<SegmentRead>,
    /// Frozen heads' then the active head's rows (possibly empty).
    heads: Vec<Vec<(Labels, SeriesData)>>,
}

/// Series of one segment read as one part of a streamed scan: bounds what a part
/// holds decoded at once, small enough (~250 KB at 240 samples a series) that a
/// series is still in cache when the caller's map reaches it and its buffers are
/// reused from the allocator's thread cache by the next part. Parts of 4,096 made
/// the dashboard corpus 20–30 % slower than 512, and 128 was a few % faster again
/// (benches/README.md).
const STREAM_PART_SERIES: usize = 128;

/// Series a run of a segment read is sized for, at least (see `read_segment`).
const MIN_RUN_SERIES: usize = 1024;

/// Series a run of a streamed merge holds decoded at most (see `stream_merged`).
const MERGE_RUN_SERIES: usize = 2048;

impl Storage {
    /// Reads the series of `req.table` matching `req.matchers` in `[start, end]`.
    /// An unknown table gives an empty result.
    pub fn scan(&self, tenant: &str, req: &ScanRequest) -> Result<ScanOutput> {
        let Some(plan) = self.plan_scan(tenant, req)? else {
            return Ok(empty_output());
        };
        self.read_plan(plan, req)
    }

    /// [`Storage::scan`] handed to `f` in contiguous parts of its series (in the
    /// segments' series order, [`crate::order`]; in label order when segments of
    /// different orders are merged) on up to `req.threads` threads; returns `f`'s
    /// results in order and the scan's statistics. When one segment holds every
    /// matching row (the common case for anything older than the head), each part is
    /// read, mapped and dropped; when segments sharing an order and the head hold
    /// them, their merge streams (`stream_merged`); so the whole selection
    /// is never decoded at once. Otherwise the merged scan is split.
    pub fn scan_map<U: Send>(
        &self,
        tenant: &str,
        req: &ScanRequest,
        f: impl Fn(&mut [(Labels, SeriesData)]) -> U + Sync,
    ) -> Result<(Vec<U>, ScanStats)> {
        let Some(mut plan) = self.plan_scan(tenant, req)? else {
            return Ok((Vec::new(), ScanStats::default()));
        };
        if plan.segments.len() != 1 || plan.heads.iter().any(|h| !h.is_empty()) {
            // Segments of one (tenant, day) share their tables' orders, and a table
            // new to a day usually gets the same order from the same kind of series.
            if let Some(first) = plan.segments.first()
                && plan.segments.iter().all(|s| s.order == first.order)
            {
                return self.stream_merged(plan, req, &f);
            }
            let mut out = self.read_plan(plan, req)?;
            let parts =
                crate::par::map_parts(&mut out.series, req.threads, PARALLEL_MIN_SERIES, &f);
            return Ok((parts, out.stats));
        }
        let seg = plan.segments.pop().expect("one segment");
        let (parts, bytes) = self.read_segment(
            &seg,
            req,
            &plan.schema.fields,
            STREAM_PART_SERIES,
            |mut rows| {
                let n: usize = rows.iter().map(|(_, d)| d.len()).sum();
                (f(&mut rows), n, rows.len())
            },
        )?;
        plan.stats.segments_read += 1;
        plan.stats.bytes_read += bytes;
        let mut out = Vec::with_capacity(parts.len());
        for (u, rows, series) in parts {
            out.push(u);
            plan.stats.rows += rows;
            plan.stats.series += series;
        }
        Ok((out, plan.stats))
    }

    /// [`Storage::scan_map`] over several sources (segments sharing one series
    /// order, heads), merged as it streams: the sources' matching label sets are
    /// merged in that order first (from the indexes and the head rows, no data), then
    /// cut into runs of consecutive series; each run reads its series from every
    /// segment with one reader per segment, merges each series' rows (oldest source
    /// first, as [`Storage::scan`] does) and hands them to `f` in parts. A run holds at
    /// most [`MERGE_RUN_SERIES`] series decoded, where the whole merge decodes the
    /// whole selection: over two days of the 100k-series dataset the dashboard
    /// queries took 1.8–2.6× as long that way and peaked at 410 MiB instead of ~190.
    fn stream_merged<U: Send>(
        &self,
        plan: ScanPlan,
        req: &ScanRequest,
        f: &(impl Fn(&mut [(Labels, SeriesData)]) -> U + Sync),
    ) -> Result<(Vec<U>, ScanStats)> {
        let ScanPlan {
            schema,
            mut stats,
            segments,
            heads,
        } = plan;
        let order: &[String] = segments.first().map_or(&[], |s| &s.order);
        // Head rows in the segments' order.
        let heads: Vec<Vec<(Labels, SeriesData)>> = heads
            .into_iter()
            .filter(|rows| !rows.is_empty())
            .map(|rows| crate::order::sort_rows(order, rows))
            .collect();
        // Each source's label sets, in order: segments (oldest first), then heads;
        // merged into one entry per distinct series, with the sources holding it.
        let tables: Vec<&crate::segment::index::IndexTable> = segments
            .iter()
            .map(|s| s.index.table(&req.table).expect("selected from this table"))
            .collect();
        let lists: Vec<Vec<&Labels>> = segments
            .iter()
            .zip(&tables)
            .map(|(s, t)| {
                s.ordinals
                    .iter()
                    .map(|&o| &t.series[o as usize].labels)
                    .collect()
            })
            .chain(
                heads
                    .iter()
                    .map(|rows| rows.iter().map(|(l, _)| l).collect()),
            )
            .collect();
        let merged: Vec<(Labels, Vec<(usize, usize)>)> = crate::order::merge(order, &lists)
            .into_iter()
            .map(|(l, from)| (l.clone(), from))
            .collect();
        drop(lists);
        // Runs of consecutive series; each run takes its slice of every head.
        let n = merged.len().max(1);
        let runs = if req.threads > 1 && n > PARALLEL_MIN_SERIES {
            (n.div_ceil(MIN_RUN_SERIES).next_multiple_of(req.threads)).min(2 * req.threads)
        } else {
            1
        }
        .max(n.div_ceil(MERGE_RUN_SERIES));
        let run_len = n.div_ceil(runs);
        let mut head_iters: Vec<_> = heads.into_iter().map(Vec::into_iter).collect();
        let nseg = segments.len();
        type Run<'a> = (
            &'a [(Labels, Vec<(usize, usize)>)],
            Vec<Vec<(Labels, SeriesData)>>,
        );
        let mut work: Vec<Run<'_>> = Vec::new();
        for run in merged.chunks(run_len) {
            let mut taken = vec![0usize; head_iters.len()];
            for &(i, _) in run.iter().flat_map(|(_, from)| from) {
                if i >= nseg {
                    taken[i - nseg] += 1;
                }
            }
            let rows = head_iters
                .iter_mut()
                .zip(taken)
                .map(|(it, k)| it.by_ref().take(k).collect())
                .collect();
            work.push((run, rows));
        }
        let kind = schema.kind;
        let read = |(run, heads): Run<'_>| -> Result<(Vec<U>, u64, usize, usize)> {
            let mut bytes = 0;
            let mut sources = Vec::with_capacity(nseg + heads.len());
            for (i, seg) in segments.iter().enumerate() {
                let ordinals: Vec<u32> = run
                    .iter()
                    .flat_map(|(_, from)| from)
                    .filter(|&&(src, _)| src == i)
                    .map(|&(_, pos)| seg.ordinals[pos])
                    .collect();
                let (rows, b) = if ordinals.is_empty() {
                    (Vec::new(), 0)
                } else {
                    crate::segment::reader::read_series(
                        self.inner.vfs.as_ref(),
                        &SeriesRead {
                            path: seg.path.clone(),
                            footer: &seg.footer,
                            table: tables[i],
                            ordinals: &ordinals,
                            fields: &schema.fields,
                            start: req.start,
                            end: req.end,
                        },
                    )?
                };
                bytes += b;
                sources.push(rows.into_iter().peekable());
            }
            sources.extend(heads.into_iter().map(|h| h.into_iter().peekable()));
            let (mut out, mut part) = (Vec::new(), Vec::new());
            let (mut rows, mut series) = (0, 0);
            for (labels, from) in run {
                // Oldest source first; a segment leaves out a series without rows in
                // the range.
                let mut parts = from
                    .iter()
                    .filter_map(|&(i, _)| sources[i].next_if(|(l, _)| l == labels));
                let Some((labels, mut data)) = parts.next() else {
                    continue;
                };
                let mut several = false;
                for (_, d) in parts {
                    data.extend(&d);
                    several = true;
                }
                if several && !data.ordered {
                    data = data.normalized(kind).into_owned();
                }
                rows += data.len();
                series += 1;
                part.push((labels, data));
                if part.len() == STREAM_PART_SERIES {
                    out.push(f(&mut part));
                    part.clear();
                }
            }
            if !part.is_empty() {
                out.push(f(&mut part));
            }
            Ok((out, bytes, rows, series))
        };
        let results: Vec<Result<_>> = if req.threads > 1 && work.len() > 1 {
            crate::par::map_each(work, read)
        } else {
            work.into_iter().map(read).collect()
        };
        let mut out = Vec::new();
        for r in results {
            let (u, bytes, rows, series) = r?;
            out.extend(u);
            stats.bytes_read += bytes;
            stats.rows += rows;
            stats.series += series;
        }
        stats.segments_read += nseg;
        Ok((out, stats))
    }

    /// Reads `seg`'s selected series in contiguous parts of up to `max_part` series
    /// on up to `req.threads` threads, mapping each part with `f` as soon as it is
    /// read. Returns the results in order and the bytes read.
    ///
    /// Each thread's share is a few contiguous runs of series, each read by one
    /// Parquet reader that hands over `max_part` series at a time: a reader per
    /// part decoded the footer and created a decompression context per column for
    /// every 512 series (~4 % of a 100k-series dashboard query).
    fn read_segment<U: Send>(
        &self,
        seg: &SegmentRead,
        req: &ScanRequest,
        fields: &[FieldDef],
        max_part: usize,
        f: impl Fn(Vec<(Labels, SeriesData)>) -> U + Sync,
    ) -> Result<(Vec<U>, u64)> {
        let it = seg
            .index
            .table(&req.table)
            .expect("selected from this table");
        let read = |ordinals: &[u32]| -> Result<(Vec<U>, u64)> {
            let mut out = Vec::new();
            let bytes = read_series_parts(
                self.inner.vfs.as_ref(),
                &SeriesRead {
                    path: seg.path.clone(),
                    footer: &seg.footer,
                    table: it,
                    ordinals,
                    fields,
                    start: req.start,
                    end: req.end,
                },
                max_part,
                |rows| {
                    out.push(f(rows));
                    Ok(())
                },
            )?;
            Ok((out, bytes))
        };
        // Up to two runs per thread, so a thread slowed by the machine leaves work to
        // the other, but about MIN_RUN_SERIES or more each: each run sets up its own
        // reader (a zstd compression and decompression context per column chunk, each
        // running CPUID, 6.5 µs on a VM here), which at 10k series was ~10 % of a
        // query reading 667 of them in three runs; 1,334 series in two runs instead of
        // four took 8 % off the 10k tokens query. A whole
        // number of runs per thread (three on two threads left one twice the work);
        // one run for a selection too small to be worth a second thread.
        let n = seg.ordinals.len().max(1);
        let runs = if req.threads > 1 && n > PARALLEL_MIN_SERIES {
            (n.div_ceil(MIN_RUN_SERIES).next_multiple_of(req.threads)).min(2 * req.threads)
        } else {
            1
        };
        let run = n.div_ceil(runs);
        let runs: Vec<&[u32]> = seg.ordinals.chunks(run).collect();
        let results: Vec<Result<(Vec<U>, u64)>> = if req.threads > 1 && runs.len() > 1 {
            crate::par::map_each(runs, read)
        } else {
            runs.into_iter().map(&read).collect()
        };
        let mut out = Vec::with_capacity(results.len());
        let mut bytes = 0;
        for r in results {
            let (u, b) = r?;
            out.extend(u);
            bytes += b;
        }
        Ok((out, bytes))
    }

    /// Snapshots the table's sources: head rows, and per segment the series its index
    /// selects. `None` for an unknown table.
    fn plan_scan(&self, tenant: &str, req: &ScanRequest) -> Result<Option<ScanPlan>> {
        let inner = &self.inner;
        let Some(mut schema) = inner
            .schemas
            .read()
            .get(tenant)
            .and_then(|t| t.get(&req.table))
            .cloned()
        else {
            return Ok(None);
        };
        if let Some(wanted) = &req.fields {
            schema.fields.retain(|f| wanted.contains(&f.name));
        }
        let mut stats = ScanStats::default();
        // Snapshot, and read the active head while holding the state lock so a
        // concurrent rotation cannot hide rows between the heads.
        let (manifest, frozen, active_rows) = {
            let st = inner.state.read();
            let active = st.active.read();
            let rows = head_rows(active.table(tenant, &req.table), req, &schema.fields);
            (st.manifest.clone(), st.frozen.clone(), rows)
        };
        let mut segments = Vec::new();
        for seg in &manifest.segments {
            if seg.tenant != tenant {
                continue;
            }
            let Some(meta) = seg.tables.iter().find(|t| t.name == req.table) else {
                continue;
            };
            stats.segments_total += 1;
            if meta.max_time < req.start || meta.min_time > req.end {
                stats.segments_pruned_by_time += 1;
                continue;
            }
            let index = inner.table_index(seg.id, &seg.index_path, &req.table)?;
            let Some(it) = index.table(&req.table) else {
                continue;
            };
            let ordinals = it.select(&req.matchers, req.start, req.end);
            if ordinals.is_empty() {
                stats.segments_pruned_by_index += 1;
                continue;
            }
            stats.segment_bytes += seg.bytes;
            segments.push(SegmentRead {
                path: inner.dir.join(&seg.path),
                index,
                footer: inner.segment_footer(seg.id, &seg.path)?,
                ordinals,
                order: meta.order.clone(),
            });
        }
        let mut heads: Vec<_> = frozen
            .iter()
            .map(|f| head_rows(f.head.table(tenant, &req.table), req, &schema.fields))
            .collect();
        heads.push(active_rows);
        Ok(Some(ScanPlan {
            schema,
            stats,
            segments,
            heads,
        }))
    }

    /// Reads every source of `plan` and merges them.
    fn read_plan(&self, plan: ScanPlan, req: &ScanRequest) -> Result<ScanOutput> {
        let ScanPlan {
            schema,
            mut stats,
            segments,
            heads,
        } = plan;
        // Each source's rows: a segment's in its table's order, a head's unsorted.
        let mut sources: Vec<Vec<(Labels, SeriesData)>> = Vec::new();
        for seg in segments {
            let (parts, bytes) =
                self.read_segment(&seg, req, &schema.fields, usize::MAX, |rows| rows)?;
            stats.bytes_read += bytes;
            stats.segments_read += 1;
            sources.push(parts.into_iter().flatten().collect());
        }
        sources.extend(heads);
        sources.retain(|rows| !rows.is_empty());
        if sources.len() <= 1 {
            // One source (e.g. everything flushed): nothing to merge.
            let Some(mut series) = sources.pop() else {
                return Ok(ScanOutput {
                    schema,
                    series: Vec::new(),
                    stats,
                });
            };
            if !series.is_sorted_by(|a, b| a.0 < b.0) {
                series.sort_by(|a, b| a.0.cmp(&b.0));
            }
            debug_assert!(series.windows(2).all(|w| w[0].0 < w[1].0), "sorted, unique");
            stats.rows = series.iter().map(|(_, d)| d.len()).sum();
            stats.series = series.len();
            return Ok(ScanOutput {
                schema,
                series,
                stats,
            });
        }
        let mut merged: BTreeMap<Labels, Vec<SeriesData>> = BTreeMap::new();
        for rows in sources {
            for (labels, data) in rows {
                merged.entry(labels).or_default().push(data);
            }
        }
        let mut series = Vec::with_capacity(merged.len());
        for (labels, mut parts) in merged {
            let data = if parts.len() == 1 {
                parts.pop().unwrap()
            } else {
                let mut all = parts.remove(0);
                for p in &parts {
                    all.extend(p);
                }
                if all.ordered {
                    all
                } else {
                    all.normalized(schema.kind).into_owned()
                }
            };
            stats.rows += data.len();
            series.push((labels, data));
        }
        stats.series = series.len();
        Ok(ScanOutput {
            schema,
            series,
            stats,
        })
    }
}

/// The answer for an unknown table.
fn empty_output() -> ScanOutput {
    ScanOutput {
        schema: TableSchema {
            kind: sonde_types::MetricKind::Gauge,
            fields: Vec::new(),
            tags: Default::default(),
        },
        series: Vec::new(),
        stats: ScanStats::default(),
    }
}

impl crate::engine::Inner {
    /// A segment's decoded index, from the cache or the file.
    pub(crate) fn segment_index(&self, id: u64, rel: &str) -> Result<Arc<SegmentIndex>> {
        if let Some(idx) = self.index_cache.lock().get(&id) {
            return Ok(idx.clone());
        }
        let idx = Arc::new(self.read_index(rel, None)?);
        self.index_cache.lock().insert(id, idx.clone());
        Ok(idx)
    }

    /// The part of a segment's index for `table` (the whole index when that is
    /// cached), from the cache or the file.
    pub(crate) fn table_index(&self, id: u64, rel: &str, table: &str) -> Result<Arc<SegmentIndex>> {
        if let Some(idx) = self.index_cache.lock().get_table(id, table) {
            return Ok(idx.clone());
        }
        let idx = Arc::new(self.read_index(rel, Some(table))?);
        self.index_cache.lock().insert_table(id, table, idx.clone());
        Ok(idx)
    }

    /// A segment's parsed footer, from the cache or the file.
    pub(crate) fn segment_footer(&self, id: u64, rel: &str) -> Result<ArrowReaderMetadata> {
        if let Some(f) = self.footer_cache.lock().get(id) {
            return Ok(f);
        }
        let f = crate::segment::reader::load_footer(self.vfs.as_ref(), &self.dir.join(rel))?;
        self.footer_cache.lock().insert(id, f.clone());
        Ok(f)
    }

    /// Reads and decodes an index file, whole or one table's part.
    fn read_index(&self, rel: &str, table: Option<&str>) -> Result<SegmentIndex> {
        let path = self.dir.join(rel);
        let data = self
            .vfs
            .read(&path)
            .map_err(|e| Error::io("reading segment index", &path, e))?;
        match table {
            Some(t) => SegmentIndex::decode_table(&data, &path, t),
            None => SegmentIndex::decode(&data, &path),
        }
    }
}

/// A head table's matching rows, with columns re-ordered to the logical fields.
fn head_rows(
    th: Option<&TableHead>,
    req: &ScanRequest,
    fields: &[FieldDef],
) -> Vec<(Labels, SeriesData)> {
    let Some(th) = th else { return Vec::new() };
    let map: Vec<Option<usize>> = fields
        .iter()
        .map(|f| th.fields.iter().position(|g| g.name == f.name))
        .collect();
    th.select(&req.table, &req.matchers, req.start, req.end)
        .into_iter()
        .map(|(l, mut d)| {
            let mut cols = std::mem::take(&mut d.cols);
            d.cols = map
                .iter()
                .map(|j| j.and_then(|j| cols.get_mut(j).and_then(Option::take)))
                .collect();
            (l, d)
        })
        .collect()
}

impl ScanOutput {
    /// The logical Arrow schema: tag columns (dictionary strings), `time`, fields.
    pub fn arrow_schema(&self) -> SchemaRef {
        self.schema.arrow_schema()
    }

    /// All rows as one Arrow batch in the logical schema.
    pub fn to_record_batch(&self) -> Result<RecordBatch> {
        let schema = self.arrow_schema();
        let n: usize = self.series.iter().map(|(_, d)| d.len()).sum();
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for tag in &self.schema.tags {
            let mut values: Vec<&str> = Vec::new();
            let mut ids: BTreeMap<&str, i32> = BTreeMap::new();
            let mut keys: Vec<Option<i32>> = Vec::with_capacity(n);
            for (labels, d) in &self.series {
                let k = labels.get(tag).map(|v| {
                    *ids.entry(v).or_insert_with(|| {
                        values.push(v);
                        values.len() as i32 - 1
                    })
                });
                keys.extend(std::iter::repeat_n(k, d.len()));
            }
            cols.push(Arc::new(DictionaryArray::<Int32Type>::try_new(
                Int32Array::from(keys),
                Arc::new(StringArray::from(values)),
            )?));
        }
        let ts: Vec<i64> = self
            .series
            .iter()
            .flat_map(|(_, d)| d.ts.iter().copied())
            .collect();
        cols.push(Arc::new(
            TimestampMillisecondArray::from(ts).with_timezone("UTC"),
        ));
        for (j, f) in self.schema.fields.iter().enumerate() {
            if f.ty == FieldType::Bytes {
                let mut b = arrow::array::BinaryBuilder::new();
                for (_, d) in &self.series {
                    match d.cols.get(j).and_then(|c| c.as_ref()) {
                        Some(
                            c @ Column {
                                values: Values::Bytes(x),
                                ..
                            },
                        ) => {
                            for (i, v) in x.iter().enumerate() {
                                if c.is_valid(i) {
                                    b.append_value(v);
                                } else {
                                    b.append_null();
                                }
                            }
                        }
                        _ => (0..d.len()).for_each(|_| b.append_null()),
                    }
                }
                cols.push(Arc::new(b.finish()));
                continue;
            }
            let mut valid = BooleanBufferBuilder::new(n);
            let mut f64s = Vec::new();
            let mut i64s = Vec::new();
            for (_, d) in &self.series {
                match d.cols.get(j).and_then(|c| c.as_ref()) {
                    None => {
                        valid.append_n(d.len(), false);
                        f64s.resize(f64s.len() + d.len(), 0.0);
                        i64s.resize(i64s.len() + d.len(), 0);
                    }
                    Some(Column { values, valid: v }) => {
                        match v {
                            Some(v) => v.iter().for_each(|&b| valid.append(b)),
                            None => valid.append_n(d.len(), true),
                        }
                        match (values, f.ty) {
                            (Values::F64(x), FieldType::F64) => f64s.extend_from_slice(x),
                            (Values::I64(x), FieldType::F64) => {
                                f64s.extend(x.iter().map(|&v| v as f64))
                            }
                            (Values::I64(x), FieldType::I64) => i64s.extend_from_slice(x),
                            (Values::F64(x), FieldType::I64) => {
                                i64s.extend(x.iter().map(|&v| v as i64))
                            }
                            (x, _) => {
                                f64s.resize(f64s.len() + x.len(), 0.0);
                                i64s.resize(i64s.len() + x.len(), 0);
                            }
                        }
                    }
                }
            }
            let nulls = Some(NullBuffer::new(valid.finish()));
            cols.push(match f.ty {
                FieldType::I64 => Arc::new(Int64Array::new(i64s.into(), nulls)),
                _ => Arc::new(Float64Array::new(f64s.into(), nulls)),
            });
        }
        Ok(RecordBatch::try_new(schema, cols)?)
    }
}

impl TableSchema {
    /// The logical Arrow schema: tag columns (dictionary strings), `time`, fields.
    pub fn arrow_schema(&self) -> SchemaRef {
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let mut cols: Vec<Field> = self
            .tags
            .iter()
            .map(|t| Field::new(t, dict.clone(), true))
            .collect();
        cols.push(Field::new(
            TIME_COLUMN,
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ));
        for f in &self.fields {
            let ty = match f.ty {
                FieldType::F64 => DataType::Float64,
                FieldType::I64 => DataType::Int64,
                FieldType::Bytes => DataType::Binary,
            };
            cols.push(Field::new(&f.name, ty, true));
        }
        Arc::new(Schema::new(cols))
    }
}
