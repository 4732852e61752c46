//! The series catalog: per (tenant, UTC day), every series (table + labels) that has
//! rows in that day's segments, with a dense `u32` id (its position in the file).
//!
//! Partitioning by day (as VictoriaMetrics does with its per-day index) means series
//! that churn away — users, sessions, model versions — leave with the days they
//! lived in instead of growing one global index forever. Label names, label values
//! and series counts for a time range come from the catalog files of the days in the
//! range plus the head, without opening any segment.
//!
//! File `catalog/<tenant>/<day>.cat`: 24-byte header (magic `SONDECAT`, version 2,
//! CRC32C of the stored body, its length), then the body compressed with zstd; the
//! decompressed body is a varint count, then per series a table name and its labels.
//! Version 1 files (body stored plain) are still read. A flush appends new series;
//! ids change only when retention or a delete rebuilds the day ([`replace`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sonde_types::{Labels, TimestampMs};

use crate::codec::{Dec, Enc};
use crate::segment::index::SegmentIndex;
use crate::vfs::Vfs;
use crate::{Error, Result, Storage};

pub const MAGIC: &[u8; 8] = b"SONDECAT";
/// Decoded day catalogs kept in memory.
const CATALOG_CACHE_ENTRIES: usize = 32;
/// Version 2 compresses the body with zstd; version 1 files (plain body) still read.
pub const VERSION: u32 = 2;

/// A sealed catalog file of `count` entries, compressed as they are encoded (the
/// plain body of 100k series would be ~12 MB held at once).
fn seal_body<'a>(count: usize, entries: impl Iterator<Item = (&'a str, &'a Labels)>) -> Vec<u8> {
    use std::io::Write;
    // Label sets repeat heavily: zstd makes the catalog a small fraction of the data.
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd level 3");
    let mut e = Enc(Vec::with_capacity(64 << 10));
    e.uvar(count as u64);
    for (table, labels) in entries {
        encode_entry(&mut e, table, labels);
        if e.0.len() >= 64 << 10 {
            z.write_all(&e.0).expect("writes to memory");
            e.0.clear();
        }
    }
    z.write_all(&e.0).expect("writes to memory");
    let packed = z.finish().expect("writes to memory");
    crate::codec::seal_file(MAGIC, VERSION, &packed)
}

fn encode_entry(e: &mut Enc, table: &str, labels: &Labels) {
    e.str(table);
    e.uvar(labels.len() as u64);
    for (k, v) in labels.iter() {
        e.str(k);
        e.str(v);
    }
}

/// The series of one tenant-day; a series' id is its index in `series`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DayCatalog {
    pub series: Vec<(String, Labels)>,
}

fn path(dir: &Path, tenant: &str, day: i64) -> PathBuf {
    dir.join("catalog").join(tenant).join(format!("{day}.cat"))
}

impl DayCatalog {
    pub fn encode(&self) -> Vec<u8> {
        seal_body(
            self.series.len(),
            self.series.iter().map(|(t, l)| (t.as_str(), l)),
        )
    }

    /// The uncompressed body (version 1 stored it as is).
    #[cfg(test)]
    fn plain_body(&self) -> Vec<u8> {
        let mut e = Enc(Vec::new());
        e.uvar(self.series.len() as u64);
        for (table, labels) in &self.series {
            encode_entry(&mut e, table, labels);
        }
        e.0
    }

    pub fn decode(data: &[u8], path: &Path) -> Result<Self> {
        let version = crate::codec::sealed_version(data).unwrap_or(VERSION);
        let unpacked;
        let body = if version == 1 {
            crate::codec::open_sealed(data, MAGIC, 1, "catalog", path)?
        } else {
            let packed = crate::codec::open_sealed(data, MAGIC, VERSION, "catalog", path)?;
            unpacked = zstd::stream::decode_all(packed)
                .map_err(|e| Error::format(path, format!("catalog body: {e}")))?;
            &unpacked[..]
        };
        let parse = || -> Result<Self, crate::codec::DecodeError> {
            let mut d = Dec::new(body);
            let n = d.len("series count", 2)?;
            let mut series = Vec::with_capacity(n);
            for _ in 0..n {
                let table = d.str("table")?;
                let nl = d.len("label count", 2)?;
                let mut pairs = Vec::with_capacity(nl);
                for _ in 0..nl {
                    pairs.push((d.str("label name")?, d.str("label value")?));
                }
                let labels =
                    Labels::new(pairs).map_err(|_| crate::codec::DecodeError { what: "labels" })?;
                series.push((table, labels));
            }
            Ok(DayCatalog { series })
        };
        parse().map_err(|e| Error::format(path, e.to_string()))
    }

    /// Loads a tenant-day's catalog; empty if the day has none.
    pub fn load(vfs: &dyn Vfs, dir: &Path, tenant: &str, day: i64) -> Result<Self> {
        let p = path(dir, tenant, day);
        match vfs.read(&p) {
            Ok(data) => Self::decode(&data, &p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::io("reading catalog", &p, e)),
        }
    }
}

/// Decoded catalogs by (tenant, day); `generation` moves on every invalidation so a
/// reader that loaded a file before a flush rewrote it does not cache the old one.
#[derive(Debug, Default)]
pub struct CatalogCache {
    generation: u64,
    map: HashMap<(String, i64), Arc<DayCatalog>>,
}

impl CatalogCache {
    pub(crate) fn invalidate(&mut self, tenant: &str, day: i64) {
        self.generation += 1;
        self.map.remove(&(tenant.to_string(), day));
    }
}

/// Adds a new segment's series to its tenant-day catalog (atomically replaced).
pub fn update(
    vfs: &dyn Vfs,
    dir: &Path,
    tenant: &str,
    day: i64,
    index: &SegmentIndex,
) -> Result<()> {
    let cat = DayCatalog::load(vfs, dir, tenant, day)?;
    // New series are encoded straight from the index (not cloned into the catalog
    // first): a flush of 100k new series would otherwise hold them twice.
    let known: HashSet<(&str, &Labels)> = cat.series.iter().map(|(t, l)| (t.as_str(), l)).collect();
    let new: Vec<(&str, &Labels)> = index
        .tables
        .iter()
        .flat_map(|t| t.series.iter().map(move |s| (t.name.as_str(), &s.labels)))
        .filter(|k| !known.contains(k))
        .collect();
    drop(known);
    if new.is_empty() {
        return Ok(());
    }
    let data = seal_body(
        cat.series.len() + new.len(),
        cat.series.iter().map(|(t, l)| (t.as_str(), l)).chain(new),
    );
    let p = path(dir, tenant, day);
    let parent = p.parent().expect("catalog path has a parent");
    vfs.create_dir_all(parent)
        .map_err(|e| Error::io("creating catalog directory", parent, e))?;
    vfs.write_atomic(&p, &data)
        .map_err(|e| Error::io("writing catalog", &p, e))?;
    vfs.sync_dir(&dir.join("catalog"))
        .map_err(|e| Error::io("syncing catalog directory", &p, e))
}

/// Replaces a tenant-day's catalog (after a delete or retention removed series); an
/// empty catalog removes the file. Ids are renumbered.
pub fn replace(vfs: &dyn Vfs, dir: &Path, tenant: &str, day: i64, cat: &DayCatalog) -> Result<()> {
    let p = path(dir, tenant, day);
    if cat.series.is_empty() {
        return match vfs.remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing catalog", &p, e)),
        };
    }
    let parent = p.parent().expect("catalog path has a parent");
    vfs.create_dir_all(parent)
        .map_err(|e| Error::io("creating catalog directory", parent, e))?;
    vfs.write_atomic(&p, &cat.encode())
        .map_err(|e| Error::io("writing catalog", &p, e))
}

impl Storage {
    /// Every series (table, labels) of `tenant` with data in `[start, end]`, at day
    /// granularity for persisted data, from the catalog and the head.
    pub fn series(
        &self,
        tenant: &str,
        start: TimestampMs,
        end: TimestampMs,
    ) -> Result<BTreeSet<(String, Labels)>> {
        let inner = &self.inner;
        let mut out = BTreeSet::new();
        let days: BTreeSet<i64> = inner
            .state
            .read()
            .manifest
            .segments
            .iter()
            .filter(|s| s.tenant == tenant && s.max_time >= start && s.min_time <= end)
            .map(|s| s.day)
            .collect();
        for day in days {
            let cat = self.day_catalog(tenant, day)?;
            out.extend(cat.series.iter().cloned());
        }
        let st = inner.state.read();
        let mut add = |h: &crate::head::Head| {
            if let Some(tables) = h.tenants.get(tenant) {
                for (name, th) in tables {
                    if th.max_time < start || th.min_time > end {
                        continue;
                    }
                    for (labels, data) in &th.series {
                        if data.is_empty() {
                            continue; // registry entry without samples in this head
                        }
                        out.insert((name.clone(), Labels::clone(labels)));
                    }
                }
            }
        };
        add(&st.active.read());
        for f in &st.frozen {
            add(&f.head);
        }
        Ok(out)
    }

    /// A tenant-day's catalog, decoded once and kept until a flush adds to it.
    fn day_catalog(&self, tenant: &str, day: i64) -> Result<Arc<DayCatalog>> {
        let key = (tenant.to_string(), day);
        let generation = {
            let cache = self.inner.catalog_cache.lock();
            if let Some(c) = cache.map.get(&key) {
                return Ok(c.clone());
            }
            cache.generation
        };
        let cat = Arc::new(DayCatalog::load(
            self.inner.vfs.as_ref(),
            &self.inner.dir,
            tenant,
            day,
        )?);
        let mut cache = self.inner.catalog_cache.lock();
        // A flush that changed a catalog while we read it: do not keep what we read.
        if cache.generation == generation {
            if cache.map.len() >= CATALOG_CACHE_ENTRIES {
                // Bounded memory: a day of 100k series is tens of MB decoded.
                cache.map.clear();
            }
            cache.map.insert(key, cat.clone());
        }
        Ok(cat)
    }

    /// Label names used by `tenant`'s series in `[start, end]` (plus `__name__`).
    pub fn label_names(
        &self,
        tenant: &str,
        start: TimestampMs,
        end: TimestampMs,
    ) -> Result<Vec<String>> {
        let mut names = BTreeSet::from([sonde_types::NAME_LABEL.to_string()]);
        for (_, labels) in self.series(tenant, start, end)? {
            names.extend(labels.iter().map(|(k, _)| k.to_string()));
        }
        Ok(names.into_iter().collect())
    }

    /// Values of label `name` (`__name__` gives table names) in `[start, end]`.
    pub fn label_values(
        &self,
        tenant: &str,
        name: &str,
        start: TimestampMs,
        end: TimestampMs,
    ) -> Result<Vec<String>> {
        let mut values = BTreeSet::new();
        for (table, labels) in self.series(tenant, start, end)? {
            if name == sonde_types::NAME_LABEL {
                values.insert(table);
            } else if let Some(v) = labels.get(name) {
                values.insert(v.to_string());
            }
        }
        Ok(values.into_iter().collect())
    }

    /// Series count per table in `[start, end]`.
    pub fn series_counts(
        &self,
        tenant: &str,
        start: TimestampMs,
        end: TimestampMs,
    ) -> Result<BTreeMap<String, usize>> {
        let mut counts = BTreeMap::new();
        for (table, _) in self.series(tenant, start, end)? {
            *counts.entry(table).or_insert(0) += 1;
        }
        Ok(counts)
    }
}

/// A table's size and extent, for cardinality questions (`sonde_series` in SQL).
#[derive(Debug, Clone, PartialEq)]
pub struct TableStats {
    pub table: String,
    pub kind: sonde_types::MetricKind,
    /// Every tag key the table has used.
    pub tags: Vec<String>,
    /// Distinct series, all time (persisted and in memory).
    pub series: usize,
    /// Rows, persisted and in memory (a row written twice before a flush counts
    /// twice until the flush merges it).
    pub rows: u64,
    /// Segment bytes attributed to the table: each segment's size shared among its
    /// tables in proportion to their rows.
    pub bytes: u64,
    pub min_time: TimestampMs,
    pub max_time: TimestampMs,
}

impl Storage {
    /// Size, series count and time range of each of `tenant`'s tables.
    pub fn table_stats(&self, tenant: &str) -> Result<Vec<TableStats>> {
        let schemas = self.tables(tenant);
        let counts = self.series_counts(tenant, TimestampMs::MIN, TimestampMs::MAX)?;
        let mut stats: BTreeMap<String, TableStats> = schemas
            .into_iter()
            .map(|(name, s)| {
                let st = TableStats {
                    table: name.clone(),
                    kind: s.kind,
                    tags: s.tags.into_iter().collect(),
                    series: counts.get(&name).copied().unwrap_or(0),
                    rows: 0,
                    bytes: 0,
                    min_time: TimestampMs::MAX,
                    max_time: TimestampMs::MIN,
                };
                (name, st)
            })
            .collect();
        let st = self.inner.state.read();
        for seg in st.manifest.segments.iter().filter(|s| s.tenant == tenant) {
            for t in &seg.tables {
                if let Some(e) = stats.get_mut(&t.name) {
                    e.rows += t.rows;
                    e.bytes +=
                        (seg.bytes as u128 * t.rows as u128 / seg.rows.max(1) as u128) as u64;
                    e.min_time = e.min_time.min(t.min_time);
                    e.max_time = e.max_time.max(t.max_time);
                }
            }
        }
        let mut add = |h: &crate::head::Head| {
            if let Some(tables) = h.tenants.get(tenant) {
                for (name, th) in tables {
                    if let Some(e) = stats.get_mut(name) {
                        e.rows += th.series.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
                        if th.min_time <= th.max_time {
                            e.min_time = e.min_time.min(th.min_time);
                            e.max_time = e.max_time.max(th.max_time);
                        }
                    }
                }
            }
        };
        add(&st.active.read());
        for f in &st.frozen {
            add(&f.head);
        }
        Ok(stats.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_round_trip_and_version_1_still_reads() {
        let cat = DayCatalog {
            series: (0..500)
                .map(|i| {
                    let labels = Labels::new([
                        ("model", "gpt-4o".to_string()),
                        ("user_id", format!("user-{i:06}")),
                    ])
                    .unwrap();
                    ("llm_tokens_total".to_string(), labels)
                })
                .collect(),
        };
        let p = Path::new("x.cat");
        let v2 = cat.encode();
        assert_eq!(DayCatalog::decode(&v2, p).unwrap(), cat);
        let v1 = crate::codec::seal_file(MAGIC, 1, &cat.plain_body());
        assert_eq!(DayCatalog::decode(&v1, p).unwrap(), cat);
        assert!(v2.len() * 4 < v1.len(), "{} vs {}", v2.len(), v1.len());
        let mut bad = v2.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(DayCatalog::decode(&bad, p).is_err());
    }
}
