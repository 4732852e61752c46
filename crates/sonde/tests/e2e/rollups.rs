//! Rollup tiers through the real server: over three backfilled days of the standard
//! dataset and of LLM call records (delta sums), six hours of denser samples, plus
//! fresh unflushed data today, a corpus of PromQL range queries answers the same from
//! the tiers as from raw samples (`rollups=false`), and the tiers that hold the data
//! (only where they save rows) really answered.

use serde_json::Value;

use crate::harness::{TestServer, form, http_request, now_ms};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

const METRICS: &str = "tok-metrics-1234";
const CALLS: &str = "tok-calls-12345";
const DENSE: &str = "tok-dense-12345";

fn query_range(
    server: &TestServer,
    token: &str,
    q: &str,
    start: i64,
    end: i64,
    step: i64,
    rollups: &str,
) -> Value {
    let secs = |ms: i64| format!("{}", ms as f64 / 1000.0);
    let mut pairs = vec![
        ("query", q.to_string()),
        ("start", secs(start)),
        ("end", secs(end)),
        ("step", secs(step)),
    ];
    pairs.push(("rollups", rollups.into()));
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bearer = format!("Bearer {token}");
    let (status, body) = http_request(
        &server.http,
        "POST",
        "/api/v1/query_range",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", &bearer),
        ],
        form(&pairs).as_bytes(),
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 200, "{q}: {v}");
    v
}

/// (sorted metric text, [(t, value)]) per series.
fn series(v: &Value) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut out: Vec<(String, Vec<(f64, f64)>)> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let m = s["metric"].to_string();
            let pts = s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p[0].as_f64().unwrap(),
                        p[1].as_str().unwrap().parse::<f64>().unwrap(),
                    )
                })
                .collect();
            (m, pts)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

fn rollup_calls(server: &TestServer) -> f64 {
    let (_, text) = server.http_auth("GET", "/metrics", "text/plain", b"", Some(METRICS));
    text.lines()
        .find_map(|l| l.strip_prefix("sonde_promql_rollup_calls_total "))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn promql_from_rollups_equals_raw() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(
        dir.path(),
        &[
            "--retention",
            "30d",
            "--auth-token",
            &format!("{METRICS}=metrics"),
            "--auth-token",
            &format!("{CALLS}=calls"),
            "--auth-token",
            &format!("{DENSE}=dense"),
        ],
    );
    let now = now_ms();
    let day0 = (now / DAY - 3) * DAY;
    // Three past days: 15 metric series, one sample every 2 minutes (32 k samples),
    // and 2,500 LLM calls, one every 100 s (delta sums: llm_requests_total, …).
    let out = server.load(&[
        "--token",
        METRICS,
        "--series",
        "15",
        "--samples",
        "2160",
        "--interval-ms",
        "120000",
        "--start-ms",
        &day0.to_string(),
    ]);
    assert!(out.contains("errors=0"), "{out}");
    let out = server.load(&[
        "--token",
        CALLS,
        "--calls",
        "2500",
        "--call-rate",
        "0.01",
        "--start-ms",
        &(day0 + 1000).to_string(),
    ]);
    assert!(out.contains("errors=0"), "{out}");
    // Six hours of day 2 at one sample every 6 s (15 series, 54 k samples): ten a
    // minute, enough for the 1 m tier to hold them.
    let dense_from = day0 + 2 * DAY + 6 * HOUR;
    let out = server.load(&[
        "--token",
        DENSE,
        "--series",
        "15",
        "--samples",
        "3600",
        "--interval-ms",
        "6000",
        "--start-ms",
        &dense_from.to_string(),
    ]);
    assert!(out.contains("errors=0"), "{out}");
    let admin = |path: &str| server.http_auth("POST", path, "text/plain", b"", Some(METRICS));
    admin("/api/v1/admin/flush");
    let (code, body) = admin("/api/v1/admin/compact");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["data"]["rollup_days_built"].as_u64().unwrap() >= 3, "{v}");
    // Fresh data today, unflushed: today is answered from raw samples.
    let today_samples = ((now - now / DAY * DAY) / 120_000).clamp(2, 200);
    let out = server.load(&[
        "--token",
        METRICS,
        "--series",
        "15",
        "--samples",
        &today_samples.to_string(),
        "--interval-ms",
        "120000",
    ]);
    assert!(out.contains("errors=0"), "{out}");

    let end_h = now / HOUR * HOUR;
    let start_h = day0 + 2 * HOUR;
    let queries: Vec<(&str, &str, i64, i64, i64)> = vec![
        (
            METRICS,
            "sum by (model) (increase(llm_tokens_total[1h]))",
            start_h,
            end_h,
            HOUR,
        ),
        (METRICS, "rate(llm_tokens_total[1h])", start_h, end_h, HOUR),
        (
            METRICS,
            "histogram_quantile(0.99, sum by (le, model) (rate(llm_request_duration_seconds_bucket[1h])))",
            start_h,
            end_h,
            HOUR,
        ),
        (
            METRICS,
            "sum(rate(llm_cost_usd_total[2h] offset 1h))",
            start_h + 3 * HOUR,
            end_h,
            HOUR,
        ),
        (
            METRICS,
            "avg_over_time(llm_ttft_seconds[1h])",
            start_h,
            end_h,
            HOUR,
        ),
        (
            METRICS,
            "max_over_time(llm_ttft_seconds[3h])",
            start_h + 2 * HOUR,
            end_h,
            HOUR,
        ),
        (
            METRICS,
            "min_over_time(llm_ttft_seconds[1h])",
            start_h,
            end_h,
            HOUR,
        ),
        (
            METRICS,
            "sum_over_time(llm_ttft_seconds[1h])",
            start_h,
            end_h,
            HOUR,
        ),
        (
            METRICS,
            "count_over_time(llm_tokens_total[1h])",
            start_h,
            end_h,
            HOUR,
        ),
        (
            METRICS,
            "last_over_time(llm_ttft_seconds[1h])",
            start_h,
            end_h,
            HOUR,
        ),
        (
            METRICS,
            "present_over_time(llm_ttft_seconds[1h])",
            start_h,
            end_h,
            HOUR,
        ),
        (
            METRICS,
            "delta(llm_ttft_seconds[2h])",
            start_h + HOUR,
            end_h,
            HOUR,
        ),
        // Delta sums from the call records.
        (
            CALLS,
            "sum(increase(llm_requests_total[1h]))",
            start_h,
            end_h,
            HOUR,
        ),
        (
            CALLS,
            "sum by (model) (rate(llm_requests_total[1h]))",
            start_h,
            end_h,
            HOUR,
        ),
        // Aligned to the 1 m tier, which holds none of these tables: raw either way.
        (
            METRICS,
            "sum(rate(llm_tokens_total[5m]))",
            day0 + 2 * DAY + 6 * HOUR,
            day0 + 2 * DAY + 18 * HOUR,
            300_000,
        ),
        // The dense tenant's six hours: from the 1 m tier, and from the 1 h tier.
        (
            DENSE,
            "sum(rate(llm_tokens_total[5m]))",
            dense_from + 10 * 60_000,
            dense_from + 6 * HOUR,
            300_000,
        ),
        (
            DENSE,
            "max_over_time(llm_ttft_seconds[2m])",
            dense_from + 2 * 60_000,
            dense_from + 3 * HOUR,
            120_000,
        ),
        (
            DENSE,
            "histogram_quantile(0.9, sum by (le) (increase(llm_request_duration_seconds_bucket[1h])))",
            dense_from + HOUR,
            dense_from + 6 * HOUR,
            HOUR,
        ),
        (
            METRICS,
            "increase(llm_tokens_total{token_type=\"output\"}[10m])",
            now / DAY * DAY - 6 * HOUR,
            end_h,
            600_000,
        ),
        // Not aligned to a tier: raw either way.
        (
            METRICS,
            "sum(rate(llm_tokens_total[5m]))",
            end_h - 6 * HOUR,
            end_h,
            90_000,
        ),
    ];
    let mut compared = 0;
    for (token, q, start, end, step) in &queries {
        let raw = series(&query_range(
            &server, token, q, *start, *end, *step, "false",
        ));
        // Only the 1 h tier holds the 2-minute metric samples (a 30th of their
        // rows): the 1 m tier would hold as many rows as raw and the call records'
        // counters have a few rows per series-hour, so the build leaves them out of
        // the tiers (`rollups.min_saving`) and even `rollups=always` reads them raw;
        // both tiers hold the dense tenant's 6 s samples. By default a tier is used
        // under the same rule.
        let by_tier = f64::from(u8::from(match *token {
            METRICS => *step % HOUR == 0,
            DENSE => true,
            _ => false,
        }));
        let c0 = rollup_calls(&server);
        let tier = series(&query_range(
            &server, token, q, *start, *end, *step, "always",
        ));
        assert!(!raw.is_empty(), "{q}: no data");
        assert_eq!(
            rollup_calls(&server) - c0,
            by_tier,
            "{q}: answered from a tier?"
        );
        let c0 = rollup_calls(&server);
        let default = series(&query_range(&server, token, q, *start, *end, *step, "true"));
        assert_eq!(
            rollup_calls(&server) - c0,
            by_tier,
            "{q}: answered from a tier by default?"
        );
        assert_eq!(default.len(), raw.len(), "{q}: series differ by default");
        assert_eq!(
            raw.iter().map(|s| &s.0).collect::<Vec<_>>(),
            tier.iter().map(|s| &s.0).collect::<Vec<_>>(),
            "{q}: series differ"
        );
        for ((m, a), (_, b)) in raw.iter().zip(&tier) {
            assert_eq!(a.len(), b.len(), "{q} {m}: points differ");
            for (p, r) in a.iter().zip(b) {
                assert_eq!(p.0, r.0, "{q} {m}");
                assert!(
                    close(p.1, r.1),
                    "{q} {m} at {}: raw {} tier {}",
                    p.0,
                    p.1,
                    r.1
                );
                compared += 1;
            }
        }
    }
    assert!(compared > 1_500, "{compared} points compared");

    // SQL: the 1 h tier by name agrees with the raw table over three rolled-up days
    // and today's unflushed rows (rolled up on the fly).
    let sql = |q: &str| sql_as(&server, METRICS, q);
    let range = format!(
        "time >= to_timestamp_millis({day0}) AND time < to_timestamp_millis({})",
        end_h + HOUR
    );
    let tier = sql(&format!(
        "SELECT model, sum(value_count) AS n, sum(value_sum) AS s, min(value_min) AS lo, \
         max(value_max) AS hi FROM llm_ttft_seconds_1h WHERE {range} GROUP BY model ORDER BY model"
    ));
    let raw = sql(&format!(
        "SELECT model, count(*) AS n, sum(value) AS s, min(value) AS lo, max(value) AS hi \
         FROM llm_ttft_seconds WHERE {range} GROUP BY model ORDER BY model"
    ));
    assert!(!raw.is_empty());
    assert_eq!(tier.len(), raw.len());
    // The raw table, grouped by an hourly date_bin within hour-aligned bounds, is
    // answered from the 1 h tier (EXPLAIN says so) with the answer raw rows give (a
    // predicate on the value, true for every row, keeps the query on raw rows).
    let q = |extra: &str| {
        format!(
            "SELECT model, date_bin(INTERVAL '1 hour', time) AS h, count(value) AS n, \
             sum(value) AS s, min(value) AS lo, max(value) AS hi, avg(value) AS a \
             FROM llm_ttft_seconds WHERE {range}{extra} GROUP BY model, h ORDER BY model, h"
        )
    };
    let plan = sql(&format!("EXPLAIN {}", q("")));
    let plan = serde_json::to_string(&plan).unwrap();
    assert!(plan.contains("TableScan: llm_ttft_seconds_1h"), "{plan}");
    let plan = sql(&format!("EXPLAIN {}", q(" AND value > -1e300")));
    let plan = serde_json::to_string(&plan).unwrap();
    assert!(!plan.contains("llm_ttft_seconds_1h"), "{plan}");
    // Minute bins: the 1 m tier holds the dense tenant's samples, not the 2-minute
    // ones, which stay on raw rows (the tier would only roll them up on the fly).
    let minute = format!(
        "EXPLAIN SELECT model, date_bin(INTERVAL '1 minute', time) AS m, max(value) AS hi \
         FROM llm_ttft_seconds WHERE {range} GROUP BY model, m"
    );
    let plan = serde_json::to_string(&sql(&minute)).unwrap();
    assert!(!plan.contains("llm_ttft_seconds_1"), "{plan}");
    let plan = serde_json::to_string(&sql_as(&server, DENSE, &minute)).unwrap();
    assert!(plan.contains("TableScan: llm_ttft_seconds_1m"), "{plan}");
    let (auto, raw_rows) = (sql(&q("")), sql(&q(" AND value > -1e300")));
    assert!(raw_rows.len() > 50, "{}", raw_rows.len());
    assert_eq!(auto.len(), raw_rows.len());
    for (t, r) in auto.iter().zip(&raw_rows) {
        assert_eq!(
            (&t["model"], &t["h"], &t["n"]),
            (&r["model"], &r["h"], &r["n"])
        );
        for k in ["s", "lo", "hi", "a"] {
            let (a, b) = (t[k].as_f64().unwrap(), r[k].as_f64().unwrap());
            assert!(close(a, b), "{k}: tier {a} raw {b}");
        }
    }
    for (t, r) in tier.iter().zip(&raw) {
        assert_eq!(t["model"], r["model"]);
        assert_eq!(t["n"].as_f64(), r["n"].as_f64(), "{t} {r}");
        for k in ["s", "lo", "hi"] {
            let (a, b) = (t[k].as_f64().unwrap(), r[k].as_f64().unwrap());
            assert!(close(a, b), "{k}: tier {a} raw {b}");
        }
    }
    let checked = event_quantiles_from_sketches(&server, day0, end_h + HOUR);
    eprintln!(
        "rollups: {} queries, {compared} points equal to raw, {checked} event quantiles",
        queries.len()
    );
    server.stop();
}

/// Rows of a SQL query run with `token`'s tenant (must answer 200).
fn sql_as(server: &TestServer, token: &str, q: &str) -> Vec<Value> {
    let body = serde_json::json!({ "sql": q }).to_string();
    let (code, out) = server.http_auth(
        "POST",
        "/api/v1/sql",
        "application/json",
        body.as_bytes(),
        Some(token),
    );
    assert_eq!(code, 200, "{q}: {out}");
    serde_json::from_str(&out).unwrap()
}

/// The LLM calls of the CALLS tenant: p50/p99/median per model and day come from the
/// 1 h tier's sketches within 1 % of the exact order statistic, and count/sum/min/
/// max/avg equal raw rows; a query naming `user_id` (dropped from event rollups)
/// stays raw. Returns the number of quantiles checked.
fn event_quantiles_from_sketches(server: &TestServer, from: i64, to: i64) -> usize {
    let sql = |q: &str| sql_as(server, CALLS, q);
    let range = format!("time >= to_timestamp_millis({from}) AND time < to_timestamp_millis({to})");
    let q = |extra: &str| {
        format!(
            "SELECT model, date_bin(INTERVAL '1 day', time) AS d, count(duration_seconds) AS n, \
             sum(cost_usd) AS c, min(duration_seconds) AS lo, max(duration_seconds) AS hi, \
             avg(ttft_seconds) AS a, approx_percentile_cont(duration_seconds, 0.5) AS p50, \
             approx_percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_seconds) AS p99, \
             approx_median(ttft_seconds) AS m \
             FROM llm_calls WHERE {range}{extra} GROUP BY model, d ORDER BY model, d"
        )
    };
    let plan = serde_json::to_string(&sql(&format!("EXPLAIN {}", q("")))).unwrap();
    assert!(plan.contains("TableScan: llm_calls_1h"), "{plan}");
    let keep_raw = " AND duration_seconds > -1e300";
    let plan = serde_json::to_string(&sql(&format!("EXPLAIN {}", q(keep_raw)))).unwrap();
    assert!(!plan.contains("llm_calls_1h"), "{plan}");
    let by_user = format!(
        "EXPLAIN SELECT user_id, date_bin(INTERVAL '1 day', time) AS d, \
         approx_median(duration_seconds) FROM llm_calls WHERE {range} GROUP BY user_id, d"
    );
    let plan = serde_json::to_string(&sql(&by_user)).unwrap();
    assert!(
        !plan.contains("llm_calls_1h"),
        "user_id is not in the tier: {plan}"
    );

    let (tier, raw) = (sql(&q("")), sql(&q(keep_raw)));
    assert!(tier.len() >= 12, "{} groups", tier.len());
    assert_eq!(tier.len(), raw.len());
    // Exact order statistics from the raw rows.
    let rows = sql(&format!(
        "SELECT model, CAST(date_bin(INTERVAL '1 day', time) AS VARCHAR) AS d, \
         duration_seconds AS x, ttft_seconds AS y FROM llm_calls WHERE {range}"
    ));
    let mut groups: std::collections::BTreeMap<(String, String), (Vec<f64>, Vec<f64>)> =
        Default::default();
    for r in &rows {
        let g = groups
            .entry((
                r["model"].as_str().unwrap().into(),
                r["d"].as_str().unwrap()[..10].to_string(),
            ))
            .or_default();
        g.0.push(r["x"].as_f64().unwrap());
        g.1.push(r["y"].as_f64().unwrap());
    }
    let order_stat = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v[(q * (v.len() - 1) as f64).floor() as usize]
    };
    let mut checked = 0;
    for (t, r) in tier.iter().zip(&raw) {
        assert_eq!(
            (&t["model"], &t["d"], &t["n"]),
            (&r["model"], &r["d"], &r["n"])
        );
        for k in ["c", "lo", "hi", "a"] {
            let (a, b) = (t[k].as_f64().unwrap(), r[k].as_f64().unwrap());
            assert!(close(a, b), "{k}: tier {a} raw {b}");
        }
        // The day (YYYY-MM-DD) whatever the timestamp rendering.
        let key = (
            r["model"].as_str().unwrap().to_string(),
            r["d"].as_str().unwrap()[..10].to_string(),
        );
        let g = groups
            .get_mut(&key)
            .unwrap_or_else(|| panic!("no raw rows for {key:?}"));
        for (col, q, xs) in [("p50", 0.5, 0), ("p99", 0.99, 0), ("m", 0.5, 1)] {
            let v = if xs == 0 { &mut g.0 } else { &mut g.1 };
            assert_eq!(v.len() as u64, r["n"].as_u64().unwrap());
            let exact = order_stat(v, q);
            let got = t[col].as_f64().unwrap();
            assert!(
                (got - exact).abs() <= 0.01 * exact.abs() + 1e-12,
                "{col} of {key:?}: sketch {got}, exact {exact}"
            );
            checked += 1;
        }
    }
    // The tier by name, read with sketch_quantile directly.
    let direct = sql(&format!(
        "SELECT model, sketch_quantile(duration_seconds_sketch, 0.95) AS p95, \
         sum(duration_seconds_count) AS n FROM llm_calls_1h WHERE {range} \
         GROUP BY model ORDER BY model"
    ));
    let models: std::collections::BTreeSet<&String> = groups.keys().map(|k| &k.0).collect();
    assert_eq!(direct.len(), models.len(), "{direct:?}");
    for r in &direct {
        let m = r["model"].as_str().unwrap();
        let mut all: Vec<f64> = groups
            .iter()
            .filter(|(k, _)| k.0 == m)
            .flat_map(|(_, v)| v.0.clone())
            .collect();
        assert_eq!(all.len() as u64, r["n"].as_u64().unwrap());
        let exact = order_stat(&mut all, 0.95);
        let got = r["p95"].as_f64().unwrap();
        assert!((got - exact).abs() <= 0.01 * exact, "{m}: {got} vs {exact}");
    }
    checked
}
