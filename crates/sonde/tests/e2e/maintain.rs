//! Compaction, retention, deletes and ingest volume controls through the real
//! server: remote_write in, PromQL and the admin API out, restarts in between.

use serde_json::Value;
use sonde_proto::prometheus::{TimeSeries, WriteRequest};

use crate::harness::{TestServer, form, http_request, now_ms, rw_body, rw_series as series};

const CT: &str = "application/x-protobuf";
const DAY: i64 = 86_400_000;

fn write(server: &TestServer, ts: Vec<TimeSeries>) -> (u16, String) {
    let req = WriteRequest {
        timeseries: ts,
        metadata: vec![],
    };
    server.http_body("POST", "/api/v1/write", CT, &rw_body(&req))
}

fn post(server: &TestServer, path: &str, pairs: &[(&str, &str)]) -> (u16, Value) {
    let (status, body) = crate::harness::post_form(server, path, pairs);
    let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, v)
}

/// `count_over_time(sel[range])` at `time`, summed over series (0 when empty).
fn count(server: &TestServer, sel: &str, range: &str, time: i64) -> f64 {
    let q = format!("sum(count_over_time({sel}[{range}]))");
    let (status, v) = post(
        server,
        "/api/v1/query",
        &[
            ("query", &q),
            ("time", &format!("{}", time as f64 / 1000.0)),
        ],
    );
    assert_eq!(status, 200, "{v}");
    v["data"]["result"]
        .as_array()
        .unwrap()
        .first()
        .map_or(0.0, |s| s["value"][1].as_str().unwrap().parse().unwrap())
}

fn metric(server: &TestServer, name: &str) -> f64 {
    let (_, text) = server.http("GET", "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .parse()
        .unwrap()
}

/// Many small flushes are merged by `POST /api/v1/admin/compact` into one segment per
/// day, and PromQL answers the same before and after, and after a restart.
#[test]
fn compaction_keeps_answers_and_bounds_files() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    // 80 samples 15 s apart (20 minutes) within one UTC day: run just after
    // midnight, a span crossing it would leave today's few segments below the
    // 4 a day needs before it is merged.
    let now = now_ms();
    let midnight = now - now.rem_euclid(DAY);
    let mut t0 = now - 30 * 60_000;
    if t0 < midnight {
        t0 = t0.min(midnight - 80 * 15_000 - 1_000);
    }
    for flush in 0..8 {
        let ts: Vec<TimeSeries> = (0..50)
            .map(|u| {
                let user = format!("u{u}");
                let samples: Vec<(i64, f64)> = (0..10)
                    .map(|i| (t0 + (flush * 10 + i) * 15_000, (flush * 10 + i) as f64))
                    .collect();
                series("llm_tokens_total", &[("user_id", &user)], &samples)
            })
            .collect();
        let (code, body) = write(&server, ts);
        assert_eq!(code, 204, "{body}");
        let (code, _) = server.http("POST", "/api/v1/admin/flush");
        assert_eq!(code, 200);
    }
    let end = t0 + 80 * 15_000;
    let q = "llm_tokens_total";
    let before = count(&server, q, "1h", end);
    assert_eq!(before, 50.0 * 80.0);
    let segs = metric(&server, "sonde_segments");
    assert!(segs >= 8.0, "{segs}");
    let (code, v) = post(&server, "/api/v1/admin/compact", &[]);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["data"]["compacted_inputs"].as_u64().unwrap() as f64, segs);
    assert!(metric(&server, "sonde_segments") <= 2.0, "one per day");
    assert_eq!(count(&server, q, "1h", end), before);
    assert_eq!(
        metric(&server, "sonde_compaction_input_segments_total"),
        segs
    );
    server.stop();
    let server = TestServer::start(dir.path());
    assert_eq!(count(&server, q, "1h", end), before);
    server.stop();
}

/// Backfilled days older than a retention set at restart are dropped, queries over
/// them answer empty (not an error), recent data stays, and a write older than the
/// retention is refused with a 400 naming it.
#[test]
fn retention_expires_old_days_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), &["--retention", "forever"]);
    let now = now_ms();
    let old = now - 10 * DAY;
    let (code, body) = write(
        &server,
        vec![
            series(
                "cost",
                &[("model", "a")],
                &[(old, 1.0), (old + 60_000, 2.0)],
            ),
            series("cost", &[("model", "a")], &[(now - 60_000, 3.0)]),
        ],
    );
    assert_eq!(code, 204, "{body}");
    server.http("POST", "/api/v1/admin/flush");
    assert_eq!(count(&server, "cost", "1h", old + 60_000), 2.0);
    server.stop();

    let server = TestServer::start_with(dir.path(), &["--retention", "5d"]);
    let (code, v) = post(&server, "/api/v1/admin/compact", &[]);
    assert_eq!(code, 200, "{v}");
    assert!(v["data"]["expired_rows"].as_u64().unwrap() >= 2, "{v}");
    assert_eq!(count(&server, "cost", "1h", old + 60_000), 0.0);
    assert_eq!(count(&server, "cost", "1h", now), 1.0);
    let (code, body) = write(
        &server,
        vec![series("cost", &[("model", "a")], &[(old, 1.0)])],
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("retention (5 days)"), "{body}");
    // A bad retention value is refused at startup, naming the flag.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args(["serve", "--retention", "five days", "--data-dir"])
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("retention"), "{err}");
    server.stop();
}

/// The Prometheus delete API removes one user's series (also a time slice of one)
/// from persisted and unflushed data; the label APIs forget it; deleting the tenant
/// removes the rest of it and nothing of another tenant.
#[test]
fn delete_series_and_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(
        dir.path(),
        &[
            "--auth-token",
            "tok-acme-123=acme",
            "--auth-token",
            "tok-beta-123=beta",
        ],
    );
    let t0 = now_ms() - 20 * 60_000;
    let rw = |token: &str, user: &str, from: i64| {
        let samples: Vec<(i64, f64)> = (0..10).map(|i| (from + i * 15_000, i as f64)).collect();
        let req = WriteRequest {
            timeseries: vec![series("usage", &[("user_id", user)], &samples)],
            metadata: vec![],
        };
        let (code, b) = server.http_auth("POST", "/api/v1/write", CT, &rw_body(&req), Some(token));
        assert_eq!(code, 204, "{b}");
    };
    rw("tok-acme-123", "alice", t0);
    rw("tok-acme-123", "bob", t0);
    server.http_auth(
        "POST",
        "/api/v1/admin/flush",
        "text/plain",
        b"",
        Some("tok-acme-123"),
    );
    rw("tok-acme-123", "alice", t0 + 150_000); // still in the head
    rw("tok-beta-123", "alice", t0);
    let auth = |path: &str, pairs: &[(&str, &str)], token: &str| -> (u16, Value) {
        let bearer = format!("Bearer {token}");
        let (status, body) = http_request(
            &server.http,
            "POST",
            path,
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Authorization", &bearer),
            ],
            form(pairs).as_bytes(),
        );
        let v = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("{path}: {status} {}", String::from_utf8_lossy(&body)));
        (status, v)
    };
    let users = |token: &str| -> Vec<String> {
        let bearer = format!("Bearer {token}");
        let (_, body) = http_request(
            &server.http,
            "GET",
            "/api/v1/label/user_id/values",
            &[("Authorization", &bearer)],
            b"",
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(users("tok-acme-123"), ["alice", "bob"]);

    // A bad selector is a 400 naming match[]; an empty-matching one is refused.
    let (code, v) = auth(
        "/api/v1/admin/tsdb/delete_series",
        &[("match[]", "usage{")],
        "tok-acme-123",
    );
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("match[]"), "{v}");
    let (code, v) = auth(
        "/api/v1/admin/tsdb/delete_series",
        &[("match[]", r#"{user_id=~".*"}"#)],
        "tok-acme-123",
    );
    assert_eq!(code, 400, "{v}");

    let (code, v) = auth(
        "/api/v1/admin/tsdb/delete_series",
        &[("match[]", r#"usage{user_id="alice"}"#)],
        "tok-acme-123",
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["data"]["removed_rows"], 20, "{v}");
    assert_eq!(users("tok-acme-123"), ["bob"]);
    assert_eq!(
        users("tok-beta-123"),
        ["alice"],
        "another tenant is untouched"
    );

    // Only a time slice of bob: his first 4 samples.
    let (code, v) = auth(
        "/api/v1/admin/tsdb/delete_series",
        &[
            ("match[]", r#"usage{user_id="bob"}"#),
            ("start", &format!("{}", t0 as f64 / 1000.0)),
            ("end", &format!("{}", (t0 + 45_000) as f64 / 1000.0)),
        ],
        "tok-acme-123",
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["data"]["removed_rows"], 4, "{v}");
    let q = "sum(count_over_time(usage[1h]))";
    let (_, v) = auth("/api/v1/query", &[("query", q)], "tok-acme-123");
    assert_eq!(v["data"]["result"][0]["value"][1], "6", "{v}");

    let (code, v) = auth("/api/v1/admin/delete_tenant", &[], "tok-acme-123");
    assert_eq!(code, 200, "{v}");
    let (_, v) = auth("/api/v1/query", &[("query", q)], "tok-acme-123");
    assert_eq!(v["data"]["result"], serde_json::json!([]), "{v}");
    let (_, v) = auth("/api/v1/query", &[("query", q)], "tok-beta-123");
    assert_eq!(v["data"]["result"][0]["value"][1], "10", "{v}");
    server.stop();
}

/// Drop / keep / labeldrop rules and a series cap with overflow from the config
/// file, applied to remote_write, counted in /metrics.
#[test]
fn volume_controls_from_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sonde.toml");
    std::fs::write(
        &cfg,
        r#"
[ingest]
overflow = true
series_caps = { llm_requests_total = 3 }
[[ingest.rules]]
action = "drop"
table = "go_.*"
[[ingest.rules]]
action = "drop"
labels = { env = "test" }
[[ingest.rules]]
action = "labeldrop"
label_names = "request_id"
"#,
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start_with(&data, &["--config", cfg.to_str().unwrap()]);
    let t = now_ms() - 60_000;
    let mut ts = vec![
        series("go_goroutines", &[], &[(t, 10.0)]),
        series("cost", &[("env", "test")], &[(t, 1.0)]),
        series(
            "cost",
            &[("env", "prod"), ("request_id", "r-1")],
            &[(t, 2.0)],
        ),
    ];
    for u in 0..5 {
        ts.push(series(
            "llm_requests_total",
            &[("user_id", &format!("u{u}"))],
            &[(t, 1.0)],
        ));
    }
    let (code, body) = write(&server, ts);
    assert_eq!(code, 204, "{body}");
    let (_, v) = post(
        &server,
        "/api/v1/series",
        &[("match[]", "{__name__=~\".+\"}")],
    );
    let mut got: Vec<String> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let m = s.as_object().unwrap();
            let mut parts: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
                .collect();
            parts.sort();
            parts.join(",")
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "__name__=cost,env=prod",
            "__name__=llm_requests_total,otel_metric_overflow=true",
            "__name__=llm_requests_total,user_id=u0",
            "__name__=llm_requests_total,user_id=u1",
            "__name__=llm_requests_total,user_id=u2",
        ]
    );
    assert_eq!(metric(&server, "sonde_ingest_dropped_series_total"), 2.0);
    assert_eq!(metric(&server, "sonde_ingest_labels_dropped_total"), 1.0);
    assert_eq!(metric(&server, "sonde_ingest_overflow_series_total"), 2.0);
    server.stop();

    // A bad rule is refused at startup with the rule's position.
    std::fs::write(&cfg, "[[ingest.rules]]\naction = \"explode\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args(["serve", "--config", cfg.to_str().unwrap(), "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ingest.rules[0].action"), "{err}");
}
