//! Prometheus remote_write: a hand-built request, bad input per the spec's status
//! codes, and a real Prometheus scraping Sonde and remote-writing to it.

use std::time::{Duration, Instant};

use sonde_proto::prometheus::WriteRequest;
use sonde_storage::ScanRequest;

use crate::harness::{TestServer, now_ms, reopen, rw_body, rw_series as series};

fn encode(req: &WriteRequest) -> Vec<u8> {
    rw_body(req)
}

const CT: &str = "application/x-protobuf";

#[test]
fn remote_write_round_trip_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let t0 = now_ms() - 60_000;
    let req = WriteRequest {
        timeseries: vec![
            series(
                "llm_tokens_total",
                &[("model", "gpt-4o"), ("token_type", "input")],
                &[(t0, 100.0), (t0 + 15_000, 250.0)],
            ),
            series("llm_ttft_seconds", &[("model", "gpt-4o")], &[(t0, 0.3125)]),
        ],
        metadata: vec![],
    };
    let (code, body) = server.http_body("POST", "/api/v1/write", CT, &encode(&req));
    assert_eq!(code, 204, "{body}");

    // Bad snappy, bad protobuf: 400, not retried by senders.
    let (code, body) = server.http_body(
        "POST",
        "/api/v1/write",
        CT,
        b"\xff\xff\xff\xff\xffnot snappy",
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("snappy"), "{body}");
    let garbage = snap::raw::Encoder::new()
        .compress_vec(b"\x0a\xff\xff\xff")
        .unwrap();
    let (code, body) = server.http_body("POST", "/api/v1/write", CT, &garbage);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("protobuf"), "{body}");
    // Invalid metric name next to a valid series: 400 naming the rule; the valid one is stored.
    let mixed = WriteRequest {
        timeseries: vec![
            series("bad-name", &[], &[(t0, 1.0)]),
            series(
                "llm_ttft_seconds",
                &[("model", "gpt-4o")],
                &[(t0 + 15_000, 0.5)],
            ),
        ],
        metadata: vec![],
    };
    let (code, body) = server.http_body("POST", "/api/v1/write", CT, &encode(&mixed));
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("[a-zA-Z_:][a-zA-Z0-9_:]*") && body.contains("(1 stored)"),
        "{body}"
    );
    // Oversized body: 413.
    let big = vec![0u8; 33 << 20];
    let (code, _) = server.http_body("POST", "/api/v1/write", CT, &big);
    assert_eq!(code, 413);

    assert_eq!(server.http("GET", "/healthz").0, 200);
    server.stop();
    let s = reopen(dir.path());
    let out = s
        .scan(
            "default",
            &ScanRequest::new("llm_tokens_total", 0, i64::MAX),
        )
        .unwrap();
    assert_eq!(
        out.schema.kind,
        sonde_types::MetricKind::Counter,
        "_total is a counter"
    );
    assert_eq!(out.series[0].1.ts, vec![t0, t0 + 15_000]);
    let ttft = s
        .scan(
            "default",
            &ScanRequest::new("llm_ttft_seconds", 0, i64::MAX),
        )
        .unwrap();
    assert_eq!(ttft.series[0].1.ts, vec![t0, t0 + 15_000]);
    assert_eq!(ttft.schema.kind, sonde_types::MetricKind::Gauge);
}

/// A real Prometheus (Debian package, installed by .ci/run) scrapes Sonde's own
/// /metrics and remote-writes the samples to Sonde.
#[test]
fn real_prometheus_remote_writes_to_sonde() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let prom_dir = tempfile::tempdir().unwrap();
    let config = prom_dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sonde\n    static_configs:\n      - targets: ['{http}']\nremote_write:\n  - url: http://{http}/api/v1/write\n    queue_config:\n      batch_send_deadline: 1s\n",
            http = server.http
        ),
    )
    .unwrap();
    let mut prom = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.path().join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus runs (.ci/run installs the Debian package)");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut arrived = false;
    while Instant::now() < deadline {
        let (_, metrics) = server.http("GET", "/metrics");
        if metrics.contains("sonde_ingested_samples_total{protocol=\"remote_write\"}") {
            arrived = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = prom.kill();
    let _ = prom.wait();
    assert!(
        arrived,
        "no remote_write samples from Prometheus within 60 s"
    );
    server.stop();
    let s = reopen(dir.path());
    let up = s
        .scan("default", &ScanRequest::new("up", 0, i64::MAX))
        .unwrap();
    assert_eq!(up.series.len(), 1);
    assert_eq!(up.series[0].0.get("job"), Some("sonde"));
    assert!(
        s.tables("default").contains_key("sonde_head_bytes"),
        "Sonde's own gauge came back through Prometheus"
    );
}
