//! sonde.v1 ingest: round trip, bad input, partial acceptance, shutdown durability.

use sonde_proto::v1::{
    FieldDef, FieldType, FieldValues, Label, MetricKind, Series, TableWrite, WriteRequest,
};
use sonde_storage::{ScanRequest, Storage, series::Values};
use tonic::Code;

use crate::harness::{TestServer, now_ms, reopen, rows};

fn label(n: &str, v: &str) -> Label {
    Label {
        name: n.into(),
        value: v.into(),
    }
}

fn counter(table: &str, model: &str, ts: Vec<i64>, v: Vec<f64>) -> TableWrite {
    TableWrite {
        table: table.into(),
        kind: MetricKind::Counter as i32,
        fields: vec![],
        series: vec![Series {
            labels: vec![label("model", model)],
            timestamps_ms: ts,
            fields: vec![FieldValues {
                f64: v,
                i64: vec![],
            }],
        }],
    }
}

fn f64s(s: &Storage, table: &str) -> Vec<(String, Vec<i64>, Vec<f64>)> {
    let out = s
        .scan("default", &ScanRequest::new(table, i64::MIN, i64::MAX))
        .unwrap();
    out.series
        .iter()
        .map(|(l, d)| {
            let Values::F64(v) = &d.cols[0].as_ref().unwrap().values else {
                panic!("f64 field")
            };
            (l.to_string(), d.ts.clone(), v.clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_round_trip_then_flush_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let mut client = server.client().await;
    let t0 = now_ms() - 60_000;
    let calls = TableWrite {
        table: "llm_calls".into(),
        kind: MetricKind::Event as i32,
        fields: vec![
            FieldDef {
                name: "input_tokens".into(),
                r#type: FieldType::I64 as i32,
            },
            FieldDef {
                name: "cost_usd".into(),
                r#type: FieldType::F64 as i32,
            },
        ],
        series: vec![Series {
            labels: vec![label("model", "gpt-4o"), label("user_id", "u1")],
            timestamps_ms: vec![t0, t0, t0 + 5],
            fields: vec![
                FieldValues {
                    f64: vec![],
                    i64: vec![120, 120, 4000],
                },
                FieldValues {
                    f64: vec![0.0012, 0.0012, 0.04],
                    i64: vec![],
                },
            ],
        }],
    };
    let resp = client
        .write(WriteRequest {
            tables: vec![
                counter(
                    "llm_tokens_total",
                    "gpt-4o",
                    vec![t0, t0 + 15_000],
                    vec![10.0, 25.0],
                ),
                calls,
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.accepted_samples, 2 + 3 * 2);
    assert!(resp.rejections.is_empty());
    let (code, body) = server.http("POST", "/api/v1/admin/flush");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"segments\":1"), "{body}");
    // After the flush, one more write goes to the WAL only.
    client
        .write(WriteRequest {
            tables: vec![counter(
                "llm_tokens_total",
                "gpt-4o",
                vec![t0 + 30_000],
                vec![40.0],
            )],
            ..Default::default()
        })
        .await
        .unwrap();
    let (_, metrics) = server.http("GET", "/metrics");
    assert!(
        metrics.contains("sonde_ingested_samples_total{protocol=\"sonde\"} 9"),
        "{metrics}"
    );
    server.stop();

    let s = reopen(dir.path());
    assert_eq!(
        f64s(&s, "llm_tokens_total"),
        vec![(
            "{model=\"gpt-4o\"}".to_string(),
            vec![t0, t0 + 15_000, t0 + 30_000],
            vec![10.0, 25.0, 40.0]
        )]
    );
    let calls = s
        .scan(
            "default",
            &ScanRequest::new("llm_calls", i64::MIN, i64::MAX),
        )
        .unwrap();
    assert_eq!(
        calls.stats.rows, 3,
        "event rows are all kept, duplicates included"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_rejected_with_the_limit_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let mut client = server.client().await;
    let t0 = now_ms() - 60_000;
    client
        .write(WriteRequest {
            tables: vec![counter("good", "m", vec![t0], vec![1.0])],
            ..Default::default()
        })
        .await
        .unwrap();

    let mut too_many = counter("good", "m", vec![t0], vec![1.0]);
    too_many.series[0].labels = (0..41).map(|i| label(&format!("l{i}"), "v")).collect();
    let cases: Vec<(TableWrite, &str)> = vec![
        (
            counter("bad-name", "m", vec![t0], vec![1.0]),
            "[a-zA-Z_:][a-zA-Z0-9_:]*",
        ),
        (too_many, "labels count: 41 exceeds the limit of 40"),
        (
            counter("good", "m", vec![now_ms() + 3_600_000], vec![1.0]),
            "max_future_ms",
        ),
        (
            counter("good", "m", vec![t0, t0 + 1], vec![1.0]),
            "has 1 values for 2 timestamps",
        ),
    ];
    for (table, want) in cases {
        let err = client
            .write(WriteRequest {
                tables: vec![table],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(want),
            "{want:?} not in {:?}",
            err.message()
        );
    }

    // Partial acceptance: the good table is stored, the bad one reported.
    let resp = client
        .write(WriteRequest {
            tables: vec![
                counter("good", "m", vec![t0 + 1000], vec![2.0]),
                counter("9bad", "m", vec![t0], vec![1.0]),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((resp.accepted_samples, resp.rejected_samples), (1, 1));
    assert_eq!(resp.rejections[0].table, "9bad");

    // A body over the 64 MiB limit is refused by the transport.
    let huge = counter("good", "m", vec![t0; 5_000_000], vec![1.0; 5_000_000]);
    let err = client
        .write(WriteRequest {
            tables: vec![huge],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{err:?}"
    );

    assert_eq!(server.http("GET", "/healthz").0, 200);
    let (_, metrics) = server.http("GET", "/metrics");
    assert!(
        metrics.contains("sonde_rejected_samples_total{protocol=\"sonde\",reason=\"invalid\"}"),
        "{metrics}"
    );
    server.stop();
    let s = reopen(dir.path());
    assert_eq!(
        f64s(&s, "good"),
        vec![(
            "{model=\"m\"}".to_string(),
            vec![t0, t0 + 1000],
            vec![1.0, 2.0]
        )]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_sigterm_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ms() - 600_000;
    for round in 0..3i64 {
        let server = TestServer::start(dir.path());
        let mut client = server.client().await;
        for i in 0..20 {
            let ts = t0 + (round * 20 + i) * 1000;
            client
                .write(WriteRequest {
                    tables: vec![counter("c", "m", vec![ts], vec![(round * 20 + i) as f64])],
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        server.stop();
    }
    let s = reopen(dir.path());
    let got = f64s(&s, "c");
    assert_eq!(got[0].1.len(), 60);
    assert_eq!(got[0].2, (0..60).map(|i| i as f64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn llm_calls_become_rows_and_metrics_with_computed_cost() {
    use sonde_proto::v1::LlmCall;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let mut client = server.client().await;
    let t0 = now_ms() - 60_000;
    let call =
        |model: &str, input: i64, cached: i64, output: i64, cost: Option<f64>, err: &str| LlmCall {
            time_ms: t0,
            provider: "openai".into(),
            model: model.into(),
            labels: vec![label("user_id", "u1"), label("app", "chat")],
            input_tokens: input,
            output_tokens: output,
            cached_input_tokens: cached,
            duration_seconds: 1.25,
            ttft_seconds: 0.2,
            error_type: err.into(),
            cost_usd: cost,
            ..Default::default()
        };
    let resp = client
        .write(WriteRequest {
            calls: vec![
                // gpt-4o: (600 uncached × 2.5 + 400 cached × 1.25 + 500 out × 10) / 1M = 0.007
                call("gpt-4o-2024-08-06", 1000, 400, 500, None, ""),
                call("gpt-4o-2024-08-06", 10, 0, 10, Some(0.5), ""),
                call("mystery-model", 10, 0, 0, None, "timeout"),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.rejections.is_empty(), "{:?}", resp.rejections);
    server.stop();

    let s = reopen(dir.path());
    let calls = s
        .scan(
            "default",
            &ScanRequest::new("llm_calls", i64::MIN, i64::MAX),
        )
        .unwrap();
    assert_eq!(calls.stats.rows, 3);
    let cost_col = calls
        .schema
        .fields
        .iter()
        .position(|f| f.name == "cost_usd")
        .unwrap();
    let mut costs: Vec<Option<f64>> = Vec::new();
    for (_, d) in &calls.series {
        match d.cols[cost_col].as_ref() {
            None => costs.extend((0..d.len()).map(|_| None)),
            Some(c) => {
                let Values::F64(v) = &c.values else { panic!() };
                costs.extend((0..d.len()).map(|i| c.is_valid(i).then_some(v[i])));
            }
        }
    }
    costs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(
        costs,
        vec![None, Some(0.007), Some(0.5)],
        "computed, client-sent, unknown"
    );

    let sum = |table: &str, filter: &dyn Fn(&sonde_types::Labels) -> bool| -> f64 {
        let out = s
            .scan("default", &ScanRequest::new(table, i64::MIN, i64::MAX))
            .unwrap();
        out.series
            .iter()
            .filter(|(l, _)| filter(l))
            .map(|(_, d)| match &d.cols[0].as_ref().unwrap().values {
                Values::F64(v) => v.iter().sum::<f64>(),
                Values::I64(v) => v.iter().sum::<i64>() as f64,
                other => panic!("a numeric field: {other:?}"),
            })
            .sum()
    };
    assert_eq!(
        sum("llm_tokens_total", &|l| l.get("token_type")
            == Some("input")),
        1020.0
    );
    assert_eq!(
        sum("llm_tokens_total", &|l| l.get("token_type")
            == Some("cached_input")),
        400.0
    );
    assert_eq!(
        sum("llm_requests_total", &|l| l.get("status") == Some("ok")),
        2.0
    );
    assert_eq!(
        sum("llm_requests_total", &|l| l.get("error_type")
            == Some("timeout")),
        1.0
    );
    assert!((sum("llm_cost_usd_total", &|_| true) - 0.507).abs() < 1e-12);
    let kind = s.tables("default")["llm_tokens_total"].kind;
    assert_eq!(kind, sonde_types::MetricKind::DeltaSum);
}

#[tokio::test(flavor = "multi_thread")]
async fn retried_write_with_the_same_idempotency_key_is_stored_once() {
    use sonde_proto::v1::LlmCall;
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ms() - 60_000;
    let req = |key: &str, ts: i64| WriteRequest {
        tables: vec![counter("events_total", "m", vec![ts], vec![1.0])],
        idempotency_key: key.into(),
        ..Default::default()
    };
    let call = |id: &str| LlmCall {
        time_ms: t0,
        call_id: id.into(),
        provider: "openai".into(),
        model: "gpt-4o".into(),
        input_tokens: 10,
        output_tokens: 5,
        ..Default::default()
    };
    {
        let server = TestServer::start(dir.path());
        let mut client = server.client().await;
        let first = client.write(req("batch-1", t0)).await.unwrap().into_inner();
        assert!(!first.duplicate && first.accepted_samples == 1);
        // The retry carries a different timestamp, so without the key it would be a
        // second row; with it, nothing is stored.
        let retry = client
            .write(req("batch-1", t0 + 1))
            .await
            .unwrap()
            .into_inner();
        assert!(retry.duplicate && retry.accepted_samples == 0, "{retry:?}");
        let calls = WriteRequest {
            calls: vec![call("c-1"), call("c-2"), call("c-1")],
            ..Default::default()
        };
        let r = client.write(calls).await.unwrap().into_inner();
        assert_eq!(r.duplicate_calls, 1, "c-1 twice in one request");
        server.stop();
    }
    // After a restart the keys are still known.
    let server = TestServer::start(dir.path());
    let mut client = server.client().await;
    let retry = client
        .write(req("batch-1", t0 + 2))
        .await
        .unwrap()
        .into_inner();
    assert!(retry.duplicate, "{retry:?}");
    let r = client
        .write(WriteRequest {
            calls: vec![call("c-2"), call("c-3")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.duplicate_calls, 1, "c-2 was stored before the restart");
    server.stop();

    let s = reopen(dir.path());
    let rows = |t: &str| rows(&s, "default", t);
    assert_eq!(rows("events_total"), 1);
    assert_eq!(rows("llm_calls"), 3, "c-1, c-2, c-3 once each");
}
