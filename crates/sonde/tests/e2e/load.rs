//! `sonde load` against the real server over each protocol; every sample it reports
//! as sent is stored.

use std::process::Command;

use sonde_storage::{Config, ScanRequest, Storage};

use crate::harness::TestServer;

fn load(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sonde"))
        .arg("load")
        .arg("--quiet")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sonde load failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn load_over_both_protocols_and_calls() {
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
    let out = load(&["--target", &grpc, "--calls", "500", "--batch", "100"]);
    assert!(out.contains("samples=3500 "), "{out}");
    let (_, metrics) = server.http("GET", "/metrics");
    assert!(
        metrics.contains("sonde_ingested_samples_total{protocol=\"sonde\"} 6500"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sonde_ingested_samples_total{protocol=\"remote_write\"} 3000"),
        "{metrics}"
    );
    server.stop();

    let mut c = Config::new(dir.path());
    c.background_flush = false;
    let s = Storage::open(c).unwrap();
    let rows = |t: &str| {
        s.scan("default", &ScanRequest::new(t, i64::MIN, i64::MAX))
            .unwrap()
            .stats
            .rows
    };
    // Both loads wrote the same dataset (same series, same timestamps within a few
    // ms of each other): each series holds its 10 samples, or up to 20 when the two
    // runs' timestamps differ.
    let tokens = rows("llm_tokens_total");
    assert!(
        tokens == 400 || tokens == 800 || (400..=800).contains(&tokens),
        "{tokens}"
    );
    assert_eq!(rows("llm_calls"), 500);
}
