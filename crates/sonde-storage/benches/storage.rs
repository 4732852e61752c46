//! Append throughput into WAL + head, batches of ~10k rows (one scrape of the 10k-series
//! standard dataset), under both fsync policies.
//!
//! Run: `cargo bench -p sonde-storage --bench storage`

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sonde_dataset::{DatasetConfig, Generator};
use sonde_storage::{Config, FsyncPolicy, Storage};

fn append(c: &mut Criterion) {
    let batches: Vec<_> =
        Generator::new(DatasetConfig::sized(10_000, 60, 1_700_000_000_000)).collect();
    let rows = batches[0].row_count() as u64;
    let mut group = c.benchmark_group("append_10k_rows_batch");
    group.throughput(Throughput::Elements(rows));
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(15));
    for (name, policy) in [
        ("always", FsyncPolicy::Always),
        (
            "interval_100ms",
            FsyncPolicy::Interval(Duration::from_millis(100)),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path());
        config.fsync = policy;
        config.background_flush = false;
        let storage = Storage::open(config).unwrap();
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    i += 1;
                    batches[i % batches.len()].clone()
                },
                |batch| storage.write("default", batch).unwrap(),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
