//! A separate process writes continuously and is SIGKILLed at random moments (20
//! times, flushes and compactions happening along the way, in the writer and in the
//! background); after each kill, every acknowledged row is present exactly once.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use sonde_storage::Storage;

use crate::common::{config, stored_events};

#[test]
fn sigkill_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut acked: Vec<(i64, i64)> = Vec::new();
    let mut flushed_segments = 0;
    let mut compacted = 0;
    let mut rollup_days = 0;
    for run in 0..20i64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sonde-storage-torture"))
            .arg(dir.path())
            .arg((run * 10_000_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut merged = 0;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("COMPACTED ") {
                    merged += n.parse::<usize>().unwrap();
                    continue;
                }
                let mut p = line
                    .split_whitespace()
                    .skip(1)
                    .map(|x| x.parse::<i64>().unwrap());
                got.push((p.next().unwrap(), p.next().unwrap()));
            }
            (got, merged)
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(150..900)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let (got, merged) = reader.join().unwrap();
        acked.extend(got);
        compacted += merged;

        let s = Storage::open(config(dir.path())).unwrap();
        let stored = stored_events(&s);
        for &(a, b) in &acked {
            for id in a..=b {
                assert_eq!(stored.get(&id), Some(&1), "run {run}: acked id {id}");
            }
        }
        assert!(
            stored.values().all(|&n| n == 1),
            "run {run}: a row stored twice"
        );
        // Whatever the kill interrupted (a rollup build among others), the tiers
        // answer exactly like the raw data.
        let raw = s
            .scan(
                "default",
                &sonde_storage::ScanRequest::new("ticks", 0, i64::MAX / 4),
            )
            .unwrap();
        for tier in s.rollup_tiers() {
            let b = s
                .scan_buckets(
                    "default",
                    tier,
                    &sonde_storage::ScanRequest::new("ticks", 0, i64::MAX / 4),
                    None,
                )
                .unwrap();
            let want: Vec<_> = raw
                .series
                .iter()
                .map(|(l, d)| {
                    let c = d.cols[0].as_ref().unwrap();
                    let v = match &c.values {
                        sonde_storage::series::Values::I64(v) => v.clone(),
                        other => panic!("ticks is an integer counter: {other:?}"),
                    };
                    (
                        l.clone(),
                        sonde_storage::Buckets::from_samples(&d.ts, |i| Some(v[i] as f64), tier),
                    )
                })
                .collect();
            assert_eq!(b.series, want, "run {run}: tier {tier}");
            rollup_days += b.rollup_days;
        }
        flushed_segments = s.manifest().segments.len();
    }
    assert!(
        acked.len() > 100,
        "the writer acknowledged too little: {}",
        acked.len()
    );
    assert!(flushed_segments > 0, "no flush happened before the kills");
    assert!(compacted > 0, "no compaction happened before the kills");
    assert!(
        rollup_days > 0,
        "no rollup answered: none was built before the kills"
    );
}
