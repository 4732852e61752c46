//! A reader that is not Sonde (pyarrow) reads a segment file and gets the same rows.

use std::process::Command;

use sonde_dataset::{DatasetConfig, Generator};
use sonde_storage::{ScanRequest, Storage};

use crate::common::{TENANT, config};

const SCRIPT: &str = r#"
import json, sys
import pyarrow.parquet as pq
import pyarrow.compute as pc
t = pq.read_table(sys.argv[1])
meta = pq.ParquetFile(sys.argv[1]).metadata.metadata
assert meta[b"sonde.format_version"] == b"1"
t = t.filter(pc.equal(t["__name__"], sys.argv[2]))
m, s, f = t["value:m"].to_pylist(), t["value:s"].to_pylist(), t["value:f"].to_pylist()
series = t["__series"].to_pylist()
rows, acc, prev = [], 0, None
for i, (user, tt, ts) in enumerate(zip(t["user_id"].to_pylist(), t["token_type"].to_pylist(), t["time"].to_pylist())):
    if series[i] != prev:
        acc, prev = 0, series[i]
    if m[i] is None:
        v = f[i]
    elif s[i] < 0:  # stored as per-series deltas
        acc += m[i]
        v = acc / 10.0 ** (-s[i] - 1)
    else:
        v = m[i] / 10.0 ** s[i]
    rows.append([user, tt, int(ts.timestamp() * 1000), v])
rows.sort()
json.dump(rows, sys.stdout)
"#;

#[test]
fn pyarrow_reads_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(config(dir.path())).unwrap();
    for b in Generator::new(DatasetConfig::sized(150, 10, 1_700_000_000_000)) {
        s.write(TENANT, b).unwrap();
    }
    s.flush().unwrap();
    let seg = dir.path().join(&s.manifest().segments[0].path);

    let mut want = Vec::new();
    for table in ["llm_tokens_total", "llm_cost_usd_total"] {
        let out = s
            .scan(TENANT, &ScanRequest::new(table, 0, i64::MAX))
            .unwrap();
        let mut rows = Vec::new();
        for (labels, d) in &out.series {
            let sonde_storage::series::Values::F64(v) = &d.cols[0].as_ref().unwrap().values else {
                panic!("float field")
            };
            for (t, v) in d.ts.iter().zip(v) {
                rows.push(serde_json::json!([
                    labels.get("user_id"),
                    labels.get("token_type"),
                    t,
                    v
                ]));
            }
        }
        rows.sort_by_key(|r| r.to_string());
        let py = Command::new("python3")
            .args(["-c", SCRIPT])
            .arg(&seg)
            .arg(table)
            .output()
            .expect("python3 runs (.ci/run installs pyarrow)");
        assert!(
            py.status.success(),
            "pyarrow failed: {}",
            String::from_utf8_lossy(&py.stderr)
        );
        let mut got: Vec<serde_json::Value> = serde_json::from_slice(&py.stdout).unwrap();
        got.sort_by_key(|r| r.to_string());
        assert_eq!(
            got.len(),
            150 / 15 * if table == "llm_tokens_total" { 2 } else { 1 } * 10
        );
        want.push((table, rows.len()));
        assert_eq!(got, rows, "table {table}");
    }
}

/// The query `storage-format.md` and the README give, run by DuckDB over the data
/// directory, returns exactly what Sonde's own reader returns.
const DUCKDB_SCRIPT: &str = r#"
import json, sys, duckdb
q = """
SELECT user_id, token_type, epoch_ms("time") AS t,
  coalesce("value:f",
    CASE WHEN "value:s" >= 0 THEN "value:m" / pow(10, "value:s")
    ELSE sum("value:m") OVER (PARTITION BY filename, __series ORDER BY file_row_number)
         / pow(10, -"value:s" - 1) END) AS value
FROM read_parquet('%s/segments/default/*/????????????????.parquet', union_by_name = true,
                  filename = true, file_row_number = true)
WHERE __name__ = '%s'
""" % (sys.argv[1], sys.argv[2])
json.dump([list(r) for r in duckdb.sql(q).fetchall()], sys.stdout)
"#;

#[test]
fn duckdb_reads_the_same_rows_with_the_documented_query() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(config(dir.path())).unwrap();
    let mut batches = Generator::new(DatasetConfig::sized(150, 20, 1_700_000_000_000));
    // Two flushes, so the query spans segments and a series spans files.
    for (i, b) in batches.by_ref().enumerate() {
        s.write(TENANT, b).unwrap();
        if i == 9 {
            s.flush().unwrap();
        }
    }
    s.flush().unwrap();
    assert_eq!(s.manifest().segments.len(), 2);
    for table in [
        "llm_tokens_total",
        "llm_ttft_seconds",
        "llm_request_duration_seconds_sum",
    ] {
        let out = s
            .scan(TENANT, &ScanRequest::new(table, 0, i64::MAX))
            .unwrap();
        let mut want = Vec::new();
        for (labels, d) in &out.series {
            let sonde_storage::series::Values::F64(v) = &d.cols[0].as_ref().unwrap().values else {
                panic!("float field")
            };
            for (t, v) in d.ts.iter().zip(v) {
                want.push(serde_json::json!([
                    labels.get("user_id"),
                    labels.get("token_type"),
                    t,
                    v
                ]));
            }
        }
        want.sort_by_key(|r| r.to_string());
        let py = Command::new("python3")
            .args(["-c", DUCKDB_SCRIPT])
            .arg(dir.path())
            .arg(table)
            .output()
            .expect("python3 runs (.ci/run installs duckdb)");
        assert!(
            py.status.success(),
            "duckdb failed: {}",
            String::from_utf8_lossy(&py.stderr)
        );
        let mut got: Vec<serde_json::Value> = serde_json::from_slice(&py.stdout).unwrap();
        got.sort_by_key(|r| r.to_string());
        assert_eq!(got.len(), want.len(), "table {table}");
        assert_eq!(got, want, "table {table}");
    }
}
