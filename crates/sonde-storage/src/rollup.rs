//! Rollup tiers: per series, field and time bucket (1 m and 1 h by default), the
//! statistics that let range queries be answered without the raw samples — exactly,
//! not approximately.
//!
//! A rollup segment is an ordinary segment (same Parquet layout, same index) whose
//! table `T` has, for every field `f` of the raw table, the fields `f_count`,
//! `f_sum`, `f_min`, `f_max`, `f_first`, `f_last`, `f_first_ts`, `f_last_ts` and
//! `f_inc` (the reset-aware increase between consecutive samples inside the bucket);
//! a row is a bucket, its `time` the bucket start. First and last sample time and
//! value plus the count make Prometheus' `rate`/`increase` extrapolation exact when
//! windows align with buckets; classic histogram buckets are counters, so they roll
//! up exactly too.
//!
//! Event tables (`llm_calls`: one row per call) roll up differently: their rows are
//! grouped by the tags left after dropping the high-cardinality ones
//! (`event_drop_tags`, e.g. `user_id`) and per field the bucket keeps `f_count`,
//! `f_sum`, `f_min`, `f_max` and, for float fields, `f_sketch`: a mergeable quantile
//! sketch (see [`crate::sketch`]) from which p50/p95/p99 over any set of buckets come
//! within 1 % of the exact order statistic.
//!
//! Rollups are built per (tenant, day) from the day's persisted raw segments, after
//! compaction, and rebuilt when the raw segments change (late data, deletes); the
//! current day at most every `current_day_every` (1 h). A reader uses a day's rollup only
//! while it is current (its sources are the day's raw segments and no unflushed rows
//! of the table fall in the day), and reads raw data for the other days, turned into
//! the same buckets on the fly: the answer never depends on which path served it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use sonde_types::{DAY_MS, FieldDef, FieldType, Labels, MetricKind, TimestampMs, day_of};

use crate::engine::Inner;
use crate::maintain::{Keep, MergeSink, PlanTable, keep_except};
use crate::manifest::{RollupMeta, SegmentMeta};
use crate::segment::reader::{SeriesRead, read_series};
use crate::segment::{SegmentWriter, WriteOptions};
use crate::series::{Column, SeriesData, Values};
use crate::sketch::Sketch;
use crate::{Result, ScanRequest, Storage, TableSchema};

/// The version of what rollup segments hold; rollups of an older version are rebuilt
/// (version 2 added event tables; version 3 leaves statistics that repeat another
/// null, see [`thin`]).
pub const ROLLUP_VERSION: u32 = 3;

/// The default [`RollupConfig::min_saving`]. Measured on the standard dataset (15 s
/// samples, 100k series, 1 h at a 1 m step): the 1 m tier, 4× fewer rows than raw but
/// nine statistics a row, was 2.2× the raw data's bytes and answered the dashboard
/// corpus 2–3× slower than the raw samples.
pub const MIN_SAVING: u64 = 8;

/// How long before a table's raw data of a day expires the tiers that left it out
/// take it in (see [`RollupConfig::min_saving`]); retention also builds them first if
/// that pass was missed (the server was down).
pub const EXPIRY_LEAD_MS: i64 = DAY_MS;

/// The bit pattern Prometheus writes to mark a series as stale; such samples are not
/// data and are left out of buckets (range functions ignore them too).
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Rollup tiers.
#[derive(Debug, Clone)]
pub struct RollupConfig {
    pub enabled: bool,
    /// Bucket widths; each must divide a day. Default 1 m and 1 h.
    pub tiers: Vec<Duration>,
    /// Retention of each tier (parallel to `tiers`; `None` keeps forever). Default
    /// 90 days and 2 years.
    pub retention: Vec<Option<Duration>>,
    /// Per-tenant overrides of `retention` (one value per tier, parallel to `tiers`).
    pub tenant_retention: std::collections::BTreeMap<String, Vec<Option<Duration>>>,
    /// Per-table overrides: key `table` (any tenant) or `tenant/table`, which wins
    /// (over the tenant's override too).
    pub table_retention: std::collections::BTreeMap<String, Vec<Option<Duration>>>,
    /// How often the rollups of the current day are rebuilt while it fills (a
    /// rebuild reads the day's raw data; until then today is read raw). Default 1 h.
    pub current_day_every: Duration,
    /// Tags of event tables left out of their rollups (high-cardinality ids); a query
    /// naming one of them reads raw rows. Default `user_id`, `session_id`,
    /// `request_id`, `trace_id`, `span_id`, `call_id`.
    pub event_drop_tags: Vec<String>,
    /// A tier holds a table's day only when its raw rows are at least this many
    /// times the tier's rows (a tier row carries nine statistics, so a tier over
    /// samples a few per bucket is bigger and slower to read than the raw data), or
    /// when the raw rows are about to expire ([`EXPIRY_LEAD_MS`]): the tier keeps the
    /// day after that. Event tables are always rolled up. 0 or 1: every tier holds
    /// every table. Default [`MIN_SAVING`].
    pub min_saving: u64,
}

impl Default for RollupConfig {
    fn default() -> Self {
        RollupConfig {
            enabled: true,
            tiers: vec![Duration::from_secs(60), Duration::from_secs(3600)],
            retention: vec![
                Some(Duration::from_secs(90 * 86_400)),
                Some(Duration::from_secs(730 * 86_400)),
            ],
            current_day_every: Duration::from_secs(3600),
            tenant_retention: Default::default(),
            table_retention: Default::default(),
            event_drop_tags: [
                "user_id",
                "session_id",
                "request_id",
                "trace_id",
                "span_id",
                "call_id",
            ]
            .map(String::from)
            .to_vec(),
            min_saving: MIN_SAVING,
        }
    }
}

impl RollupConfig {
    /// Tier widths in ms, valid ones only (positive, dividing a day), ascending.
    pub fn tiers_ms(&self) -> Vec<i64> {
        let mut t: Vec<i64> = self
            .tiers
            .iter()
            .map(|d| d.as_millis() as i64)
            .filter(|&ms| ms > 0 && DAY_MS % ms == 0)
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    }

    /// How long `tenant`'s `table` is kept at `tier_ms`, in ms (`None`: forever):
    /// the `tenant/table` override, else the `table` one, else the tenant's, else the
    /// tier's retention.
    pub fn retention_ms(&self, tier_ms: i64, tenant: &str, table: &str) -> Option<i64> {
        let i = self
            .tiers
            .iter()
            .position(|d| d.as_millis() as i64 == tier_ms)?;
        let list = self
            .table_retention
            .get(&format!("{tenant}/{table}"))
            .or_else(|| self.table_retention.get(table))
            .or_else(|| self.tenant_retention.get(tenant))
            .unwrap_or(&self.retention);
        list.get(i)
            .copied()
            .flatten()
            .map(|d| d.as_millis().min(i64::MAX as u128) as i64)
    }
    /// Whether the tier at `tier_ms` no longer keeps `tenant`'s `table` for `day` at
    /// `now` (its retention passed). What retention drops from a tier, the build
    /// never puts in it (else the two would undo each other on every pass).
    pub fn day_expired(
        &self,
        tier_ms: i64,
        tenant: &str,
        table: &str,
        day: i64,
        now: TimestampMs,
    ) -> bool {
        self.retention_ms(tier_ms, tenant, table)
            .is_some_and(|ret| day * DAY_MS + DAY_MS - 1 < now.saturating_sub(ret))
    }
}

/// The statistics rolled up per bucket, with their types, in field order.
pub const STATS: [(&str, FieldType); 9] = [
    ("count", FieldType::I64),
    ("sum", FieldType::F64),
    ("min", FieldType::F64),
    ("max", FieldType::F64),
    ("first", FieldType::F64),
    ("last", FieldType::F64),
    ("first_ts", FieldType::I64),
    ("last_ts", FieldType::I64),
    ("inc", FieldType::F64),
];

/// The rollup fields of a raw table's fields.
pub fn rollup_fields(fields: &[FieldDef]) -> Vec<FieldDef> {
    fields
        .iter()
        .flat_map(|f| {
            STATS
                .iter()
                .map(move |(s, ty)| FieldDef::new(format!("{}_{s}", f.name), *ty))
        })
        .collect()
}

/// The statistics of an event table's buckets, per field; float fields also have a
/// `sketch` (bytes).
pub const EVENT_STATS: [(&str, FieldType); 4] = [
    ("count", FieldType::I64),
    ("sum", FieldType::F64),
    ("min", FieldType::F64),
    ("max", FieldType::F64),
];

/// The rollup fields of an event table's fields.
pub fn event_rollup_fields(fields: &[FieldDef]) -> Vec<FieldDef> {
    fields
        .iter()
        .flat_map(|f| {
            let sketch = (f.ty == FieldType::F64)
                .then(|| FieldDef::new(format!("{}_sketch", f.name), FieldType::Bytes));
            EVENT_STATS
                .iter()
                .map(move |(s, ty)| FieldDef::new(format!("{}_{s}", f.name), *ty))
                .chain(sketch)
        })
        .collect()
}

/// A table's tier schema: the rollup fields, and for event tables the tags left
/// after `drop_tags`.
pub fn tier_schema(s: &TableSchema, drop_tags: &[String]) -> TableSchema {
    if s.kind != MetricKind::Event {
        return TableSchema {
            kind: s.kind,
            fields: rollup_fields(&s.fields),
            tags: s.tags.clone(),
        };
    }
    TableSchema {
        kind: s.kind,
        fields: event_rollup_fields(&s.fields),
        tags: s
            .tags
            .iter()
            .filter(|t| !drop_tags.contains(t))
            .cloned()
            .collect(),
    }
}

/// One field's statistics in one event bucket.
#[derive(Debug, Clone)]
struct EventStat {
    count: i64,
    sum: f64,
    min: f64,
    max: f64,
    sketch: Option<Sketch>,
}

/// Event rows grouped by their kept tags and bucket, turned into rollup rows.
#[derive(Debug)]
pub(crate) struct EventRollup {
    tier_ms: i64,
    types: Vec<FieldType>,
    drop_tags: Vec<String>,
    groups: std::collections::BTreeMap<Labels, std::collections::BTreeMap<i64, Vec<EventStat>>>,
}

impl EventRollup {
    pub(crate) fn new(tier_ms: i64, fields: &[FieldDef], drop_tags: &[String]) -> Self {
        EventRollup {
            tier_ms,
            types: fields.iter().map(|f| f.ty).collect(),
            drop_tags: drop_tags.to_vec(),
            groups: Default::default(),
        }
    }

    /// Adds the rows of one raw series.
    pub(crate) fn add(&mut self, labels: &Labels, data: &SeriesData) {
        let kept = Labels::from_sorted_unchecked(
            labels
                .iter()
                .filter(|(k, _)| !self.drop_tags.iter().any(|d| d == k))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let types = &self.types;
        let buckets = self.groups.entry(kept).or_default();
        for (i, &t) in data.ts.iter().enumerate() {
            let start = t.div_euclid(self.tier_ms) * self.tier_ms;
            let stats = buckets.entry(start).or_insert_with(|| {
                types
                    .iter()
                    .map(|ty| EventStat {
                        count: 0,
                        sum: 0.0,
                        min: f64::INFINITY,
                        max: f64::NEG_INFINITY,
                        sketch: (*ty == FieldType::F64).then(Sketch::new),
                    })
                    .collect()
            });
            for (j, st) in stats.iter_mut().enumerate() {
                let Some(v) = data.cols.get(j).and_then(|c| c.as_ref()) else {
                    continue;
                };
                let Some(v) = f64_values(v, i) else { continue };
                st.count += 1;
                st.sum += v;
                st.min = st.min.min(v);
                st.max = st.max.max(v);
                if let Some(s) = &mut st.sketch {
                    s.add(v);
                }
            }
        }
    }

    /// The rollup series (sorted by labels), fields as [`event_rollup_fields`].
    pub(crate) fn finish(self) -> Vec<(Labels, SeriesData)> {
        let types = self.types;
        self.groups
            .into_iter()
            .map(|(labels, buckets)| {
                let ts: Vec<i64> = buckets.keys().copied().collect();
                let mut cols = Vec::new();
                for (j, ty) in types.iter().enumerate() {
                    let st = || buckets.values().map(move |b| &b[j]);
                    let valid: Vec<bool> = st().map(|s| s.count > 0).collect();
                    let valid = (!valid.iter().all(|&v| v)).then_some(valid);
                    let f = |g: fn(&EventStat) -> f64| {
                        Some(Column {
                            values: Values::F64(st().map(g).collect()),
                            valid: valid.clone(),
                        })
                    };
                    cols.push(Some(Column {
                        values: Values::I64(st().map(|s| s.count).collect()),
                        valid: None,
                    }));
                    cols.push(f(|s| s.sum));
                    cols.push(f(|s| if s.count > 0 { s.min } else { 0.0 }));
                    cols.push(f(|s| if s.count > 0 { s.max } else { 0.0 }));
                    if *ty == FieldType::F64 {
                        cols.push(Some(Column {
                            values: Values::Bytes(
                                st().map(|s| s.sketch.as_ref().map_or(Vec::new(), Sketch::encode))
                                    .collect(),
                            ),
                            valid: valid.clone(),
                        }));
                    }
                }
                (
                    labels,
                    SeriesData {
                        ts,
                        cols,
                        ordered: true,
                    },
                )
            })
            .collect()
    }
}

/// Per-bucket statistics of one field of one series (buckets with samples only).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets {
    pub start: Vec<TimestampMs>,
    pub count: Vec<i64>,
    pub sum: Vec<f64>,
    pub min: Vec<f64>,
    pub max: Vec<f64>,
    pub first: Vec<f64>,
    pub last: Vec<f64>,
    pub first_ts: Vec<TimestampMs>,
    pub last_ts: Vec<TimestampMs>,
    /// Σ over consecutive samples in the bucket of `cur - prev`, or `cur` after a
    /// counter reset (`cur < prev`); computed as `last - first` plus the value before
    /// each reset (exactly `last - first` without resets).
    pub inc: Vec<f64>,
}

impl Buckets {
    pub fn len(&self) -> usize {
        self.start.len()
    }
    pub fn is_empty(&self) -> bool {
        self.start.is_empty()
    }

    /// Buckets of `tier_ms` from samples sorted by time; `None` values (null) and
    /// stale markers are skipped.
    pub fn from_samples(
        ts: &[TimestampMs],
        value: impl Fn(usize) -> Option<f64>,
        tier_ms: i64,
    ) -> Buckets {
        let mut b = Buckets::default();
        let mut prev = f64::NAN;
        for (i, &t) in ts.iter().enumerate() {
            let Some(v) = value(i) else { continue };
            if v.to_bits() == STALE_NAN_BITS {
                continue;
            }
            let start = t.div_euclid(tier_ms) * tier_ms;
            if b.start.last() != Some(&start) {
                b.start.push(start);
                b.count.push(0);
                b.sum.push(0.0);
                b.min.push(v);
                b.max.push(v);
                b.first.push(v);
                b.last.push(v);
                b.first_ts.push(t);
                b.last_ts.push(t);
                b.inc.push(0.0);
                prev = f64::NAN;
            }
            let k = b.start.len() - 1;
            // Here `inc` sums the value before each reset; the telescoping rest is
            // `last − first`, added at the end (as Prometheus computes `increase`).
            if b.count[k] > 0 && v < prev {
                b.inc[k] += prev;
            }
            b.count[k] += 1;
            b.sum[k] += v;
            // Prometheus' min/max_over_time: NaN only when every value is NaN.
            if v < b.min[k] || b.min[k].is_nan() {
                b.min[k] = v;
            }
            if v > b.max[k] || b.max[k].is_nan() {
                b.max[k] = v;
            }
            b.last[k] = v;
            b.last_ts[k] = t;
            prev = v;
        }
        for k in 0..b.len() {
            b.inc[k] += b.last[k] - b.first[k];
        }
        b
    }

    pub fn with_capacity(n: usize) -> Buckets {
        Buckets {
            start: Vec::with_capacity(n),
            count: Vec::with_capacity(n),
            sum: Vec::with_capacity(n),
            min: Vec::with_capacity(n),
            max: Vec::with_capacity(n),
            first: Vec::with_capacity(n),
            last: Vec::with_capacity(n),
            first_ts: Vec::with_capacity(n),
            last_ts: Vec::with_capacity(n),
            inc: Vec::with_capacity(n),
        }
    }

    /// The statistic vectors with their position in [`STATS`]: floats, then times.
    #[allow(clippy::type_complexity)]
    fn stats_mut(&mut self) -> ([(usize, &mut Vec<f64>); 6], [(usize, &mut Vec<i64>); 2]) {
        (
            [
                (1, &mut self.sum),
                (2, &mut self.min),
                (3, &mut self.max),
                (4, &mut self.first),
                (5, &mut self.last),
                (8, &mut self.inc),
            ],
            [(6, &mut self.first_ts), (7, &mut self.last_ts)],
        )
    }

    /// Appends `o`, whose buckets all come after these.
    pub fn append(&mut self, o: Buckets) {
        self.start.extend(o.start);
        self.count.extend(o.count);
        self.sum.extend(o.sum);
        self.min.extend(o.min);
        self.max.extend(o.max);
        self.first.extend(o.first);
        self.last.extend(o.last);
        self.first_ts.extend(o.first_ts);
        self.last_ts.extend(o.last_ts);
        self.inc.extend(o.inc);
    }
}

fn f64_values(c: &Column, i: usize) -> Option<f64> {
    if !c.is_valid(i) {
        return None;
    }
    match &c.values {
        Values::F64(v) => Some(v[i]),
        Values::I64(v) => Some(v[i] as f64),
        Values::Bytes(_) => None,
    }
}

/// A raw series → its rollup rows at one tier (every field's statistics; a field
/// without samples in a bucket has count 0 and nulls).
fn rollup_series(data: &SeriesData, nfields: usize, tier_ms: i64) -> SeriesData {
    let per_field: Vec<Buckets> = (0..nfields)
        .map(|j| match data.cols.get(j).and_then(|c| c.as_ref()) {
            Some(c) => Buckets::from_samples(&data.ts, |i| f64_values(c, i), tier_ms),
            None => Buckets::default(),
        })
        .collect();
    let starts: BTreeSet<i64> = per_field
        .iter()
        .flat_map(|b| b.start.iter().copied())
        .collect();
    let starts: Vec<i64> = starts.into_iter().collect();
    let n = starts.len();
    let mut cols = Vec::with_capacity(nfields * STATS.len());
    for b in &per_field {
        // Position of each output bucket in this field's buckets.
        let mut at = vec![None; n];
        let mut k = 0;
        for (i, s) in starts.iter().enumerate() {
            while k < b.start.len() && b.start[k] < *s {
                k += 1;
            }
            if k < b.start.len() && b.start[k] == *s {
                at[i] = Some(k);
            }
        }
        let valid: Vec<bool> = at.iter().map(Option::is_some).collect();
        let all_valid = valid.iter().all(|&v| v);
        let f = |src: &Vec<f64>| Column {
            values: Values::F64(at.iter().map(|k| k.map_or(0.0, |k| src[k])).collect()),
            valid: (!all_valid).then(|| valid.clone()),
        };
        let i = |src: &Vec<i64>| Column {
            values: Values::I64(at.iter().map(|k| k.map_or(0, |k| src[k])).collect()),
            valid: (!all_valid).then(|| valid.clone()),
        };
        cols.push(Some(Column {
            values: Values::I64(at.iter().map(|k| k.map_or(0, |k| b.count[k])).collect()),
            valid: None,
        }));
        cols.push(Some(f(&b.sum)));
        cols.push(Some(f(&b.min)));
        cols.push(Some(f(&b.max)));
        cols.push(Some(f(&b.first)));
        cols.push(Some(f(&b.last)));
        cols.push(Some(i(&b.first_ts)));
        cols.push(Some(i(&b.last_ts)));
        cols.push(Some(f(&b.inc)));
    }
    SeriesData {
        ts: starts,
        cols,
        ordered: true,
    }
}

/// The statistics a stored rollup row leaves null when they repeat the ones they
/// are derived from (counters make them equal), bit for bit, as positions in
/// [`STATS`]: `(derived, of, minus)` — `min` = `first`, `max` = `last`, `inc` =
/// `last − first`.
const DERIVED: [(usize, usize, Option<usize>); 3] = [(2, 4, None), (3, 5, None), (8, 5, Some(4))];

/// Position of `first` in [`STATS`]: set exactly when the bucket has samples.
const FIRST: usize = 4;

fn derived(of: f64, minus: Option<f64>) -> f64 {
    minus.map_or(of, |m| of - m)
}

/// A float column and its values.
fn f64s(cols: &[Option<Column>], p: usize) -> Option<(&Column, &[f64])> {
    let c = cols.get(p)?.as_ref()?;
    match &c.values {
        Values::F64(v) => Some((c, v)),
        _ => None,
    }
}

/// Before a rollup series is written: a derived statistic equal to its derivation
/// becomes null ([`DERIVED`]; [`fill_derived`] restores it). A bucket without
/// samples has every statistic null already.
fn thin(data: &mut SeriesData, nfields: usize) {
    let n = data.ts.len();
    for base in (0..nfields).map(|j| j * STATS.len()) {
        for (target, of, minus) in DERIVED {
            let repeats: Vec<bool> = {
                let col = |k: usize| f64s(&data.cols, base + k);
                let (Some((_, t)), Some((oc, of))) = (col(target), col(of)) else {
                    continue;
                };
                let minus = minus.and_then(col);
                (0..n)
                    .map(|i| {
                        oc.is_valid(i)
                            && derived(of[i], minus.map(|m| m.1[i])).to_bits() == t[i].to_bits()
                    })
                    .collect()
            };
            if let Some(Some(c)) = data.cols.get_mut(base + target) {
                let valid = c.valid.get_or_insert_with(|| vec![true; n]);
                for (v, r) in valid.iter_mut().zip(repeats) {
                    *v &= !r;
                }
            }
        }
    }
}

/// For a rollup field `<field>_<stat>` whose statistic may be left null
/// ([`DERIVED`]): the names of the fields it is filled from, `(first, of, minus)`.
fn derived_from(name: &str) -> Option<(String, String, Option<String>)> {
    DERIVED.iter().find_map(|&(target, of, minus)| {
        let field = name.strip_suffix(STATS[target].0)?.strip_suffix('_')?;
        let stat = |k: usize| format!("{field}_{}", STATS[k].0);
        Some((stat(FIRST), stat(of), minus.map(stat)))
    })
}

/// The rollup fields to read for `fields`: them, then the sources their derived
/// statistics are filled from (see [`fill_derived`]).
fn with_sources(fields: &[FieldDef]) -> Vec<FieldDef> {
    let mut read = fields.to_vec();
    for f in fields {
        let Some((first, of, minus)) = derived_from(&f.name) else {
            continue;
        };
        for name in [Some(first), Some(of), minus].into_iter().flatten() {
            if !read.iter().any(|r| r.name == name) {
                read.push(FieldDef::new(name, FieldType::F64));
            }
        }
    }
    read
}

/// A derived statistic of a read and the columns it is filled from (positions in
/// the read's fields).
struct Fill {
    target: usize,
    first: usize,
    of: usize,
    minus: Option<usize>,
}

/// The fills of a read of `read` (from [`with_sources`]) whose first `wanted` fields
/// were asked for: worked out once per read, applied per series ([`fill_derived`]).
fn fills(read: &[FieldDef], wanted: usize) -> Vec<Fill> {
    let pos = |name: &str| read.iter().position(|f| f.name == name);
    read.iter()
        .take(wanted)
        .enumerate()
        .filter_map(|(target, f)| {
            let (first, of, minus) = derived_from(&f.name)?;
            let minus = match minus {
                Some(m) => Some(pos(&m)?),
                None => None,
            };
            Some(Fill {
                target,
                first: pos(&first)?,
                of: pos(&of)?,
                minus,
            })
        })
        .collect()
}

/// After a series' rollup rows are read: the derived statistics a row left null
/// while it has samples are computed back from their sources ([`thin`]), and the
/// columns past the first `wanted` (the added sources) dropped.
fn fill_derived(data: &mut SeriesData, fills: &[Fill], wanted: usize) {
    for f in fills {
        let values: Vec<(usize, f64)> = {
            let col = |p: usize| f64s(&data.cols, p);
            let (Some((tc, _)), Some((fc, _)), Some((oc, of))) =
                (col(f.target), col(f.first), col(f.of))
            else {
                continue;
            };
            let minus = match f.minus.map(col) {
                Some(None) => continue,
                m => m.flatten(),
            };
            (0..data.ts.len())
                .filter(|&i| !tc.is_valid(i) && fc.is_valid(i) && oc.is_valid(i))
                .map(|i| (i, derived(of[i], minus.map(|m| m.1[i]))))
                .collect()
        };
        if let Some(Some(Column {
            values: Values::F64(v),
            valid: Some(valid),
        })) = data.cols.get_mut(f.target)
        {
            for (i, x) in values {
                v[i] = x;
                valid[i] = true;
            }
        }
    }
    data.cols.truncate(wanted);
}

/// Rollup rows of one field → buckets. The row's columns are the statistics
/// `want`ed, in [`STATS`] order; the others stay empty.
fn buckets_of(data: &SeriesData, want: &[bool; 9]) -> Buckets {
    let mut cols: [Option<&Column>; 9] = [None; 9];
    let mut next = 0;
    for (k, w) in want.iter().enumerate() {
        if *w {
            cols[k] = data.cols.get(next).and_then(|c| c.as_ref());
            next += 1;
        }
    }
    let Some(count) = cols[0] else {
        return Buckets::default();
    };
    let int = |c: &Column, i: usize| match &c.values {
        Values::I64(v) => v[i],
        Values::F64(v) => v[i] as i64,
        Values::Bytes(_) => 0,
    };
    let fl = |c: &Column, i: usize| f64_values(c, i).unwrap_or(f64::NAN);
    let n = data.ts.len();
    let mut b = Buckets::default();
    let valid: Vec<usize> = (0..n)
        .filter(|&i| count.is_valid(i) && int(count, i) > 0)
        .collect();
    b.start = valid.iter().map(|&i| data.ts[i]).collect();
    b.count = valid.iter().map(|&i| int(count, i)).collect();
    let (floats, ints) = b.stats_mut();
    for (k, out) in floats {
        if let Some(c) = cols[k] {
            *out = valid.iter().map(|&i| fl(c, i)).collect();
        }
    }
    for (k, out) in ints {
        if let Some(c) = cols[k] {
            *out = valid.iter().map(|&i| int(c, i)).collect();
        }
    }
    b
}

/// The tables of a (tenant, day) one tier holds ([`Inner::tier_tables`]).
#[derive(Debug, Default)]
struct TierTables {
    held: BTreeSet<String>,
    /// Left out because the tier would save too few rows (held once their raw rows
    /// are about to expire).
    left_out: Vec<String>,
}

/// One tier being built.
struct TierBuild {
    tier_ms: i64,
    writer: SegmentWriter,
    tables: TierTables,
    /// Whether the table being read goes into this tier.
    active: bool,
    /// The event table being read, grouped (written when it ends: its groups' label
    /// order is not the raw series order).
    events: Option<EventRollup>,
}

/// The builder: one segment writer per tier, fed by the raw merge.
struct RollupSink {
    tiers: Vec<TierBuild>,
    nfields: usize,
    drop_tags: Vec<String>,
}

impl RollupSink {
    fn end_events(&mut self) -> Result<()> {
        for t in &mut self.tiers {
            for (labels, data) in t.events.take().map(EventRollup::finish).unwrap_or_default() {
                t.writer.push_series(&labels, &data)?;
            }
        }
        Ok(())
    }
}

impl MergeSink for RollupSink {
    fn begin_table(&mut self, table: &PlanTable) -> Result<bool> {
        let (name, kind, fields) = (table.name.as_str(), table.kind, &table.fields);
        self.end_events()?;
        self.nfields = fields.len();
        let rf = match kind {
            MetricKind::Event => event_rollup_fields(fields),
            _ => rollup_fields(fields),
        };
        for t in &mut self.tiers {
            t.active = t.tables.held.contains(name);
            if t.active {
                // Event rollups are written grouped, in label-set order.
                let order = if kind == MetricKind::Event {
                    &[][..]
                } else {
                    &table.order[..]
                };
                t.writer.begin_table(name, kind, &rf, order);
                t.events = (kind == MetricKind::Event)
                    .then(|| EventRollup::new(t.tier_ms, fields, &self.drop_tags));
            }
        }
        Ok(self.tiers.iter().any(|t| t.active))
    }
    fn series(&mut self, labels: &Labels, data: &SeriesData) -> Result<()> {
        for t in self.tiers.iter_mut().filter(|t| t.active) {
            if let Some(ev) = &mut t.events {
                ev.add(labels, data);
                continue;
            }
            let mut r = rollup_series(data, self.nfields, t.tier_ms);
            thin(&mut r, self.nfields);
            t.writer.push_series(labels, &r)?;
        }
        Ok(())
    }
}

/// What a rollup tier holds of one table over a span ([`Storage::rollup_cover`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollupCover {
    /// Days of the span the tier answers.
    pub days: usize,
    /// Of those, days whose raw data has expired: only the tier has them.
    pub expired_days: usize,
    /// The table's rows in the tier on those days.
    pub tier_rows: u64,
    /// The table's rows in the raw segments the tier was built from.
    pub raw_rows: u64,
}

/// What [`Storage::scan_buckets`] returns.
#[derive(Debug, Default)]
pub struct BucketScan {
    pub kind: Option<MetricKind>,
    /// Matching series (sorted by labels) and their buckets over the range.
    pub series: Vec<(Labels, Buckets)>,
    /// Days answered from the tier, and from raw data.
    pub rollup_days: usize,
    pub raw_days: usize,
}

impl Inner {
    /// Whether the day's rollup at `tier` answers for `table`: it is built from
    /// exactly the day's raw segments (or the raw data is gone) and no unflushed rows
    /// of the table fall in the day.
    fn rollup_current(
        &self,
        st: &crate::engine::ReadState,
        tenant: &str,
        table: &str,
        day: i64,
        tier: i64,
    ) -> Option<RollupMeta> {
        let m = &st.manifest;
        let r = m
            .rollups
            .iter()
            .find(|r| r.tier_ms == tier && r.segment.tenant == tenant && r.segment.day == day)?;
        let raw: Vec<u64> = m
            .segments
            .iter()
            .filter(|s| s.tenant == tenant && s.day == day)
            .map(|s| s.id)
            .collect();
        let current = if raw.is_empty() {
            r.raw_expired
        } else {
            raw == r.sources
        };
        if !current {
            return None;
        }
        let (lo, hi) = (day * DAY_MS, day * DAY_MS + DAY_MS - 1);
        let touches = |h: &crate::head::Head| {
            h.table(tenant, table)
                .is_some_and(|th| !th.series.is_empty() && th.max_time >= lo && th.min_time <= hi)
        };
        if touches(&st.active.read()) || st.frozen.iter().any(|f| touches(&f.head)) {
            return None;
        }
        // A table the raw day holds must be in the rollup (event tables never are).
        let in_raw = m.segments.iter().any(|s| {
            s.tenant == tenant && s.day == day && s.tables.iter().any(|t| t.name == table)
        });
        let in_rollup = r.segment.tables.iter().any(|t| t.name == table);
        (in_rollup || !in_raw).then(|| r.clone())
    }

    /// The current rollups of `tier` answering `req`'s table and span.
    fn rollups_answering(&self, tenant: &str, tier: i64, req: &ScanRequest) -> Vec<RollupMeta> {
        let st = self.state.read();
        self.current_rollups(&st, tenant, tier, &req.table, req.start, req.end)
    }

    /// The current rollups of `tier` for `table` among the days of `[start, end]`,
    /// by day, read under the state lock `st` (only days that have a rollup are
    /// looked at, so an unbounded range costs nothing).
    fn current_rollups(
        &self,
        st: &crate::engine::ReadState,
        tenant: &str,
        tier: i64,
        table: &str,
        start: TimestampMs,
        end: TimestampMs,
    ) -> Vec<RollupMeta> {
        let (first, last) = (day_of(start), day_of(end));
        let mut v: Vec<RollupMeta> = st
            .manifest
            .rollups
            .iter()
            .filter(|r| {
                r.tier_ms == tier
                    && r.segment.tenant == tenant
                    && (first..=last).contains(&r.segment.day)
            })
            .filter_map(|r| self.rollup_current(st, tenant, table, r.segment.day, tier))
            .collect();
        v.sort_by_key(|r| r.segment.day);
        v
    }

    /// The rows (buckets starting in `[lo, hi]`) of `table`'s series matching
    /// `matchers` in a rollup segment, with the bytes read; statistics the stored
    /// rows left null because they repeat others are filled back ([`fill_derived`]).
    fn read_rollup(
        &self,
        seg: &SegmentMeta,
        table: &str,
        matchers: &[crate::Matcher],
        fields: &[FieldDef],
        (lo, hi): (TimestampMs, TimestampMs),
    ) -> Result<(Vec<(Labels, SeriesData)>, u64)> {
        let index = self.table_index(seg.id, &seg.index_path, table)?;
        let Some(it) = index.table(table) else {
            return Ok((Vec::new(), 0));
        };
        let ords = it.select(matchers, lo, hi);
        // Event tables' statistics are never left null.
        let event = seg
            .tables
            .iter()
            .any(|t| t.name == table && t.kind() == MetricKind::Event);
        let read = if event {
            fields.to_vec()
        } else {
            with_sources(fields)
        };
        let (mut rows, bytes) = read_series(
            self.vfs.as_ref(),
            &SeriesRead {
                path: self.dir.join(&seg.path),
                footer: &self.segment_footer(seg.id, &seg.path)?,
                table: it,
                ordinals: &ords,
                fields: &read,
                start: lo,
                end: hi,
            },
        )?;
        let fills = fills(&read, fields.len());
        for (_, data) in &mut rows {
            fill_derived(data, &fills, fields.len());
        }
        Ok((rows, bytes))
    }

    /// Whether `tenant`'s raw rows of `table` for `day` expire within
    /// [`EXPIRY_LEAD_MS`] of `now` (or already have): every tier takes them in then.
    fn raw_expires_soon(&self, tenant: &str, table: &str, day: i64, now: TimestampMs) -> bool {
        self.config
            .retention
            .day_expired(tenant, table, day, now.saturating_add(EXPIRY_LEAD_MS))
    }

    /// Per tier (parallel to `tiers`), which tables of a (tenant, day)'s raw segments
    /// `segs` the tier holds. None whose tier retention has passed for the day
    /// (they would be dropped again); of the others every event table, and a table
    /// whose raw rows are at least [`RollupConfig::min_saving`] times the tier's rows
    /// or expire within [`EXPIRY_LEAD_MS`] at `now`. A series' tier rows are bounded
    /// by its rows and by the buckets its time range spans (from the segment indexes,
    /// no data read), so the saving is never overestimated.
    fn tier_tables(
        &self,
        tenant: &str,
        day: i64,
        segs: &[SegmentMeta],
        tiers: &[i64],
        now: TimestampMs,
    ) -> Result<Vec<TierTables>> {
        let cfg = &self.config.rollups;
        let min_saving = cfg.min_saving;
        // Per table: whether it is an event table, raw rows and, per tier, the bound
        // on its rows.
        let mut rows: std::collections::BTreeMap<&str, (bool, u64, Vec<u64>)> = Default::default();
        for seg in segs {
            let index = if min_saving > 1 {
                Some(self.segment_index(seg.id, &seg.index_path)?)
            } else {
                None
            };
            for t in &seg.tables {
                let e = rows
                    .entry(t.name.as_str())
                    .or_insert_with(|| (t.kind() == MetricKind::Event, 0, vec![0; tiers.len()]));
                e.1 += t.rows;
                // Event tables are always held: no bound needed.
                let Some(it) = index
                    .as_ref()
                    .filter(|_| !e.0)
                    .and_then(|i| i.table(&t.name))
                else {
                    continue;
                };
                for (bound, &tier) in e.2.iter_mut().zip(tiers) {
                    *bound += it
                        .series
                        .iter()
                        .map(|se| {
                            let spans = se.max_time.div_euclid(tier) - se.min_time.div_euclid(tier);
                            u64::from(se.rows).min(spans as u64 + 1)
                        })
                        .sum::<u64>();
                }
            }
        }
        Ok(tiers
            .iter()
            .enumerate()
            .map(|(i, &tier)| {
                let mut t = TierTables::default();
                for (&name, (event, raw, bound)) in &rows {
                    if cfg.day_expired(tier, tenant, name, day, now) {
                        continue;
                    }
                    if *event
                        || min_saving <= 1
                        || *raw >= bound[i].saturating_mul(min_saving)
                        || self.raw_expires_soon(tenant, name, day, now)
                    {
                        t.held.insert(name.to_string());
                    } else {
                        t.left_out.push(name.to_string());
                    }
                }
                t
            })
            .collect())
    }

    /// Builds the rollups of every (tenant, day) whose rollups are missing or stale
    /// (`only_due`: only of days holding raw rows about to expire that a tier still
    /// lacks — what retention needs before it drops them).
    pub(crate) fn build_rollups(&self, only_due: bool) -> Result<usize> {
        let cfg = &self.config.rollups;
        let tiers = cfg.tiers_ms();
        if !cfg.enabled || tiers.is_empty() {
            return Ok(0);
        }
        let _m = self.maint_lock.lock();
        let now = self.clock.now_ms();
        let today = day_of(now);
        let manifest = self.state.read().manifest.clone();
        self.rollup_built.lock().retain(|(_, d), _| *d >= today);
        let mut built = 0;
        let mut days: std::collections::BTreeMap<(String, i64), Vec<SegmentMeta>> =
            Default::default();
        for s in &manifest.segments {
            days.entry((s.tenant.clone(), s.day))
                .or_default()
                .push(s.clone());
        }
        for ((tenant, day), segs) in days {
            if *self.stop.lock() {
                break;
            }
            let ids: Vec<u64> = segs.iter().map(|s| s.id).collect();
            let existing: Vec<&RollupMeta> = manifest
                .rollups
                .iter()
                .filter(|r| r.segment.tenant == tenant && r.segment.day == day)
                .collect();
            let due = |table: &str| self.raw_expires_soon(&tenant, table, day, now);
            if only_due && !segs.iter().any(|s| s.tables.iter().any(|t| due(&t.name))) {
                continue;
            }
            // A tier is current when its rollup was built from these segments by this
            // version and left out no table now due; a tier without a rollup, when it
            // has nothing to hold.
            let rollup = |t: i64| existing.iter().find(|r| r.tier_ms == t);
            let stale = tiers.iter().filter_map(|&t| rollup(t)).any(|r| {
                r.sources != ids || r.version < ROLLUP_VERSION || r.left_out.iter().any(|x| due(x))
            });
            let missing = tiers.iter().any(|&t| rollup(t).is_none());
            if !stale && !missing {
                continue;
            }
            let tables = self.tier_tables(&tenant, day, &segs, &tiers, now)?;
            if !stale
                && tiers
                    .iter()
                    .zip(&tables)
                    .all(|(&t, held)| held.held.is_empty() || rollup(t).is_some())
            {
                continue;
            }
            if day >= today {
                let mut last = self.rollup_built.lock();
                let key = (tenant.clone(), day);
                let due = last
                    .get(&key)
                    .is_none_or(|&t| now - t >= cfg.current_day_every.as_millis() as i64);
                if !due {
                    continue;
                }
                last.insert(key, now);
            }
            let (plan, tag_keys) = self.merge_plan(&segs)?;
            let (mut field_names, mut bytes_fields) = (BTreeSet::new(), BTreeSet::new());
            for t in &plan {
                let rf = match t.kind {
                    MetricKind::Event => event_rollup_fields(&t.fields),
                    _ => rollup_fields(&t.fields),
                };
                for f in rf {
                    match f.ty {
                        FieldType::Bytes => bytes_fields.insert(f.name),
                        _ => field_names.insert(f.name),
                    };
                }
            }
            // A tier's series have a few rows each: zstd saves a little on `:s`.
            let tier_opts = WriteOptions {
                compress_scale: true,
                ..self.config.segment.clone()
            };
            let mut sink = RollupSink {
                tiers: tiers
                    .iter()
                    .zip(tables)
                    .map(|(&tier_ms, tables)| {
                        Ok(TierBuild {
                            tier_ms,
                            writer: SegmentWriter::with_bytes_fields(
                                &tag_keys,
                                &field_names,
                                &bytes_fields,
                                &tier_opts,
                            )?,
                            tables,
                            active: false,
                            events: None,
                        })
                    })
                    .collect::<Result<_>>()?,
                nfields: 0,
                drop_tags: cfg.event_drop_tags.clone(),
            };
            self.merge_into(&segs, &plan, &|_, _| Keep::All, &mut sink)?;
            sink.end_events()?;
            let mut added = Vec::new();
            for t in sink.tiers {
                if t.writer.rows() == 0 {
                    continue;
                }
                let (meta, index) = self.write_segment_files(
                    &tenant,
                    day,
                    &format!("-r{}", t.tier_ms),
                    t.writer.finish()?,
                )?;
                self.index_cache.lock().insert(meta.id, Arc::new(index));
                added.push(RollupMeta {
                    tier_ms: t.tier_ms,
                    sources: ids.clone(),
                    raw_expired: false,
                    version: ROLLUP_VERSION,
                    left_out: t.tables.left_out,
                    segment: meta,
                });
            }
            self.swap_rollups(&tenant, day, added, &ids)?;
            built += 1;
            tracing::debug!(%tenant, day, "built rollups");
        }
        self.sweep();
        Ok(built)
    }

    /// Replaces the rollups of a (tenant, day) with `added` — if the day's raw
    /// segments are still `sources` (a concurrent change makes the build stale: its
    /// files go to the trash and the next pass rebuilds).
    fn swap_rollups(
        &self,
        tenant: &str,
        day: i64,
        added: Vec<RollupMeta>,
        sources: &[u64],
    ) -> Result<()> {
        let _flush = self.flush_lock.lock();
        let mut m = (*self.state.read().manifest).clone();
        let raw: Vec<u64> = m
            .segments
            .iter()
            .filter(|s| s.tenant == tenant && s.day == day)
            .map(|s| s.id)
            .collect();
        let mut trash: Vec<String> = Vec::new();
        if raw != sources {
            for r in added {
                trash.extend([r.segment.path, r.segment.index_path]);
            }
            self.trash.lock().discard_now(trash);
            return Ok(());
        }
        m.rollups.retain(|r| {
            let replaced = r.segment.tenant == tenant && r.segment.day == day;
            if replaced {
                trash.extend([r.segment.path.clone(), r.segment.index_path.clone()]);
            }
            !replaced
        });
        m.rollups.extend(added);
        self.install(m, trash)?;
        Ok(())
    }

    /// Applies the tiers' retention (with its per-tenant and per-table overrides):
    /// a rollup segment whose tables all expired is dropped, one with some expired
    /// tables is rewritten without them. Returns the rollup segments dropped or
    /// rewritten.
    pub(crate) fn expire_rollups(&self) -> Result<usize> {
        let now = self.clock.now_ms();
        let cfg = &self.config.rollups;
        let tiers = cfg.tiers_ms();
        let _m = self.maint_lock.lock();
        // Rollups change only under the maintenance lock, held from here on.
        let rollups = self.state.read().manifest.rollups.clone();
        let mut n = 0;
        for r in rollups {
            let expired: BTreeSet<&str> = r
                .segment
                .tables
                .iter()
                .filter(|t| {
                    !tiers.contains(&r.tier_ms)
                        || cfg.day_expired(
                            r.tier_ms,
                            &r.segment.tenant,
                            &t.name,
                            r.segment.day,
                            now,
                        )
                })
                .map(|t| t.name.as_str())
                .collect();
            if expired.is_empty() {
                continue;
            }
            let out = if expired.len() == r.segment.tables.len() {
                None
            } else {
                self.rewrite(std::slice::from_ref(&r.segment), &keep_except(&expired))?
            };
            let _flush = self.flush_lock.lock();
            let mut m = (*self.state.read().manifest).clone();
            m.rollups.retain(|x| x.segment.id != r.segment.id);
            if let Some((seg, index, _)) = out {
                self.index_cache.lock().insert(seg.id, Arc::new(index));
                m.rollups.push(RollupMeta {
                    segment: seg,
                    ..r.clone()
                });
            }
            self.install(
                m,
                vec![r.segment.path.clone(), r.segment.index_path.clone()],
            )?;
            n += 1;
            tracing::info!(tenant = %r.segment.tenant, day = r.segment.day, tier = r.tier_ms, tables = ?expired, "tier retention expired rollups");
        }
        Ok(n)
    }
}

impl Storage {
    /// Builds missing or stale rollups now (the background pass does this after
    /// compaction). Returns the number of (tenant, day)s built.
    pub fn build_rollups(&self) -> Result<usize> {
        self.inner.build_rollups(false)
    }

    /// Tags of event tables that their rollups leave out (see [`tier_schema`]).
    pub fn event_drop_tags(&self) -> &[String] {
        &self.inner.config.rollups.event_drop_tags
    }

    /// The configured tiers (bucket widths in ms, ascending).
    pub fn rollup_tiers(&self) -> Vec<i64> {
        if self.inner.config.rollups.enabled {
            self.inner.config.rollups.tiers_ms()
        } else {
            Vec::new()
        }
    }

    /// What the tier holds of `table` over the days of `[start, end]` it can answer
    /// right now, against the raw segments it was built from.
    pub fn rollup_cover(
        &self,
        tenant: &str,
        tier_ms: i64,
        table: &str,
        start: TimestampMs,
        end: TimestampMs,
    ) -> RollupCover {
        let st = self.inner.state.read();
        let rollups = self
            .inner
            .current_rollups(&st, tenant, tier_ms, table, start, end);
        let rows = |seg: &SegmentMeta| {
            seg.tables
                .iter()
                .find(|t| t.name == table)
                .map_or(0, |t| t.rows)
        };
        let mut cover = RollupCover {
            days: rollups.len(),
            ..RollupCover::default()
        };
        for r in &rollups {
            cover.tier_rows += rows(&r.segment);
            // A current rollup's day holds exactly the raw segments it was built
            // from, or none once they expired.
            let raw: Vec<&SegmentMeta> = st
                .manifest
                .segments
                .iter()
                .filter(|s| s.tenant == tenant && s.day == r.segment.day)
                .collect();
            if raw.is_empty() {
                cover.expired_days += 1;
            }
            cover.raw_rows += raw.into_iter().map(rows).sum::<u64>();
        }
        cover
    }

    /// The buckets of `req.table`'s single field `req.fields[0]` over `[start, end]`
    /// at `tier_ms`: from the tier for the days it answers, from raw data bucketed on
    /// the fly for the others. `start` should be bucket-aligned; the last bucket may
    /// be cut at `end`. `stats` names the statistics wanted (see [`STATS`]; `None`:
    /// all); the others may come back empty. `count`, `first` and `first_ts` always
    /// come back.
    pub fn scan_buckets(
        &self,
        tenant: &str,
        tier_ms: i64,
        req: &ScanRequest,
        stats: Option<&[&str]>,
    ) -> Result<BucketScan> {
        let Some(schema) = self.table_schema(tenant, &req.table) else {
            return Ok(BucketScan::default());
        };
        let field = match req.fields.as_deref() {
            Some([f]) => f.clone(),
            _ => "value".to_string(),
        };
        let Some(fi) = schema.fields.iter().position(|f| f.name == field) else {
            return Ok(BucketScan::default());
        };
        let mut want = [stats.is_none(); 9];
        for (k, (name, _)) in STATS.iter().enumerate() {
            if matches!(*name, "count" | "first" | "first_ts")
                || stats.is_some_and(|s| s.contains(name))
            {
                want[k] = true;
            }
        }
        let fields: Vec<FieldDef> = rollup_fields(std::slice::from_ref(&schema.fields[fi]))
            .into_iter()
            .zip(want)
            .filter_map(|(f, w)| w.then_some(f))
            .collect();
        let (start, end) = (req.start, req.end);
        let answered = self.inner.rollups_answering(tenant, tier_ms, req);
        let mut out = BucketScan {
            kind: Some(schema.kind),
            ..Default::default()
        };
        let jobs = read_plan(&answered, start, end);
        for (lo, hi, r) in &jobs {
            match r {
                Some(_) => out.rollup_days += 1,
                None => out.raw_days += (day_of(*hi) - day_of(*lo) + 1) as usize,
            }
        }
        let run =
            |&(lo, hi, r): &(i64, i64, Option<&RollupMeta>)| -> Result<Vec<(Labels, Buckets)>> {
                let mut got = Vec::new();
                match r {
                    Some(r) => {
                        let (rows, _) = self.inner.read_rollup(
                            &r.segment,
                            &req.table,
                            &req.matchers,
                            &fields,
                            (lo, hi),
                        )?;
                        for (labels, data) in rows {
                            let b = buckets_of(&data, &want);
                            if !b.is_empty() {
                                got.push((labels, b));
                            }
                        }
                    }
                    None => {
                        let mut rq = ScanRequest::new(req.table.clone(), lo, hi)
                            .with_fields(vec![field.clone()]);
                        rq.matchers = req.matchers.clone();
                        for (labels, data) in self.scan(tenant, &rq)?.series {
                            let Some(c) = data.cols.first().and_then(|c| c.as_ref()) else {
                                continue;
                            };
                            let b = Buckets::from_samples(&data.ts, |i| f64_values(c, i), tier_ms);
                            if !b.is_empty() {
                                got.push((labels, b));
                            }
                        }
                    }
                }
                Ok(got)
            };
        // Days are independent files: read them on every core.
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(jobs.len())
            .max(1);
        let results: Vec<Result<Vec<(Labels, Buckets)>>> = if threads == 1 {
            jobs.iter().map(run).collect()
        } else {
            let chunk = jobs.len().div_ceil(threads);
            std::thread::scope(|sc| {
                let handles: Vec<_> = jobs
                    .chunks(chunk)
                    .map(|part| sc.spawn(|| part.iter().map(run).collect::<Vec<_>>()))
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("bucket reader panicked"))
                    .collect()
            })
        };
        // Parts per series in time order, concatenated once at their total length.
        let mut by_series: std::collections::HashMap<Labels, Vec<Buckets>> = Default::default();
        for r in results {
            for (labels, b) in r? {
                by_series.entry(labels).or_default().push(b);
            }
        }
        let mut series: Vec<(Labels, Buckets)> = by_series
            .into_iter()
            .map(|(labels, mut parts)| {
                if parts.len() == 1 {
                    return (labels, parts.pop().expect("one part"));
                }
                let n = parts.iter().map(Buckets::len).sum();
                let mut all = Buckets::with_capacity(n);
                for p in parts {
                    all.append(p);
                }
                (labels, all)
            })
            .collect();
        series.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out.series = series;
        Ok(out)
    }
}

/// How to read `[start, end]` given the days a tier answers (`answered`, by day):
/// in time order, each answered day from its rollup, and the ranges between them
/// (of any length) from raw data.
fn read_plan(
    answered: &[RollupMeta],
    start: TimestampMs,
    end: TimestampMs,
) -> Vec<(TimestampMs, TimestampMs, Option<&RollupMeta>)> {
    let mut jobs = Vec::with_capacity(answered.len() * 2 + 1);
    let mut cursor = start;
    for r in answered {
        let d = r.segment.day;
        let (lo, hi) = (start.max(d * DAY_MS), end.min(d * DAY_MS + DAY_MS - 1));
        if cursor < lo {
            jobs.push((cursor, lo - 1, None));
        }
        jobs.push((lo, hi, Some(r)));
        cursor = hi.saturating_add(1);
    }
    if cursor <= end {
        jobs.push((cursor, end, None));
    }
    jobs
}

/// The name of a tier in table names: `1m`, `1h`, `1d`, else seconds (`30s`).
pub fn tier_suffix(tier_ms: i64) -> String {
    match tier_ms {
        t if t % DAY_MS == 0 => format!("{}d", t / DAY_MS),
        t if t % 3_600_000 == 0 => format!("{}h", t / 3_600_000),
        t if t % 60_000 == 0 => format!("{}m", t / 60_000),
        t => format!("{}s", t / 1000),
    }
}

impl Storage {
    /// A tier as a table: the rollup rows (one per series and bucket; `time` = bucket
    /// start, nine statistics per field, see [`STATS`]) of `req.table` in
    /// `[start, end]` matching `req.matchers`. Days the tier does not answer yet are
    /// rolled up from raw data on the fly, so the answer is the same either way.
    pub fn scan_rollup(
        &self,
        tenant: &str,
        tier_ms: i64,
        req: &ScanRequest,
    ) -> Result<crate::ScanOutput> {
        let Some(schema) = self.table_schema(tenant, &req.table) else {
            return self.scan(tenant, req);
        };
        let drop_tags = &self.inner.config.rollups.event_drop_tags;
        let out_schema = tier_schema(&schema, drop_tags);
        let rfields = out_schema.fields.clone();
        let (start, end) = (req.start, req.end);
        let answered = self.inner.rollups_answering(tenant, tier_ms, req);
        let mut by_series: std::collections::BTreeMap<Labels, SeriesData> = Default::default();
        let mut add = |labels: Labels, data: SeriesData| {
            if data.is_empty() {
                return;
            }
            match by_series.get_mut(&labels) {
                Some(all) => all.extend(&data),
                None => {
                    by_series.insert(labels, data);
                }
            }
        };
        let mut stats = crate::ScanStats::default();
        let raw = |lo: i64,
                   hi: i64,
                   stats: &mut crate::ScanStats,
                   add: &mut dyn FnMut(Labels, SeriesData)|
         -> Result<()> {
            // Whole buckets only: those starting in [lo, hi], with all their samples.
            let lo = lo
                .div_euclid(tier_ms)
                .saturating_add(i64::from(lo.rem_euclid(tier_ms) != 0))
                .saturating_mul(tier_ms);
            let hi = hi
                .div_euclid(tier_ms)
                .saturating_mul(tier_ms)
                .saturating_add(tier_ms - 1);
            if lo > hi {
                return Ok(());
            }
            let mut rq = ScanRequest::new(req.table.clone(), lo, hi);
            rq.matchers = req.matchers.clone();
            let out = self.scan(tenant, &rq)?;
            stats.segments_read += out.stats.segments_read;
            stats.bytes_read += out.stats.bytes_read;
            if schema.kind == MetricKind::Event {
                let mut ev = EventRollup::new(tier_ms, &schema.fields, drop_tags);
                for (labels, data) in &out.series {
                    ev.add(labels, data);
                }
                for (labels, data) in ev.finish() {
                    add(labels, data);
                }
                return Ok(());
            }
            for (labels, data) in out.series {
                add(labels, rollup_series(&data, schema.fields.len(), tier_ms));
            }
            Ok(())
        };
        for (lo, hi, r) in read_plan(&answered, start, end) {
            let Some(r) = r else {
                raw(lo, hi, &mut stats, &mut add)?;
                continue;
            };
            let (rows, bytes) = self.inner.read_rollup(
                &r.segment,
                &req.table,
                &req.matchers,
                &rfields,
                (lo, hi),
            )?;
            stats.segments_read += 1;
            stats.bytes_read += bytes;
            for (labels, data) in rows {
                add(labels, data);
            }
        }
        let series: Vec<(Labels, SeriesData)> = by_series.into_iter().collect();
        stats.series = series.len();
        stats.rows = series.iter().map(|(_, d)| d.len()).sum();
        Ok(crate::ScanOutput {
            schema: out_schema,
            series,
            stats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_keep_what_range_functions_need() {
        let ts = [0, 10, 59_999, 60_000, 61_000, 130_000];
        let v = [5.0, 7.0, 2.0, 4.0, f64::from_bits(STALE_NAN_BITS), 1.0];
        let b = Buckets::from_samples(&ts, |i| Some(v[i]), 60_000);
        assert_eq!(b.start, vec![0, 60_000, 120_000]);
        assert_eq!(b.count, vec![3, 1, 1]);
        assert_eq!(b.sum, vec![14.0, 4.0, 1.0]);
        assert_eq!((b.min[0], b.max[0]), (2.0, 7.0));
        assert_eq!((b.first[0], b.last[0]), (5.0, 2.0));
        assert_eq!((b.first_ts[0], b.last_ts[0]), (0, 59_999));
        // 5 → 7 (+2), 7 → 2 (a reset: +2).
        assert_eq!(b.inc[0], 4.0);
        // Round trip through the stored form.
        let data = SeriesData {
            ts: ts.to_vec(),
            cols: vec![Some(Column {
                values: Values::F64(v.to_vec()),
                valid: None,
            })],
            ordered: true,
        };
        let r = rollup_series(&data, 1, 60_000);
        assert_eq!(buckets_of(&r, &[true; 9]), b);
        // Stored thinned: bucket 1's one sample makes min, max and inc repeat first,
        // last and last − first; bucket 0's do not. Read back, they are filled in.
        let mut stored = r.clone();
        thin(&mut stored, 1);
        let set = |k: usize| -> Vec<bool> {
            let c = stored.cols[k].as_ref().unwrap();
            (0..3).map(|i| c.is_valid(i)).collect()
        };
        assert_eq!(set(2), vec![true, false, false]);
        assert_eq!(set(3), vec![true, false, false]);
        assert_eq!(set(8), vec![true, false, false]);
        assert_eq!(set(4), vec![true, true, true]);
        let fields = rollup_fields(&[FieldDef::new("value", FieldType::F64)]);
        let read = with_sources(&fields[2..4]);
        assert_eq!(
            read.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            ["value_min", "value_max", "value_first", "value_last"]
        );
        fill_derived(&mut stored, &fills(&fields, fields.len()), fields.len());
        assert_eq!(buckets_of(&stored, &[true; 9]), b);
    }
}
