//! Rollup tiers: built from persisted raw data, identical to bucketing the raw data
//! at read time, kept current through compaction, bypassed while stale (late data),
//! and all that is left once raw data expires.

use std::sync::Arc;
use std::time::Duration;

use sonde_dataset::{DatasetConfig, Generator};
use sonde_storage::{Buckets, Matcher, ScanRequest, Storage};
use sonde_types::{
    DAY_MS, FieldType, Labels, ManualClock, MetricKind, SeriesBatch, TableBatch, WriteBatch,
};

use crate::common::{TENANT, config};

const DAY0: i64 = 20_000;

/// Opens with every tier holding every table (`min_saving` 0), so the tiers are what
/// these tests read.
fn open(dir: &std::path::Path, clock: &ManualClock, raw_days: Option<u64>) -> Storage {
    open_tuned(dir, clock, raw_days, |c| c.rollups.min_saving = 0)
}

/// [`open`] with more settings changed by `tune`.
fn open_tuned(
    dir: &std::path::Path,
    clock: &ManualClock,
    raw_days: Option<u64>,
    tune: impl FnOnce(&mut sonde_storage::Config),
) -> Storage {
    let mut c = config(dir);
    c.retention.raw = raw_days.map(|d| Duration::from_secs(d * 86_400));
    c.compaction.min_inputs = 2;
    tune(&mut c);
    Storage::open_with(
        c,
        Arc::new(sonde_storage::vfs::OsVfs),
        Arc::new(clock.clone()),
    )
    .unwrap()
}

/// Three days of the standard dataset (15 series × 1 sample a minute) plus a gauge
/// with a counter-like reset, flushed a day at a time.
fn load(s: &Storage) {
    for d in 0..3 {
        let mut cfg = DatasetConfig::sized(15, 1440, (DAY0 + d) * DAY_MS);
        cfg.interval_ms = 60_000;
        cfg.seed = d as u64;
        for b in Generator::new(cfg) {
            s.write(TENANT, b).unwrap();
        }
        let mut t = TableBatch::single("resetting", MetricKind::Counter, FieldType::F64);
        let ts: Vec<i64> = (0..300).map(|i| (DAY0 + d) * DAY_MS + i * 20_000).collect();
        let v: Vec<f64> = (0..300).map(|i| ((i * 7) % 50) as f64).collect();
        t.series
            .push(SeriesBatch::f64(Labels::new([("k", "v")]).unwrap(), ts, v));
        s.write(TENANT, WriteBatch { tables: vec![t] }).unwrap();
        s.flush().unwrap();
    }
}

/// Buckets computed from the raw samples, the reference.
fn from_raw(s: &Storage, table: &str, tier: i64) -> Vec<(Labels, Buckets)> {
    let out = s
        .scan(TENANT, &ScanRequest::new(table, i64::MIN, i64::MAX))
        .unwrap();
    out.series
        .into_iter()
        .map(|(l, d)| {
            let c = d.cols[0].clone().unwrap();
            let b = Buckets::from_samples(
                &d.ts,
                |i| {
                    c.is_valid(i).then(|| match &c.values {
                        sonde_storage::series::Values::F64(v) => v[i],
                        sonde_storage::series::Values::I64(v) => v[i] as f64,
                        other => panic!("a numeric field: {other:?}"),
                    })
                },
                tier,
            );
            (l, b)
        })
        .collect()
}

fn buckets(s: &Storage, table: &str, tier: i64) -> (Vec<(Labels, Buckets)>, usize, usize) {
    let req = ScanRequest::new(table, DAY0 * DAY_MS, (DAY0 + 3) * DAY_MS - 1);
    let b = s.scan_buckets(TENANT, tier, &req, None).unwrap();
    (b.series, b.rollup_days, b.raw_days)
}

const TABLES: [&str; 4] = [
    "llm_tokens_total",
    "llm_request_duration_seconds_bucket",
    "llm_ttft_seconds",
    "resetting",
];

#[test]
fn rollups_equal_raw_buckets_and_follow_changes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new((DAY0 + 5) * DAY_MS);
    let s = open(dir.path(), &clock, None);
    load(&s);
    // Before any build every day is read raw.
    let (_, r, w) = buckets(&s, "llm_tokens_total", 60_000);
    assert_eq!((r, w), (0, 3));
    assert_eq!(s.build_rollups().unwrap(), 3);
    for tier in [60_000, 3_600_000] {
        for t in TABLES {
            let (got, r, w) = buckets(&s, t, tier);
            assert_eq!((r, w), (3, 0), "{t} at {tier}");
            assert_eq!(got, from_raw(&s, t, tier), "{t} at {tier}");
        }
    }
    // A selector reaches into the rollup's index.
    let req = ScanRequest::new("llm_ttft_seconds", DAY0 * DAY_MS, (DAY0 + 3) * DAY_MS - 1)
        .with(Matcher::eq("model", "gpt-4o"));
    let one = s.scan_buckets(TENANT, 60_000, &req, None).unwrap();
    assert!(!one.series.is_empty());
    assert!(
        one.series
            .iter()
            .all(|(l, _)| l.get("model") == Some("gpt-4o"))
    );

    // Late data in day 1: unflushed, then flushed — day 1 is read raw (and still
    // equals raw) until the rollup is rebuilt.
    let mut t = TableBatch::single("resetting", MetricKind::Counter, FieldType::F64);
    t.series.push(SeriesBatch::f64(
        Labels::new([("k", "v")]).unwrap(),
        vec![(DAY0 + 1) * DAY_MS + 30_000],
        vec![1000.0],
    ));
    s.write(TENANT, WriteBatch { tables: vec![t] }).unwrap();
    let (got, r, w) = buckets(&s, "resetting", 60_000);
    assert_eq!((r, w), (2, 1));
    assert_eq!(got, from_raw(&s, "resetting", 60_000));
    s.flush().unwrap();
    let (got, r, w) = buckets(&s, "resetting", 60_000);
    assert_eq!((r, w), (2, 1));
    assert_eq!(got, from_raw(&s, "resetting", 60_000));
    // Compacting the rolled-up segment with the late one does not make the rollup
    // (which never saw the late row) current again.
    let c = s.compact().unwrap();
    assert_eq!(c.compacted_inputs, 2, "{c:?}");
    let (got, r, w) = buckets(&s, "resetting", 60_000);
    assert_eq!((r, w), (2, 1));
    assert_eq!(got, from_raw(&s, "resetting", 60_000));
    assert_eq!(s.build_rollups().unwrap(), 1);
    let (got, r, _) = buckets(&s, "resetting", 60_000);
    assert_eq!(r, 3);
    assert_eq!(got, from_raw(&s, "resetting", 60_000));

    // Compaction of segments the rollup saw renames its sources: still current.
    for k in 0..2 {
        let mut t = TableBatch::single("resetting", MetricKind::Counter, FieldType::F64);
        t.series.push(SeriesBatch::f64(
            Labels::new([("k", "v")]).unwrap(),
            vec![(DAY0 + 2) * DAY_MS + 40_000 + k],
            vec![5.0],
        ));
        s.write(TENANT, WriteBatch { tables: vec![t] }).unwrap();
        s.flush().unwrap();
    }
    assert_eq!(s.build_rollups().unwrap(), 1);
    let c = s.compact().unwrap();
    assert_eq!(c.compacted_inputs, 3, "{c:?}");
    let (_, r, _) = buckets(&s, "resetting", 60_000);
    assert_eq!(r, 3);
    assert_eq!(s.build_rollups().unwrap(), 0);

    // Reopen: the rollups are in the manifest.
    drop(s);
    let s = open(dir.path(), &clock, None);
    let (got, r, _) = buckets(&s, "llm_tokens_total", 3_600_000);
    assert_eq!(r, 3);
    assert_eq!(got, from_raw(&s, "llm_tokens_total", 3_600_000));
}

#[test]
fn rollups_outlive_raw_retention() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new((DAY0 + 3) * DAY_MS);
    let s = open(dir.path(), &clock, Some(30));
    load(&s);
    s.build_rollups().unwrap();
    let (before, _, _) = buckets(&s, "llm_tokens_total", 3_600_000);
    drop(s);
    // Raw kept 2 days now: days 0 expires.
    clock.set((DAY0 + 3) * DAY_MS + 1000);
    let s = open(dir.path(), &clock, Some(2));
    let st = s.enforce_retention().unwrap();
    assert_eq!(st.dropped_segments, 1, "{st:?}");
    let (after, r, w) = buckets(&s, "llm_tokens_total", 3_600_000);
    assert_eq!((r, w), (3, 0), "the expired day is answered by its rollup");
    assert_eq!(after, before);
    // Deleting a series reaches the rollup that is all that is left of day 0.
    let st = s
        .delete_series(
            TENANT,
            "llm_tokens_total",
            &[Matcher::eq("token_type", "input")],
            i64::MIN,
            i64::MAX,
        )
        .unwrap();
    assert!(st.removed_rows > 0);
    let (after, _, _) = buckets(&s, "llm_tokens_total", 3_600_000);
    assert!(
        after
            .iter()
            .all(|(l, _)| l.get("token_type") != Some("input"))
    );
    assert!(!after.is_empty());
}

/// Per day (counted from `DAY0`) that has a rollup at `tier`, the tables it left out.
fn left_out(s: &Storage, tier: i64) -> std::collections::BTreeMap<i64, Vec<String>> {
    s.manifest()
        .rollups
        .iter()
        .filter(|r| r.tier_ms == tier)
        .map(|r| (r.segment.day - DAY0, r.left_out.clone()))
        .collect()
}

/// By default a tier holds a table's day only where it saves rows: the 1 m tier
/// leaves out one-a-minute samples (and 20 s ones: 3× fewer rows) but holds a table
/// of 6 s samples, the 1 h tier holds everything; the build is not repeated. A day
/// whose raw rows expire within a day gets every table into its 1 m tier; so do days
/// retention is about to drop when that pass was missed — the tier then answers
/// exactly as raw did.
#[test]
fn tiers_hold_tables_where_they_save_rows() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new((DAY0 + 5) * DAY_MS);
    let s = open_tuned(dir.path(), &clock, Some(30), |_| {});
    load(&s);
    for d in 0..3 {
        let mut t = TableBatch::single("dense", MetricKind::Counter, FieldType::F64);
        let ts: Vec<i64> = (0..600).map(|i| (DAY0 + d) * DAY_MS + i * 6_000).collect();
        let v: Vec<f64> = (0..600).map(|i| i as f64).collect();
        t.series
            .push(SeriesBatch::f64(Labels::new([("k", "v")]).unwrap(), ts, v));
        s.write(TENANT, WriteBatch { tables: vec![t] }).unwrap();
    }
    s.flush().unwrap();
    let all: Vec<&str> = TABLES.iter().copied().chain(["dense"]).collect();
    let reference: Vec<_> = all.iter().map(|t| from_raw(&s, t, 60_000)).collect();
    assert_eq!(s.build_rollups().unwrap(), 3);
    let minute = left_out(&s, 60_000);
    assert_eq!(minute.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
    for out in minute.values() {
        assert!(TABLES.iter().all(|t| out.iter().any(|o| o == t)), "{out:?}");
        assert!(!out.iter().any(|o| o == "dense"), "{out:?}");
    }
    assert!(left_out(&s, 3_600_000).values().all(Vec::is_empty));
    for (t, want) in all.iter().zip(&reference) {
        let (got, r, w) = buckets(&s, t, 60_000);
        let held = usize::from(*t == "dense") * 3;
        assert_eq!((r, w), (held, 3 - held), "{t}: from the 1 m tier?");
        assert_eq!(&got, want, "{t}");
        assert_eq!(buckets(&s, t, 3_600_000).1, 3, "{t}: from the 1 h tier");
    }
    assert_eq!(s.build_rollups().unwrap(), 0, "nothing left to build");

    // Day 0's raw rows expire within a day: its 1 m tier is rebuilt with every table.
    clock.set((DAY0 + 30) * DAY_MS + 1000);
    assert_eq!(s.build_rollups().unwrap(), 1);
    assert_eq!(left_out(&s, 60_000)[&0], Vec::<String>::new());
    assert_eq!(s.build_rollups().unwrap(), 0);
    for (t, want) in all.iter().zip(&reference) {
        let (got, r, _) = buckets(&s, t, 60_000);
        assert_eq!(r, if *t == "dense" { 3 } else { 1 }, "{t}");
        assert_eq!(&got, want, "{t}");
    }

    // Three days later, with no build pass in between: retention builds days 1 and 2
    // before it drops every raw day, and the 1 m tier answers what raw did.
    clock.set((DAY0 + 33) * DAY_MS + 1000);
    let st = s.enforce_retention().unwrap();
    assert!(st.dropped_segments >= 3, "{st:?}");
    assert!(left_out(&s, 60_000).values().all(Vec::is_empty));
    for (t, want) in all.iter().zip(&reference) {
        let (got, r, w) = buckets(&s, t, 60_000);
        assert_eq!((r, w), (3, 0), "{t}");
        assert_eq!(&got, want, "{t}");
    }
}

/// A tier kept shorter than the raw data is not built for days it no longer keeps,
/// nor rebuilt for the days its retention drops (raw data kept forever).
#[test]
fn tiers_are_not_rebuilt_past_their_retention() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new((DAY0 + 3) * DAY_MS);
    let s = open_tuned(dir.path(), &clock, None, |c| {
        c.rollups.min_saving = 0;
        c.rollups.retention = vec![Some(Duration::from_secs(2 * 86_400)), None];
    });
    load(&s);
    let days = |s: &Storage, tier: i64| left_out(s, tier).into_keys().collect::<Vec<_>>();
    assert_eq!(s.build_rollups().unwrap(), 3);
    assert_eq!(
        days(&s, 60_000),
        vec![1, 2],
        "day 0 is past the 1 m tier's 2 days"
    );
    assert_eq!(days(&s, 3_600_000), vec![0, 1, 2]);
    clock.set((DAY0 + 4) * DAY_MS);
    assert_eq!(s.expire_rollups().unwrap(), 1);
    assert_eq!(days(&s, 60_000), vec![2]);
    assert_eq!(s.build_rollups().unwrap(), 0);
    assert_eq!(s.enforce_retention().unwrap().dropped_segments, 0);
    assert_eq!(days(&s, 60_000), vec![2]);
}

/// Tier retention overrides: a table override drops that table from the 1 h tier's
/// old days (the rollup segment is rewritten without it, the other tables stay), a
/// tenant override drops the tenant's whole old 1 m days, and the tier tables read
/// empty where their data expired.
#[test]
fn tier_retention_overrides_per_tenant_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new((DAY0 + 3) * DAY_MS);
    let s = open(dir.path(), &clock, None);
    load(&s);
    s.build_rollups().unwrap();
    let per_tier = |s: &Storage, tier: i64| {
        s.manifest()
            .rollups
            .iter()
            .filter(|r| r.tier_ms == tier)
            .map(|r| {
                let mut t: Vec<String> = r.segment.tables.iter().map(|t| t.name.clone()).collect();
                t.sort();
                (r.segment.day, t)
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let before_1h = per_tier(&s, 3_600_000);
    assert_eq!(before_1h.len(), 3);
    assert!(before_1h[&DAY0].contains(&"llm_ttft_seconds".to_string()));
    let day = |d: u64| Some(Duration::from_secs(d * 86_400));
    let tier_rows = |s: &Storage, table: &str, tier: i64| -> Vec<i64> {
        let req = ScanRequest::new(table, DAY0 * DAY_MS, (DAY0 + 3) * DAY_MS - 1);
        let out = s.scan_rollup(TENANT, tier, &req).unwrap();
        let mut days: Vec<i64> = out
            .series
            .iter()
            .flat_map(|(_, d)| d.ts.iter().map(|t| t.div_euclid(DAY_MS) - DAY0))
            .collect();
        days.sort();
        days.dedup();
        days
    };
    assert_eq!(tier_rows(&s, "llm_ttft_seconds", 3_600_000), vec![0, 1, 2]);
    drop(s);

    // Now day 0 ended 3.5 days ago, day 1 2.5 days, day 2 1.5 days.
    clock.set((DAY0 + 4) * DAY_MS + DAY_MS / 2);
    let s = open_tuned(dir.path(), &clock, None, |c| {
        let r = &mut c.rollups;
        r.table_retention
            .insert("llm_ttft_seconds".into(), vec![None, day(3)]);
        r.tenant_retention.insert(TENANT.into(), vec![day(2), None]);
        // Another tenant's override does not apply.
        r.tenant_retention
            .insert("other".into(), vec![day(1), day(1)]);
    });
    let n = s.expire_rollups().unwrap();
    // 1 h: day 0 rewritten without llm_ttft_seconds. 1 m: days 0 and 1 rewritten
    // with llm_ttft_seconds only (its table override, kept forever at 1 m, wins over
    // the tenant's 2 days).
    assert_eq!(n, 3);
    let after_1h = per_tier(&s, 3_600_000);
    assert_eq!(after_1h.len(), 3);
    let mut expect0 = before_1h[&DAY0].clone();
    expect0.retain(|t| t != "llm_ttft_seconds");
    assert_eq!(after_1h[&DAY0], expect0);
    assert_eq!(after_1h[&(DAY0 + 1)], before_1h[&(DAY0 + 1)]);
    let after_1m = per_tier(&s, 60_000);
    let ttft_only = vec!["llm_ttft_seconds".to_string()];
    assert_eq!(after_1m[&DAY0], ttft_only);
    assert_eq!(after_1m[&(DAY0 + 1)], ttft_only);
    assert_eq!(after_1m[&(DAY0 + 2)].len(), before_1h[&(DAY0 + 2)].len());
    // The raw data is still there (raw kept forever), so the tier tables answer the
    // expired parts from raw rows: nothing is lost while raw lives.
    assert_eq!(tier_rows(&s, "llm_ttft_seconds", 3_600_000), vec![0, 1, 2]);
    // A second pass has nothing left to do; the rewritten rollup is not rebuilt.
    assert_eq!(s.expire_rollups().unwrap(), 0);
    assert_eq!(s.build_rollups().unwrap(), 0);
    assert_eq!(per_tier(&s, 3_600_000)[&DAY0], expect0);
}
