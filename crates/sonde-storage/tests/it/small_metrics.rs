//! 1,000 metric names × 10 series flush into one file per tenant-day (the bound: a
//! flush writes one segment per (tenant, UTC day) it has rows for, whatever the number
//! of tables).

use sonde_storage::{Matcher, ScanRequest, Storage};
use sonde_types::{FieldType, Labels, MetricKind, SeriesBatch, TableBatch, WriteBatch};

use crate::common::{TENANT, config};

#[test]
fn thousand_metrics_share_one_segment() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(config(dir.path())).unwrap();
    let mut tables = Vec::new();
    for m in 0..1000 {
        let mut t = TableBatch::single(
            format!("node_metric_{m}"),
            MetricKind::Gauge,
            FieldType::F64,
        );
        for i in 0..10 {
            let labels =
                Labels::new([("instance", format!("host-{i}")), ("job", "node".into())]).unwrap();
            t.series.push(SeriesBatch::f64(
                labels,
                vec![1_000, 16_000],
                vec![m as f64, i as f64],
            ));
        }
        tables.push(t);
    }
    s.write(TENANT, WriteBatch { tables }).unwrap();
    s.flush().unwrap();
    let manifest = s.manifest();
    assert_eq!(manifest.segments.len(), 1, "one tenant-day, one file");
    assert_eq!(manifest.segments[0].tables.len(), 1000);
    let files = std::fs::read_dir(dir.path().join("segments/default/0"))
        .unwrap()
        .count();
    assert_eq!(files, 2, "one .parquet and one .sidx");
    let out = s
        .scan(
            TENANT,
            &ScanRequest::new("node_metric_500", 0, 20_000).with(Matcher::eq("instance", "host-3")),
        )
        .unwrap();
    assert_eq!(out.series.len(), 1);
    assert_eq!(out.series[0].1.ts, vec![1_000, 16_000]);
    assert_eq!(out.stats.segments_read, 1);
    assert_eq!(
        s.label_values(TENANT, "__name__", 0, 20_000).unwrap().len(),
        1000
    );
    assert_eq!(
        s.series_counts(TENANT, 0, 20_000).unwrap()["node_metric_7"],
        10
    );
}

/// The cardinality cap rejects new series of a full table, naming the limit, while
/// existing series and other tables keep being accepted.
#[test]
fn cardinality_cap_rejects_new_series_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.limits.max_series_per_table = 10;
    let s = Storage::open(c).unwrap();
    let batch = |table: &str, users: std::ops::Range<u32>| {
        let mut t = TableBatch::single(table, MetricKind::Gauge, FieldType::F64);
        for u in users {
            let labels = Labels::new([("user_id", format!("u{u}"))]).unwrap();
            t.series
                .push(SeriesBatch::f64(labels, vec![1_000], vec![1.0]));
        }
        WriteBatch { tables: vec![t] }
    };
    s.write(TENANT, batch("m", 0..10)).unwrap();
    let err = s.write(TENANT, batch("m", 5..11)).unwrap_err();
    assert!(err.is_invalid_input());
    assert_eq!(
        err.to_string(),
        "table \"m\" active series: 11 exceeds the limit of 10"
    );
    s.write(TENANT, batch("m", 0..10)).unwrap();
    s.write(TENANT, batch("other", 0..10)).unwrap();
    let out = s.scan(TENANT, &ScanRequest::new("m", 0, 10_000)).unwrap();
    assert_eq!(out.series.len(), 10, "the rejected batch stored nothing");
}

/// `write_tables` stores the valid tables of a write and names the others: an
/// invalid name, a kind that contradicts the stored table, the cardinality cap.
#[test]
fn write_tables_accepts_per_table_and_refuses_kind_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.limits.max_series_per_table = 2;
    let s = Storage::open(c).unwrap();
    let table = |name: &str, kind: MetricKind, users: u32| {
        let mut t = TableBatch::single(name, kind, FieldType::F64);
        for u in 0..users {
            let labels = Labels::new([("user_id", format!("u{u}"))]).unwrap();
            t.series
                .push(SeriesBatch::f64(labels, vec![1_000], vec![1.0]));
        }
        t
    };
    s.write(
        TENANT,
        WriteBatch {
            tables: vec![table("tokens_total", MetricKind::Counter, 1)],
        },
    )
    .unwrap();
    let out = s
        .write_tables(
            TENANT,
            vec![
                table("ok", MetricKind::Gauge, 2),
                table("bad name", MetricKind::Gauge, 1),
                table("tokens_total", MetricKind::DeltaSum, 1),
                table("wide", MetricKind::Gauge, 3),
            ],
            Vec::new(),
        )
        .unwrap();
    assert_eq!(out.receipt.as_ref().map(|r| r.samples), Some(2));
    let reasons: Vec<String> = out
        .rejected
        .iter()
        .map(|r| format!("{}: {}", r.table, r.error))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].starts_with("bad name: "), "{reasons:?}");
    assert!(
        reasons[1].contains("holds counter data; got delta_sum"),
        "{reasons:?}"
    );
    assert!(reasons[2].contains("exceeds the limit of 2"), "{reasons:?}");
    let rows = |t: &str| {
        s.scan(TENANT, &ScanRequest::new(t, 0, 10_000))
            .unwrap()
            .stats
            .rows
    };
    assert_eq!((rows("ok"), rows("tokens_total"), rows("wide")), (2, 1, 0));
    // The same kind conflict through `write`: the whole batch is refused.
    let err = s
        .write(
            TENANT,
            WriteBatch {
                tables: vec![table("tokens_total", MetricKind::Gauge, 1)],
            },
        )
        .unwrap_err();
    assert!(err.is_invalid_input(), "{err}");
}
