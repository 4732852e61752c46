//! OTLP metrics: every point type over gRPC (gzip), OTLP/HTTP in protobuf and JSON,
//! bad input with its documented errors, and the OpenTelemetry Python SDK exporting
//! GenAI histograms with cumulative and with delta temporality.

use std::io::Write;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary,
    SummaryDataPoint, exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    summary_data_point::ValueAtQuantile,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use sonde_storage::series::Values;
use sonde_storage::{ScanRequest, Storage};
use sonde_types::MetricKind;
use tonic::codec::CompressionEncoding;

use crate::harness::{TestServer, now_ms, reopen};

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "chatbot"), kv("deployment.env", "prod")],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "llm-sdk".into(),
                    version: "2.1".into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn number(t_ms: i64, v: f64, attrs: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        time_unix_nano: t_ms as u64 * 1_000_000,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    }
}

fn metric(name: &str, unit: &str, data: Data) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        description: format!("{name} help"),
        data: Some(data),
        ..Default::default()
    }
}

/// Labels as `k=v,…`, timestamps, values.
type Series = (String, Vec<i64>, Vec<f64>);

/// The kind and every series of a table.
fn read(s: &Storage, tenant: &str, table: &str) -> (MetricKind, Vec<Series>) {
    let out = s
        .scan(tenant, &ScanRequest::new(table, 0, i64::MAX))
        .unwrap();
    let series = out
        .series
        .iter()
        .map(|(l, d)| {
            let v = match &d.cols[0].as_ref().unwrap().values {
                Values::F64(v) => v.clone(),
                Values::I64(v) => v.iter().map(|&x| x as f64).collect(),
                other => panic!("a numeric field: {other:?}"),
            };
            let labels = l
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            (labels, d.ts.clone(), v)
        })
        .collect();
    (out.schema.kind, series)
}

fn find<'a>(
    series: &'a [(String, Vec<i64>, Vec<f64>)],
    needle: &str,
) -> &'a (String, Vec<i64>, Vec<f64>) {
    series
        .iter()
        .find(|(l, _, _)| l.contains(needle))
        .unwrap_or_else(|| panic!("no series with {needle} in {series:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn otlp_grpc_all_point_types() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let t = now_ms() - 60_000;
    let cumulative = AggregationTemporality::Cumulative as i32;
    let delta = AggregationTemporality::Delta as i32;
    let model = || {
        vec![
            kv("gen_ai.system", "openai"),
            kv("gen_ai.request.model", "gpt-4o"),
        ]
    };
    let too_many: Vec<KeyValue> = (0..41).map(|i| kv(&format!("a{i}"), "x")).collect();
    let req = request(vec![
        metric(
            "llm.queue.depth",
            "{request}",
            Data::Gauge(Gauge {
                data_points: vec![number(t, 3.0, vec![]), number(t + 10_000, 5.0, vec![])],
            }),
        ),
        metric(
            "llm.requests",
            "{request}",
            Data::Sum(Sum {
                data_points: vec![
                    number(t, 10.0, model()),
                    number(t + 10_000, 12.0, model()),
                    number(t, 1.0, too_many),
                ],
                aggregation_temporality: cumulative,
                is_monotonic: true,
            }),
        ),
        metric(
            "llm.cost",
            "USD",
            Data::Sum(Sum {
                data_points: vec![number(t, 0.25, model())],
                aggregation_temporality: delta,
                is_monotonic: true,
            }),
        ),
        metric(
            "gen_ai.client.operation.duration",
            "s",
            Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes: model(),
                    time_unix_nano: t as u64 * 1_000_000,
                    count: 4,
                    sum: Some(3.5),
                    bucket_counts: vec![1, 2, 1],
                    explicit_bounds: vec![0.5, 1.0],
                    ..Default::default()
                }],
                aggregation_temporality: cumulative,
            }),
        ),
        metric(
            "llm.latency",
            "ms",
            Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    time_unix_nano: t as u64 * 1_000_000,
                    count: 6,
                    sum: Some(40.0),
                    scale: 0,
                    zero_count: 1,
                    // Buckets (2,4] and (4,8] hold 2 and 3.
                    positive: Some(Buckets {
                        offset: 1,
                        bucket_counts: vec![2, 3],
                    }),
                    ..Default::default()
                }],
                aggregation_temporality: cumulative,
            }),
        ),
        metric(
            "rpc.duration",
            "s",
            Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    time_unix_nano: t as u64 * 1_000_000,
                    count: 10,
                    sum: 2.5,
                    quantile_values: vec![
                        ValueAtQuantile {
                            quantile: 0.5,
                            value: 0.2,
                        },
                        ValueAtQuantile {
                            quantile: 0.99,
                            value: 0.9,
                        },
                    ],
                    ..Default::default()
                }],
            }),
        ),
    ]);
    let mut client = MetricsServiceClient::connect(format!("http://{}", server.grpc))
        .await
        .unwrap()
        .send_compressed(CompressionEncoding::Gzip);
    let resp = client.export(req).await.unwrap().into_inner();
    let partial = resp.partial_success.expect("one point was rejected");
    assert_eq!(partial.rejected_data_points, 1);
    assert!(
        partial.error_message.contains("labels count") && partial.error_message.contains("40"),
        "{}",
        partial.error_message
    );

    // A metric whose temporality contradicts the stored table: every point
    // rejected → InvalidArgument naming the conflict; nothing stored is harmed.
    let conflict = request(vec![metric(
        "llm.requests",
        "{request}",
        Data::Sum(Sum {
            data_points: vec![number(t + 20_000, 1.0, model())],
            aggregation_temporality: delta,
            is_monotonic: true,
        }),
    )]);
    let err = client.export(conflict).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("counter"), "{}", err.message());

    // Metadata keeps the OpenTelemetry name.
    let (code, body) = server.http("GET", "/api/v1/metadata");
    assert_eq!(code, 200);
    let meta: serde_json::Value = serde_json::from_str(&body).unwrap();
    let d = &meta["data"]["gen_ai_client_operation_duration_seconds"][0];
    assert_eq!(d["otel_name"], "gen_ai.client.operation.duration");
    assert_eq!(d["type"], "histogram");
    assert_eq!(d["unit"], "s");
    assert_eq!(meta["data"]["llm_requests_total"][0]["type"], "counter");
    server.stop();

    let s = reopen(dir.path());
    let (kind, g) = read(&s, "default", "llm_queue_depth");
    assert_eq!(kind, MetricKind::Gauge);
    assert_eq!(g.len(), 1);
    let labels = &g[0].0;
    for want in [
        "deployment_env=prod",
        "job=chatbot",
        "otel_scope_name=llm-sdk",
        "otel_scope_version=2.1",
        "service_name=chatbot",
    ] {
        assert!(labels.contains(want), "{want} missing in {labels}");
    }
    assert_eq!(g[0].2, vec![3.0, 5.0]);

    let (kind, c) = read(&s, "default", "llm_requests_total");
    assert_eq!(kind, MetricKind::Counter);
    assert_eq!(c.len(), 1, "the 41-label point was not stored");
    let (labels, ts, v) = &c[0];
    assert!(labels.contains("gen_ai_provider_name=openai"), "{labels}");
    assert!(!labels.contains("gen_ai_system"), "{labels}");
    assert_eq!(ts, &vec![t, t + 10_000]);
    assert_eq!(v, &vec![10.0, 12.0]);

    let (kind, cost) = read(&s, "default", "llm_cost_USD_total");
    assert_eq!(kind, MetricKind::DeltaSum);
    assert_eq!(cost[0].2, vec![0.25]);

    let (kind, b) = read(
        &s,
        "default",
        "gen_ai_client_operation_duration_seconds_bucket",
    );
    assert_eq!(kind, MetricKind::Histogram);
    assert_eq!(find(&b, "le=0.5").2, vec![1.0]);
    assert_eq!(find(&b, "le=1,").2, vec![3.0]);
    assert_eq!(find(&b, "le=+Inf").2, vec![4.0]);
    let (_, sum) = read(
        &s,
        "default",
        "gen_ai_client_operation_duration_seconds_sum",
    );
    assert_eq!(sum[0].2, vec![3.5]);
    let (_, count) = read(
        &s,
        "default",
        "gen_ai_client_operation_duration_seconds_count",
    );
    assert_eq!(count[0].2, vec![4.0]);

    let (_, e) = read(&s, "default", "llm_latency_milliseconds_bucket");
    assert_eq!(find(&e, "le=0,").2, vec![1.0], "zero bucket");
    assert_eq!(find(&e, "le=4,").2, vec![3.0]);
    assert_eq!(find(&e, "le=8,").2, vec![6.0]);
    assert_eq!(find(&e, "le=+Inf").2, vec![6.0]);

    let (kind, q) = read(&s, "default", "rpc_duration_seconds");
    assert_eq!(kind, MetricKind::Gauge);
    assert_eq!(find(&q, "quantile=0.99").2, vec![0.9]);
    let (_, qc) = read(&s, "default", "rpc_duration_seconds_count");
    assert_eq!(qc[0].2, vec![10.0]);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

const TOKEN: &str = "otlp-token-1";

#[test]
fn otlp_http_encodings_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), &["--auth-token", &format!("{TOKEN}=acme")]);
    let bearer = format!("Bearer {TOKEN}");
    let post = |ctype: &str, encoding: Option<&str>, body: &[u8], auth: &str| {
        let mut h = vec![("Content-Type", ctype), ("Authorization", auth)];
        if let Some(e) = encoding {
            h.push(("Content-Encoding", e));
        }
        server.request("POST", "/v1/metrics", &h, body)
    };
    let t = now_ms() - 30_000;
    let gauge = |name: &str, ts: i64, v: f64| {
        request(vec![metric(
            name,
            "",
            Data::Gauge(Gauge {
                data_points: vec![number(ts, v, vec![kv("model", "gpt-4o")])],
            }),
        )])
    };

    // Protobuf, gzip-compressed.
    let (code, body) = post(
        "application/x-protobuf",
        Some("gzip"),
        &gzip(&gauge("gpu.util", t, 0.5).encode_to_vec()),
        &bearer,
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    // JSON (OTLP/JSON: 64-bit integers as strings).
    let json = format!(
        r#"{{"resourceMetrics":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"web"}}}}]}},
        "scopeMetrics":[{{"metrics":[{{"name":"gpu.util","gauge":{{"dataPoints":[
        {{"timeUnixNano":"{}","asDouble":0.75,"attributes":[{{"key":"model","value":{{"stringValue":"gpt-4o"}}}}]}}]}}}}]}}]}}]}}"#,
        (t + 1000) * 1_000_000
    );
    let (code, body) = post("application/json", None, json.as_bytes(), &bearer);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));

    // Bad input: each with its documented status, the server keeps serving.
    let (code, _) = post("application/x-protobuf", None, b"\xff\xff\xff", &bearer);
    assert_eq!(code, 400, "malformed protobuf");
    let (code, body) = post("application/x-protobuf", Some("gzip"), b"not gzip", &bearer);
    assert_eq!(code, 400, "bad gzip");
    let status = RpcStatusProbe::decode(body.as_slice()).unwrap();
    assert!(status.message.contains("gzip"), "{}", status.message);
    let (code, _) = post("text/plain", None, b"x", &bearer);
    assert_eq!(code, 415);
    let future = gauge("gpu.util", now_ms() + 3_600_000, 1.0);
    let (code, body) = post(
        "application/x-protobuf",
        None,
        &future.encode_to_vec(),
        &bearer,
    );
    assert_eq!(code, 400, "a point an hour in the future");
    let status = RpcStatusProbe::decode(body.as_slice()).unwrap();
    assert!(
        status.message.contains("in the future"),
        "{}",
        status.message
    );
    let bad_name = gauge("...", t, 1.0);
    let (code, _) = post(
        "application/x-protobuf",
        None,
        &bad_name.encode_to_vec(),
        &bearer,
    );
    assert_eq!(code, 400, "a name with nothing usable");
    let (code, _) = post(
        "application/x-protobuf",
        None,
        &gauge("gpu.util", t, 1.0).encode_to_vec(),
        "Bearer wrong-token",
    );
    assert_eq!(code, 401);
    let big = vec![0u8; 65 << 20];
    let (code, _) = post("application/x-protobuf", None, &big, &bearer);
    assert_eq!(code, 413);

    let (code, _) = server.http_auth(
        "POST",
        "/api/v1/admin/flush",
        "text/plain",
        b"",
        Some(TOKEN),
    );
    assert_eq!(code, 200);
    server.stop();
    let s = reopen(dir.path());
    let (_, g) = read(&s, "acme", "gpu_util");
    assert_eq!(g.len(), 2, "two resources: {g:?}");
    let all: Vec<f64> = g.iter().flat_map(|x| x.2.clone()).collect();
    assert!(all.contains(&0.5) && all.contains(&0.75), "{all:?}");
    assert!(
        s.tables("default").is_empty(),
        "the tenant comes from the token"
    );
}

/// `google.rpc.Status` as the error body of OTLP/HTTP.
#[derive(Clone, PartialEq, Message)]
struct RpcStatusProbe {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// The OpenTelemetry Python SDK (PyPI, installed by .ci/run) exports the GenAI
/// histograms twice; tenant `cumul` gets cumulative temporality, `delta` delta.
#[test]
fn python_sdk_genai_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(
        dir.path(),
        &[
            "--auth-token",
            "token-cumulative=cumul",
            "--auth-token",
            "token-delta=delta",
        ],
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/otel_genai.py");
    for (token, temporality) in [("token-cumulative", "cumulative"), ("token-delta", "delta")] {
        let out = std::process::Command::new("python3")
            .args([script, &server.grpc, token, temporality])
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("exported"),
            "{temporality}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    server.stop();

    let s = reopen(dir.path());
    // Inputs: 100 tokens in the first export, 300 in the second.
    for (tenant, kind, le256, le1024, sums, counts) in [
        (
            "cumul",
            MetricKind::Histogram,
            vec![1.0, 1.0],
            vec![1.0, 2.0],
            vec![100.0, 400.0],
            vec![1.0, 2.0],
        ),
        (
            "delta",
            MetricKind::DeltaSum,
            vec![1.0, 0.0],
            vec![1.0, 1.0],
            vec![100.0, 300.0],
            vec![1.0, 1.0],
        ),
    ] {
        let (k, b) = read(&s, tenant, "gen_ai_client_token_usage_bucket");
        assert_eq!(k, kind, "{tenant}");
        let input = |le: &str| {
            b.iter()
                .find(|(l, _, _)| {
                    l.contains("gen_ai_token_type=input") && l.contains(&format!("le={le},"))
                })
                .unwrap_or_else(|| panic!("{tenant}: no input le={le} in {b:?}"))
        };
        let (labels, ts, v) = input("256");
        for want in [
            "gen_ai_provider_name=openai",
            "gen_ai_request_model=gpt-4o",
            "gen_ai_operation_name=chat",
            "job=sonde-e2e",
            "otel_scope_name=genai-test",
        ] {
            assert!(
                labels.contains(want),
                "{tenant}: {want} missing in {labels}"
            );
        }
        // Shutdown exports once more: cumulative repeats the totals, delta has
        // nothing new to send.
        let exports = if tenant == "cumul" { 3 } else { 2 };
        assert_eq!(ts.len(), exports, "{tenant}: exports");
        let first2 = |v: &[f64]| v[..2].to_vec();
        assert_eq!(first2(v), le256, "{tenant} le=256");
        assert_eq!(first2(&input("1024").2), le1024, "{tenant} le=1024");
        assert_eq!(first2(&input("+Inf").2), counts, "{tenant} le=+Inf");
        let (_, sum) = read(&s, tenant, "gen_ai_client_token_usage_sum");
        assert_eq!(
            first2(&find(&sum, "gen_ai_token_type=input").2),
            sums,
            "{tenant} sum"
        );
        let (_, count) = read(&s, tenant, "gen_ai_client_token_usage_count");
        assert_eq!(
            first2(&find(&count, "gen_ai_token_type=output").2),
            counts,
            "{tenant} count"
        );
        let (_, d) = read(
            &s,
            tenant,
            "gen_ai_client_operation_duration_seconds_bucket",
        );
        assert_eq!(find(&d, "le=0.64,").2[0], 1.0, "{tenant}: 0.5 s ≤ 0.64");
    }
}
