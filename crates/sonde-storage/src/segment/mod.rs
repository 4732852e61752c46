//! Segments: immutable Parquet files holding the rows of many tables of one
//! (tenant, day), sorted by (table, labels, time), each with a `.sidx` index beside it.
//!
//! Design decision: small tables share a file. One physical schema carries every
//! table of the partition — `__name__`, one dictionary column per tag key, `time`, and
//! three columns per field name — so a Prometheus sending 1,000 metric names produces
//! one file per flush, not 1,000; each table stays its own logical table through the
//! `sonde.tables` metadata and the index.
//!
//! Field values are stored as decimals where that is exact (see [`decimal`]): an
//! `INT32` mantissa `<field>:m` (byte-stream-split; an `INT64` `<field>:w` holds the
//! rare mantissa that does not fit), an `INT8` scale `<field>:s` (value = m / 10^s)
//! and a `DOUBLE` `<field>:f` (byte-stream-split) for values that are not short
//! decimals (NaN, 1/3, …). Integer fields (token counts) use `:m` with scale 0. This
//! is what brings counters and 0.1-ms latencies under a byte per sample.
//! A bytes field (only rollup sketches are) is one `BINARY` column `<field>:b`.

pub mod decimal;
pub mod index;
pub mod offset_index;
pub mod reader;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, DictionaryArray, Float64Builder, Int8Builder, Int32Array,
    Int32Builder, Int64Builder, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use sonde_types::{FieldDef, FieldType, Labels, MetricKind, NAME_LABEL, TIME_COLUMN, TimestampMs};

use crate::series::{Column, SeriesData, Values};
use crate::vfs::AppendFile;
use crate::{Error, Result};
use index::{IndexSeries, IndexTable, SegmentIndex};

/// Parquet key-value metadata key holding the segment format version.
pub const META_FORMAT: &str = "sonde.format_version";
/// Parquet key-value metadata key holding the JSON list of [`TableMeta`].
pub const META_TABLES: &str = "sonde.tables";
/// Current segment format version.
pub const FORMAT_VERSION: u32 = 1;

/// Physical column holding the series ordinal within the file (0, 1, …, one run per
/// series), so other engines can `PARTITION BY` it to undo per-series deltas.
pub const SERIES_COLUMN: &str = "__series";

/// Suffixes of the four physical columns of a field: the mantissa when it fits in 32
/// bits, its scale, the double when the value is not a short decimal, and the
/// mantissa when it does not fit in 32 bits.
pub const MANTISSA: &str = ":m";
pub const SCALE: &str = ":s";
pub const FLOAT: &str = ":f";
pub const WIDE: &str = ":w";
/// Suffix of the one physical column of a bytes field.
pub const BYTES: &str = ":b";

/// What a segment holds of one table (persisted in the Parquet metadata and the
/// manifest, so the engine knows schemas without opening files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableMeta {
    pub name: String,
    pub kind: String,
    pub fields: Vec<FieldMeta>,
    pub tags: Vec<String>,
    pub series: u64,
    pub rows: u64,
    pub min_time: TimestampMs,
    pub max_time: TimestampMs,
    /// Label names the series are sorted by before their label sets
    /// ([`crate::order`]); empty (and absent from older files): by label set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub order: Vec<String>,
}

/// A field name and type, as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldMeta {
    pub name: String,
    /// `"f64"` or `"i64"`.
    #[serde(rename = "type")]
    pub ty: String,
}

impl TableMeta {
    pub fn kind(&self) -> MetricKind {
        MetricKind::parse(&self.kind).unwrap_or(MetricKind::Gauge)
    }
    pub fn field_defs(&self) -> Vec<FieldDef> {
        self.fields
            .iter()
            .map(|f| FieldDef::new(&f.name, field_type(&f.ty)))
            .collect()
    }
}

pub fn field_type(s: &str) -> FieldType {
    match s {
        "i64" => FieldType::I64,
        "bytes" => FieldType::Bytes,
        _ => FieldType::F64,
    }
}

pub fn field_type_name(t: FieldType) -> &'static str {
    match t {
        FieldType::F64 => "f64",
        FieldType::I64 => "i64",
        FieldType::Bytes => "bytes",
    }
}

/// The rows of one table going into a segment: series sorted by `order`
/// ([`crate::order`]).
#[derive(Debug, Clone)]
pub struct TableChunk<'a> {
    pub name: &'a str,
    pub kind: MetricKind,
    pub fields: &'a [FieldDef],
    pub order: Vec<String>,
    pub series: Vec<(&'a Labels, SeriesRows<'a>)>,
}

/// One series' rows for a segment.
#[derive(Debug, Clone)]
pub enum SeriesRows<'a> {
    /// Sorted by time and deduplicated.
    Ready(Cow<'a, SeriesData>),
    /// A head series, normalized (and cut to the UTC day `day`, when it spans
    /// several) only when written: a flush holds one decoded series at a time.
    Head {
        data: &'a crate::chunk::HeadSeries,
        day: Option<i64>,
    },
}

impl SeriesRows<'_> {
    /// Rows before normalization and day cut (an upper bound).
    fn len(&self) -> usize {
        match self {
            SeriesRows::Ready(r) => r.len(),
            SeriesRows::Head { data, .. } => data.len(),
        }
    }

    fn rows(&self, kind: MetricKind) -> Cow<'_, SeriesData> {
        const DAY_MS: i64 = 86_400_000;
        match self {
            SeriesRows::Ready(r) => Cow::Borrowed(r.as_ref()),
            SeriesRows::Head { data, day: None } => data.normalized(kind),
            SeriesRows::Head { data, day: Some(d) } => Cow::Owned(
                data.normalized(kind)
                    .time_slice(d * DAY_MS, d * DAY_MS + DAY_MS - 1),
            ),
        }
    }
}

/// How float fields are encoded; `Decimal` is what Sonde writes, the others exist so
/// the encoding benchmark can compare them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueEncoding {
    Decimal,
    Plain,
    ByteStreamSplit,
}

/// Knobs of the segment writer.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub value_encoding: ValueEncoding,
    pub zstd_level: i32,
    pub max_row_group_rows: usize,
    /// Values per data page of the value columns (`:m`, `:w`, `:f`); the other
    /// columns' pages hold up to [`WIDE_PAGE_FACTOR`] times as many rows.
    pub page_rows: usize,
    /// Rows per Arrow batch handed to the Parquet writer (bounds memory while writing).
    pub batch_rows: usize,
    /// Whether the `:s` columns are zstd-compressed too. Off for raw segments, where a
    /// series is one long run (zstd made the chunk larger); on for rollup tiers, whose
    /// series have a few rows each, where it saves a little.
    pub compress_scale: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            value_encoding: ValueEncoding::Decimal,
            zstd_level: 3,
            max_row_group_rows: 1 << 20,
            page_rows: 8192,
            batch_rows: 64 * 1024,
            compress_scale: false,
        }
    }
}

/// A segment ready to be written: the Parquet bytes, its index and its table list.
#[derive(Debug)]
pub struct EncodedSegment {
    /// The Parquet bytes, when written to memory.
    pub parquet: Vec<u8>,
    /// When written to a file instead: its (temporary) path and length; the file is
    /// synced.
    pub written: Option<(std::path::PathBuf, u64)>,
    pub index: SegmentIndex,
    pub tables: Vec<TableMeta>,
    pub rows: u64,
    pub min_time: TimestampMs,
    pub max_time: TimestampMs,
}

/// The physical schema for a set of tag keys and field names.
pub fn physical_schema(
    tags: &BTreeSet<String>,
    fields: &BTreeSet<String>,
    bytes_fields: &BTreeSet<String>,
) -> SchemaRef {
    let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let mut cols = vec![Field::new(NAME_LABEL, dict.clone(), false)];
    cols.extend(tags.iter().map(|t| Field::new(t, dict.clone(), true)));
    cols.push(Field::new(SERIES_COLUMN, DataType::Int32, false));
    cols.push(Field::new(
        TIME_COLUMN,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        false,
    ));
    for f in fields {
        cols.push(Field::new(format!("{f}{MANTISSA}"), DataType::Int32, true));
        cols.push(Field::new(format!("{f}{SCALE}"), DataType::Int8, true));
        cols.push(Field::new(format!("{f}{FLOAT}"), DataType::Float64, true));
        cols.push(Field::new(format!("{f}{WIDE}"), DataType::Int64, true));
    }
    for f in bytes_fields {
        cols.push(Field::new(format!("{f}{BYTES}"), DataType::Binary, true));
    }
    Arc::new(Schema::new(cols))
}

/// Pages of the columns other than values (labels, `__series`, `time`, `:s`) hold this
/// many times [`WriteOptions::page_rows`] rows: those columns are near-constant or
/// delta-encode to a few bits per row, so at `page_rows` each page's header, zstd
/// frame and offset-index entry were most of their bytes (storage-format.md).
/// Parquet 59 has one row limit for all columns; the value columns keep pages of
/// `page_rows` values through a byte limit of that many values instead.
const WIDE_PAGE_FACTOR: usize = 8;

fn writer_properties(opts: &WriteOptions, fields: &BTreeSet<String>) -> WriterProperties {
    let mut p = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(opts.zstd_level).unwrap_or_default(),
        ))
        .set_max_row_group_row_count(Some(opts.max_row_group_rows))
        .set_data_page_row_count_limit(opts.page_rows * WIDE_PAGE_FACTOR)
        .set_write_batch_size(opts.page_rows.min(8192))
        // Chunk statistics only: nothing Sonde reads uses the per-page column index,
        // which was 6 % of a segment on the standard dataset (the offset index, which
        // reads need, is still written).
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_created_by(format!("sonde {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            META_FORMAT.to_string(),
            FORMAT_VERSION.to_string(),
        )]));
    let delta = |p: parquet::file::properties::WriterPropertiesBuilder, col: String| {
        let path = ColumnPath::from(col);
        p.set_column_dictionary_enabled(path.clone(), false)
            .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED)
    };
    p = delta(p, TIME_COLUMN.to_string());
    p = delta(p, SERIES_COLUMN.to_string());
    for f in fields {
        // In a raw segment a scale column is one dictionary value run-length encoded
        // per series: zstd made its chunk larger (1,516 → 1,848 bytes on the
        // 10k-series standard dataset), and every query reads it, paying for a zstd
        // decompression and compression context per chunk (Parquet 59 creates both
        // per column chunk read). Stored uncompressed there.
        if !opts.compress_scale {
            p = p.set_column_compression(
                ColumnPath::from(format!("{f}{SCALE}")),
                Compression::UNCOMPRESSED,
            );
        }
        // Measured on the standard dataset: per-series deltas of mantissas under
        // BYTE_STREAM_SPLIT + zstd beat DELTA_BINARY_PACKED, whose 128-value blocks
        // widen at every series boundary (benches/README.md). 32-bit mantissas
        // compress as well as 64-bit ones and decode in half the bytes.
        for (suffix, width) in [(MANTISSA, 4), (WIDE, 8), (FLOAT, 8)] {
            let plain = suffix == FLOAT && opts.value_encoding == ValueEncoding::Plain;
            let path = ColumnPath::from(format!("{f}{suffix}"));
            p = p
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_data_page_size_limit(path.clone(), opts.page_rows * width)
                .set_column_encoding(
                    path,
                    if plain {
                        Encoding::PLAIN
                    } else {
                        Encoding::BYTE_STREAM_SPLIT
                    },
                );
        }
    }
    p.build()
}

/// Encodes tables (sorted by name) into one Parquet segment plus its index.
pub fn encode_segment(tables: &[TableChunk<'_>], opts: &WriteOptions) -> Result<EncodedSegment> {
    encode_segment_to(tables, opts, None)
}

/// [`encode_segment`], writing the Parquet bytes to `file` (at the given path) when
/// one is given.
pub fn encode_segment_to(
    tables: &[TableChunk<'_>],
    opts: &WriteOptions,
    file: Option<(Box<dyn AppendFile>, std::path::PathBuf)>,
) -> Result<EncodedSegment> {
    let mut tag_keys = BTreeSet::new();
    let mut field_names = BTreeSet::new();
    for t in tables {
        field_names.extend(t.fields.iter().map(|f| f.name.clone()));
        for (labels, _) in &t.series {
            tag_keys.extend(labels.iter().map(|(k, _)| k.to_string()));
        }
    }
    let sink = match file {
        Some((file, path)) => Sink::File {
            file,
            path,
            len: 0,
            buf: Vec::with_capacity(SINK_BUFFER),
        },
        None => Sink::Memory(Vec::new()),
    };
    let mut w = SegmentWriter::with_sink(&tag_keys, &field_names, &BTreeSet::new(), opts, sink)?;
    // About a byte a row is what metric tables take: reserving it up front spares a
    // large flush the output buffer's doubling (up to 1.5x the file held twice).
    let rows: usize = tables
        .iter()
        .flat_map(|t| &t.series)
        .map(|(_, s)| s.len())
        .sum();
    if let Sink::Memory(v) = w.writer.inner_mut() {
        v.reserve(rows);
    }
    for t in tables {
        w.begin_table(t.name, t.kind, t.fields, &t.order);
        for (labels, src) in &t.series {
            let rows = src.rows(t.kind);
            if !rows.is_empty() {
                w.push_series(labels, &rows)?;
            }
        }
    }
    w.finish()
}

/// Bytes buffered before a write to a segment file.
const SINK_BUFFER: usize = 1 << 20;

/// Where a [`SegmentWriter`] puts the Parquet bytes.
enum Sink {
    Memory(Vec<u8>),
    File {
        file: Box<dyn AppendFile>,
        path: std::path::PathBuf,
        len: u64,
        buf: Vec<u8>,
    },
}

impl std::io::Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Memory(v) => v.extend_from_slice(data),
            Sink::File { file, len, buf, .. } => {
                buf.extend_from_slice(data);
                *len += data.len() as u64;
                if buf.len() >= SINK_BUFFER {
                    file.write_all(buf)?;
                    buf.clear();
                }
            }
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(()) // `finish` writes the rest and syncs
    }
}

/// A segment being written one series at a time, tables in name order and each
/// table's series in its order ([`crate::order`]), so a compaction never holds more
/// than one batch of decoded rows.
/// The physical schema (every tag key and field name) is fixed up front; the table
/// list goes into the Parquet metadata when the writer finishes.
pub struct SegmentWriter {
    opts: WriteOptions,
    writer: ArrowWriter<Sink>,
    builder: BatchBuilder,
    index: SegmentIndex,
    metas: Vec<TableMeta>,
    row: u64,
    /// The table being written: its index part, meta, and tag keys seen.
    cur: Option<(IndexTable, TableMeta, BTreeSet<String>, Vec<FieldDef>)>,
}

impl std::fmt::Debug for SegmentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("rows", &self.row)
            .finish()
    }
}

impl SegmentWriter {
    pub fn new(
        tag_keys: &BTreeSet<String>,
        field_names: &BTreeSet<String>,
        opts: &WriteOptions,
    ) -> Result<Self> {
        Self::with_bytes_fields(tag_keys, field_names, &BTreeSet::new(), opts)
    }

    /// A writer whose schema also has the bytes fields `bytes_fields` (numeric
    /// `field_names` and bytes fields must not share a name).
    pub fn with_bytes_fields(
        tag_keys: &BTreeSet<String>,
        field_names: &BTreeSet<String>,
        bytes_fields: &BTreeSet<String>,
        opts: &WriteOptions,
    ) -> Result<Self> {
        Self::with_sink(
            tag_keys,
            field_names,
            bytes_fields,
            opts,
            Sink::Memory(Vec::new()),
        )
    }

    /// A writer putting the Parquet bytes into `sink`.
    fn with_sink(
        tag_keys: &BTreeSet<String>,
        field_names: &BTreeSet<String>,
        bytes_fields: &BTreeSet<String>,
        opts: &WriteOptions,
        sink: Sink,
    ) -> Result<Self> {
        let schema = physical_schema(tag_keys, field_names, bytes_fields);
        let props = writer_properties(opts, field_names);
        let writer = ArrowWriter::try_new(sink, schema.clone(), Some(props))
            .map_err(|e| Error::parquet(std::path::Path::new("<segment>"), e))?;
        Ok(SegmentWriter {
            opts: opts.clone(),
            writer,
            builder: BatchBuilder::new(schema, tag_keys, field_names, bytes_fields),
            index: SegmentIndex::default(),
            metas: Vec::new(),
            row: 0,
            cur: None,
        })
    }

    /// Starts the next table (names must ascend), its series to come in `order`.
    pub fn begin_table(
        &mut self,
        name: &str,
        kind: MetricKind,
        fields: &[FieldDef],
        order: &[String],
    ) {
        self.end_table();
        let meta = TableMeta {
            name: name.to_string(),
            kind: kind.as_str().to_string(),
            fields: fields
                .iter()
                .map(|f| FieldMeta {
                    name: f.name.clone(),
                    ty: field_type_name(f.ty).to_string(),
                })
                .collect(),
            tags: Vec::new(),
            series: 0,
            rows: 0,
            min_time: i64::MAX,
            max_time: i64::MIN,
            order: order.to_vec(),
        };
        let it = IndexTable {
            name: name.to_string(),
            ..Default::default()
        };
        self.cur = Some((it, meta, BTreeSet::new(), fields.to_vec()));
    }

    /// Appends one series of the current table (in the table's order; rows sorted by
    /// time and deduplicated). Empty series are skipped.
    pub fn push_series(&mut self, labels: &Labels, data: &SeriesData) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let (it, meta, tags, fields) = self.cur.as_mut().expect("begin_table first");
        tags.extend(labels.iter().map(|(k, _)| k.to_string()));
        let ord = it.series.len() as u32;
        it.postings.add(ord, labels);
        let (lo, hi) = (data.ts[0], *data.ts.last().unwrap());
        it.series.push(IndexSeries {
            labels: labels.clone(),
            row_start: self.row,
            rows: data.len() as u32,
            min_time: lo,
            max_time: hi,
            even: index::evenly_spaced(&data.ts),
        });
        meta.min_time = meta.min_time.min(lo);
        meta.max_time = meta.max_time.max(hi);
        meta.rows += data.len() as u64;
        self.row += data.len() as u64;
        self.builder
            .push_series(&meta.name, fields, labels, data, self.opts.value_encoding);
        if self.builder.rows >= self.opts.batch_rows {
            let batch = self.builder.finish()?;
            self.writer
                .write(&batch)
                .map_err(|e| Error::parquet(std::path::Path::new("<segment>"), e))?;
        }
        Ok(())
    }

    fn end_table(&mut self) {
        if let Some((it, mut meta, tags, _)) = self.cur.take()
            && !it.series.is_empty()
        {
            meta.tags = tags.into_iter().collect();
            meta.series = it.series.len() as u64;
            self.metas.push(meta);
            self.index.tables.push(it);
        }
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.row
    }

    /// Closes the file: the last batch, the table list, the footer.
    pub fn finish(mut self) -> Result<EncodedSegment> {
        self.end_table();
        let err = |e| Error::parquet(std::path::Path::new("<segment>"), e);
        if self.builder.rows > 0 {
            let batch = self.builder.finish()?;
            self.writer.write(&batch).map_err(err)?;
        }
        let tables_json = serde_json::to_string(&self.metas).expect("table metadata serializes");
        self.writer
            .append_key_value_metadata(KeyValue::new(META_TABLES.to_string(), tables_json));
        let (parquet, written) = match self.writer.into_inner().map_err(err)? {
            Sink::Memory(v) => (v, None),
            Sink::File {
                mut file,
                path,
                len,
                buf,
            } => {
                file.write_all(&buf)
                    .and_then(|_| file.sync())
                    .map_err(|e| Error::io("writing segment", &path, e))?;
                (Vec::new(), Some((path, len)))
            }
        };
        let metas = self.metas;
        Ok(EncodedSegment {
            parquet,
            written,
            index: self.index,
            rows: self.row,
            min_time: metas.iter().map(|m| m.min_time).min().unwrap_or(0),
            max_time: metas.iter().map(|m| m.max_time).max().unwrap_or(0),
            tables: metas,
        })
    }
}

/// A dictionary column being built: keys per row, values deduplicated.
#[derive(Debug, Default)]
struct DictCol {
    ids: HashMap<String, i32>,
    values: Vec<String>,
    keys: Vec<Option<i32>>,
}

impl DictCol {
    fn push_n(&mut self, value: Option<&str>, n: usize) {
        let key = value.map(|v| match self.ids.get(v) {
            Some(&k) => k,
            None => {
                let k = self.values.len() as i32;
                self.ids.insert(v.to_string(), k);
                self.values.push(v.to_string());
                k
            }
        });
        self.keys.extend(std::iter::repeat_n(key, n));
    }
    fn finish(&mut self) -> Result<ArrayRef> {
        let keys = Int32Array::from(std::mem::take(&mut self.keys));
        let values = StringArray::from(std::mem::take(&mut self.values));
        self.ids.clear();
        Ok(Arc::new(DictionaryArray::<Int32Type>::try_new(
            keys,
            Arc::new(values),
        )?))
    }
}

#[derive(Debug)]
struct FieldCols {
    m: Int32Builder,
    s: Int8Builder,
    f: Float64Builder,
    w: Int64Builder,
}

/// The builders of one physical field (a few per segment: their size does not matter).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum FieldBuild {
    Num(FieldCols),
    Bytes(BinaryBuilder),
}

/// Accumulates rows of the physical schema.
#[derive(Debug)]
struct BatchBuilder {
    schema: SchemaRef,
    name: DictCol,
    tags: BTreeMap<String, DictCol>,
    time: Vec<i64>,
    series_ordinal: Vec<i32>,
    next_series: i32,
    fields: BTreeMap<String, FieldBuild>,
    rows: usize,
}

impl BatchBuilder {
    fn new(
        schema: SchemaRef,
        tags: &BTreeSet<String>,
        fields: &BTreeSet<String>,
        bytes_fields: &BTreeSet<String>,
    ) -> Self {
        BatchBuilder {
            schema,
            name: DictCol::default(),
            tags: tags
                .iter()
                .map(|t| (t.clone(), DictCol::default()))
                .collect(),
            time: Vec::new(),
            series_ordinal: Vec::new(),
            next_series: 0,
            fields: fields
                .iter()
                .map(|f| {
                    (
                        f.clone(),
                        FieldBuild::Num(FieldCols {
                            m: Int32Builder::new(),
                            s: Int8Builder::new(),
                            f: Float64Builder::new(),
                            w: Int64Builder::new(),
                        }),
                    )
                })
                .chain(
                    bytes_fields
                        .iter()
                        .map(|f| (f.clone(), FieldBuild::Bytes(BinaryBuilder::new()))),
                )
                .collect(),
            rows: 0,
        }
    }

    fn push_series(
        &mut self,
        table: &str,
        fields: &[FieldDef],
        labels: &Labels,
        data: &SeriesData,
        enc: ValueEncoding,
    ) {
        let n = data.len();
        self.name.push_n(Some(table), n);
        for (k, col) in &mut self.tags {
            col.push_n(labels.get(k), n);
        }
        self.time.extend_from_slice(&data.ts);
        for (name, out) in &mut self.fields {
            let col = fields
                .iter()
                .position(|f| &f.name == name)
                .and_then(|j| data.cols.get(j).and_then(|c| c.as_ref()));
            let out = match out {
                FieldBuild::Num(out) => out,
                FieldBuild::Bytes(b) => {
                    match col {
                        Some(
                            c @ Column {
                                values: Values::Bytes(v),
                                ..
                            },
                        ) => {
                            for (i, x) in v.iter().enumerate() {
                                if c.is_valid(i) {
                                    b.append_value(x);
                                } else {
                                    b.append_null();
                                }
                            }
                        }
                        _ => (0..n).for_each(|_| b.append_null()),
                    }
                    continue;
                }
            };
            let Some(col) = col else {
                out.m.append_nulls(n);
                out.s.append_nulls(n);
                out.f.append_nulls(n);
                out.w.append_nulls(n);
                continue;
            };
            // Mantissas per row (None: null, or not a decimal → the double column).
            let (mants, scale): (Vec<Option<i64>>, u8) = match &col.values {
                Values::I64(v) => (
                    v.iter()
                        .enumerate()
                        .map(|(i, &x)| col.is_valid(i).then_some(x))
                        .collect(),
                    0,
                ),
                Values::Bytes(_) => (vec![None; n], 0),
                Values::F64(v) => {
                    let scale = (enc == ValueEncoding::Decimal)
                        .then(|| {
                            decimal::series_scale(
                                v.iter()
                                    .enumerate()
                                    .filter_map(|(i, &x)| col.is_valid(i).then_some(x)),
                            )
                        })
                        .flatten();
                    let mants = v
                        .iter()
                        .enumerate()
                        .map(|(i, &x)| match scale {
                            Some(s) if col.is_valid(i) => decimal::to_mantissa(x, s),
                            _ => None,
                        })
                        .collect();
                    (mants, scale.unwrap_or(0))
                }
            };
            let delta = enc == ValueEncoding::Decimal && decimal::prefers_delta(&mants);
            let stored_scale = if delta {
                -(scale as i8) - 1
            } else {
                scale as i8
            };
            let mut prev = 0i64;
            for (i, m) in mants.iter().enumerate() {
                match *m {
                    Some(m) => {
                        let stored = if delta { m.wrapping_sub(prev) } else { m };
                        match i32::try_from(stored) {
                            Ok(narrow) => {
                                out.m.append_value(narrow);
                                out.w.append_null();
                            }
                            Err(_) => {
                                out.m.append_null();
                                out.w.append_value(stored);
                            }
                        }
                        prev = m;
                        out.s.append_value(stored_scale);
                        out.f.append_null();
                    }
                    None => {
                        out.m.append_null();
                        out.w.append_null();
                        out.s.append_null();
                        let x = match &col.values {
                            Values::F64(v) if col.is_valid(i) => Some(v[i]),
                            _ => None,
                        };
                        out.f.append_option(x);
                    }
                }
            }
        }
        self.series_ordinal
            .extend(std::iter::repeat_n(self.next_series, n));
        self.next_series += 1;
        self.rows += n;
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        let mut cols: Vec<ArrayRef> = vec![self.name.finish()?];
        for col in self.tags.values_mut() {
            cols.push(col.finish()?);
        }
        cols.push(Arc::new(Int32Array::from(std::mem::take(
            &mut self.series_ordinal,
        ))));
        cols.push(Arc::new(
            TimestampMillisecondArray::from(std::mem::take(&mut self.time)).with_timezone("UTC"),
        ));
        // Numeric fields' columns, then bytes fields' (the schema's order).
        for f in self.fields.values_mut() {
            if let FieldBuild::Num(f) = f {
                cols.push(Arc::new(f.m.finish()));
                cols.push(Arc::new(f.s.finish()));
                cols.push(Arc::new(f.f.finish()));
                cols.push(Arc::new(f.w.finish()));
            }
        }
        for f in self.fields.values_mut() {
            if let FieldBuild::Bytes(b) = f {
                cols.push(Arc::new(b.finish()));
            }
        }
        self.rows = 0;
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }
}

#[cfg(test)]
mod tests {
    use super::reader::{SeriesRead, read_series};
    use super::*;
    use crate::series::Column;
    use crate::vfs::{SimVfs, Vfs};
    use std::path::Path;

    fn series(ts: Vec<i64>, f: Vec<f64>, i: Vec<i64>, i_valid: Option<Vec<bool>>) -> SeriesData {
        SeriesData {
            ts,
            cols: vec![
                Some(Column {
                    values: Values::F64(f),
                    valid: None,
                }),
                Some(Column {
                    values: Values::I64(i),
                    valid: i_valid,
                }),
            ],
            ordered: true,
        }
    }

    /// Pages of 64 rows, row groups of 256, batches of 128: a few hundred rows of a
    /// series span pages, row groups and Arrow batches.
    fn small_pages() -> WriteOptions {
        WriteOptions {
            batch_rows: 128,
            page_rows: 64,
            max_row_group_rows: 256,
            ..WriteOptions::default()
        }
    }

    /// The file as segments were written before 2026-11-29: every mantissa in a
    /// 64-bit `:m`, no `:w`.
    fn with_64_bit_mantissas(parquet: &[u8]) -> Vec<u8> {
        use arrow::array::{Array, AsArray};
        use arrow::datatypes::{Int32Type, Int64Type};
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(parquet.to_vec()))
            .unwrap()
            .build()
            .unwrap();
        let mut writer: Option<ArrowWriter<Vec<u8>>> = None;
        for batch in reader {
            let batch = batch.unwrap();
            let schema = batch.schema();
            let (mut fields, mut cols) = (Vec::new(), Vec::new());
            for (f, col) in schema.fields().iter().zip(batch.columns()) {
                let name = f.name();
                if name.ends_with(WIDE) {
                    continue;
                }
                if let Some(field) = name.strip_suffix(MANTISSA) {
                    let narrow = col.as_primitive::<Int32Type>();
                    let wide = batch
                        .column_by_name(&format!("{field}{WIDE}"))
                        .unwrap()
                        .as_primitive::<Int64Type>();
                    let m: arrow::array::Int64Array = (0..narrow.len())
                        .map(|i| {
                            (narrow.is_valid(i))
                                .then(|| i64::from(narrow.value(i)))
                                .or(wide.is_valid(i).then(|| wide.value(i)))
                        })
                        .collect();
                    fields.push(Field::new(name, DataType::Int64, true));
                    cols.push(Arc::new(m) as ArrayRef);
                } else {
                    fields.push(f.as_ref().clone());
                    cols.push(col.clone());
                }
            }
            let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
            let w = writer.get_or_insert_with(|| {
                let props = WriterProperties::builder()
                    .set_data_page_row_count_limit(64)
                    .set_write_batch_size(64)
                    .build();
                ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props)).unwrap()
            });
            w.write(&batch).unwrap();
        }
        writer.unwrap().into_inner().unwrap()
    }

    /// Deltas, fallbacks to doubles, nulls and i64 extremes (mantissas too wide for
    /// `:m`) survive a round trip, also when a series spans Arrow batches and pages;
    /// segments with 64-bit mantissas read the same; parts of one reader hold the
    /// same series as a whole read.
    #[test]
    fn values_roundtrip_bit_exact() {
        let n = 300;
        let ts: Vec<i64> = (0..n).map(|i| i * 1000).collect();
        let counter: Vec<f64> = (0..n)
            .map(|i| match i {
                50 => f64::NAN,
                60 => -0.0,
                _ => (i * i) as f64 * 0.001 + 1e6,
            })
            .collect();
        let ints: Vec<i64> = (0..n)
            .map(|i| match i {
                10 => i64::MAX,
                11 => i64::MIN,
                _ => i * 3,
            })
            .collect();
        let mut valid = vec![true; n as usize];
        valid[100] = false;
        let gauge: Vec<f64> = (0..n).map(|i| ((i * 7919) % 1000) as f64 / 3.0).collect();
        let fields = vec![
            FieldDef::new("v", FieldType::F64),
            FieldDef::new("c", FieldType::I64),
        ];
        let a = Labels::new([("k", "a")]).unwrap();
        let b = Labels::new([("k", "b")]).unwrap();
        let chunk = TableChunk {
            name: "t",
            kind: MetricKind::Gauge,
            fields: &fields,
            order: Vec::new(),
            series: vec![
                (
                    &a,
                    SeriesRows::Ready(Cow::Owned(series(
                        ts.clone(),
                        counter,
                        ints.clone(),
                        Some(valid),
                    ))),
                ),
                (
                    &b,
                    SeriesRows::Ready(Cow::Owned(series(ts.clone(), gauge, ints.clone(), None))),
                ),
            ],
        };
        let enc = encode_segment(std::slice::from_ref(&chunk), &small_pages()).unwrap();
        let vfs = SimVfs::new();
        let path = Path::new("/s.parquet");
        vfs.write_synced(path, &enc.parquet).unwrap();
        let old = Path::new("/old.parquet");
        vfs.write_synced(old, &with_64_bit_mantissas(&enc.parquet))
            .unwrap();
        let it = enc.index.table("t").unwrap();
        for (path, ordinals) in [
            (path, vec![0u32, 1]),
            (path, vec![1]),
            (old, vec![0, 1]),
            (old, vec![0]),
        ] {
            let footer = super::reader::load_footer(&vfs, path).unwrap();
            let req = SeriesRead {
                path: path.into(),
                footer: &footer,
                table: it,
                ordinals: &ordinals,
                fields: &fields,
                start: i64::MIN,
                end: i64::MAX,
            };
            let (got, _) = read_series(&vfs, &req).unwrap();
            let mut parts = Vec::new();
            super::reader::read_series_parts(&vfs, &req, 1, |p| {
                parts.push(p);
                Ok(())
            })
            .unwrap();
            assert_eq!(parts.len(), ordinals.len());
            for (p, (gl, gd)) in parts.iter().zip(&got) {
                assert_eq!((&p[0].0, p[0].1.ts.len()), (gl, gd.ts.len()));
            }
            for ((gl, gd), o) in got.iter().zip(&ordinals) {
                let (wl, wd) = &chunk.series[*o as usize];
                let wd = wd.rows(MetricKind::Gauge);
                assert_eq!(gl, *wl);
                assert_eq!(gd.ts, wd.ts);
                let bits = |d: &SeriesData| match &d.cols[0].as_ref().unwrap().values {
                    Values::F64(v) => v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    _ => unreachable!(),
                };
                assert_eq!(bits(gd), bits(&wd), "series {gl}");
                let gi = gd.cols[1].as_ref().unwrap();
                let wi = wd.cols[1].as_ref().unwrap();
                assert_eq!(gi.valid, wi.valid);
                for i in 0..n as usize {
                    if wi.is_valid(i) {
                        let (Values::I64(g), Values::I64(w)) = (&gi.values, &wi.values) else {
                            unreachable!()
                        };
                        assert_eq!(g[i], w[i]);
                    }
                }
            }
        }
    }

    /// Evenly spaced series are flagged in the index; reading only such series
    /// computes their timestamps instead of reading `time`, and takes none of their
    /// rows after the time range. The answers equal those of a read that takes
    /// every row and the `time` column (the same file with a version 1 index).
    #[test]
    fn evenly_spaced_series_read_without_time() {
        let mk = |ts: Vec<i64>| {
            let n = ts.len();
            let v = (0..n).map(|i| (i * i) as f64 * 0.25).collect();
            series(ts, v, (0..n as i64).collect(), None)
        };
        let even: Vec<i64> = (0..300).map(|i| 1_000_000 + i * 1000).collect();
        let mut jittered = even.clone();
        jittered[7] += 1;
        let sparse: Vec<i64> = (0..20).map(|i| 1_000_500 + i * 15_000).collect();
        let fields = vec![
            FieldDef::new("v", FieldType::F64),
            FieldDef::new("c", FieldType::I64),
        ];
        let labels: Vec<Labels> = ["a", "b", "c"]
            .iter()
            .map(|v| Labels::new([("k", *v)]).unwrap())
            .collect();
        let data = [mk(even), mk(jittered), mk(sparse)];
        let chunk = TableChunk {
            name: "t",
            kind: MetricKind::Gauge,
            fields: &fields,
            order: Vec::new(),
            series: labels
                .iter()
                .zip(&data)
                .map(|(l, d)| (l, SeriesRows::Ready(Cow::Borrowed(d))))
                .collect(),
        };
        let enc = encode_segment(std::slice::from_ref(&chunk), &small_pages()).unwrap();
        let flags: Vec<_> = enc.index.tables[0].series.iter().map(|s| s.even).collect();
        assert_eq!(flags, [true, false, true]);
        let vfs = SimVfs::new();
        let path = Path::new("/s.parquet");
        vfs.write_synced(path, &enc.parquet).unwrap();
        let footer = super::reader::load_footer(&vfs, path).unwrap();
        let it = enc.index.table("t").unwrap();
        let mut uneven = it.clone();
        uneven.series.iter_mut().for_each(|s| s.even = false);
        let read = |table: &IndexTable, ordinals: &[u32], start: i64, end: i64| {
            let req = SeriesRead {
                path: path.into(),
                footer: &footer,
                table,
                ordinals,
                fields: &fields,
                start,
                end,
            };
            read_series(&vfs, &req).unwrap()
        };
        let mut checked = 0;
        for ordinals in [&[0u32][..], &[2], &[0, 2], &[0, 1, 2], &[1]] {
            for (start, end) in [
                (i64::MIN, i64::MAX),
                (1_000_000, 1_299_000),
                (1_000_001, 1_000_999), // between two rows of `a`
                (1_050_250, 1_100_000),
                (1_123_456, 1_234_567),
                (1_299_000, i64::MAX),
                (i64::MIN, 999_999),
                (2_000_000, i64::MAX),
            ] {
                let (got, bytes) = read(it, ordinals, start, end);
                let (want, all_bytes) = read(&uneven, ordinals, start, end);
                assert_eq!(got.len(), want.len(), "{ordinals:?} {start} {end}");
                for ((gl, gd), (wl, wd)) in got.iter().zip(&want) {
                    assert_eq!(gl, wl);
                    assert_eq!(gd.ts, wd.ts, "{gl} {start} {end}");
                    assert_eq!(gd.cols, wd.cols, "{gl} {start} {end}");
                    let o = labels.iter().position(|l| l == gl).unwrap();
                    assert_eq!(gd, &data[o].time_slice(start, end));
                    checked += gd.ts.len();
                }
                if ordinals == [1] {
                    assert_eq!(bytes, all_bytes, "`b` is uneven: read as before");
                } else if ordinals.contains(&1) {
                    // `time` is read; only rows of `a` and `c` after `end` are not.
                    assert!(bytes <= all_bytes, "{ordinals:?} {start} {end}");
                } else if !got.is_empty() {
                    assert!(bytes < all_bytes, "{ordinals:?} {start} {end}");
                }
            }
        }
        assert!(checked > 1000, "{checked}");
        // An early range of an evenly spaced series reads its first pages only.
        let (_, early) = read(it, &[0], 1_023_456, 1_034_567);
        let (_, whole) = read(it, &[0], i64::MIN, i64::MAX);
        assert!(early * 2 < whole, "{early} vs {whole}");
    }

    /// Value columns keep pages of `page_rows` values (a selective read decodes
    /// little beyond its rows); every other column — labels, `__series`, `time`,
    /// `:s`, and the all-null `:f`/`:w` — gets pages of up to `WIDE_PAGE_FACTOR`
    /// times as many rows, where each page's header, zstd frame and offset-index
    /// entry was most of what those columns stored. Checked on the written offset
    /// index, since the mechanism (a row limit for all columns and a byte limit for
    /// the value columns) rests on how the Parquet writer closes pages.
    #[test]
    fn value_pages_stay_small_other_pages_wide() {
        use parquet::file::metadata::{PageIndexPolicy, ParquetMetaDataReader};
        let (series_n, rows) = (12usize, 3000i64);
        let fields = vec![
            FieldDef::new("v", FieldType::F64),
            FieldDef::new("c", FieldType::I64),
        ];
        let labels: Vec<Labels> = (0..series_n)
            .map(|s| Labels::new([("k", format!("s{:02}", s / 4).as_str())]).unwrap())
            .collect();
        let ts: Vec<i64> = (0..rows).map(|i| i * 15_000).collect();
        let chunk = TableChunk {
            name: "t",
            kind: MetricKind::Counter,
            fields: &fields,
            order: Vec::new(),
            series: labels
                .iter()
                .enumerate()
                .map(|(s, l)| {
                    let f = (0..rows)
                        .map(|i| (i * (s as i64 + 1)) as f64 * 0.5)
                        .collect();
                    let data = series(ts.clone(), f, (0..rows).collect(), None);
                    (l, SeriesRows::Ready(Cow::Owned(data)))
                })
                .collect(),
        };
        let opts = WriteOptions {
            page_rows: 1024,
            ..WriteOptions::default()
        };
        let enc = encode_segment(std::slice::from_ref(&chunk), &opts).unwrap();
        let meta = ParquetMetaDataReader::new()
            .with_offset_index_policy(PageIndexPolicy::Required)
            .parse_and_finish(&bytes::Bytes::from(enc.parquet))
            .unwrap();
        let total = series_n * rows as usize;
        assert_eq!(meta.file_metadata().num_rows() as usize, total);
        let schema = meta.file_metadata().schema_descr();
        let offsets = &meta.offset_index().unwrap()[0];
        for (i, col) in offsets.iter().enumerate() {
            let name = schema.column(i).path().string();
            let mut firsts: Vec<usize> = col
                .page_locations()
                .iter()
                .map(|p| p.first_row_index as usize)
                .collect();
            firsts.push(total);
            let pages: Vec<usize> = firsts.windows(2).map(|w| w[1] - w[0]).collect();
            let max = *pages.iter().max().unwrap();
            if name == "v:m" || name == "c:m" {
                assert_eq!(max, 1024, "{name}: {pages:?}");
                assert_eq!(pages.len(), total.div_ceil(1024), "{name}: {pages:?}");
            } else {
                assert_eq!(max, 1024 * WIDE_PAGE_FACTOR, "{name}: {pages:?}");
                assert_eq!(
                    pages.len(),
                    total.div_ceil(1024 * WIDE_PAGE_FACTOR),
                    "{name}"
                );
            }
        }
        // Scale columns are stored uncompressed, every other column under zstd; with
        // `compress_scale` (rollup tiers) every column under zstd.
        let tier = WriteOptions {
            compress_scale: true,
            ..opts.clone()
        };
        let tier = encode_segment(std::slice::from_ref(&chunk), &tier).unwrap();
        let tier = ParquetMetaDataReader::new()
            .parse_and_finish(&bytes::Bytes::from(tier.parquet))
            .unwrap();
        for (meta, compress_scale) in [(&meta, false), (&tier, true)] {
            for chunk in meta.row_group(0).columns() {
                let name = chunk.column_path().string();
                // (A reader cannot tell zstd's level: the file does not record it.)
                let zstd = matches!(chunk.compression(), Compression::ZSTD(_));
                assert_eq!(
                    zstd,
                    compress_scale || !name.ends_with(SCALE),
                    "{name}: {:?}",
                    chunk.compression()
                );
            }
        }
    }
}
