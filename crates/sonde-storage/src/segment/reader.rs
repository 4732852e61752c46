//! Reading series out of a segment: the index picks the row ranges, Parquet reads only
//! those pages (offset index + `RowSelection`) of only the needed columns.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, AsArray, Int32Array, Int64Array};
use arrow::datatypes::{
    DataType, Float64Type, Int8Type, Int32Type, Int64Type, TimestampMillisecondType,
};
use bytes::Bytes;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetOffsetIndex};
use parquet::file::reader::{ChunkReader, Length};
use sonde_types::{FieldDef, FieldType, Labels, TimestampMs};

use super::index::{IndexSeries, IndexTable, ranges_to_selection};
use super::{BYTES, FLOAT, MANTISSA, SCALE, WIDE, decimal};
use crate::series::{Column, SeriesData, Values};
use crate::vfs::{ReadAt, Vfs};
use crate::{Error, Result};

/// A segment file opened for reading, counting the bytes it reads.
#[derive(Debug, Clone)]
pub struct CountingFile {
    inner: Arc<dyn ReadAt>,
    bytes: Arc<AtomicU64>,
}

impl CountingFile {
    pub fn open(vfs: &dyn Vfs, path: &Path) -> Result<Self> {
        let inner = vfs
            .open_read(path)
            .map_err(|e| Error::io("opening segment", path, e))?;
        Ok(CountingFile {
            inner,
            bytes: Arc::new(AtomicU64::new(0)),
        })
    }
    /// Bytes read from the file so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    fn read(&self, start: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.inner.read_at(&mut buf, start)?;
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        Ok(buf)
    }
}

impl Length for CountingFile {
    fn len(&self) -> u64 {
        self.inner.len()
    }
}

/// Sequential reads from an offset, in small chunks so only what is used is counted.
#[derive(Debug)]
pub struct AtReader {
    file: CountingFile,
    pos: u64,
}

impl Read for AtReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.file.inner.len().saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let data = self.file.read(self.pos, n)?;
        buf[..n].copy_from_slice(&data);
        self.pos += n as u64;
        Ok(n)
    }
}

impl ChunkReader for CountingFile {
    type T = std::io::BufReader<AtReader>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(std::io::BufReader::with_capacity(
            1024,
            AtReader {
                file: self.clone(),
                pos: start,
            },
        ))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        Ok(Bytes::from(self.read(start, length)?))
    }
}

/// A request to read some series of one table from one segment.
#[derive(Debug)]
pub struct SeriesRead<'a> {
    pub path: PathBuf,
    /// The segment's parsed footer ([`load_footer`]).
    pub footer: &'a ArrowReaderMetadata,
    pub table: &'a IndexTable,
    /// Ordinals (into `table.series`), ascending.
    pub ordinals: &'a [u32],
    /// The fields to return, in the caller's (logical table) order.
    pub fields: &'a [FieldDef],
    pub start: TimestampMs,
    pub end: TimestampMs,
}

/// A segment's footer parsed for reading, with the offset index (page locations) of
/// every column chunk, which lets a reader skip the pages outside its selection.
/// Segments never change, so the engine parses it once per segment and its readers
/// share it: parsing it for each reader was ~6 % of a 3 ms dashboard query.
pub fn load_footer(vfs: &dyn Vfs, path: &Path) -> Result<ArrowReaderMetadata> {
    let file = CountingFile::open(vfs, path)?;
    let opts = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Skip);
    let footer =
        ArrowReaderMetadata::load(&file, opts.clone()).map_err(|e| Error::parquet(path, e))?;
    let Some(oi) = load_offset_index(&file, footer.metadata(), path)? else {
        return Ok(footer);
    };
    let md = (**footer.metadata())
        .clone()
        .into_builder()
        .set_offset_index(Some(oi))
        .build();
    ArrowReaderMetadata::try_new(Arc::new(md), opts).map_err(|e| Error::parquet(path, e))
}

/// Reads the requested series; returns them with their rows in `[start, end]` and
/// the bytes read from the file.
pub fn read_series(
    vfs: &dyn Vfs,
    req: &SeriesRead<'_>,
) -> Result<(Vec<(Labels, SeriesData)>, u64)> {
    let mut out = Vec::new();
    let bytes = read_series_parts(vfs, req, usize::MAX, |part| {
        out.extend(part);
        Ok(())
    })?;
    Ok((out, bytes))
}

/// [`read_series`] handing the series to `emit` in parts of `part` series (the last
/// may be smaller; a series without rows in `[start, end]` is left out) as they are
/// decoded, through one Parquet reader: the footer, the offset index and the
/// decompression contexts are set up once for the whole request, not per part.
/// Returns the bytes read from the file.
pub fn read_series_parts(
    vfs: &dyn Vfs,
    req: &SeriesRead<'_>,
    part: usize,
    mut emit: impl FnMut(Vec<(Labels, SeriesData)>) -> Result<()>,
) -> Result<u64> {
    let path = &req.path;
    if req.ordinals.is_empty() {
        return Ok(0);
    }
    let file = CountingFile::open(vfs, path)?;
    let meta = req.footer.metadata().clone();
    let arrow_schema = req.footer.schema().clone();

    // The rows to read per series: all of them, or for an evenly spaced series those
    // up to `end`, whose positions follow from its step.
    let runs: Vec<Run<'_>> = req
        .ordinals
        .iter()
        .filter_map(|&o| Run::of(&req.table.series[o as usize], req.start, req.end))
        .collect();
    if runs.is_empty() {
        return Ok(0);
    }
    // Row ranges → row groups → selection over the chosen row groups.
    let ranges: Vec<(u64, u64)> = runs.iter().map(|r| (r.series.row_start, r.rows)).collect();
    let mut groups = Vec::new();
    let mut local = Vec::new();
    let (mut g_start, mut concat) = (0u64, 0u64);
    for (gi, rg) in meta.row_groups().iter().enumerate() {
        let n = rg.num_rows() as u64;
        let g_end = g_start + n;
        let mut any = false;
        for &(s, l) in &ranges {
            let (a, b) = (s.max(g_start), (s + l).min(g_end));
            if a < b {
                local.push((concat + a - g_start, b - a));
                any = true;
            }
        }
        if any {
            groups.push(gi);
            concat += n;
        }
        g_start = g_end;
    }
    // Columns: time, then per requested field its physical columns if present. A
    // double column without a value in the row groups read (every value a decimal,
    // the usual case) is not read at all.
    let col = |name: &str| arrow_schema.index_of(name).ok();
    let time_idx = col(sonde_types::TIME_COLUMN)
        .ok_or_else(|| Error::format(path, "segment has no time column"))?;
    let all_null = |c: usize| {
        groups.iter().all(|&g| {
            let chunk = meta.row_group(g).column(c);
            chunk.statistics().and_then(|s| s.null_count_opt()) == Some(chunk.num_values() as u64)
        })
    };
    let mut wanted = Vec::new();
    let field_cols: Vec<FieldCols> = req
        .fields
        .iter()
        .map(|f| {
            if f.ty == FieldType::Bytes {
                let Some(b) = col(&format!("{}{BYTES}", f.name)) else {
                    return FieldCols::Absent;
                };
                wanted.push(b);
                return FieldCols::Bytes(b);
            }
            let (Some(m), Some(s), Some(fl)) = (
                col(&format!("{}{MANTISSA}", f.name)),
                col(&format!("{}{SCALE}", f.name)),
                col(&format!("{}{FLOAT}", f.name)),
            ) else {
                return FieldCols::Absent;
            };
            let fl = (!all_null(fl)).then_some(fl);
            // Segments written before 2026-11-29 have 64-bit `:m` and no `:w`.
            let w = col(&format!("{}{WIDE}", f.name)).filter(|&w| !all_null(w));
            wanted.extend([m, s]);
            wanted.extend(fl);
            wanted.extend(w);
            FieldCols::Decimal { m, s, fl, w }
        })
        .collect();
    // When every series read is evenly spaced, its timestamps are computed and
    // `time` is not read (a third of the bytes a query decompresses and decodes:
    // the jump back at each series start widens its delta blocks to ~22 bits).
    let read_time = wanted.is_empty() || runs.iter().any(|r| !r.series.even);
    if read_time {
        wanted.push(time_idx);
    }
    wanted.sort_unstable();
    let pos_of = |i: usize| wanted.binary_search(&i).unwrap();

    let selection = ranges_to_selection(&local, concat);
    let mask = ProjectionMask::roots(meta.file_metadata().schema_descr(), wanted.iter().copied());
    let builder =
        ParquetRecordBatchReaderBuilder::new_with_metadata(file.clone(), req.footer.clone());
    let reader = builder
        .with_projection(mask)
        .with_row_groups(groups)
        .with_row_selection(selection)
        .with_batch_size(8 * 1024)
        .build()
        .map_err(|e| Error::parquet(path, e))?;

    let part = part.max(1);
    let mut out: Vec<(Labels, SeriesData)> = Vec::with_capacity(runs.len().min(part));
    let mut run_iter = runs.iter();
    let mut current = run_iter.next();
    let mut data = SeriesData::new();
    let mut left = current.map_or(0, |r| r.rows as usize);
    // Running mantissa per field, for series stored as deltas; reset per series.
    let mut acc = vec![0i64; req.fields.len()];
    for batch in reader {
        let batch = batch?;
        let ts = read_time.then(|| {
            batch
                .column(pos_of(time_idx))
                .as_primitive::<TimestampMillisecondType>()
        });
        let mut row = 0;
        while row < batch.num_rows() {
            let Some(r) = current else { break };
            let take = left.min(batch.num_rows() - row);
            let times = match (ts, r.series.step()) {
                (Some(ts), _) => Times::Column(ts),
                (None, Some(step)) => {
                    let done = r.rows - left as u64;
                    Times::Even {
                        first: r
                            .series
                            .min_time
                            .wrapping_add((done as i64).wrapping_mul(step)),
                        step,
                    }
                }
                (None, None) => unreachable!("`time` is read unless every series is even"),
            };
            append_rows(
                &mut data,
                &batch,
                times,
                row..row + take,
                &field_cols,
                req.fields,
                &pos_of,
                &mut acc,
            );
            row += take;
            left -= take;
            if left == 0 {
                let rows = std::mem::take(&mut data).into_time_slice(req.start, req.end);
                if !rows.is_empty() {
                    out.push((r.series.labels.clone(), rows));
                    if out.len() == part {
                        emit(std::mem::replace(&mut out, Vec::with_capacity(part)))?;
                    }
                }
                current = run_iter.next();
                left = current.map_or(0, |r| r.rows as usize);
                acc.iter_mut().for_each(|a| *a = 0);
            }
        }
    }
    if current.is_some() {
        return Err(Error::format(path, "segment has fewer rows than its index"));
    }
    if !out.is_empty() {
        emit(out)?;
    }
    Ok(file.bytes_read())
}

/// The offset index of every column chunk, read at once (the writer puts the chunks'
/// indexes side by side before the footer). `None` when a chunk has none: the reader
/// then decodes pages to find the rows it selects.
fn load_offset_index(
    file: &CountingFile,
    meta: &ParquetMetaData,
    path: &Path,
) -> Result<Option<ParquetOffsetIndex>> {
    // Per row group, per column: where the chunk's offset index is.
    let mut ranges: Vec<Vec<(u64, usize)>> = Vec::new();
    for rg in meta.row_groups() {
        let mut group = Vec::with_capacity(rg.columns().len());
        for chunk in rg.columns() {
            let (Some(off), Some(len)) = (chunk.offset_index_offset(), chunk.offset_index_length())
            else {
                return Ok(None);
            };
            group.push((off as u64, len as usize));
        }
        ranges.push(group);
    }
    let all = || ranges.iter().flatten();
    let Some(lo) = all().map(|r| r.0).min() else {
        return Ok(None);
    };
    let hi = all().map(|&(o, l)| o + l as u64).max().unwrap_or(lo);
    let bytes = file
        .get_bytes(lo, (hi - lo) as usize)
        .map_err(|e| Error::parquet(path, e))?;
    ranges
        .iter()
        .map(|group| {
            group
                .iter()
                .map(|&(off, len)| {
                    let at = (off - lo) as usize;
                    super::offset_index::decode(&bytes[at..at + len])
                        .map_err(|e| Error::format(path, e.to_string()))
                })
                .collect()
        })
        .collect::<Result<_>>()
        .map(Some)
}

/// The rows of one series a read takes: its first `rows` rows.
#[derive(Debug, Clone, Copy)]
struct Run<'a> {
    series: &'a IndexSeries,
    rows: u64,
}

impl<'a> Run<'a> {
    /// The rows of `series` to read for `[start, end]`: for an evenly spaced series
    /// those up to `end` (`None` when none is inside the range), otherwise all of
    /// them; the reader trims the rest by time. Leading rows are always read: a
    /// value stored as a delta needs every row before it.
    fn of(series: &'a IndexSeries, start: TimestampMs, end: TimestampMs) -> Option<Self> {
        let all = Run {
            series,
            rows: u64::from(series.rows),
        };
        let Some(step) = series.step().filter(|&s| s > 0) else {
            return Some(all);
        };
        // Row i is at min_time + i × step; i128 keeps extreme bounds exact.
        let (min, step) = (i128::from(series.min_time), i128::from(step));
        // The first row at or after `start` (a ceiling), the last at or before `end`.
        let first_in = -(min - i128::from(start)).div_euclid(step);
        let last_in = (i128::from(end) - min)
            .div_euclid(step)
            .min(i128::from(series.rows) - 1);
        (first_in.max(0) <= last_in).then(|| Run {
            rows: (last_in + 1) as u64,
            ..all
        })
    }
}

/// Where a run of rows' timestamps come from.
#[derive(Clone, Copy)]
enum Times<'a> {
    /// The batch's `time` column.
    Column(&'a arrow::array::TimestampMillisecondArray),
    /// Computed: the run's first row is at `first`, each next one `step` later.
    Even { first: TimestampMs, step: i64 },
}

/// Where a requested field's physical columns are in the file.
#[derive(Debug, Clone, Copy)]
enum FieldCols {
    /// Not in this file: the field's values are missing.
    Absent,
    Bytes(usize),
    /// Mantissa and scale, and the double and wide-mantissa columns unless they
    /// hold no value in the row groups read.
    Decimal {
        m: usize,
        s: usize,
        fl: Option<usize>,
        w: Option<usize>,
    },
}

/// A batch's `:m` column: 32-bit, or 64-bit in segments written before 2026-11-29.
#[derive(Clone, Copy)]
enum Mantissas<'a> {
    Narrow(&'a Int32Array),
    Wide(&'a Int64Array),
}

impl<'a> Mantissas<'a> {
    fn of(col: &'a arrow::array::ArrayRef) -> Self {
        match col.data_type() {
            DataType::Int32 => Mantissas::Narrow(col.as_primitive::<Int32Type>()),
            _ => Mantissas::Wide(col.as_primitive::<Int64Type>()),
        }
    }
    fn null_count(&self) -> usize {
        match self {
            Mantissas::Narrow(a) => a.null_count(),
            Mantissas::Wide(a) => a.null_count(),
        }
    }
    /// Row `i`'s mantissa, if it has one here.
    fn get(&self, i: usize) -> Option<i64> {
        match self {
            Mantissas::Narrow(a) => a.is_valid(i).then(|| i64::from(a.value(i))),
            Mantissas::Wide(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }
}

/// The values of rows whose mantissas are all present (one series), as `ty`.
fn decode_all<M: Copy + Into<i64>>(
    ty: FieldType,
    mants: &[M],
    scales: &[i8],
    acc: &mut i64,
) -> Values {
    // `extend` over slice iterators reserves the rows up front.
    if ty == FieldType::I64 {
        let mut out = Vec::new();
        decimal::resolve_rows(mants, scales, acc, &mut out);
        Values::I64(out)
    } else {
        let mut out = Vec::new();
        decimal::decode_rows(mants, scales, acc, &mut out);
        Values::F64(out)
    }
}

/// Decodes rows `range` of `batch` (all of one series) and appends them to `data`.
/// `acc` carries each field's running mantissa for series stored as deltas.
#[allow(clippy::too_many_arguments)]
fn append_rows(
    data: &mut SeriesData,
    batch: &arrow::array::RecordBatch,
    times: Times<'_>,
    range: std::ops::Range<usize>,
    field_cols: &[FieldCols],
    fields: &[FieldDef],
    pos_of: &dyn Fn(usize) -> usize,
    acc: &mut [i64],
) {
    let n = range.len();
    let mut chunk = SeriesData::new();
    match times {
        Times::Column(ts) => chunk.ts.extend_from_slice(&ts.values()[range.clone()]),
        Times::Even { first, step } => chunk
            .ts
            .extend((0..n as i64).map(|i| first.wrapping_add(i.wrapping_mul(step)))),
    }
    for ((f, cols), acc) in fields.iter().zip(field_cols).zip(acc.iter_mut()) {
        let (m, s, fl, w) = match *cols {
            FieldCols::Absent => {
                chunk.cols.push(None);
                continue;
            }
            FieldCols::Bytes(b) => {
                let b = batch.column(pos_of(b)).as_binary::<i32>();
                let values = range
                    .clone()
                    .map(|i| {
                        if b.is_valid(i) {
                            b.value(i).to_vec()
                        } else {
                            Vec::new()
                        }
                    })
                    .collect();
                let valid: Vec<bool> = range.clone().map(|i| b.is_valid(i)).collect();
                let valid = (!valid.iter().all(|&v| v)).then_some(valid);
                chunk.cols.push(Some(Column {
                    values: Values::Bytes(values),
                    valid,
                }));
                continue;
            }
            FieldCols::Decimal { m, s, fl, w } => (m, s, fl, w),
        };
        let m = Mantissas::of(batch.column(pos_of(m)));
        let s = batch.column(pos_of(s)).as_primitive::<Int8Type>();
        let fl = fl.map(|fl| batch.column(pos_of(fl)).as_primitive::<Float64Type>());
        let w = w.map(|w| batch.column(pos_of(w)).as_primitive::<Int64Type>());
        if m.null_count() == 0 {
            // Every value a decimal with a 32-bit mantissa (the common case): no
            // validity to track.
            let scales = &s.values()[range.clone()];
            let values = match m {
                Mantissas::Narrow(m) => decode_all(f.ty, &m.values()[range.clone()], scales, acc),
                Mantissas::Wide(m) => decode_all(f.ty, &m.values()[range.clone()], scales, acc),
            };
            chunk.cols.push(Some(Column {
                values,
                valid: None,
            }));
            continue;
        }
        let mut valid = Vec::with_capacity(n);
        let mut f64s = Vec::new();
        let mut i64s = Vec::new();
        for i in range.clone() {
            let mantissa = m
                .get(i)
                .or_else(|| w.filter(|w| w.is_valid(i)).map(|w| w.value(i)));
            if let Some(mantissa) = mantissa {
                let (mant, scale) = decimal::resolve(mantissa, s.value(i), acc);
                valid.push(true);
                match f.ty {
                    FieldType::I64 => i64s.push(mant),
                    _ => f64s.push(decimal::from_mantissa(mant, scale)),
                }
            } else {
                let double = fl.filter(|fl| fl.is_valid(i)).map(|fl| fl.value(i));
                valid.push(f.ty == FieldType::F64 && double.is_some());
                match f.ty {
                    FieldType::I64 => i64s.push(0),
                    _ => f64s.push(double.unwrap_or(0.0)),
                }
            }
        }
        let values = match f.ty {
            FieldType::I64 => Values::I64(i64s),
            _ => Values::F64(f64s),
        };
        let valid = (!valid.iter().all(|&v| v)).then_some(valid);
        chunk.cols.push(Some(Column { values, valid }));
    }
    if data.is_empty() {
        *data = chunk;
    } else {
        data.extend(&chunk);
    }
}
