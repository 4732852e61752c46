//! Golden SQL files (`tests/slt/*.slt`, sqllogictest format) run against the real
//! server over `POST /api/v1/sql`, on data loaded with a fixed start time so every
//! answer is reproducible. Each file runs as the tenant named like the file:
//! `calls.slt` over LLM call records, `metrics.slt` over the metric dataset (the two
//! datasets use some of the same table names with different kinds, so they live in
//! different tenants). `SONDE_SLT_UPDATE=1` rewrites the expected results (review
//! the diff before committing it).

use sqllogictest::{DBOutput, DefaultColumnType};

use crate::harness::TestServer;

/// 2025-12-01T00:00:00Z.
pub const START_MS: i64 = 1_764_547_200_000;

struct SondeDb<'a> {
    server: &'a TestServer,
    token: String,
}

#[derive(Debug)]
struct SqlError(String);

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SqlError {}

impl sqllogictest::DB for SondeDb<'_> {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SqlError> {
        let body = serde_json::json!({ "sql": sql }).to_string();
        let (code, bytes) = self.server.request(
            "POST",
            "/api/v1/sql",
            &[
                ("Content-Type", "application/json"),
                ("Accept", "application/vnd.apache.arrow.stream"),
                ("Authorization", &format!("Bearer {}", self.token)),
            ],
            body.as_bytes(),
        );
        if code != 200 {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(SqlError(format!(
                "HTTP {code}: {}",
                v["error"].as_str().unwrap_or("?")
            )));
        }
        let (types, mut rows): (_, Vec<Vec<String>>) =
            sonde_query::format::rows_from_ipc(&bytes).map_err(|e| SqlError(e.to_string()))?;
        // Plans are multi-line cells: one expected line per text line, and no
        // trailing blank line (which would end the record).
        for cell in rows.iter_mut().flatten() {
            cell.truncate(cell.trim_end().len());
        }
        let rows = rows
            .into_iter()
            .flat_map(|r| {
                if r.iter().any(|c| c.contains('\n')) {
                    r.join(" ").lines().map(|l| vec![l.to_string()]).collect()
                } else {
                    vec![r]
                }
            })
            .collect();
        let types = types
            .iter()
            .map(|t| {
                if t.is_integer() {
                    DefaultColumnType::Integer
                } else if t.is_floating() {
                    DefaultColumnType::FloatingPoint
                } else {
                    DefaultColumnType::Text
                }
            })
            .collect();
        Ok(DBOutput::Rows { types, rows })
    }
}

fn token(tenant: &str) -> String {
    format!("{tenant}-token")
}

fn load(server: &TestServer, tenant: &str, start_ms: i64, args: &[&str]) {
    let (token, start) = (token(tenant), start_ms.to_string());
    let mut all = vec!["--token", token.as_str(), "--start-ms", start.as_str()];
    all.extend_from_slice(args);
    server.load(&all);
}

#[test]
fn golden_sql_files() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(
        dir.path(),
        &[
            "--auth-token",
            &format!("{}=calls", token("calls")),
            "--auth-token",
            &format!("{}=metrics", token("metrics")),
            // Plans (EXPLAIN) must not depend on the machine's CPU count.
            "--sql-partitions",
            "2",
            // The golden data has fixed dates (2025-12-01), older than the default
            // 15-day retention.
            "--retention",
            "forever",
        ],
    );
    // 10,000 LLM calls over ~5.5 hours (one every 2 s), and 300 metric series ×
    // 240 samples (one hour): 72 k samples.
    load(
        &server,
        "calls",
        START_MS,
        &["--calls", "10000", "--call-rate", "0.5", "--batch", "1000"],
    );
    load(
        &server,
        "metrics",
        START_MS,
        &["--series", "300", "--samples", "240"],
    );
    // Part of the data persisted, part in the head: answers must not care.
    let (code, _) = server.http_auth(
        "POST",
        "/api/v1/admin/flush",
        "text/plain",
        b"",
        Some(&token("calls")),
    );
    assert_eq!(code, 200);
    load(
        &server,
        "calls",
        START_MS + 86_400_000,
        &["--calls", "10", "--call-rate", "0.5"],
    );
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/slt"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect::<Vec<_>>();
    assert!(!files.is_empty());
    let update = std::env::var_os("SONDE_SLT_UPDATE").is_some();
    for file in files {
        let tenant = file.file_stem().unwrap().to_string_lossy().into_owned();
        let token = token(&tenant);
        let mut runner = sqllogictest::Runner::new(|| {
            let token = token.clone();
            let server = &server;
            async move { Ok(SondeDb { server, token }) }
        });
        if update {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(runner.update_test_file(
                &file,
                " ",
                sqllogictest::default_validator,
                sqllogictest::default_normalizer,
                sqllogictest::default_column_validator,
            ))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        } else {
            runner
                .run_file(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
    }
    server.stop();
}
