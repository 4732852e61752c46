//! A reader that is not Sonde (pyarrow) reads a segment file and gets the same rows.

use std::process::Command;

use sonde_dataset::{DatasetConfig, Generator};
use sonde_storage::{ScanRequest, Storage};
use sonde_types::{FieldType, Labels, MetricKind, SeriesBatch, TableBatch, WriteBatch};

use crate::common::{TENANT, config};

const SCRIPT: &str = r#"
import json, sys
import pyarrow.parquet as pq
import pyarrow.compute as pc
t = pq.read_table(sys.argv[1])
meta = pq.ParquetFile(sys.argv[1]).metadata.metadata
assert meta[b"sonde.format_version"] == b"1"
t = t.filter(pc.equal(t["__name__"], sys.argv[2]))
# The stored mantissa: `value:m` (32 bits), else `value:w` (64 bits).
m = pc.coalesce(t["value:m"].cast("int64"), t["value:w"]).to_pylist()
s, f = t["value:s"].to_pylist(), t["value:f"].to_pylist()
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
wide = len(t) - t["value:w"].null_count
json.dump({"rows": rows, "wide": wide}, sys.stdout)
"#;

/// Tables whose mantissas do not fit in 32 bits (they go to `value:w`): a counter
/// from 5·10^12 by quarters (stored as deltas: the first row's absolute mantissa is
/// wide, the deltas narrow) and a gauge alternating 3·10^10 and 1.5 (absolute: every
/// other row wide). `n` samples each, 15 s apart from `start`.
const BIG_TABLES: [&str; 2] = ["llm_big_total", "llm_big_gauge"];

fn write_big(s: &Storage, start: i64, n: usize) {
    let labels = Labels::new([("token_type", "input"), ("user_id", "u-big")]).unwrap();
    let ts: Vec<i64> = (0..n as i64).map(|i| start + i * 15_000).collect();
    let mut tables = Vec::new();
    for (table, kind, vals) in [
        (
            BIG_TABLES[0],
            MetricKind::Counter,
            (0..n).map(|i| 5e12 + 0.25 * i as f64).collect::<Vec<_>>(),
        ),
        (
            BIG_TABLES[1],
            MetricKind::Gauge,
            (0..n)
                .map(|i| if i % 2 == 0 { 3e10 } else { 1.5 })
                .collect(),
        ),
    ] {
        let mut t = TableBatch::single(table, kind, FieldType::F64);
        t.series
            .push(SeriesBatch::f64(labels.clone(), ts.clone(), vals));
        tables.push(t);
    }
    s.write(TENANT, WriteBatch { tables }).unwrap();
}

#[test]
fn pyarrow_reads_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(config(dir.path())).unwrap();
    for b in Generator::new(DatasetConfig::sized(150, 10, 1_700_000_000_000)) {
        s.write(TENANT, b).unwrap();
    }
    write_big(&s, 1_700_000_000_000, 10);
    s.flush().unwrap();
    let seg = dir.path().join(&s.manifest().segments[0].path);

    let mut want = Vec::new();
    for table in ["llm_tokens_total", "llm_cost_usd_total"]
        .into_iter()
        .chain(BIG_TABLES)
    {
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
        let out: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();
        // The standard dataset's mantissas all fit in 32 bits; the big tables' do not.
        let wide = out["wide"].as_u64().unwrap();
        assert_eq!(
            wide > 0,
            BIG_TABLES.contains(&table),
            "table {table}: {wide} wide"
        );
        let mut got: Vec<serde_json::Value> = serde_json::from_value(out["rows"].clone()).unwrap();
        got.sort_by_key(|r| r.to_string());
        let series = match table {
            "llm_tokens_total" => 150 / 15 * 2,
            "llm_cost_usd_total" => 150 / 15,
            _ => 1,
        };
        assert_eq!(got.len(), series * 10, "table {table}");
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
    CASE WHEN "value:s" >= 0 THEN coalesce("value:m", "value:w") / pow(10, "value:s")
    ELSE sum(coalesce("value:m", "value:w"))
           OVER (PARTITION BY filename, __series ORDER BY file_row_number)
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
            write_big(&s, 1_700_000_000_000, 10);
            s.flush().unwrap();
        }
    }
    write_big(&s, 1_700_000_000_000 + 150_000, 10);
    s.flush().unwrap();
    assert_eq!(s.manifest().segments.len(), 2);
    for table in [
        "llm_tokens_total",
        "llm_ttft_seconds",
        "llm_request_duration_seconds_sum",
    ]
    .into_iter()
    .chain(BIG_TABLES)
    {
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
