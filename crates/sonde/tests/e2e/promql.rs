//! PromQL differential test: the same generated data is remote-written to Sonde and
//! to a real Prometheus (Debian package, started here on loopback with the
//! remote-write receiver on), then a corpus of queries — every function, aggregation
//! and operator Sonde implements, instant and range — runs on both and the answers
//! must agree within 1e-9 relative. Also: Prometheus-shaped errors for bad queries.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message;
use serde_json::Value;
use sonde_proto::prometheus::{TimeSeries, WriteRequest};

use crate::harness::{TestServer, free_port, http_request, now_ms};

/// Prometheus' bit pattern of a staleness marker.
const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// A real Prometheus with the remote-write receiver on, killed on drop.
pub struct Prometheus {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start() -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            "global:\n  scrape_interval: 1m\n  evaluation_interval: 1m\n",
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--web.enable-remote-write-receiver")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs (.ci/run installs the Debian package)");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = std::net::TcpStream::connect(&addr).is_ok()
                && http_request(&addr, "GET", "/-/ready", &[], b"").0 == 200;
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "prometheus not ready in 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn ts(name: &str, labels: &[(&str, &str)], samples: Vec<(i64, f64)>) -> TimeSeries {
    crate::harness::rw_series(name, labels, &samples)
}

/// Scrape times of one series: every 15 s from `start` with a per-series phase and
/// jitter, so sample times never line up with evaluation steps.
fn times(start: i64, end: i64, phase: i64, rng: &mut Rng) -> Vec<i64> {
    let mut out = Vec::new();
    let mut t = start + phase;
    while t <= end {
        out.push(t + (rng.next() * 400.0) as i64);
        t += 15_000;
    }
    out
}

/// The test dataset: counters (some reset), gauges, a classic histogram, an info
/// metric for joins, a series that ends, and one that ends with a staleness marker.
pub fn dataset(start: i64, end: i64) -> Vec<TimeSeries> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::new();
    let instances = ["a", "b", "c"];
    for (ii, inst) in instances.iter().enumerate() {
        for (mi, method) in ["get", "post"].iter().enumerate() {
            for (ci, code) in ["200", "500"].iter().enumerate() {
                let phase = (ii * 4 + mi * 2 + ci) as i64 * 1_100;
                let mut v = (rng.next() * 100.0).floor();
                let reset_at = if ii == 1 && ci == 0 { Some(120) } else { None };
                let samples = times(start, end, phase, &mut rng)
                    .into_iter()
                    .enumerate()
                    .map(|(k, t)| {
                        if Some(k) == reset_at {
                            v = (rng.next() * 3.0).floor();
                        } else {
                            v += (rng.next() * if ci == 0 { 20.0 } else { 3.0 }).floor();
                        }
                        (t, v)
                    })
                    .collect();
                out.push(ts(
                    "http_requests_total",
                    &[
                        ("instance", inst),
                        ("method", method),
                        ("code", code),
                        ("job", "api"),
                    ],
                    samples,
                ));
            }
        }
        out.push(ts(
            "info_metric",
            &[("instance", inst), ("version", &format!("v1.{ii}"))],
            times(start, end, 500, &mut rng)
                .into_iter()
                .map(|t| (t, 1.0))
                .collect(),
        ));
        let mut up = 1.0;
        let samples = times(start, end, 700, &mut rng)
            .into_iter()
            .map(|t| {
                if rng.next() < 0.08 {
                    up = 1.0 - up;
                }
                (t, up)
            })
            .collect();
        out.push(ts("job_up", &[("instance", inst)], samples));
        for zone in ["north", "south"] {
            let mut temp = rng.next() * 30.0 - 5.0;
            let samples = times(start, end, 300 + ii as i64 * 900, &mut rng)
                .into_iter()
                .map(|t| {
                    temp += rng.next() * 4.0 - 2.0;
                    (t, (temp * 1000.0).round() / 1000.0)
                })
                .collect();
            out.push(ts(
                "node_temp_celsius",
                &[("instance", inst), ("zone", zone)],
                samples,
            ));
        }
    }
    let bounds = ["0.1", "0.5", "1", "2.5", "5", "+Inf"];
    let limits = [0.1, 0.5, 1.0, 2.5, 5.0, f64::INFINITY];
    for model in ["gpt-4o", "claude"] {
        let t = times(start, end, 2_000, &mut rng);
        let mut counts = [0.0f64; 6];
        let mut sum = 0.0;
        let mut per_bucket: Vec<Vec<(i64, f64)>> = vec![Vec::new(); 6];
        let mut sums = Vec::new();
        let mut cnts = Vec::new();
        for &x in &t {
            for _ in 0..(rng.next() * 8.0) as usize {
                let d = rng.next() * rng.next() * 7.0;
                sum += d;
                for (b, lim) in limits.iter().enumerate() {
                    if d <= *lim {
                        counts[b] += 1.0;
                    }
                }
            }
            for b in 0..6 {
                per_bucket[b].push((x, counts[b]));
            }
            sums.push((x, sum));
            cnts.push((x, counts[5]));
        }
        for (b, le) in bounds.iter().enumerate() {
            out.push(ts(
                "llm_request_duration_seconds_bucket",
                &[("model", model), ("le", le)],
                per_bucket[b].clone(),
            ));
        }
        out.push(ts(
            "llm_request_duration_seconds_sum",
            &[("model", model)],
            sums,
        ));
        out.push(ts(
            "llm_request_duration_seconds_count",
            &[("model", model)],
            cnts,
        ));
    }
    let half = start + (end - start) / 2;
    out.push(ts(
        "ephemeral_gauge",
        &[("id", "x")],
        times(start, half, 100, &mut rng)
            .into_iter()
            .map(|t| (t, 42.0))
            .collect(),
    ));
    let mut stale: Vec<(i64, f64)> = times(start, half, 200, &mut rng)
        .into_iter()
        .map(|t| (t, 7.0))
        .collect();
    let last = stale.last().unwrap().0;
    stale.push((last + 15_000, f64::from_bits(STALE_NAN)));
    out.push(ts("stale_gauge", &[("id", "y")], stale));
    out
}

fn write(addr: &str, series: &[TimeSeries]) {
    let req = WriteRequest {
        timeseries: series.to_vec(),
        ..Default::default()
    };
    let body = snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap();
    let (status, text) = http_request(
        addr,
        "POST",
        "/api/v1/write",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ],
        &body,
    );
    assert!(
        status == 204 || status == 200,
        "remote write to {addr}: {status} {}",
        String::from_utf8_lossy(&text)
    );
}

pub fn get_json(addr: &str, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let (status, body) = http_request(addr, "GET", &format!("{path}?{q}"), &[], b"");
    let v = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{addr}{path} {params:?}: {e}: {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, v)
}

fn close(a: f64, b: f64) -> bool {
    if a == b || (a.is_nan() && b.is_nan()) {
        return true;
    }
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

fn num(v: &Value) -> f64 {
    match v.as_str().unwrap() {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        s => s.parse().unwrap(),
    }
}

fn time_ms(v: &Value) -> i64 {
    (v.as_f64().unwrap() * 1000.0).round() as i64
}

/// Sample lists keyed by label set, or the ordered list for sorted results.
/// Series keyed by their label set, with (time ms, value) points.
type Keyed = Vec<(String, Vec<(i64, f64)>)>;

fn samples(data: &Value) -> (String, Keyed) {
    let kind = data["resultType"].as_str().unwrap().to_string();
    let pts = |v: &Value| (time_ms(&v[0]), num(&v[1]));
    let out = match kind.as_str() {
        "scalar" => vec![(String::new(), vec![pts(&data["result"])])],
        "vector" | "matrix" => data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let metric: BTreeMap<String, String> =
                    serde_json::from_value(s["metric"].clone()).unwrap();
                let key = format!("{metric:?}");
                let values = if kind == "vector" {
                    vec![pts(&s["value"])]
                } else {
                    s["values"].as_array().unwrap().iter().map(pts).collect()
                };
                (key, values)
            })
            .collect(),
        other => panic!("unexpected result type {other}"),
    };
    (kind, out)
}

fn compare(query: &str, sonde: &Value, prom: &Value, ordered: bool) -> Result<(), String> {
    let (k1, mut a) = samples(&sonde["data"]);
    let (k2, mut b) = samples(&prom["data"]);
    if k1 != k2 {
        return Err(format!("{query}: result type {k1} vs Prometheus {k2}"));
    }
    if !ordered {
        a.sort_by(|x, y| x.0.cmp(&y.0));
        b.sort_by(|x, y| x.0.cmp(&y.0));
    }
    let keys = |v: &Keyed| v.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    if keys(&a) != keys(&b) {
        return Err(format!(
            "{query}: series differ\n  sonde:      {:?}\n  prometheus: {:?}",
            keys(&a),
            keys(&b)
        ));
    }
    for ((key, x), (_, y)) in a.iter().zip(&b) {
        if x.len() != y.len() {
            return Err(format!(
                "{query}: {key}: {} points vs Prometheus {}\n  sonde: {x:?}\n  prom:  {y:?}",
                x.len(),
                y.len()
            ));
        }
        for (p, q) in x.iter().zip(y) {
            if p.0 != q.0 || !close(p.1, q.1) {
                return Err(format!("{query}: {key}: sonde {p:?} vs Prometheus {q:?}"));
            }
        }
    }
    Ok(())
}

/// The corpus: every function, aggregation and operator of the PromQL issue.
/// `@ T` is replaced by a time inside the data.
const QUERIES: &[&str] = &[
    // selectors
    "http_requests_total",
    "http_requests_total{method=\"get\"}",
    "http_requests_total{code!=\"200\"}",
    "http_requests_total{instance=~\"a|b\"}",
    "http_requests_total{instance!~\"a.*\",method=\"post\"}",
    "{__name__=~\"node_.*\"}",
    "{__name__=~\"job_up|info_metric\", instance=\"b\"}",
    "http_requests_total offset 5m",
    "node_temp_celsius @ T",
    "node_temp_celsius @ end()",
    "rate(http_requests_total[5m] @ start())",
    "ephemeral_gauge",
    "stale_gauge",
    // range functions
    "rate(http_requests_total[5m])",
    "rate(http_requests_total[1m])",
    "irate(http_requests_total[1m])",
    "increase(http_requests_total[10m])",
    "increase(http_requests_total[5m] offset 10m)",
    "delta(node_temp_celsius[5m])",
    "idelta(node_temp_celsius[2m])",
    "resets(http_requests_total[30m])",
    "changes(job_up[30m])",
    "deriv(node_temp_celsius[10m])",
    "predict_linear(node_temp_celsius[10m], 600)",
    "avg_over_time(node_temp_celsius[5m])",
    "sum_over_time(node_temp_celsius[5m])",
    "min_over_time(node_temp_celsius[5m])",
    "max_over_time(node_temp_celsius[5m])",
    "count_over_time(http_requests_total[5m])",
    "last_over_time(node_temp_celsius[5m])",
    "quantile_over_time(0.9, node_temp_celsius[10m])",
    "stddev_over_time(node_temp_celsius[10m])",
    "stdvar_over_time(node_temp_celsius[10m])",
    "present_over_time(ephemeral_gauge[5m])",
    "absent_over_time(ephemeral_gauge{id=\"x\"}[5m])",
    "absent_over_time(nonexistent{job=\"x\"}[5m])",
    // histograms
    "histogram_quantile(0.9, rate(llm_request_duration_seconds_bucket[5m]))",
    "histogram_quantile(0.5, sum by (le) (rate(llm_request_duration_seconds_bucket[10m])))",
    "histogram_quantile(0.99, sum by (le, model) (increase(llm_request_duration_seconds_bucket[10m])))",
    "rate(llm_request_duration_seconds_sum[5m]) / rate(llm_request_duration_seconds_count[5m])",
    // math
    "abs(node_temp_celsius)",
    "ceil(node_temp_celsius)",
    "floor(node_temp_celsius)",
    "round(node_temp_celsius)",
    "round(node_temp_celsius, 0.5)",
    "clamp(node_temp_celsius, -2, 20)",
    "clamp_min(node_temp_celsius, 0)",
    "clamp_max(node_temp_celsius, 10)",
    "sqrt(abs(node_temp_celsius)) + ln(job_up + 1)",
    // labels and absent
    "label_replace(http_requests_total, \"host\", \"$1-x\", \"instance\", \"(.*)\")",
    "label_replace(node_temp_celsius, \"zone\", \"\", \"zone\", \"n.*\")",
    "label_join(http_requests_total, \"key\", \":\", \"instance\", \"method\", \"code\")",
    "absent(nonexistent{job=\"x\"})",
    "absent(http_requests_total)",
    // time
    "time()",
    "timestamp(node_temp_celsius)",
    "vector(1)",
    "vector(time())",
    "scalar(sum(job_up))",
    "scalar(job_up)",
    "hour() + minute(vector(time()))",
    "day_of_week(timestamp(job_up))",
    // sort
    "sort(node_temp_celsius)",
    "sort_desc(sum by (instance) (rate(http_requests_total[5m])))",
    // aggregations
    "sum(rate(http_requests_total[5m]))",
    "sum by (instance) (rate(http_requests_total[5m]))",
    "sum without (method, code) (rate(http_requests_total[5m]))",
    "avg by (zone) (node_temp_celsius)",
    "min by (zone) (node_temp_celsius)",
    "max(node_temp_celsius)",
    "count by (code) (http_requests_total)",
    "stddev(node_temp_celsius)",
    "stdvar by (zone) (node_temp_celsius)",
    "topk(3, rate(http_requests_total[5m]))",
    "bottomk(2, node_temp_celsius)",
    "topk by (zone) (1, node_temp_celsius)",
    "quantile(0.75, node_temp_celsius)",
    "quantile by (instance) (0.3, rate(http_requests_total[5m]))",
    "count_values(\"value\", job_up)",
    "count_values by (instance) (\"v\", ceil(node_temp_celsius / 10))",
    "group by (instance) (http_requests_total)",
    "max by (zone) (max_over_time(node_temp_celsius[5m]))",
    "sum by (__name__, zone) (node_temp_celsius)",
    "count without (instance) (last_over_time(node_temp_celsius[5m]))",
    "avg without (instance) (rate(http_requests_total[5m] offset 5m))",
    "stddev by (instance) (delta(node_temp_celsius[5m]))",
    "sum(rate({__name__=~\"http_requests_total|job_up\"}[5m]))",
    // binary operators and vector matching
    "http_requests_total{code=\"500\"} / ignoring(code) http_requests_total{code=\"200\"}",
    "sum by (instance, method) (rate(http_requests_total{code=\"500\"}[5m])) / on(instance, method) sum by (instance, method) (rate(http_requests_total[5m]))",
    "rate(http_requests_total[5m]) * on(instance) group_left(version) info_metric",
    "info_metric * on(instance) group_right(version) rate(http_requests_total[5m])",
    "node_temp_celsius > 10",
    "node_temp_celsius > bool 10",
    "10 < node_temp_celsius",
    "node_temp_celsius <= on(instance, zone) node_temp_celsius offset 1m",
    "node_temp_celsius == bool node_temp_celsius offset 1m",
    "http_requests_total and http_requests_total{method=\"get\"}",
    "http_requests_total{method=\"get\"} or http_requests_total{code=\"500\"}",
    "http_requests_total unless on(instance) job_up == 0",
    "sum by (instance) (job_up) or vector(0)",
    "2 ^ 3 * 4 - 1 % 3",
    "1 > bool 2",
    "-node_temp_celsius",
    "node_temp_celsius % 3",
    "(node_temp_celsius + 5) / 2 != 0",
    // subqueries
    "max_over_time(rate(http_requests_total[5m])[30m:1m])",
    "avg_over_time(sum(node_temp_celsius)[10m:])",
    "rate(http_requests_total[5m:30s])",
    "min_over_time(node_temp_celsius[10m:1m] offset 5m)",
    "deriv(sum(node_temp_celsius)[10m:1m])",
];

/// Queries whose instant result order is part of the answer.
fn ordered(q: &str) -> bool {
    q.starts_with("sort")
}

#[test]
fn promql_agrees_with_prometheus() {
    let prom = Prometheus::start();
    let dir = tempfile::tempdir().unwrap();
    let sonde = TestServer::start(dir.path());
    // One hour of data ending a minute ago, on whole seconds.
    let end = now_ms() / 1000 * 1000 - 60_000;
    let start = end - 3_600_000;
    let data = dataset(start, end);
    let total: usize = data.iter().map(|s| s.samples.len()).sum();
    assert!(total > 5_000 && total < 100_000, "{total} samples");
    write(&prom.addr, &data);
    write(&sonde.http, &data);

    let t_at = format!("{:.3}", (start + 1_234_567) as f64 / 1000.0);
    let instant_times = [end - 600_000 + 7_000, end - 1_800_000 - 1_000, end + 30_000];
    let range = (start + 900_000, end, "60");
    let range2 = (start + 600_000 + 13_000, end - 5_000, "37");
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut nonempty = 0;
    for q in QUERIES {
        let q = q.replace("@ T", &format!("@ {t_at}"));
        for t in instant_times {
            let t = format!("{:.3}", t as f64 / 1000.0);
            let params = [("query", q.as_str()), ("time", t.as_str())];
            let (s1, a) = get_json(&sonde.http, "/api/v1/query", &params);
            let (s2, b) = get_json(&prom.addr, "/api/v1/query", &params);
            if s1 != 200 || s2 != 200 {
                failures.push(format!("{q} @ {t}: status {s1} {a} vs Prometheus {s2} {b}"));
                continue;
            }
            if let Err(e) = compare(&q, &a, &b, ordered(&q)) {
                failures.push(format!("instant @ {t}: {e}"));
            }
            nonempty += usize::from(!samples(&b["data"]).1.is_empty());
            checked += 1;
        }
        for (from, to, step) in [range, range2] {
            let (from, to) = (
                format!("{:.3}", from as f64 / 1000.0),
                format!("{:.3}", to as f64 / 1000.0),
            );
            let params = [
                ("query", q.as_str()),
                ("start", from.as_str()),
                ("end", to.as_str()),
                ("step", step),
            ];
            let (s1, a) = get_json(&sonde.http, "/api/v1/query_range", &params);
            let (s2, b) = get_json(&prom.addr, "/api/v1/query_range", &params);
            if s1 != 200 || s2 != 200 {
                failures.push(format!("{q} range: status {s1} {a} vs Prometheus {s2} {b}"));
                continue;
            }
            if let Err(e) = compare(&q, &a, &b, false) {
                failures.push(format!("range step {step}: {e}"));
            }
            nonempty += usize::from(!samples(&b["data"]).1.is_empty());
            checked += 1;
        }
    }
    assert!(QUERIES.len() >= 60);
    // The comparison means something only if the answers hold data.
    assert!(
        nonempty * 10 >= checked * 9,
        "only {nonempty} of {checked} answers hold data"
    );
    eprintln!(
        "{checked} comparisons, {nonempty} with data, {} differ",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} comparisons differ:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Errors have Prometheus' shape and type, on both.
    let errors: &[(&str, &str, u16)] = &[
        ("sum(", "bad_data", 400),
        ("rate(http_requests_total)", "bad_data", 400),
        (
            "http_requests_total + on(instance) http_requests_total",
            "execution",
            422,
        ),
        ("nosuchfunc(up)", "bad_data", 400),
        ("http_requests_total[5m]", "bad_data", 400),
    ];
    for (q, kind, code) in errors {
        let params = [
            ("query", *q),
            ("start", &format!("{}", start / 1000 + 900)),
            ("end", &format!("{}", end / 1000)),
            ("step", "60"),
        ];
        let (s1, a) = get_json(&sonde.http, "/api/v1/query_range", &params);
        let (s2, b) = get_json(&prom.addr, "/api/v1/query_range", &params);
        assert_eq!(
            (s1, a["errorType"].as_str()),
            (*code, Some(*kind)),
            "{q}: {a}"
        );
        assert_eq!(s1, s2, "{q}: Sonde {a} vs Prometheus {b}");
        assert_eq!(a["status"], "error");
        assert_eq!(a["errorType"], b["errorType"], "{q}");
    }
    // Malformed queries and arguments: always bad_data with 400, never a 500.
    for q in [
        "",
        "http_requests_total{",
        "http_requests_total{instance=~\"(\"}",
        "rate(node_temp_celsius[5m], 1)",
        "label_replace(node_temp_celsius, \"1bad\", \"x\", \"zone\", \".*\")",
        "label_replace(node_temp_celsius, \"z\", \"x\", \"zone\", \"(\")",
        "count_values(\"not a label\", job_up)",
        "sum by (instance) (\"string\")",
        "{}",
        "1 + \"a\"",
        "topk(\"x\", job_up)",
        "http_requests_total[5m:0s]",
    ] {
        let (s, v) = get_json(&sonde.http, "/api/v1/query", &[("query", q)]);
        assert_eq!(
            (s, v["errorType"].as_str()),
            (400, Some("bad_data")),
            "{q:?}: {v}"
        );
        assert!(!v["error"].as_str().unwrap().is_empty());
    }
    // Parameter errors.
    let (s, v) = get_json(
        &sonde.http,
        "/api/v1/query_range",
        &[
            ("query", "up"),
            ("start", "10"),
            ("end", "5"),
            ("step", "1"),
        ],
    );
    assert_eq!((s, v["errorType"].as_str()), (400, Some("bad_data")), "{v}");
    let (s, v) = get_json(
        &sonde.http,
        "/api/v1/query_range",
        &[
            ("query", "up"),
            ("start", "0"),
            ("end", "100000"),
            ("step", "1"),
        ],
    );
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("11,000 points"),
        "{v}"
    );
    let (s, v) = get_json(
        &sonde.http,
        "/api/v1/query",
        &[("query", "up"), ("time", "soon")],
    );
    assert_eq!((s, v["errorType"].as_str()), (400, Some("bad_data")), "{v}");
    sonde.stop();
}
