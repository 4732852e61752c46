//! Helpers shared by the storage integration tests.

use std::collections::BTreeMap;

use sonde_storage::{Config, ScanRequest, Storage};
use sonde_types::{FieldType, Labels, MetricKind, SeriesBatch, TableBatch, WriteBatch};

pub const TENANT: &str = "default";

/// A config for tests: no background flusher or maintenance, so flushes and
/// compactions happen only when asked; data of any age is kept (the datasets use
/// fixed past timestamps).
pub fn config(dir: &std::path::Path) -> Config {
    let mut c = Config::new(dir);
    c.background_flush = false;
    c.compaction.enabled = false;
    c.retention.raw = None;
    c
}

/// Event rows with the given ids (timestamp = value = id), spread over 5 series.
pub fn events(ids: std::ops::Range<i64>) -> WriteBatch {
    let mut t = TableBatch::single("events", MetricKind::Event, FieldType::I64);
    let mut by_series: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for id in ids {
        by_series.entry(id % 5).or_default().push(id);
    }
    for (k, ids) in by_series {
        let labels = Labels::new([("writer", format!("w{k}"))]).unwrap();
        t.series.push(SeriesBatch::i64(labels, ids.clone(), ids));
    }
    WriteBatch { tables: vec![t] }
}

/// Every event id stored, with how many times it is stored.
pub fn stored_events(s: &Storage) -> BTreeMap<i64, usize> {
    let out = s
        .scan(TENANT, &ScanRequest::new("events", i64::MIN, i64::MAX))
        .unwrap();
    let mut ids = BTreeMap::new();
    for (_, d) in &out.series {
        for &t in &d.ts {
            *ids.entry(t).or_insert(0) += 1;
        }
    }
    ids
}

/// A table's full content as text, for before/after comparisons.
pub fn dump(s: &Storage, table: &str) -> String {
    let out = s
        .scan(TENANT, &ScanRequest::new(table, i64::MIN, i64::MAX))
        .unwrap();
    format!("{:?}", out.to_record_batch().unwrap())
}
