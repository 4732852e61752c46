//! SQL against a real storage engine in a temporary directory.

use std::sync::Arc;

use arrow::array::RecordBatch;
use sonde_query::{QueryConfig, QueryEngine, QueryError, format};
use sonde_storage::{Config, Storage};
use sonde_types::{FieldType, Labels, MetricKind, SeriesBatch, TableBatch, WriteBatch};

fn engine(dir: &std::path::Path) -> (Arc<Storage>, QueryEngine) {
    let mut c = Config::new(dir);
    c.background_flush = false;
    c.retention.raw = None;
    let storage = Arc::new(Storage::open(c).unwrap());
    let q = QueryEngine::new(storage.clone(), QueryConfig::default()).unwrap();
    (storage, q)
}

fn counter(model: &str, points: &[(i64, f64)]) -> WriteBatch {
    let mut t = TableBatch::single("llm_tokens_total", MetricKind::Counter, FieldType::F64);
    t.series.push(SeriesBatch::f64(
        Labels::new([("model", model), ("token_type", "input")]).unwrap(),
        points.iter().map(|p| p.0).collect::<Vec<_>>(),
        points.iter().map(|p| p.1).collect::<Vec<_>>(),
    ));
    WriteBatch { tables: vec![t] }
}

async fn rows(q: &QueryEngine, tenant: &str, sql: &str) -> String {
    let out = q
        .sql(tenant, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    String::from_utf8(format::csv(&out.schema, &out.batches).unwrap()).unwrap()
}

const T0: i64 = 1_764_000_000_000;

#[tokio::test]
async fn select_filters_increase_and_freshness() {
    let dir = tempfile::tempdir().unwrap();
    let (s, q) = engine(dir.path());
    // A counter that resets after 300: increase = 100 + 100 + 50 + 70 = 320.
    s.write(
        "acme",
        counter(
            "gpt-4o",
            &[(T0, 100.0), (T0 + 15_000, 200.0), (T0 + 30_000, 300.0)],
        ),
    )
    .unwrap();
    s.write("acme", counter("claude", &[(T0, 5.0), (T0 + 15_000, 6.0)]))
        .unwrap();
    // Visible before any flush.
    let sql = "SELECT model, increase(value, time) AS inc, count(*) AS n \
               FROM llm_tokens_total GROUP BY model ORDER BY model";
    assert_eq!(
        rows(&q, "acme", sql).await,
        "model,inc,n\nclaude,1.0,2\ngpt-4o,200.0,3\n"
    );
    s.flush().unwrap();
    s.write(
        "acme",
        counter("gpt-4o", &[(T0 + 45_000, 50.0), (T0 + 60_000, 120.0)]),
    )
    .unwrap();
    // Half persisted, half in the head: each row once, the reset handled.
    assert_eq!(
        rows(&q, "acme", sql).await,
        "model,inc,n\nclaude,1.0,2\ngpt-4o,320.0,5\n"
    );
    let r = rows(
        &q,
        "acme",
        "SELECT rate(value, time) AS r FROM llm_tokens_total WHERE model = 'gpt-4o'",
    )
    .await;
    assert_eq!(r, format!("r\n{}\n", 320.0 / 60.0));
    // Time and tag filters, pushed down and re-applied.
    let r = rows(
        &q,
        "acme",
        &format!(
            "SELECT value FROM llm_tokens_total WHERE model = 'gpt-4o' \
             AND time > to_timestamp_millis({}) AND time <= to_timestamp_millis({}) ORDER BY time",
            T0 + 15_000,
            T0 + 45_000
        ),
    )
    .await;
    assert_eq!(r, "value\n300.0\n50.0\n");
    let plan = rows(
        &q,
        "acme",
        "EXPLAIN SELECT value FROM llm_tokens_total WHERE model IN ('gpt-4o', 'x') \
         AND time >= '2025-11-24T16:00:00Z'",
    )
    .await;
    assert!(
        plan.contains("SondeScanExec: table=llm_tokens_total, time=[1764000000000, +inf]")
            && plan.contains("model IN (\"\"gpt-4o\"\", \"\"x\"\")"),
        "{plan}"
    );
    // Another tenant sees nothing of acme's.
    let err = q
        .sql("other", "SELECT * FROM llm_tokens_total")
        .await
        .unwrap_err();
    assert!(matches!(err, QueryError::Invalid(_)), "{err}");
    let t = rows(
        &q,
        "other",
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .await;
    assert_eq!(t, "table_name\nsonde_series\n");
    let series = rows(
        &q,
        "acme",
        "SELECT table_name, kind, tag_keys, series, rows FROM sonde_series",
    )
    .await;
    assert_eq!(
        series,
        "table_name,kind,tag_keys,series,rows\nllm_tokens_total,counter,\"model,token_type\",2,7\n"
    );
}

#[tokio::test]
async fn only_read_statements_run() {
    let dir = tempfile::tempdir().unwrap();
    let (s, q) = engine(dir.path());
    s.write("acme", counter("gpt-4o", &[(T0, 1.0)])).unwrap();
    for (sql, want) in [
        ("DROP TABLE llm_tokens_total", "DROP TABLE is not allowed"),
        ("CREATE TABLE t AS SELECT 1", "CREATE TABLE is not allowed"),
        (
            "INSERT INTO llm_tokens_total VALUES (1)",
            "INSERT INTO is not allowed",
        ),
        ("DELETE FROM llm_tokens_total", "DELETE is not allowed"),
        ("COPY (SELECT 1) TO '/tmp/x.csv'", "COPY is not allowed"),
        (
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            "CREATE EXTERNAL TABLE is not allowed",
        ),
        (
            "SET datafusion.execution.batch_size = 1",
            "SET is not allowed",
        ),
        ("SELECT 1; SELECT 2", "one statement per query"),
    ] {
        match q.sql("acme", sql).await {
            Err(QueryError::Refused(m)) => assert!(m.contains(want), "{sql}: {m}"),
            other => panic!("{sql}: {other:?}"),
        }
    }
    for sql in [
        "SHOW TABLES",
        "DESCRIBE llm_tokens_total",
        "SHOW COLUMNS FROM llm_tokens_total",
        "EXPLAIN ANALYZE SELECT count(*) FROM llm_tokens_total",
        "WITH x AS (SELECT 1 AS a) SELECT * FROM x",
    ] {
        q.sql("acme", sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let err = q.sql("acme", "SELEC 1").await.unwrap_err();
    assert!(matches!(err, QueryError::Invalid(_)), "{err}");
}

#[tokio::test]
async fn limits_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::new(dir.path());
    c.background_flush = false;
    c.retention.raw = None;
    let storage = Arc::new(Storage::open(c).unwrap());
    let points: Vec<(i64, f64)> = (0..5_000).map(|i| (T0 + i * 1000, i as f64)).collect();
    storage.write("acme", counter("gpt-4o", &points)).unwrap();
    let q = QueryEngine::new(
        storage.clone(),
        QueryConfig {
            max_rows: 10,
            memory_limit_bytes: 16 << 10,
            ..QueryConfig::default()
        },
    )
    .unwrap();
    let out = q
        .sql("acme", "SELECT time FROM llm_tokens_total LIMIT 20")
        .await;
    // 16 KiB cannot hold the scan of 5,000 rows (40 KB of timestamps alone).
    match out {
        Err(QueryError::MemoryLimit { limit, .. }) => assert_eq!(limit, 16 << 10),
        other => panic!("{other:?}"),
    }
    let q = QueryEngine::new(
        storage,
        QueryConfig {
            max_rows: 10,
            ..QueryConfig::default()
        },
    )
    .unwrap();
    let out = q
        .sql("acme", "SELECT time FROM llm_tokens_total")
        .await
        .unwrap();
    assert_eq!(out.num_rows(), 10);
    assert!(out.truncated);
    let _: &[RecordBatch] = &out.batches;
}

/// A field and a tag that appear later are NULL in older rows, before and after a
/// flush.
#[tokio::test]
async fn schemas_evolve() {
    let dir = tempfile::tempdir().unwrap();
    let (s, q) = engine(dir.path());
    let mut old = TableBatch::single("latency", MetricKind::Gauge, FieldType::F64);
    old.series.push(SeriesBatch::f64(
        Labels::new([("model", "gpt-4o")]).unwrap(),
        vec![T0],
        vec![1.5],
    ));
    s.write("acme", WriteBatch { tables: vec![old] }).unwrap();
    s.flush().unwrap();
    let mut new = TableBatch {
        table: "latency".into(),
        kind: MetricKind::Gauge,
        fields: vec![
            sonde_types::FieldDef::new("value", FieldType::F64),
            sonde_types::FieldDef::new("ttft", FieldType::F64),
        ],
        series: Vec::new(),
    };
    new.series.push(SeriesBatch {
        labels: Labels::new([("model", "gpt-4o"), ("region", "eu")]).unwrap(),
        timestamps: sonde_types::smallvec![T0 + 1000],
        fields: sonde_types::smallvec![
            sonde_types::FieldColumn::F64(sonde_types::smallvec![2.5]),
            sonde_types::FieldColumn::F64(sonde_types::smallvec![0.25]),
        ],
    });
    s.write("acme", WriteBatch { tables: vec![new] }).unwrap();
    let sql = "SELECT model, region, value, ttft FROM latency ORDER BY time";
    let want = "model,region,value,ttft\ngpt-4o,,1.5,\ngpt-4o,eu,2.5,0.25\n";
    assert_eq!(rows(&q, "acme", sql).await, want);
    s.flush().unwrap();
    assert_eq!(rows(&q, "acme", sql).await, want);
    assert_eq!(
        rows(
            &q,
            "acme",
            "SELECT count(*) AS n FROM latency WHERE ttft IS NULL"
        )
        .await,
        "n\n1\n"
    );
}
