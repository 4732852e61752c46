//! sonde.v1 ingest: round trip, bad input, partial acceptance, shutdown durability.

use sonde_proto::v1::{
    FieldDef, FieldType, FieldValues, Label, MetricKind, Series, TableWrite, WriteRequest,
};
use sonde_storage::{Config, ScanRequest, Storage, series::Values};
use tonic::Code;

use crate::harness::TestServer;

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

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn reopen(dir: &std::path::Path) -> Storage {
    let mut c = Config::new(dir);
    c.background_flush = false;
    Storage::open(c).unwrap()
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
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((resp.accepted_samples, resp.rejected_samples), (1, 1));
    assert_eq!(resp.rejections[0].table, "9bad");

    // A body over the 64 MiB limit is refused by the transport.
    let huge = counter("good", "m", vec![t0; 5_000_000], vec![1.0; 5_000_000]);
    let err = client
        .write(WriteRequest { tables: vec![huge] })
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
