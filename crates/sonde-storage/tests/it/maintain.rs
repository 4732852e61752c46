//! Compaction, retention, deletes and ingest volume controls, on a real directory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sonde_dataset::{DatasetConfig, Generator};
use sonde_storage::volume::{IngestRule, RuleAction, VolumeConfig};
use sonde_storage::{Config, Matcher, ScanRequest, Storage};
use sonde_types::{
    DAY_MS, FieldType, Labels, ManualClock, MetricKind, SeriesBatch, TableBatch, WriteBatch,
};

use crate::common::{TENANT, config, dump, events, stored_events};

const TABLES: [&str; 4] = [
    "llm_tokens_total",
    "llm_cost_usd_total",
    "llm_request_duration_seconds_bucket",
    "events",
];

fn all_tables(s: &Storage) -> Vec<String> {
    TABLES.iter().map(|t| dump(s, t)).collect()
}

fn gauge(table: &str, labels: &[(&str, &str)], ts: Vec<i64>, v: Vec<f64>) -> WriteBatch {
    let mut t = TableBatch::single(table, MetricKind::Gauge, FieldType::F64);
    t.series.push(SeriesBatch::f64(
        Labels::new(labels.iter().copied()).unwrap(),
        ts,
        v,
    ));
    WriteBatch { tables: vec![t] }
}

fn delta(table: &str, ts: Vec<i64>, v: Vec<f64>) -> WriteBatch {
    let mut t = TableBatch::single(table, MetricKind::DeltaSum, FieldType::F64);
    t.series
        .push(SeriesBatch::f64(Labels::new([("k", "v")]).unwrap(), ts, v));
    WriteBatch { tables: vec![t] }
}

/// Many small flushes of overlapping data (replaced gauge samples, delta sums at the
/// same timestamp, event rows) compact into one segment that answers exactly like the
/// segments it replaced — also after a reopen — and the replaced files are deleted.
#[test]
fn compaction_merges_and_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.compaction.min_inputs = 4;
    let s = Storage::open(c.clone()).unwrap();
    let t0 = 1_700_000_000_000;
    let batches: Vec<WriteBatch> = Generator::new(DatasetConfig::sized(200, 40, t0)).collect();
    let per = batches.len().div_ceil(6);
    let flushes = batches.chunks(per).count();
    for (i, chunk) in batches.chunks(per).enumerate() {
        for b in chunk {
            s.write(TENANT, b.clone()).unwrap();
        }
        // Overlaps across segments: a replaced gauge value, delta sums to add up,
        // events kept one by one.
        s.write(
            TENANT,
            gauge("g", &[("a", "1")], vec![t0, t0 + 1], vec![i as f64, 7.0]),
        )
        .unwrap();
        s.write(TENANT, delta("d", vec![t0], vec![1.5])).unwrap();
        s.write(TENANT, events(i as i64 * 10..i as i64 * 10 + 10))
            .unwrap();
        s.flush().unwrap();
    }
    let before = all_tables(&s);
    let extra_before = (dump(&s, "g"), dump(&s, "d"));
    // Two days per flush: the dataset's, and day 0 of the events (ts = id).
    let segs_before = s.manifest().segments.len();
    assert_eq!(segs_before, 2 * flushes);
    let old_files: Vec<String> = s
        .manifest()
        .segments
        .iter()
        .map(|m| m.path.clone())
        .collect();

    let stats = s.compact().unwrap();
    assert_eq!(stats.compacted_inputs, segs_before);
    assert_eq!(stats.compacted_outputs, 2);
    assert_eq!(s.manifest().segments.len(), 2);
    assert_eq!(all_tables(&s), before);
    assert_eq!((dump(&s, "g"), dump(&s, "d")), extra_before);
    // The newest gauge write won, the delta sums added up, every event is there once.
    let g = s
        .scan(TENANT, &ScanRequest::new("g", i64::MIN, i64::MAX))
        .unwrap();
    let vals = |d: &sonde_storage::series::SeriesData| match &d.cols[0].as_ref().unwrap().values {
        sonde_storage::series::Values::F64(v) => v.clone(),
        sonde_storage::series::Values::I64(v) => v.iter().map(|&x| x as f64).collect(),
        other => panic!("a numeric field: {other:?}"),
    };
    assert_eq!(vals(&g.series[0].1), vec![(flushes - 1) as f64, 7.0]);
    let d = s
        .scan(TENANT, &ScanRequest::new("d", i64::MIN, i64::MAX))
        .unwrap();
    assert_eq!(vals(&d.series[0].1), vec![1.5 * flushes as f64]);
    assert_eq!(stored_events(&s).len(), flushes * 10);
    assert!(stored_events(&s).values().all(|&n| n == 1));
    for f in &old_files {
        assert!(!dir.path().join(f).exists(), "{f} should be deleted");
    }
    // Compacting again does nothing; a reopen answers the same.
    assert_eq!(s.compact().unwrap().compacted_inputs, 0);
    drop(s);
    let s = Storage::open(c).unwrap();
    assert_eq!(all_tables(&s), before);
    assert_eq!((dump(&s, "g"), dump(&s, "d")), extra_before);
}

/// A query holding the previous manifest can still read the files compaction
/// replaced; they are deleted once it lets go.
#[test]
fn replaced_files_outlive_readers_of_older_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.compaction.min_inputs = 2;
    let s = Storage::open(c).unwrap();
    for i in 0..3 {
        s.write(TENANT, events(i * 10..i * 10 + 10)).unwrap();
        s.flush().unwrap();
    }
    let held = s.manifest();
    s.compact().unwrap();
    for m in &held.segments {
        assert!(dir.path().join(&m.path).exists(), "deleted under a reader");
    }
    drop(held);
    // Another pass sweeps what is no longer referenced.
    s.compact().unwrap();
    let live: Vec<_> = s.manifest().segments.iter().map(|m| m.id).collect();
    let files: Vec<_> = walk(&dir.path().join("segments"));
    assert_eq!(files.len(), live.len() * 2, "{files:?}");
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap().path();
        if e.is_dir() {
            out.extend(walk(&e));
        } else {
            out.push(e);
        }
    }
    out
}

/// Bounded file count: 50 small flushes of one past day compact to one segment per
/// day, so a query over the day opens one file.
#[test]
fn many_small_flushes_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(config(dir.path())).unwrap();
    for i in 0..50 {
        s.write(TENANT, events(i * 4..i * 4 + 4)).unwrap();
        s.flush().unwrap();
    }
    assert_eq!(s.manifest().segments.len(), 50);
    s.compact().unwrap();
    assert_eq!(s.manifest().segments.len(), 1);
    let out = s
        .scan(TENANT, &ScanRequest::new("events", i64::MIN, i64::MAX))
        .unwrap();
    assert_eq!(out.stats.segments_read, 1);
    assert_eq!(stored_events(&s).len(), 200);
}

fn clocked(dir: &std::path::Path, clock: &ManualClock, f: impl FnOnce(&mut Config)) -> Storage {
    let mut c = config(dir);
    c.retention.raw = Some(Duration::from_secs(3 * 86_400));
    f(&mut c);
    Storage::open_with(
        c,
        Arc::new(sonde_storage::vfs::OsVfs),
        Arc::new(clock.clone()),
    )
    .unwrap()
}

/// Retention drops exactly the expired days (whole segments, and the catalog with
/// them), a per-table override keeps its table longer (the segment is rewritten
/// without the others), queries over expired ranges are empty, and writes older than
/// the retention are refused with an error naming it.
#[test]
fn retention_drops_exactly_the_expired_days() {
    let dir = tempfile::tempdir().unwrap();
    let day0 = 20_000i64; // a day number
    let clock = ManualClock::new(day0 * DAY_MS + 1000);
    let s = clocked(dir.path(), &clock, |c| {
        c.retention
            .tables
            .insert("long".into(), Duration::from_secs(10 * 86_400));
    });
    // One sample per day for days day0-2 ..= day0, in two tables.
    for d in (day0 - 2)..=day0 {
        s.write(
            TENANT,
            gauge("short", &[("a", "1")], vec![d * DAY_MS + 5], vec![d as f64]),
        )
        .unwrap();
        s.write(
            TENANT,
            gauge("long", &[("a", "1")], vec![d * DAY_MS + 5], vec![d as f64]),
        )
        .unwrap();
    }
    s.flush().unwrap();
    assert_eq!(s.manifest().segments.len(), 3);
    assert!(
        s.enforce_retention().unwrap() == Default::default(),
        "nothing expired yet"
    );

    // Two days later: days day0-2 and day0-1 end before now − 3 days? day0-2 ends at
    // (day0-1)·DAY − 1 < (day0+2)·DAY + 1000 − 3·DAY = (day0-1)·DAY + 1000 → expired;
    // day0-1 ends at day0·DAY − 1, not expired.
    clock.set((day0 + 2) * DAY_MS + 1000);
    let st = s.enforce_retention().unwrap();
    assert_eq!(st.rewritten_segments, 1, "{st:?}"); // `long` keeps day0-2
    assert_eq!(st.removed_rows, 1);
    let days = |table: &str| -> Vec<i64> {
        let out = s
            .scan(TENANT, &ScanRequest::new(table, i64::MIN, i64::MAX))
            .unwrap();
        out.series
            .iter()
            .flat_map(|(_, d)| d.ts.iter().map(|t| t / DAY_MS))
            .collect()
    };
    assert_eq!(days("short"), vec![day0 - 1, day0]);
    assert_eq!(days("long"), vec![day0 - 2, day0 - 1, day0]);
    // An expired range reads empty, not an error.
    let expired = s
        .scan(
            TENANT,
            &ScanRequest::new("short", (day0 - 2) * DAY_MS, (day0 - 1) * DAY_MS - 1),
        )
        .unwrap();
    assert!(expired.series.is_empty());

    // The queries above cached the footers they read; a segment retention dropped or
    // rewrote leaves the cache with it.
    let live = |s: &Storage| -> Vec<u64> {
        let mut ids: Vec<u64> = s.manifest().segments.iter().map(|g| g.id).collect();
        ids.sort_unstable();
        ids
    };
    let (cached, ids) = (s.cached_footer_ids(), live(&s));
    assert!(!cached.is_empty());
    assert!(cached.iter().all(|id| ids.contains(id)));

    // Past the long retention too: the whole segment goes, and its catalog.
    let before = s.cached_footer_ids();
    clock.set((day0 + 9) * DAY_MS + 1000);
    let st = s.enforce_retention().unwrap();
    let (after, ids) = (s.cached_footer_ids(), live(&s));
    assert!(
        after.iter().all(|id| ids.contains(id)),
        "{before:?} → {after:?}"
    );
    assert!(
        before.iter().any(|id| !after.contains(id)),
        "{before:?} → {after:?}"
    );
    assert_eq!(
        (st.dropped_segments, st.rewritten_segments),
        (1, 2),
        "{st:?}"
    );
    assert_eq!(days("long"), vec![day0 - 1, day0]);
    assert!(days("short").is_empty());
    assert!(
        !dir.path()
            .join(format!("catalog/{TENANT}/{}.cat", day0 - 2))
            .exists()
    );

    // Writes older than the retention are refused, naming the table and the limit.
    let err = s
        .write(
            TENANT,
            gauge("short", &[("a", "1")], vec![day0 * DAY_MS], vec![1.0]),
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("short") && msg.contains("retention (3 days)"),
        "{msg}"
    );
    assert!(err.is_invalid_input());
}

/// Deleting series removes exactly their rows (optionally only a time range) from
/// every segment and the catalog; deleting a tenant removes everything of it and
/// nothing of another tenant.
#[test]
fn deletes_remove_exactly_what_they_select() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(config(dir.path())).unwrap();
    for (u, part) in [("alice", 0), ("bob", 0), ("alice", 1), ("carol", 1)] {
        let ts: Vec<i64> = (0..10)
            .map(|i| 1_700_000_000_000 + part * 100_000 + i)
            .collect();
        let v = vec![1.0; 10];
        s.write(TENANT, gauge("usage", &[("user_id", u)], ts, v))
            .unwrap();
        if part == 0 {
            s.flush().unwrap();
        }
    }
    s.write(
        "other",
        gauge(
            "usage",
            &[("user_id", "alice")],
            vec![1_700_000_000_000],
            vec![1.0],
        ),
    )
    .unwrap();
    // Unflushed alice rows are included: the delete flushes first.
    let st = s
        .delete_series(
            TENANT,
            "usage",
            &[Matcher::eq("user_id", "alice")],
            i64::MIN,
            i64::MAX,
        )
        .unwrap();
    assert_eq!(st.removed_rows, 20, "{st:?}");
    let users = |tenant: &str| -> BTreeMap<String, usize> {
        let out = s
            .scan(tenant, &ScanRequest::new("usage", i64::MIN, i64::MAX))
            .unwrap();
        out.series
            .iter()
            .map(|(l, d)| (l.get("user_id").unwrap().to_string(), d.len()))
            .collect()
    };
    assert_eq!(
        users(TENANT),
        BTreeMap::from([("bob".into(), 10), ("carol".into(), 10)])
    );
    assert_eq!(users("other").len(), 1, "another tenant is untouched");
    let values = s
        .label_values(TENANT, "user_id", i64::MIN, i64::MAX)
        .unwrap();
    assert_eq!(values, vec!["bob".to_string(), "carol".to_string()]);

    // A time range: only bob's first 5 rows.
    let st = s
        .delete_series(
            TENANT,
            "usage",
            &[Matcher::eq("user_id", "bob")],
            1_700_000_000_000,
            1_700_000_000_004,
        )
        .unwrap();
    assert_eq!(st.removed_rows, 5);
    assert_eq!(users(TENANT)["bob"], 5);

    let st = s.delete_tenant(TENANT).unwrap();
    assert_eq!(st.removed_rows, 15);
    assert!(users(TENANT).is_empty());
    assert_eq!(users("other").len(), 1);
    assert!(s.manifest().segments.iter().all(|m| m.tenant == "other"));
}

/// Drop, keep and labeldrop rules, and a series cap with overflow routing.
#[test]
fn volume_controls_shape_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    let none = BTreeMap::new();
    c.volume = VolumeConfig {
        rules: vec![
            IngestRule::new(RuleAction::Drop, Some("debug_.*"), &none, None).unwrap(),
            IngestRule::new(
                RuleAction::Drop,
                None,
                &BTreeMap::from([("env".to_string(), "test|dev".to_string())]),
                None,
            )
            .unwrap(),
            IngestRule::new(
                RuleAction::LabelDrop,
                Some("llm_.*"),
                &none,
                Some("request_id"),
            )
            .unwrap(),
        ],
        series_caps: BTreeMap::from([("capped".to_string(), 3)]),
        overflow: true,
    };
    let s = Storage::open(c).unwrap();
    s.write(TENANT, gauge("debug_x", &[("a", "1")], vec![1], vec![1.0]))
        .unwrap();
    s.write(TENANT, gauge("m", &[("env", "test")], vec![1], vec![1.0]))
        .unwrap();
    s.write(TENANT, gauge("m", &[("env", "prod")], vec![1], vec![1.0]))
        .unwrap();
    s.write(
        TENANT,
        gauge(
            "llm_x",
            &[("model", "a"), ("request_id", "r1")],
            vec![1],
            vec![1.0],
        ),
    )
    .unwrap();
    for u in 0..6 {
        let user = format!("u{u}");
        s.write(
            TENANT,
            gauge("capped", &[("user", &user)], vec![1, 2], vec![1.0, 2.0]),
        )
        .unwrap();
    }
    let scan = |t: &str| {
        s.scan(TENANT, &ScanRequest::new(t, i64::MIN, i64::MAX))
            .unwrap()
            .series
            .into_iter()
            .map(|(l, _)| l.to_string())
            .collect::<Vec<_>>()
    };
    assert!(scan("debug_x").is_empty());
    assert_eq!(scan("m"), vec![r#"{env="prod"}"#]);
    assert_eq!(scan("llm_x"), vec![r#"{model="a"}"#]);
    assert_eq!(
        scan("capped"),
        vec![
            r#"{otel_metric_overflow="true"}"#,
            r#"{user="u0"}"#,
            r#"{user="u1"}"#,
            r#"{user="u2"}"#
        ]
    );
    let v = s.volume_stats();
    assert_eq!((v.dropped_series, v.dropped_samples), (2, 2));
    assert_eq!(v.labels_dropped, 1);
    assert_eq!((v.overflow_series, v.overflow_samples), (3, 6));
}
