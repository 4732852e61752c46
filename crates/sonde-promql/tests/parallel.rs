//! A query split across threads (series read in parts, range functions on the worker
//! pool) answers exactly what the same query answers on one thread.

use std::time::Duration;

use sonde_dataset::{DatasetConfig, Generator};
use sonde_promql::{PromConfig, QueryValue, range_query};
use sonde_storage::{Config, FsyncPolicy, Storage};

const START: i64 = 1_700_000_000_000;

#[test]
fn parallel_answers_equal_serial_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.retention.raw = None;
    config.fsync = FsyncPolicy::Interval(Duration::from_millis(50));
    config.background_flush = false;
    config.compaction.enabled = false;
    let storage = Storage::open(config).unwrap();
    // 3,000 series × 60 samples: the first 40 samples in a segment, the rest in the
    // head, so every series is merged from two sources.
    let batches: Vec<_> = Generator::new(DatasetConfig::sized(3000, 60, START)).collect();
    let (old, new) = batches.split_at(40);
    for b in old {
        storage.write("t", b.clone()).unwrap();
    }
    storage.flush().unwrap();
    for b in new {
        storage.write("t", b.clone()).unwrap();
    }
    let serial = PromConfig {
        threads: 1,
        use_rollups: false,
        ..PromConfig::default()
    };
    let parallel = PromConfig {
        threads: 4,
        ..serial.clone()
    };
    let (start, end) = (START + 300_000, START + 60 * 15_000);
    let query = |cfg: &PromConfig, q: &str| range_query(&storage, "t", cfg, q, start, end, 30_000);
    for q in [
        "rate(llm_tokens_total[5m])",
        "sum by (model) (rate(llm_tokens_total[5m]))",
        "histogram_quantile(0.9, sum by (le, model) (rate(llm_request_duration_seconds_bucket[5m])))",
        "increase(llm_cost_usd_total[10m])",
        "max_over_time(llm_ttft_seconds[2m])",
        "last_over_time(llm_ttft_seconds[1m])",
        "llm_ttft_seconds",
        "topk(3, sum by (tenant) (increase(llm_tokens_total{token_type=\"output\"}[10m])))",
    ] {
        let a = query(&serial, q).unwrap();
        let b = query(&parallel, q).unwrap();
        let QueryValue::Matrix(series) = &a else {
            panic!("{q}: not a matrix")
        };
        assert!(!series.is_empty(), "{q}: no series");
        assert_eq!(a, b, "{q}");
    }
    // Two metric names under one selector: once `rate` drops `__name__`, `_sum` and
    // `_count` share label sets, which Prometheus refuses; so must every part.
    for cfg in [&serial, &parallel] {
        let err = query(
            cfg,
            "rate({__name__=~\"llm_request_duration_seconds_(sum|count)\"}[5m])",
        )
        .expect_err("same label sets");
        assert!(err.to_string().contains("same labelset"), "{err}");
    }
}
