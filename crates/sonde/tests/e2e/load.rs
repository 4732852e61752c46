//! `sonde load` against the real server over each protocol; every sample it reports
//! as sent is stored.

use sonde_storage::{Config, Storage};

use crate::harness::{TestServer, load, rows};

#[test]
fn load_over_sonde_and_remote_write() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let grpc = format!("http://{}", server.grpc);
    let rw = format!("http://{}/api/v1/write", server.http);
    let out = load(&[
        "--target",
        &grpc,
        "--series",
        "300",
        "--samples",
        "10",
        "--batch",
        "1000",
    ]);
    assert!(
        out.contains("samples=3000 ") && out.contains("errors=0"),
        "{out}"
    );
    let out = load(&[
        "--protocol",
        "remote-write",
        "--target",
        &rw,
        "--series",
        "300",
        "--samples",
        "10",
        "--concurrency",
        "3",
    ]);
    assert!(
        out.contains("samples=3000 ") && out.contains("errors=0"),
        "{out}"
    );
    let (_, metrics) = server.http("GET", "/metrics");
    assert!(
        metrics.contains("sonde_ingested_samples_total{protocol=\"sonde\"} 3000"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sonde_ingested_samples_total{protocol=\"remote_write\"} 3000"),
        "{metrics}"
    );
    // Ten scrapes of the same 300 series: the first decodes them, the other nine
    // find them in the series cache.
    for line in [
        "sonde_remote_write_series_cache_lookups_total 3000",
        "sonde_remote_write_series_cache_hits_total 2700",
        "sonde_remote_write_series_cache_entries 300",
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
    server.stop();

    let mut c = Config::new(dir.path());
    c.background_flush = false;
    c.compaction.enabled = false;
    c.retention.raw = None;
    let s = Storage::open(c).unwrap();
    let rows = |t: &str| rows(&s, "default", t);
    // Both loads sent the same 40 token series, 10 samples each, ending at "now": the
    // two runs start milliseconds apart, so their timestamps differ (800 rows); 400
    // only if both started in the same millisecond.
    let tokens = rows("llm_tokens_total");
    assert!(tokens == 800 || tokens == 400, "{tokens}");
}

#[test]
fn load_calls_as_llm_call_records() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let grpc = format!("http://{}", server.grpc);
    let out = load(&["--target", &grpc, "--calls", "500", "--batch", "100"]);
    assert!(out.contains("errors=0"), "{out}");
    let (_, metrics) = server.http("GET", "/metrics");
    assert!(!metrics.contains("reason=\"invalid\""), "{metrics}");
    server.stop();
    let mut c = Config::new(dir.path());
    c.background_flush = false;
    c.compaction.enabled = false;
    c.retention.raw = None;
    let s = Storage::open(c).unwrap();
    let rows = |t: &str| rows(&s, "default", t);
    assert_eq!(rows("llm_calls"), 500);
    assert_eq!(rows("llm_request_duration_seconds"), 500);
    assert!(rows("llm_requests_total") > 0 && rows("llm_cost_usd_total") > 0);
}

/// The same dataset over OTLP lands in the same tables as over the other protocols:
/// counters, gauges and the classic histogram (sent as one OTLP histogram).
#[test]
fn load_over_otlp() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let grpc = format!("http://{}", server.grpc);
    let out = load(&[
        "--protocol",
        "otlp",
        "--target",
        &grpc,
        "--series",
        "300",
        "--samples",
        "10",
        "--batch",
        "500",
    ]);
    assert!(
        out.contains("samples=3000 ") && out.contains("errors=0"),
        "{out}"
    );
    let (_, metrics) = server.http("GET", "/metrics");
    assert!(
        metrics.contains("sonde_ingested_samples_total{protocol=\"otlp\"} 3000"),
        "{metrics}"
    );
    server.stop();
    let s = crate::harness::reopen(dir.path());
    let rows = |t: &str| rows(&s, "default", t);
    // 20 combinations × 10 scrapes: 2 token series, 9 buckets, 1 sum, 1 count,
    // 1 gauge, 1 cost counter each.
    assert_eq!(rows("llm_tokens_total"), 400);
    assert_eq!(rows("llm_request_duration_seconds_bucket"), 1800);
    assert_eq!(rows("llm_request_duration_seconds_sum"), 200);
    assert_eq!(rows("llm_request_duration_seconds_count"), 200);
    assert_eq!(rows("llm_ttft_seconds"), 200);
    assert_eq!(rows("llm_cost_usd_total"), 200);
    let kind = |t: &str| s.table_kind("default", t);
    assert_eq!(
        kind("llm_tokens_total"),
        Some(sonde_types::MetricKind::Counter)
    );
    assert_eq!(
        kind("llm_request_duration_seconds_bucket"),
        Some(sonde_types::MetricKind::Histogram)
    );
}
