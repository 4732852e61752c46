//! Grafana's view of Sonde: the requests Grafana's Prometheus data source makes when
//! the data source is added and a panel renders, every query of the shipped "LLM
//! overview" dashboard against a Sonde seeded with LLM call records, and PromQL over
//! delta sums and the multi-field `llm_calls` table.

use serde_json::Value;

use crate::harness::{TestServer, form, http_request, now_ms};

const CALLS: usize = 6_000;

/// Grafana posts form-encoded parameters (the data source's default HTTP method).
fn post(server: &TestServer, path: &str, pairs: &[(&str, &str)]) -> Value {
    let (status, body) = crate::harness::post_form(server, path, pairs);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200, "{path} {pairs:?}: {v}");
    assert_eq!(v["status"], "success", "{path}: {v}");
    v
}

fn get(server: &TestServer, path: &str, pairs: &[(&str, &str)]) -> Value {
    let (status, body) = http_request(
        &server.http,
        "GET",
        &format!("{path}?{}", form(pairs)),
        &[],
        b"",
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 200, "{path} {pairs:?}: {v}");
    assert_eq!(v["status"], "success", "{path}: {v}");
    v
}

fn strings(v: &Value) -> Vec<String> {
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Sum of the last value of every series of an instant-vector answer.
fn vector_sum(v: &Value) -> f64 {
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["value"][1].as_str().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[test]
fn grafana_data_source_and_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    // Calls over the last ~50 minutes, ending now.
    server.load(&["--calls", &CALLS.to_string(), "--call-rate", "2"]);
    let now = now_ms() / 1000 + 1;
    let (start, end) = ((now - 3600).to_string(), now.to_string());
    let range = [("start", start.as_str()), ("end", end.as_str())];

    // Adding the data source: build info and the health check query.
    let info = get(&server, "/api/v1/status/buildinfo", &[]);
    assert!(info["data"]["version"].as_str().is_some(), "{info}");
    let health = get(
        &server,
        "/api/v1/query",
        &[("query", "1+1"), ("time", &end)],
    );
    assert_eq!(health["data"]["resultType"], "scalar");
    assert_eq!(health["data"]["result"][1], "2");

    // The query editor's metric and label browser.
    let labels = post(&server, "/api/v1/labels", &range);
    for l in ["__name__", "model", "provider", "status", "tenant"] {
        assert!(strings(&labels).contains(&l.to_string()), "{l}: {labels}");
    }
    let names = get(&server, "/api/v1/label/__name__/values", &range);
    for n in [
        "llm_requests_total",
        "llm_tokens_total",
        "llm_calls_cost_usd",
        "llm_calls_input_tokens",
        "llm_request_duration_seconds_bucket",
    ] {
        assert!(strings(&names).contains(&n.to_string()), "{n}: {names}");
    }
    let models = get(
        &server,
        "/api/v1/label/model/values",
        &[
            ("match[]", "llm_requests_total"),
            ("start", &start),
            ("end", &end),
        ],
    );
    assert!(strings(&models).len() >= 3, "{models}");
    let series = post(
        &server,
        "/api/v1/series",
        &[
            ("match[]", "llm_requests_total{status=\"error\"}"),
            ("start", &start),
            ("end", &end),
        ],
    );
    let list = series["data"].as_array().unwrap();
    assert!(!list.is_empty(), "{series}");
    assert!(
        list.iter()
            .all(|s| s["__name__"] == "llm_requests_total" && s["status"] == "error")
    );
    get(&server, "/api/v1/metadata", &[]);
    post(
        &server,
        "/api/v1/query_exemplars",
        &[("query", "llm_requests_total")],
    );
    // An unknown label has no values; a series query needs match[].
    assert_eq!(
        strings(&get(&server, "/api/v1/label/nosuch/values", &range)),
        Vec::<String>::new()
    );
    let (status, _) = http_request(&server.http, "GET", "/api/v1/series", &[], b"");
    assert_eq!(status, 400);

    // Every query of the shipped dashboard returns data, rendered as Grafana does.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/dashboards/llm-overview.json"
    );
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let var = &dash["templating"]["list"][0];
    assert_eq!(var["definition"], "label_values(llm_requests_total, model)");
    let mut exprs = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "75s")
                .replace("$model", ".*");
            let v = post(
                &server,
                "/api/v1/query_range",
                &[
                    ("query", expr.as_str()),
                    ("start", &start),
                    ("end", &end),
                    ("step", "60"),
                ],
            );
            assert_eq!(v["data"]["resultType"], "matrix");
            let result = v["data"]["result"].as_array().unwrap();
            let finite = result
                .iter()
                .flat_map(|s| s["values"].as_array().unwrap())
                .filter(|p| p[1].as_str().unwrap().parse::<f64>().unwrap().is_finite())
                .count();
            assert!(
                finite > 10,
                "panel {:?} query {expr} returned no data: {v}",
                panel["title"]
            );
            exprs += 1;
        }
    }
    assert!(exprs >= 10, "{exprs} dashboard queries");

    // Delta sums: increase over a window holding every call counts each call once;
    // the event table's fields are metrics llm_calls_<field>, one sample per call.
    let t = end.as_str();
    let total = get(
        &server,
        "/api/v1/query",
        &[
            ("query", "sum(increase(llm_requests_total[2h]))"),
            ("time", t),
        ],
    );
    assert_eq!(vector_sum(&total), CALLS as f64, "{total}");
    let per_model = get(
        &server,
        "/api/v1/query",
        &[
            (
                "query",
                "sum by (model) (count_over_time(llm_calls_duration_seconds[2h]))",
            ),
            ("time", t),
        ],
    );
    assert_eq!(vector_sum(&per_model), CALLS as f64, "{per_model}");
    let buckets = get(
        &server,
        "/api/v1/query",
        &[
            (
                "query",
                "sum(increase(llm_request_duration_seconds_bucket{le=\"+Inf\"}[2h]))",
            ),
            ("time", t),
        ],
    );
    assert_eq!(vector_sum(&buckets), CALLS as f64, "{buckets}");
    // rate of a delta sum is the window's sum over the window's length.
    let rate = get(
        &server,
        "/api/v1/query",
        &[("query", "sum(rate(llm_requests_total[2h]))"), ("time", t)],
    );
    assert!(
        (vector_sum(&rate) - CALLS as f64 / 7200.0).abs() < 1e-9,
        "{rate}"
    );
    server.stop();
}
