//! A query split across threads (series read in parts, range functions on the worker
//! pool) answers exactly what the same query answers on one thread.

use std::time::Duration;

use sonde_dataset::{DatasetConfig, Generator};
use sonde_promql::{PromConfig, QueryValue, range_query};
use sonde_storage::{Config, FsyncPolicy, Storage};

const START: i64 = 1_700_000_000_000;

fn open(dir: &std::path::Path) -> Storage {
    let mut config = Config::new(dir);
    config.retention.raw = None;
    config.fsync = FsyncPolicy::Interval(Duration::from_millis(50));
    config.background_flush = false;
    config.compaction.enabled = false;
    Storage::open(config).unwrap()
}

const QUERIES: [&str; 8] = [
    "rate(llm_tokens_total[5m])",
    "sum by (model) (rate(llm_tokens_total[5m]))",
    "histogram_quantile(0.9, sum by (le, model) (rate(llm_request_duration_seconds_bucket[5m])))",
    "increase(llm_cost_usd_total[10m])",
    "max_over_time(llm_ttft_seconds[2m])",
    "last_over_time(llm_ttft_seconds[1m])",
    "llm_ttft_seconds",
    "topk(3, sum by (tenant) (increase(llm_tokens_total{token_type=\"output\"}[10m])))",
];

#[test]
fn parallel_and_streamed_answers_equal_serial_answers() {
    // The same 3,000 series × 60 samples in two layouts: all in one segment (range
    // functions stream it in parts), and the first 40 samples in a segment with the
    // rest in the head (every series merged from two sources).
    let batches: Vec<_> = Generator::new(DatasetConfig::sized(3000, 60, START)).collect();
    let (one_dir, two_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let one = open(one_dir.path());
    for b in &batches {
        one.write("t", b.clone()).unwrap();
    }
    one.flush().unwrap();
    let two = open(two_dir.path());
    let (old, new) = batches.split_at(40);
    for b in old {
        two.write("t", b.clone()).unwrap();
    }
    two.flush().unwrap();
    for b in new {
        two.write("t", b.clone()).unwrap();
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
    let query =
        |s: &Storage, cfg: &PromConfig, q: &str| range_query(s, "t", cfg, q, start, end, 30_000);
    for q in QUERIES {
        let reference = query(&two, &serial, q).unwrap();
        let QueryValue::Matrix(series) = &reference else {
            panic!("{q}: not a matrix")
        };
        assert!(!series.is_empty(), "{q}: no series");
        assert_eq!(
            query(&two, &parallel, q).unwrap(),
            reference,
            "{q}: merged, parallel"
        );
        let streamed = query(&one, &serial, q).unwrap();
        assert_eq!(
            query(&one, &parallel, q).unwrap(),
            streamed,
            "{q}: streamed, parallel"
        );
        // The segment hands series over in its table's order, the merge in label
        // order: an aggregation adds the same values in another order, so the two
        // layouts agree to rounding, not bit for bit.
        assert_close(&streamed, &reference, q);
    }
    // Two metric names under one selector: once `rate` drops `__name__`, `_sum` and
    // `_count` share label sets, which Prometheus refuses; so must every path.
    for s in [&one, &two] {
        for cfg in [&serial, &parallel] {
            let err = query(
                s,
                cfg,
                "rate({__name__=~\"llm_request_duration_seconds_(sum|count)\"}[5m])",
            )
            .expect_err("same label sets");
            assert!(err.to_string().contains("same labelset"), "{err}");
            // Aggregated, the error stays (the aggregation does not hide it).
            let err = query(
                s,
                cfg,
                "sum(rate({__name__=~\"llm_request_duration_seconds_(sum|count)\"}[5m]))",
            )
            .expect_err("same label sets");
            assert!(err.to_string().contains("same labelset"), "{err}");
        }
    }
    // An aggregation of a selector or range function folds each part of the selection
    // as it streams; `* 1` makes the argument an expression evaluated first, then
    // aggregated: the answers must be identical, bit for bit.
    for (streamed, whole) in [
        (
            "sum by (model) (rate(llm_tokens_total[5m]))",
            "sum by (model) (rate(llm_tokens_total[5m]) * 1)",
        ),
        (
            "avg by (model, tenant) (increase(llm_cost_usd_total[10m]))",
            "avg by (model, tenant) (increase(llm_cost_usd_total[10m]) * 1)",
        ),
        (
            "stddev without (user_id) (llm_ttft_seconds)",
            "stddev without (user_id) (llm_ttft_seconds * 1)",
        ),
        (
            "max by (le) (rate(llm_request_duration_seconds_bucket[5m]))",
            "max by (le) (rate(llm_request_duration_seconds_bucket[5m]) * 1)",
        ),
        ("count(llm_ttft_seconds)", "count(llm_ttft_seconds * 1)"),
    ] {
        for s in [&one, &two] {
            for cfg in [&serial, &parallel] {
                let a = query(s, cfg, streamed).unwrap();
                let QueryValue::Matrix(series) = &a else {
                    panic!("{streamed}: not a matrix")
                };
                assert!(!series.is_empty(), "{streamed}: no series");
                assert_eq!(a, query(s, cfg, whole).unwrap(), "{streamed}");
            }
        }
    }
    // The sample budget holds on the streamed path too.
    let tight = PromConfig {
        max_samples: 1000,
        ..parallel.clone()
    };
    let err = query(&one, &tight, QUERIES[0]).expect_err("over budget");
    assert!(err.to_string().contains("too many samples"), "{err}");
}

/// Same series, timestamps and `delta` flags; values equal to 1e-12 relative (NaN
/// matching NaN).
fn assert_close(a: &QueryValue, b: &QueryValue, q: &str) {
    let (QueryValue::Matrix(a), QueryValue::Matrix(b)) = (a, b) else {
        panic!("{q}: not matrices")
    };
    assert_eq!(a.len(), b.len(), "{q}: series count");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(
            (&x.metric, &x.ts, x.delta),
            (&y.metric, &y.ts, y.delta),
            "{q}"
        );
        for (&u, &v) in x.vals.iter().zip(&y.vals) {
            let close = (u.is_nan() && v.is_nan()) || (u - v).abs() <= 1e-12 * u.abs().max(v.abs());
            assert!(close, "{q}: {:?}: {u} vs {v}", x.metric);
        }
    }
}
