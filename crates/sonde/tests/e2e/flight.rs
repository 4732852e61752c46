//! Arrow Flight SQL with a real client: the ADBC Flight SQL driver (PyPI, installed
//! by .ci/run) gets the same rows as the HTTP API, sees only its tenant's tables, and
//! gets a clear error for a refused statement.

use std::process::Command;

use crate::harness::TestServer;

#[test]
fn adbc_flight_sql_matches_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(
        dir.path(),
        &[
            "--auth-token",
            "flight-token-a=acme",
            "--auth-token",
            "flight-token-b=globex",
        ],
    );
    server.load(&["--calls", "2000", "--token", "flight-token-a"]);
    let sql = "SELECT model, count(*) AS calls, sum(input_tokens) AS input \
               FROM llm_calls GROUP BY model ORDER BY model";
    let (code, http) = server.http_auth(
        "POST",
        "/api/v1/sql",
        "text/plain",
        sql.as_bytes(),
        Some("flight-token-a"),
    );
    assert_eq!(code, 200, "{http}");
    let http: serde_json::Value = serde_json::from_str(&http).unwrap();
    let flight = |token: &str, sql: &str| -> serde_json::Value {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/flight_sql.py");
        let out = Command::new("python3")
            .args([script, &server.grpc, token, sql])
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let got = flight("flight-token-a", sql);
    assert_eq!(got["rows"], http, "Flight SQL and HTTP disagree");
    assert_eq!(got["rows"].as_array().unwrap().len(), 8, "eight models");
    assert_eq!(got["vendor"], "Sonde");
    let tables: Vec<&str> = got["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tables.contains(&"llm_calls") && tables.contains(&"sonde_series"),
        "{tables:?}"
    );
    let refused = got["drop_error"].as_str().unwrap_or_default();
    assert!(refused.contains("DROP TABLE is not allowed"), "{refused}");
    // Tenant B: none of A's tables, no rows.
    let b = flight("flight-token-b", "SELECT count(*) AS n FROM sonde_series");
    assert_eq!(b["tables"], serde_json::json!(["sonde_series"]));
    assert_eq!(b["rows"], serde_json::json!([{"n": 0}]));
    server.stop();
}
