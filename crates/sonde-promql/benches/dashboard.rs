//! The PromQL dashboard corpus of `benches/compare` evaluated in process, over the
//! standard dataset flushed to one segment: evaluation cost without HTTP or JSON.
//!
//! Run: `cargo bench -p sonde-promql --bench dashboard [-- FILTER]`; `SONDE_SERIES`
//! sets the dataset size (default 10,000 series × 240 samples), `SONDE_THREADS` the
//! threads of one query (default: the CPUs). For a profile:
//! `perf record -g target/release/deps/dashboard-* --bench --profile-time 20 histogram`.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sonde_dataset::{DatasetConfig, Generator};
use sonde_promql::{PromConfig, range_query};
use sonde_storage::{Config, FsyncPolicy, Storage};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The corpus `benches/compare/run.py` times against Prometheus and VictoriaMetrics.
const QUERIES: [(&str, &str); 6] = [
    ("tokens_rate", "sum by (model) (rate(llm_tokens_total[5m]))"),
    (
        "cost_rate",
        "sum by (model, tenant) (rate(llm_cost_usd_total[5m])) * 3600",
    ),
    (
        "histogram",
        "histogram_quantile(0.95, sum by (le, model) (rate(llm_request_duration_seconds_bucket[5m])))",
    ),
    (
        "count_rate",
        "sum by (provider) (rate(llm_request_duration_seconds_count[5m]))",
    ),
    ("ttft_avg", "avg by (model) (llm_ttft_seconds)"),
    (
        "topk_increase",
        "topk(5, sum by (tenant) (increase(llm_tokens_total{token_type=\"output\"}[10m])))",
    ),
];

const START_MS: i64 = 1_700_000_000_000;
const SAMPLES: usize = 240;

fn bench(c: &mut Criterion) {
    let series = std::env::var("SONDE_SERIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.retention.raw = None;
    config.fsync = FsyncPolicy::Interval(Duration::from_millis(200));
    config.background_flush = false;
    config.compaction.enabled = false;
    let storage = Storage::open(config).unwrap();
    for batch in Generator::new(DatasetConfig::sized(series, SAMPLES, START_MS)) {
        storage.write("bench", batch).unwrap();
    }
    storage.flush().unwrap();
    let d = PromConfig::default();
    let prom = PromConfig {
        use_rollups: false,
        threads: std::env::var("SONDE_THREADS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d.threads),
        ..d
    };
    // As the compare harness asks: step 60 s over the dataset's hour from minute 5.
    let (start, end) = (START_MS + 300_000, START_MS + SAMPLES as i64 * 15_000);
    let mut group = c.benchmark_group(format!("dashboard_{series}"));
    group.sample_size(10);
    for (name, q) in QUERIES {
        group.bench_function(name, |b| {
            b.iter(|| range_query(&storage, "bench", &prom, q, start, end, 60_000).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
