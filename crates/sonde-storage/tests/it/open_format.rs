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
