//! Write → drop → reopen, and write → flush → reopen, give the same rows.

use sonde_dataset::{DatasetConfig, Generator};
use sonde_storage::Storage;

use crate::common::{TENANT, config, dump};

fn load(s: &Storage, series: usize, samples: usize) {
    for b in Generator::new(DatasetConfig::sized(series, samples, 1_700_000_000_000)) {
        s.write(TENANT, b).unwrap();
    }
}

const TABLES: [&str; 3] = [
    "llm_tokens_total",
    "llm_cost_usd_total",
    "llm_request_duration_seconds_bucket",
];

#[test]
fn write_drop_reopen_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let before: Vec<String> = {
        let s = Storage::open(config(dir.path())).unwrap();
        load(&s, 300, 20);
        TABLES.iter().map(|t| dump(&s, t)).collect()
    };
    let s = Storage::open(config(dir.path())).unwrap();
    let after: Vec<String> = TABLES.iter().map(|t| dump(&s, t)).collect();
    assert_eq!(before, after);
    assert!(s.manifest().segments.is_empty(), "nothing was flushed");
}

#[test]
fn write_flush_reopen_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let before: Vec<String> = {
        let s = Storage::open(config(dir.path())).unwrap();
        load(&s, 300, 20);
        let head: Vec<String> = TABLES.iter().map(|t| dump(&s, t)).collect();
        let stats = s.flush().unwrap();
        assert_eq!(stats.rows, 300 * 20);
        let flushed: Vec<String> = TABLES.iter().map(|t| dump(&s, t)).collect();
        assert_eq!(head, flushed, "segments answer like the head did");
        flushed
    };
    let s = Storage::open(config(dir.path())).unwrap();
    let after: Vec<String> = TABLES.iter().map(|t| dump(&s, t)).collect();
    assert_eq!(before, after);
    // The WAL below the watermark is gone: only the fresh file remains.
    let wal: Vec<_> = std::fs::read_dir(dir.path().join("wal")).unwrap().collect();
    assert!(wal.len() <= 2, "{wal:?}");
}

#[test]
fn later_write_wins_across_segments_and_head() {
    use sonde_types::{FieldType, Labels, MetricKind, SeriesBatch, TableBatch, WriteBatch};
    let gauge = |ts: Vec<i64>, v: Vec<f64>| {
        let mut t = TableBatch::single("g", MetricKind::Gauge, FieldType::F64);
        t.series
            .push(SeriesBatch::f64(Labels::new([("a", "1")]).unwrap(), ts, v));
        WriteBatch { tables: vec![t] }
    };
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(config(dir.path())).unwrap();
    s.write(TENANT, gauge(vec![1000, 2000, 3000], vec![1.0, 2.0, 3.0]))
        .unwrap();
    s.flush().unwrap();
    // Out of order and a rewrite of 2000, after the flush: lands in a later segment.
    s.write(TENANT, gauge(vec![2000, 500], vec![20.0, 0.5]))
        .unwrap();
    let check = |s: &Storage| {
        let out = s
            .scan(TENANT, &sonde_storage::ScanRequest::new("g", 0, 10_000))
            .unwrap();
        let d = &out.series[0].1;
        assert_eq!(d.ts, vec![500, 1000, 2000, 3000]);
        let sonde_storage::series::Values::F64(v) = &d.cols[0].as_ref().unwrap().values else {
            panic!()
        };
        assert_eq!(v, &vec![0.5, 1.0, 20.0, 3.0]);
    };
    check(&s);
    s.flush().unwrap();
    check(&s);
    drop(s);
    check(&Storage::open(config(dir.path())).unwrap());
}

/// The per-call shape: a multi-field event table (i64 token counts, f64 latencies and
/// cost) with churning users, half flushed, half in the head, reads the same after a
/// reopen, and every call is kept.
#[test]
fn llm_calls_event_table_survives_reopen() {
    use sonde_dataset::{CallConfig, CallGenerator};
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let s = Storage::open(config(dir.path())).unwrap();
        let mut calls = CallGenerator::new(CallConfig::new(3000, 1_700_000_000_000));
        let mut i = 0;
        while let Some(b) = calls.next_batch(500) {
            s.write(TENANT, b).unwrap();
            i += 1;
            if i == 3 {
                s.flush().unwrap();
            }
        }
        let out = s
            .scan(
                TENANT,
                &sonde_storage::ScanRequest::new("llm_calls", i64::MIN, i64::MAX),
            )
            .unwrap();
        assert_eq!(out.stats.rows, 3000, "every call is a row");
        assert_eq!(out.schema.fields.len(), 7);
        dump(&s, "llm_calls")
    };
    let s = Storage::open(config(dir.path())).unwrap();
    assert_eq!(before, dump(&s, "llm_calls"));
}

/// A write claiming a key already claimed is stored once — across a restart, across
/// a flush (the key outlives its WAL record), and again once the window has passed.
#[test]
fn dedup_keys_survive_restart_and_flush_and_expire() {
    use crate::common::{events, stored_events};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let clock = sonde_types::ManualClock::new(1_000_000);
    let open = || {
        Storage::open_with(
            config(dir.path()),
            Arc::new(sonde_storage::vfs::OsVfs),
            Arc::new(clock.clone()),
        )
        .unwrap()
    };
    let key = || vec!["req:retry-1".to_string()];
    let s = open();
    assert!(
        s.write_with_keys(TENANT, events(0..4), key())
            .unwrap()
            .is_some()
    );
    assert!(
        s.write_with_keys(TENANT, events(0..4), key())
            .unwrap()
            .is_none()
    );
    assert!(s.key_seen(TENANT, "req:retry-1"));
    assert!(!s.key_seen("other", "req:retry-1"), "keys are per tenant");
    drop(s);
    let s = open();
    assert!(
        s.write_with_keys(TENANT, events(0..4), key())
            .unwrap()
            .is_none(),
        "after restart (WAL)"
    );
    s.flush().unwrap();
    drop(s);
    let s = open();
    assert!(
        s.write_with_keys(TENANT, events(0..4), key())
            .unwrap()
            .is_none(),
        "after flush (dedup.keys)"
    );
    assert_eq!(stored_events(&s).len(), 4);
    assert!(stored_events(&s).values().all(|&n| n == 1));
    clock.advance(3_600_001);
    assert!(
        s.write_with_keys(TENANT, events(10..14), key())
            .unwrap()
            .is_some(),
        "window passed"
    );
}

/// A dropped store can be reopened at once even while another thread of the process
/// spawns children (each briefly holds a copy of every descriptor, the lock's too).
#[test]
fn reopen_at_once_while_children_are_spawned() {
    let dir = tempfile::tempdir().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::process::Command::new("true").status();
            }
        })
    };
    let result = std::panic::catch_unwind(|| {
        for _ in 0..300 {
            drop(Storage::open(config(dir.path())).unwrap());
        }
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    spawner.join().unwrap();
    result.unwrap();
}

/// Writers are answered before the WAL thread applies their batches (under the
/// head's write lock): a scan started after the answer must still see the write.
/// Four threads write events with their own ids and, after each acknowledgement,
/// scan for the ids just written (and everything before them).
#[test]
fn acknowledged_writes_are_visible_to_the_next_scan() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Storage::open(config(dir.path())).unwrap());
    let threads: Vec<_> = (0..4i64)
        .map(|w| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..60i64 {
                    let base = 1_000_000 * (w + 1) + 100 * i;
                    s.write(TENANT, crate::common::events(base..base + 100))
                        .unwrap();
                    let stored = crate::common::stored_events(&s);
                    for id in 1_000_000 * (w + 1)..base + 100 {
                        assert_eq!(stored.get(&id), Some(&1), "writer {w} id {id}");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(crate::common::stored_events(&s).len(), 4 * 60 * 100);
}
