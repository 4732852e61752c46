//! Power loss at every point of a workload: with the `always` policy every
//! acknowledged row survives, and no row is stored twice.

use std::sync::Arc;

use sonde_storage::vfs::SimVfs;
use sonde_storage::{Config, Storage};
use sonde_types::ManualClock;

use crate::common::{TENANT, events, stored_events};

fn open(vfs: &SimVfs) -> Storage {
    let mut c = Config::new("/data");
    c.background_flush = false;
    c.wal_file_bytes = 2048; // several WAL files, so deletion below the watermark runs
    c.compaction.enabled = false; // the workload compacts at known points
    c.compaction.min_inputs = 2;
    Storage::open_with(
        c,
        Arc::new(vfs.clone()),
        Arc::new(ManualClock::new(1_000_000)),
    )
    .unwrap()
}

/// Writes batches of 4 ids, each claiming the key `k<i>`, flushing every third
/// write and compacting every sixth; returns the acked ids.
fn workload(s: &Storage) -> Vec<i64> {
    let mut acked = Vec::new();
    for i in 0..12i64 {
        let key = vec![format!("k{i}")];
        if let Ok(Some(_)) = s.write_with_keys(TENANT, events(i * 4..i * 4 + 4), key) {
            acked.extend(i * 4..i * 4 + 4);
        }
        if i % 3 == 2 {
            let _ = s.flush();
        }
        if i % 6 == 5 {
            let _ = s.compact(); // merges the two segments flushed so far
        }
    }
    acked
}

#[test]
fn every_acknowledged_row_survives_every_crash_point() {
    // Count the operations of a clean run.
    let clean = SimVfs::new();
    let s = open(&clean);
    let start = clean.ops();
    assert_eq!(workload(&s).len(), 48);
    assert!(
        s.maintenance_totals().compacted_inputs >= 4,
        "the workload compacts"
    );
    let total = clean.ops() - start;
    drop(s);
    assert!(
        total > 50,
        "workload too small to be interesting: {total} ops"
    );

    for crash_at in 0..total {
        let vfs = SimVfs::new();
        let s = open(&vfs);
        vfs.crash_after(crash_at);
        let acked = workload(&s);
        drop(s);
        vfs.power_loss();
        let s = open(&vfs);
        let stored = stored_events(&s);
        for id in &acked {
            assert_eq!(
                stored.get(id),
                Some(&1),
                "crash at op {crash_at}: acked id {id}"
            );
        }
        assert!(
            stored.values().all(|&n| n == 1),
            "crash at op {crash_at}: duplicates"
        );
        // The recovered store accepts writes and flushes.
        s.write(TENANT, events(10_000..10_004)).unwrap();
        s.flush().unwrap();
    }
}

#[test]
fn interval_policy_loses_only_unsynced_writes() {
    let vfs = SimVfs::new();
    let mut c = Config::new("/data");
    c.background_flush = false;
    c.fsync = sonde_storage::FsyncPolicy::Interval(std::time::Duration::from_secs(3600));
    let s = Storage::open_with(c, Arc::new(vfs.clone()), Arc::new(ManualClock::new(0))).unwrap();
    s.write(TENANT, events(0..4)).unwrap();
    // Acknowledged before any fsync: a power loss now loses it (documented) …
    drop(s); // … but a clean shutdown syncs the WAL.
    vfs.power_loss();
    let c = {
        let mut c = Config::new("/data");
        c.background_flush = false;
        c
    };
    let s = Storage::open_with(c, Arc::new(vfs.clone()), Arc::new(ManualClock::new(0))).unwrap();
    assert_eq!(stored_events(&s).len(), 4);
}
