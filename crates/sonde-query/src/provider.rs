//! Tables of one tenant as DataFusion table providers.
//!
//! Columns: every tag the table has used (dictionary-encoded strings, null where a
//! series lacks the tag), `time` (timestamp ms, UTC), then the fields. A scan asks
//! the storage engine for the time range and tag predicates it can use (the engine
//! unions head and segments, prunes segments by time through the manifest and
//! series through the croaring index, and reads only the projected fields); the
//! filters are declared `Inexact`, so DataFusion still applies them to the rows.
//!
//! Seam for rollup tiers: [`SondeTable::scan`] builds a [`ScanRequest`]; a tier
//! planner can later pick a rollup source for the same request.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use sonde_storage::{Matcher, ScanRequest, Storage, TableSchema};
use sonde_types::{TIME_COLUMN, TimestampMs};

use crate::exec::SondeScanExec;

/// One table of one tenant.
#[derive(Debug)]
pub struct SondeTable {
    pub storage: Arc<Storage>,
    pub tenant: String,
    pub table: String,
    pub schema: SchemaRef,
    pub tags: Vec<String>,
    pub fields: Vec<String>,
}

impl SondeTable {
    pub fn new(storage: Arc<Storage>, tenant: &str, table: &str, s: &TableSchema) -> Self {
        SondeTable {
            storage,
            tenant: tenant.to_string(),
            table: table.to_string(),
            schema: s.arrow_schema(),
            tags: s.tags.iter().cloned().collect(),
            fields: s.fields.iter().map(|f| f.name.clone()).collect(),
        }
    }
}

#[async_trait]
impl TableProvider for SondeTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                let mut r = Pushed::default();
                if self.push(f, &mut r) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let pushed = self.pushed(filters);
        let projected = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let fields: Vec<String> = projected
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| self.fields.contains(n))
            .collect();
        let mut req = ScanRequest::new(&self.table, pushed.start, pushed.end).with_fields(fields);
        req.matchers = pushed.matchers;
        Ok(Arc::new(SondeScanExec::new(
            self.storage.clone(),
            self.tenant.clone(),
            req,
            projected,
        )))
    }
}

/// What a scan can hand to the storage engine.
#[derive(Debug)]
struct Pushed {
    start: TimestampMs,
    end: TimestampMs,
    matchers: Vec<Matcher>,
}

impl Default for Pushed {
    fn default() -> Self {
        Pushed {
            start: TimestampMs::MIN,
            end: TimestampMs::MAX,
            matchers: Vec::new(),
        }
    }
}

impl SondeTable {
    /// What of `filters` narrows the read (time bounds, tag matchers).
    fn pushed(&self, filters: &[Expr]) -> Pushed {
        let mut pushed = Pushed::default();
        for f in filters {
            self.push(f, &mut pushed);
        }
        pushed
    }

    /// Records what `e` lets the scan narrow; false if nothing.
    fn push(&self, e: &Expr, out: &mut Pushed) -> bool {
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if *op == Operator::And {
                    let a = self.push(left, out);
                    let b = self.push(right, out);
                    return a || b;
                }
                if *op == Operator::Or {
                    // `tag = 'a' OR tag = 'b'` (how DataFusion rewrites short IN
                    // lists) is an IN matcher.
                    let mut values = Vec::new();
                    return match or_of_equalities(e, &mut values) {
                        Some(col) if self.tags.iter().any(|t| t == col) => {
                            out.matchers.push(Matcher::in_list(col, values));
                            true
                        }
                        _ => false,
                    };
                }
                // Column on either side.
                let (col, lit, op) = match (column_name(left), literal(right)) {
                    (Some(c), Some(l)) => (c, l, *op),
                    _ => match (column_name(right), literal(left)) {
                        (Some(c), Some(l)) => match op.swap() {
                            Some(op) => (c, l, op),
                            None => return false,
                        },
                        _ => return false,
                    },
                };
                if col == TIME_COLUMN {
                    let Some((lo, hi)) = timestamp_ms(&lit) else {
                        return false;
                    };
                    // Strict bounds are kept inclusive: DataFusion re-applies the
                    // filter, the scan only has to return a superset.
                    match op {
                        Operator::Gt | Operator::GtEq => out.start = out.start.max(lo),
                        Operator::Lt | Operator::LtEq => out.end = out.end.min(hi),
                        Operator::Eq => {
                            out.start = out.start.max(lo);
                            out.end = out.end.min(hi);
                        }
                        _ => return false,
                    }
                    return true;
                }
                if !self.tags.iter().any(|t| t == col) {
                    return false;
                }
                let Some(v) = string(&lit) else {
                    return false;
                };
                match op {
                    Operator::Eq => out.matchers.push(Matcher::eq(col, v)),
                    Operator::NotEq => out.matchers.push(Matcher::ne(col, v)),
                    _ => return false,
                }
                true
            }
            Expr::Between(b) if !b.negated => {
                let Some(col) = column_name(&b.expr) else {
                    return false;
                };
                let (Some(lo), Some(hi)) = (literal(&b.low), literal(&b.high)) else {
                    return false;
                };
                if col != TIME_COLUMN {
                    return false;
                }
                let (Some((lo, _)), Some((_, hi))) = (timestamp_ms(&lo), timestamp_ms(&hi)) else {
                    return false;
                };
                out.start = out.start.max(lo);
                out.end = out.end.min(hi);
                true
            }
            Expr::InList(l) if !l.negated => {
                let Some(col) = column_name(&l.expr) else {
                    return false;
                };
                if !self.tags.iter().any(|t| t == col) {
                    return false;
                }
                let values: Option<Vec<String>> = l
                    .list
                    .iter()
                    .map(|e| literal(e).and_then(|v| string(&v)))
                    .collect();
                match values {
                    Some(v) => {
                        out.matchers.push(Matcher::in_list(col, v));
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        }
    }
}

/// For `c = v1 OR c = v2 OR …` on one column: the column, with the values added.
fn or_of_equalities<'a>(e: &'a Expr, values: &mut Vec<String>) -> Option<&'a str> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
        return None;
    };
    match op {
        Operator::Or => {
            let a = or_of_equalities(left, values)?;
            let b = or_of_equalities(right, values)?;
            (a == b).then_some(a)
        }
        Operator::Eq => {
            let (col, lit) = match (column_name(left), literal(right)) {
                (Some(c), Some(l)) => (c, l),
                _ => (column_name(right)?, literal(left)?),
            };
            values.push(string(&lit)?);
            Some(col)
        }
        _ => None,
    }
}

/// The column an expression reads, looking through casts.
pub(crate) fn column_name(e: &Expr) -> Option<&str> {
    match e {
        Expr::Column(c) => Some(c.name.as_str()),
        Expr::Cast(c) => column_name(&c.expr),
        Expr::TryCast(c) => column_name(&c.expr),
        _ => None,
    }
}

/// A literal, possibly under casts (evaluated).
pub(crate) fn literal(e: &Expr) -> Option<ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v.clone()),
        Expr::Cast(c) => {
            let v = literal(&c.expr)?;
            v.cast_to(c.field.data_type()).ok()
        }
        _ => None,
    }
}

fn string(v: &ScalarValue) -> Option<String> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(s.clone()),
        ScalarValue::Dictionary(_, inner) => string(inner),
        _ => None,
    }
}

/// A timestamp literal as milliseconds since the epoch, rounded down and up.
pub(crate) fn timestamp_ms(v: &ScalarValue) -> Option<(TimestampMs, TimestampMs)> {
    let per_ms: i64 = match v {
        ScalarValue::TimestampMillisecond(..) => 1,
        ScalarValue::TimestampMicrosecond(..) => 1_000,
        ScalarValue::TimestampNanosecond(..) => 1_000_000,
        ScalarValue::TimestampSecond(Some(t), _) => {
            let ms = t.checked_mul(1000)?;
            return Some((ms, ms));
        }
        ScalarValue::Dictionary(_, inner) => return timestamp_ms(inner),
        _ => return None,
    };
    let t = match v {
        ScalarValue::TimestampMillisecond(Some(t), _)
        | ScalarValue::TimestampMicrosecond(Some(t), _)
        | ScalarValue::TimestampNanosecond(Some(t), _) => *t,
        _ => return None,
    };
    let lo = t.div_euclid(per_ms);
    let hi = if t.rem_euclid(per_ms) == 0 {
        lo
    } else {
        lo + 1
    };
    Some((lo, hi))
}

/// A rollup tier of a table as its own table, `<table>_<tier>` (`llm_tokens_total_1h`):
/// one row per series and bucket, `time` = bucket start, and per field `f` the
/// columns `f_count`, `f_sum`, `f_min`, `f_max`, `f_first`, `f_last`, `f_first_ts`,
/// `f_last_ts` (ms), `f_inc`; for event tables (`llm_calls_1h`) one row per bucket
/// and combination of the tags left after `event_drop_tags`, with `f_count`,
/// `f_sum`, `f_min`, `f_max` and, for float fields, the quantile sketch
/// `f_sketch` (read it with `sketch_quantile`). Time and tag filters narrow the read
/// as for raw tables; days the tier does not answer yet are rolled up from raw rows
/// on the fly.
#[derive(Debug)]
pub struct RollupTable {
    inner: SondeTable,
    base: String,
    tier_ms: i64,
}

impl RollupTable {
    pub fn new(
        storage: Arc<Storage>,
        tenant: &str,
        base: &str,
        tier_ms: i64,
        s: &TableSchema,
    ) -> Self {
        let schema = sonde_storage::rollup::tier_schema(s, storage.event_drop_tags());
        let name = format!("{base}_{}", sonde_storage::rollup::tier_suffix(tier_ms));
        RollupTable {
            inner: SondeTable::new(storage, tenant, &name, &schema),
            base: base.to_string(),
            tier_ms,
        }
    }
}

#[async_trait]
impl TableProvider for RollupTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let pushed = self.inner.pushed(filters);
        let mut req = ScanRequest::new(&self.base, pushed.start, pushed.end);
        req.matchers = pushed.matchers;
        let storage = self.inner.storage.clone();
        let (tenant, tier) = (self.inner.tenant.clone(), self.tier_ms);
        let out = tokio::task::spawn_blocking(move || storage.scan_rollup(&tenant, tier, &req))
            .await
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        let batch = out
            .to_record_batch()
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        // The batch's columns are the table's (tags seen, then time and fields).
        let batch = batch.with_schema(self.inner.schema.clone())?;
        Ok(
            datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
                &[vec![batch]],
                self.inner.schema.clone(),
                projection.cloned(),
            )?,
        )
    }
}
