//! SQL over Sonde with DataFusion — the only crate that depends on DataFusion, so
//! edits elsewhere do not recompile it.
//!
//! [`QueryEngine::sql`] runs one read-only statement for one tenant:
//! - **Tables**: every table of the tenant (see [`provider`]), plus `sonde_series`
//!   (per table: tag keys, series, rows, bytes, time range) and
//!   `information_schema`. Tenant isolation sits below SQL: the catalog a query
//!   sees is built from the caller's tenant only, and every scan carries it.
//! - **Functions**: DataFusion's (`date_bin`, `approx_percentile_cont`, …) plus
//!   counter-aware `increase(value, time)` and `rate(value, time)` ([`functions`]).
//! - **Safety**: only `SELECT` (and `WITH`, `VALUES`), `EXPLAIN`, `SHOW` and
//!   `DESCRIBE`; everything else — DDL, DML, `COPY`, `CREATE EXTERNAL TABLE`, `SET`
//!   — is refused before planning. A timeout, a memory pool shared by all queries
//!   (exceeding it fails the query with a clear error), and a row limit bound each
//!   query.

pub mod exec;
pub mod format;
pub mod functions;
pub mod provider;
pub mod tiers;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::common::DataFusionError;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use futures::StreamExt;
use sonde_storage::Storage;

/// Limits every query runs under.
#[derive(Debug, Clone)]
pub struct QueryConfig {
    /// Wall-clock limit per query.
    pub timeout: Duration,
    /// Memory all running queries may hold together (DataFusion memory pool).
    pub memory_limit_bytes: usize,
    /// Most rows a response carries; the rest is cut off and reported.
    pub max_rows: usize,
    /// Parallelism of one query.
    pub target_partitions: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            timeout: Duration::from_secs(30),
            memory_limit_bytes: 1 << 30,
            max_rows: 100_000,
            target_partitions: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        }
    }
}

/// Why a query did not run.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A statement kind Sonde does not run (not retryable).
    #[error("{0}")]
    Refused(String),
    /// Bad SQL, an unknown table or column, a type error.
    #[error("{0}")]
    Invalid(String),
    #[error("query exceeded the timeout of {0:?} (sql timeout)")]
    Timeout(Duration),
    /// The query needed more memory than the pool allows.
    #[error("query exceeded the SQL memory limit of {limit} bytes: {detail}")]
    MemoryLimit { limit: usize, detail: String },
    #[error("internal error: {0}")]
    Internal(String),
}

/// A query's answer.
#[derive(Debug)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// Rows were cut off at `max_rows`.
    pub truncated: bool,
}

impl QueryOutput {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// Runs SQL against a storage engine.
#[derive(Debug)]
pub struct QueryEngine {
    storage: Arc<Storage>,
    config: QueryConfig,
    runtime: Arc<RuntimeEnv>,
}

impl QueryEngine {
    pub fn new(storage: Arc<Storage>, config: QueryConfig) -> Result<Self, QueryError> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(config.memory_limit_bytes, 1.0)
            .build_arc()
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        Ok(QueryEngine {
            storage,
            config,
            runtime,
        })
    }

    pub fn config(&self) -> &QueryConfig {
        &self.config
    }

    /// A session whose catalog holds `tenant`'s tables only.
    pub fn session(&self, tenant: &str) -> Result<SessionContext, QueryError> {
        let cfg = SessionConfig::new()
            .with_information_schema(true)
            .with_target_partitions(self.config.target_partitions)
            .with_default_catalog_and_schema("sonde", "public");
        let ctx = SessionContext::new_with_config_rt(cfg, self.runtime.clone());
        let catalog = datafusion::catalog::MemoryCatalogProvider::new();
        datafusion::catalog::CatalogProvider::register_schema(
            &catalog,
            "public",
            Arc::new(TenantSchema {
                storage: self.storage.clone(),
                tenant: tenant.to_string(),
            }),
        )
        .map_err(|e| QueryError::Internal(e.to_string()))?;
        ctx.register_catalog("sonde", Arc::new(catalog));
        ctx.register_udaf(functions::increase());
        ctx.register_udaf(functions::rate());
        ctx.register_udaf(functions::sketch_quantile());
        ctx.add_optimizer_rule(Arc::new(tiers::UseRollupTiers));
        Ok(ctx)
    }

    /// Every table of `tenant` (and `sonde_series`) with its Arrow schema.
    pub fn table_schemas(&self, tenant: &str) -> Vec<(String, arrow::datatypes::Schema)> {
        let mut out: Vec<(String, arrow::datatypes::Schema)> = self
            .storage
            .tables(tenant)
            .iter()
            .map(|(name, s)| (name.clone(), s.arrow_schema().as_ref().clone()))
            .collect();
        out.push((SERIES_TABLE.to_string(), series_schema().as_ref().clone()));
        out
    }

    /// The schema of a statement's answer, planned but not run (Flight SQL clients
    /// ask for it before fetching).
    pub async fn schema(&self, tenant: &str, sql: &str) -> Result<SchemaRef, QueryError> {
        check_statement(sql)?;
        let ctx = self.session(tenant)?;
        let df = ctx
            .sql_with_options(sql, read_only())
            .await
            .map_err(|e| self.classify(e))?;
        Ok(Arc::new(df.schema().as_arrow().clone()))
    }

    /// Runs one read-only statement for `tenant`.
    pub async fn sql(&self, tenant: &str, sql: &str) -> Result<QueryOutput, QueryError> {
        check_statement(sql)?;
        let ctx = self.session(tenant)?;
        let max_rows = self.config.max_rows;
        let run = async {
            let df = ctx
                .sql_with_options(sql, read_only())
                .await
                .map_err(|e| self.classify(e))?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let mut stream = df.execute_stream().await.map_err(|e| self.classify(e))?;
            let mut batches = Vec::new();
            let mut rows = 0usize;
            let mut truncated = false;
            while let Some(b) = stream.next().await {
                let b = b.map_err(|e| self.classify(e))?;
                if rows + b.num_rows() > max_rows {
                    batches.push(b.slice(0, max_rows - rows));
                    truncated = true;
                    break;
                }
                rows += b.num_rows();
                batches.push(b);
            }
            Ok(QueryOutput {
                schema,
                batches,
                truncated,
            })
        };
        match tokio::time::timeout(self.config.timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(QueryError::Timeout(self.config.timeout)),
        }
    }

    fn classify(&self, e: DataFusionError) -> QueryError {
        let root = e.find_root();
        match root {
            DataFusionError::ResourcesExhausted(detail) => QueryError::MemoryLimit {
                limit: self.config.memory_limit_bytes,
                detail: detail.clone(),
            },
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_)
            | DataFusionError::Configuration(_) => QueryError::Invalid(root.to_string()),
            DataFusionError::ArrowError(..) | DataFusionError::Execution(_) => {
                QueryError::Invalid(root.to_string())
            }
            other => QueryError::Internal(other.to_string()),
        }
    }
}

/// DataFusion's own guard, under the allow-list of [`check_statement`].
fn read_only() -> datafusion::execution::context::SQLOptions {
    datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Refuses everything but `SELECT`/`WITH`/`VALUES`, `EXPLAIN` of those, `SHOW` and
/// `DESCRIBE`, with an error naming what was refused.
pub fn check_statement(sql: &str) -> Result<(), QueryError> {
    let dialect = datafusion::sql::sqlparser::dialect::GenericDialect {};
    let statements = datafusion::sql::parser::DFParser::parse_sql_with_dialect(sql, &dialect)
        .map_err(|e| QueryError::Invalid(e.to_string()))?;
    if statements.len() != 1 {
        return Err(QueryError::Refused(format!(
            "one statement per query, got {}",
            statements.len()
        )));
    }
    check(&statements[0])
}

const ALLOWED: &str = "only SELECT, EXPLAIN, SHOW and DESCRIBE are allowed";

fn check(s: &DfStatement) -> Result<(), QueryError> {
    match s {
        DfStatement::Statement(s) => match s.as_ref() {
            SqlStatement::Query(_)
            | SqlStatement::ShowTables { .. }
            | SqlStatement::ShowColumns { .. }
            | SqlStatement::ShowFunctions { .. }
            | SqlStatement::ExplainTable { .. } => Ok(()),
            SqlStatement::Explain { statement, .. } => {
                check(&DfStatement::Statement(statement.clone()))
            }
            other => Err(QueryError::Refused(format!(
                "{} is not allowed: {ALLOWED}",
                kind(&other.to_string())
            ))),
        },
        DfStatement::Explain(e) => check(&e.statement),
        DfStatement::CreateExternalTable(_) => Err(QueryError::Refused(format!(
            "CREATE EXTERNAL TABLE is not allowed (Sonde does not read or write files from SQL): {ALLOWED}"
        ))),
        DfStatement::CopyTo(_) => Err(QueryError::Refused(format!(
            "COPY is not allowed (Sonde does not read or write files from SQL): {ALLOWED}"
        ))),
        DfStatement::Reset(_) => Err(QueryError::Refused(format!(
            "RESET is not allowed: {ALLOWED}"
        ))),
    }
}

/// The statement's leading keywords, for error messages (`INSERT INTO`, `DROP TABLE`).
fn kind(sql: &str) -> String {
    let words: Vec<&str> = sql.split_whitespace().take(2).collect();
    match words.as_slice() {
        [a, b] if ["CREATE", "DROP", "ALTER", "INSERT", "TRUNCATE"].contains(a) => {
            format!("{a} {b}")
        }
        [a, ..] => a.to_string(),
        [] => "an empty statement".into(),
    }
}

/// The tenant's tables, plus `sonde_series`.
#[derive(Debug)]
struct TenantSchema {
    storage: Arc<Storage>,
    tenant: String,
}

impl TenantSchema {
    /// `<table>_<tier>` → the table, the tier and the table's schema.
    fn tier_table(&self, name: &str) -> Option<(String, i64, sonde_storage::TableSchema)> {
        self.storage.rollup_tiers().into_iter().find_map(|t| {
            let base = name.strip_suffix(&format!("_{}", sonde_storage::rollup::tier_suffix(t)))?;
            let s = self.storage.table_schema(&self.tenant, base)?;
            Some((base.to_string(), t, s))
        })
    }
}

/// Name of the introspection table.
pub const SERIES_TABLE: &str = "sonde_series";

#[async_trait]
impl SchemaProvider for TenantSchema {
    fn table_names(&self) -> Vec<String> {
        let tables = self.storage.tables(&self.tenant);
        let mut names: Vec<String> = Vec::new();
        for name in tables.keys() {
            names.push(name.clone());
            for t in self.storage.rollup_tiers() {
                names.push(format!("{name}_{}", sonde_storage::rollup::tier_suffix(t)));
            }
        }
        names.push(SERIES_TABLE.to_string());
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        if name == SERIES_TABLE {
            return series_table(&self.storage, &self.tenant).map(Some);
        }
        if let Some(s) = self.storage.table_schema(&self.tenant, name) {
            return Ok(Some(Arc::new(provider::SondeTable::new(
                self.storage.clone(),
                &self.tenant,
                name,
                &s,
            ))));
        }
        Ok(self.tier_table(name).map(|(base, tier, s)| {
            Arc::new(provider::RollupTable::new(
                self.storage.clone(),
                &self.tenant,
                &base,
                tier,
                &s,
            )) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        name == SERIES_TABLE
            || self.storage.table_kind(&self.tenant, name).is_some()
            || self.tier_table(name).is_some()
    }
}

/// The columns of `sonde_series`.
fn series_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("table_name", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("tag_keys", DataType::Utf8, false),
        Field::new("series", DataType::Int64, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("min_time", ts.clone(), true),
        Field::new("max_time", ts, true),
    ]))
}

/// `sonde_series`: one row per table.
fn series_table(
    storage: &Storage,
    tenant: &str,
) -> Result<Arc<dyn TableProvider>, DataFusionError> {
    let stats = storage
        .table_stats(tenant)
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    let schema = series_schema();
    let time = |f: fn(&sonde_storage::TableStats) -> i64| {
        TimestampMillisecondArray::from(
            stats
                .iter()
                .map(|s| (s.min_time <= s.max_time).then(|| f(s)))
                .collect::<Vec<_>>(),
        )
        .with_timezone("UTC")
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            stats.iter().map(|s| s.table.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            stats.iter().map(|s| s.kind.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            stats.iter().map(|s| s.tags.join(",")),
        )),
        Arc::new(Int64Array::from_iter_values(
            stats.iter().map(|s| s.series as i64),
        )),
        Arc::new(UInt64Array::from_iter_values(stats.iter().map(|s| s.rows))),
        Arc::new(UInt64Array::from_iter_values(stats.iter().map(|s| s.bytes))),
        Arc::new(time(|s| s.min_time)),
        Arc::new(time(|s| s.max_time)),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}
