//! Bearer tokens map to tenants; a wrong or missing token is refused; data lands in
//! the token's tenant whatever the payload says.

use prost::Message;
use sonde_proto::prometheus::{Label, Sample, TimeSeries};
use sonde_proto::v1::{FieldValues, MetricKind, Series, TableWrite, WriteRequest};
use sonde_storage::ScanRequest;
use tonic::Code;

use crate::harness::{TestServer, now_ms, reopen, rows};

fn request(table: &str, ts: i64) -> WriteRequest {
    WriteRequest {
        tables: vec![TableWrite {
            table: table.into(),
            kind: MetricKind::Gauge as i32,
            fields: vec![],
            series: vec![Series {
                labels: vec![sonde_proto::v1::Label {
                    name: "tenant".into(),
                    value: "someone-else".into(),
                }],
                timestamps_ms: vec![ts],
                fields: vec![FieldValues {
                    f64: vec![1.0],
                    i64: vec![],
                }],
            }],
        }],
        ..Default::default()
    }
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_pick_the_tenant_and_bad_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(
        dir.path(),
        &[
            "--auth-token",
            "acme-secret-1=acme",
            "--auth-token",
            "globex-secret=globex",
        ],
    );
    let mut client = server.client().await;
    let t0 = now_ms() - 60_000;
    client
        .write(with_token(request("g", t0), "acme-secret-1"))
        .await
        .unwrap();
    for bad in [
        tonic::Request::new(request("g", t0)),
        with_token(request("g", t0), "wrong-token"),
    ] {
        let err = client.write(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
    let rw = sonde_proto::prometheus::WriteRequest {
        timeseries: vec![TimeSeries {
            labels: vec![Label {
                name: "__name__".into(),
                value: "rw".into(),
            }],
            samples: vec![Sample {
                value: 2.0,
                timestamp: t0,
            }],
            ..Default::default()
        }],
        metadata: vec![],
    };
    let body = snap::raw::Encoder::new()
        .compress_vec(&rw.encode_to_vec())
        .unwrap();
    let ct = "application/x-protobuf";
    let (code, _) = server.http_auth("POST", "/api/v1/write", ct, &body, None);
    assert_eq!(code, 401);
    let (code, _) = server.http_auth("POST", "/api/v1/write", ct, &body, Some("nope-nope"));
    assert_eq!(code, 401);
    let (code, b) = server.http_auth("POST", "/api/v1/write", ct, &body, Some("globex-secret"));
    assert_eq!(code, 204, "{b}");
    assert_eq!(server.http("POST", "/api/v1/admin/flush").0, 401);
    server.stop();

    let s = reopen(dir.path());
    let rows = |tenant: &str, table: &str| rows(&s, tenant, table);
    assert_eq!(rows("acme", "g"), 1);
    assert_eq!(rows("globex", "rw"), 1);
    assert_eq!(rows("acme", "rw") + rows("globex", "g"), 0);
    assert_eq!(rows("default", "g") + rows("someone-else", "g"), 0);
}

/// Tokens and prices from a config file; an invalid file stops the start with an
/// error naming it.
#[tokio::test(flavor = "multi_thread")]
async fn config_file_sets_tokens_and_prices() {
    use sonde_proto::v1::LlmCall;
    use sonde_storage::series::Values;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sonde.toml");
    std::fs::write(
        &cfg,
        "[auth_tokens]\n\"file-token-1\" = \"acme\"\n\n[[pricing]]\nmodel = \"mystery-*\"\ninput = 1.0\noutput = 2.0\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start_with(&data, &["--config", cfg.to_str().unwrap()]);
    let mut client = server.client().await;
    let call = LlmCall {
        time_ms: now_ms() - 1000,
        provider: "lab".into(),
        model: "mystery-model".into(),
        input_tokens: 1000,
        output_tokens: 500,
        ..Default::default()
    };
    let req = WriteRequest {
        calls: vec![call],
        ..Default::default()
    };
    let err = client.write(req.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    client.write(with_token(req, "file-token-1")).await.unwrap();
    server.stop();
    let s = reopen(&data);
    let out = s
        .scan(
            "acme",
            &ScanRequest::new("llm_cost_usd_total", i64::MIN, i64::MAX),
        )
        .unwrap();
    let Values::F64(v) = &out.series[0].1.cols[0].as_ref().unwrap().values else {
        panic!()
    };
    assert_eq!(v, &vec![0.002], "(1000 × 1 + 500 × 2) / 1M");

    std::fs::write(&cfg, "no_such_key = 1\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sonde.toml") && stderr.contains("no_such_key"),
        "{stderr}"
    );
}
