//! The head: acknowledged writes not yet in segments, in memory, by series.
//!
//! One [`Head`] holds every tenant's tables. Within a table, series get dense ordinals
//! and a [`Postings`] index, so a tag-selective read touches only matching series
//! instead of scanning the head. The engine keeps one active head (receiving writes)
//! and, during a flush, frozen heads that are still read until their segments are in
//! the manifest.
//!
//! Design decision: a flush takes the *samples* ([`Head::cut`]), not the series. The
//! series registry (label sets, ids, postings) stays with the active head, as in
//! Prometheus' head, so a stable set of 100k series is not rebuilt after every flush,
//! and the size bound applies to samples: registry memory alone can never trigger a
//! flush storm. Series idle for a whole flush cycle are dropped at the next cut.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sonde_types::{FieldDef, FieldType, Labels, MetricKind, TableBatch, TimestampMs, WriteBatch};

use crate::chunk::HeadSeries;
use crate::postings::{Matcher, Postings};
use crate::series::SeriesData;

/// Fixed per-series bookkeeping counted into the head size: the shared label set,
/// map entries, vectors and posting bitmaps (label text is counted again, per copy
/// in the postings).
/// Measured against RSS on the 100k-series dataset rather than guessed low.
const SERIES_OVERHEAD: usize = 320;

/// The in-memory data of one table of one tenant.
#[derive(Debug)]
pub struct TableHead {
    pub kind: MetricKind,
    pub fields: Vec<FieldDef>,
    /// foldhash: SipHash was the largest single cost of ingest at 10k series per
    /// request; foldhash is seeded per process, so crafted label sets cannot
    /// predict collisions.
    ids: HashMap<Labels, u32, foldhash::fast::RandomState>,
    /// Series by ordinal; the label set is shared with `ids` (and with the batch
    /// that created it), not stored twice.
    pub series: Vec<(Labels, HeadSeries)>,
    /// Shared with frozen cuts of this table; copied on write when a new series
    /// arrives while a cut still uses it.
    pub postings: Arc<Postings>,
    pub min_time: TimestampMs,
    pub max_time: TimestampMs,
}

impl TableHead {
    fn new(kind: MetricKind) -> Self {
        TableHead {
            kind,
            fields: Vec::new(),
            ids: HashMap::default(),
            series: Vec::new(),
            postings: Arc::new(Postings::default()),
            min_time: i64::MAX,
            max_time: i64::MIN,
        }
    }

    /// Adds fields this table does not have yet; widens an i64 field written as f64.
    fn add_fields(&mut self, fields: &[FieldDef]) {
        for f in fields {
            match self.fields.iter_mut().find(|g| g.name == f.name) {
                Some(g) => {
                    if g.ty == FieldType::I64 && f.ty == FieldType::F64 {
                        g.ty = FieldType::F64;
                    }
                }
                None => self.fields.push(f.clone()),
            }
        }
    }

    /// Appends one table's series (its fields already added by `add_fields`).
    fn append(&mut self, tb: &TableBatch) -> Applied {
        let field_map: Vec<usize> = tb
            .fields
            .iter()
            .map(|f| {
                self.fields
                    .iter()
                    .position(|g| g.name == f.name)
                    .expect("fields added before appending")
            })
            .collect();
        let types: Vec<FieldType> = self.fields.iter().map(|f| f.ty).collect();
        let mut out = Applied::default();
        for s in &tb.series {
            if s.timestamps.is_empty() {
                continue;
            }
            // The decoders hand back the shared copy the head stored: its slot
            // hint, once confirmed, saves the hash lookup.
            let hinted = s.labels.slot().filter(|&id| {
                self.series
                    .get(id as usize)
                    .is_some_and(|(l, _)| l.same(&s.labels))
            });
            let id = match hinted.or_else(|| self.ids.get(&s.labels).copied()) {
                Some(id) => id,
                None => {
                    let id = self.series.len() as u32;
                    let labels = s.labels.clone();
                    self.ids.insert(labels.clone(), id);
                    Arc::make_mut(&mut self.postings).add(id, &s.labels);
                    self.series.push((labels, HeadSeries::new()));
                    out.series_bytes += SERIES_OVERHEAD + 2 * s.labels.text_len();
                    id
                }
            };
            if hinted.is_none() {
                s.labels.set_slot(id);
            }
            let data = &mut self.series[id as usize].1;
            out.sample_bytes += data.append(&s.timestamps, &s.fields, &field_map, &types);
            // The series tracked its range while appending: no second pass.
            if let Some((lo, hi)) = data.time_range() {
                self.min_time = self.min_time.min(lo);
                self.max_time = self.max_time.max(hi);
            }
            out.rows += s.timestamps.len() as u64;
        }
        out
    }

    /// Whether the registry already holds this series.
    pub fn contains(&self, labels: &Labels) -> bool {
        self.ids.contains_key(labels)
    }

    /// Normalized, time-sliced rows of the series matching `matchers`.
    pub fn select(
        &self,
        table: &str,
        matchers: &[Matcher],
        start: TimestampMs,
        end: TimestampMs,
    ) -> Vec<(Labels, SeriesData)> {
        if self.max_time < start || self.min_time > end {
            return Vec::new();
        }
        let ids = self.postings.select(table, matchers);
        let mut out = Vec::with_capacity(ids.cardinality() as usize);
        for id in ids.iter() {
            let Some((labels, data)) = self.series.get(id as usize) else {
                continue; // a series added to the shared postings after this cut
            };
            match data.time_range() {
                Some((lo, hi)) if lo <= end && hi >= start => {}
                _ => continue,
            }
            let rows = match data.normalized(self.kind) {
                std::borrow::Cow::Owned(d) => d.into_time_slice(start, end),
                std::borrow::Cow::Borrowed(d) => d.time_slice(start, end),
            };
            if !rows.is_empty() {
                out.push((Labels::clone(labels), rows));
            }
        }
        out
    }
}

/// What appending changed, summed into the head's counters.
#[derive(Debug, Default)]
struct Applied {
    sample_bytes: isize,
    series_bytes: usize,
    rows: u64,
}

impl Applied {
    fn add(&mut self, o: Applied) {
        self.sample_bytes += o.sample_bytes;
        self.series_bytes += o.series_bytes;
        self.rows += o.rows;
    }
}

/// All tables of one tenant.
pub type TenantHead = BTreeMap<String, TableHead>;

/// In-memory data of every tenant.
#[derive(Debug, Default)]
pub struct Head {
    pub tenants: BTreeMap<String, TenantHead>,
    /// Approximate bytes of samples.
    sample_bytes: usize,
    /// Approximate bytes of the series registry (labels, ids, postings).
    series_bytes: usize,
    rows: u64,
    /// Server time of the first write into this head (for the age bound).
    pub first_write_ms: Option<TimestampMs>,
    /// Highest WAL sequence number applied.
    pub last_seq: u64,
}

impl Head {
    /// Applies a validated batch whose field types were checked against the schema.
    /// The caller frees the batch: the WAL thread does so after releasing the head's
    /// lock.
    pub fn apply(&mut self, tenant: &str, batch: &WriteBatch, seq: u64, now_ms: TimestampMs) {
        self.first_write_ms.get_or_insert(now_ms);
        self.last_seq = self.last_seq.max(seq);
        let tables = match self.tenants.get_mut(tenant) {
            Some(t) => t,
            None => self.tenants.entry(tenant.to_string()).or_default(),
        };
        let mut out = Applied::default();
        for tb in &batch.tables {
            let th = match tables.get_mut(&tb.table) {
                Some(t) => t,
                None => tables
                    .entry(tb.table.clone())
                    .or_insert_with(|| TableHead::new(tb.kind)),
            };
            th.add_fields(&tb.fields);
            out.add(th.append(tb));
        }
        self.sample_bytes = self.sample_bytes.saturating_add_signed(out.sample_bytes);
        self.series_bytes += out.series_bytes;
        self.rows += out.rows;
    }

    /// Approximate memory held, in bytes (samples and series registry).
    pub fn bytes(&self) -> usize {
        self.sample_bytes + self.series_bytes
    }

    /// Approximate bytes of samples: what the flush bound applies to.
    pub fn sample_bytes(&self) -> usize {
        self.sample_bytes
    }

    /// Series in the registry, across tenants and tables.
    pub fn series_count(&self) -> usize {
        self.tenants
            .values()
            .flat_map(|t| t.values())
            .map(|t| t.series.len())
            .sum()
    }

    /// Moves every sample into a new head (to be flushed) and keeps the series
    /// registry here for the writes that follow. The cut shares label sets and
    /// postings. Series that got no sample since the previous cut are dropped from
    /// the registry (their ordinals are renumbered).
    pub fn cut(&mut self) -> Head {
        let mut frozen = Head {
            tenants: BTreeMap::new(),
            sample_bytes: std::mem::take(&mut self.sample_bytes),
            series_bytes: 0,
            rows: std::mem::take(&mut self.rows),
            first_write_ms: self.first_write_ms.take(),
            last_seq: self.last_seq,
        };
        for (tenant, tables) in &mut self.tenants {
            let mut out = TenantHead::new();
            for (name, th) in tables.iter_mut() {
                let series: Vec<(Labels, HeadSeries)> = th
                    .series
                    .iter_mut()
                    .map(|(l, d)| (l.clone(), std::mem::take(d)))
                    .collect();
                let idle = series.iter().filter(|(_, d)| d.is_empty()).count();
                out.insert(
                    name.clone(),
                    TableHead {
                        kind: th.kind,
                        fields: th.fields.clone(),
                        ids: HashMap::default(),
                        series,
                        postings: th.postings.clone(),
                        min_time: std::mem::replace(&mut th.min_time, i64::MAX),
                        max_time: std::mem::replace(&mut th.max_time, i64::MIN),
                    },
                );
                if idle > 0 {
                    let kept = &out[name].series;
                    let before = th.series.len();
                    let mut fresh = TableHead::new(th.kind);
                    fresh.fields = std::mem::take(&mut th.fields);
                    let postings = Arc::make_mut(&mut fresh.postings);
                    for (labels, data) in kept {
                        if data.is_empty() {
                            continue;
                        }
                        let id = fresh.series.len() as u32;
                        fresh.ids.insert(labels.clone(), id);
                        labels.set_slot(id);
                        postings.add(id, labels);
                        fresh.series.push((labels.clone(), HeadSeries::new()));
                    }
                    let dropped = before - fresh.series.len();
                    self.series_bytes = self
                        .series_bytes
                        .saturating_sub(dropped * (SERIES_OVERHEAD + 200));
                    *th = fresh;
                }
            }
            frozen.tenants.insert(tenant.clone(), out);
        }
        self.tenants.retain(|_, t| {
            t.retain(|_, th| !th.series.is_empty());
            !t.is_empty()
        });
        frozen
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn table(&self, tenant: &str, table: &str) -> Option<&TableHead> {
        self.tenants.get(tenant)?.get(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_types::{SeriesBatch, TableBatch};

    #[test]
    fn selective_read_touches_matching_series() {
        let mut t = TableBatch::single("m", MetricKind::Gauge, FieldType::F64);
        for i in 0..100 {
            t.series.push(SeriesBatch::f64(
                Labels::new([("user", format!("u{i}"))]).unwrap(),
                vec![1000, 2000],
                vec![i as f64, 0.0],
            ));
        }
        let mut h = Head::default();
        h.apply("t1", &WriteBatch { tables: vec![t] }, 1, 0);
        let th = h.table("t1", "m").unwrap();
        let got = th.select("m", &[Matcher::eq("user", "u42")], 0, 1500);
        assert_eq!(got.len(), 1);
        // After a cut the samples move; the series stay for the next writes.
        let frozen = h.cut();
        assert_eq!(h.sample_bytes(), 0);
        assert_eq!(h.series_count(), 100);
        let th = frozen.table("t1", "m").unwrap();
        let got = th.select("m", &[Matcher::eq("user", "u42")], 0, 1500);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.ts, vec![1000]);
        assert!(h.table("t2", "m").is_none());
        assert!(frozen.sample_bytes() > 100 * 16);
        // A series written again keeps its ordinal; idle ones go at the next cut.
        let mut t = TableBatch::single("m", MetricKind::Gauge, FieldType::F64);
        t.series.push(SeriesBatch::f64(
            Labels::new([("user", "u7")]).unwrap(),
            vec![3000],
            vec![1.0],
        ));
        h.apply("t1", &WriteBatch { tables: vec![t] }, 2, 0);
        let second = h.cut();
        assert_eq!(
            second
                .table("t1", "m")
                .unwrap()
                .select("m", &[], 0, 5000)
                .len(),
            1
        );
        assert_eq!(h.series_count(), 1);
    }
}
