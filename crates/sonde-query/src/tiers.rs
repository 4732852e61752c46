//! Automatic use of rollup tiers by SQL: an optimizer rule that answers
//!
//! ```sql
//! SELECT <tags>, date_bin(INTERVAL '<n>', time) AS b, count(f), sum(f), min(f), max(f), avg(f)
//! FROM <table> WHERE <tag predicates> AND time >= <t0> AND time < <t1>
//! GROUP BY <tags>, b
//! ```
//!
//! from the coarsest tier whose bucket width divides the `date_bin` interval and the
//! time bounds, and which holds some day of the table (tiers hold a table only where
//! they save rows): every raw row of a tier bucket falls into the same `date_bin` bin and
//! on the same side of each bound, so count/sum/min/max/avg over the buckets'
//! statistics equal those over the rows. The scan becomes the tier table
//! (`<table>_1h`, read like `SELECT … FROM llm_tokens_total_1h`, current rollups plus
//! raw rows rolled up on the fly) under the original name, so `EXPLAIN` shows
//! `SubqueryAlias: <table>` over `TableScan: <table>_<tier>`.
//!
//! On event tables (`llm_calls`) the same shape is answered when every tag the query
//! names is one the tier keeps (not in `event_drop_tags`), and also
//! `approx_percentile_cont(f, q)` / `approx_percentile_cont(q) WITHIN GROUP (ORDER BY
//! f)` / `approx_median(f)` of a float field, from the buckets' quantile sketches
//! (`sketch_quantile`, within 1 % of the exact order statistic). Anything else — other
//! aggregates, filters on field values, unaligned bounds, `time > t`, `count(*)` of an
//! event table — is left to the raw table. Stale markers (Prometheus' special NaN)
//! are not rolled up, so a sum over a table holding them is NaN from raw data but not
//! from a tier.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result as DfResult, ScalarValue};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    BinaryExpr, Expr, Filter, LogicalPlan, LogicalPlanBuilder, Operator, cast, col,
};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use sonde_types::{MetricKind, TIME_COLUMN};

use crate::provider::{RollupTable, SondeTable, column_name, literal, timestamp_ms};

/// The rule (see the module docs).
#[derive(Debug, Default)]
pub struct UseRollupTiers;

impl OptimizerRule for UseRollupTiers {
    fn name(&self) -> &str {
        "sonde_use_rollup_tiers"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> DfResult<Transformed<LogicalPlan>> {
        plan.transform_up(|p| match try_rewrite(&p)? {
            Some(new) => Ok(Transformed::yes(new)),
            None => Ok(Transformed::no(p)),
        })
    }
}

/// The time bounds and date_bin interval a tier must divide, and the scan.
fn try_rewrite(plan: &LogicalPlan) -> DfResult<Option<LogicalPlan>> {
    let LogicalPlan::Aggregate(agg) = plan else {
        return Ok(None);
    };
    let (predicate, scan) = match agg.input.as_ref() {
        LogicalPlan::Filter(Filter {
            predicate, input, ..
        }) => match input.as_ref() {
            LogicalPlan::TableScan(s) => (Some(predicate), s),
            _ => return Ok(None),
        },
        LogicalPlan::TableScan(s) => (None, s),
        _ => return Ok(None),
    };
    if scan.fetch.is_some() {
        return Ok(None);
    }
    let Ok(provider) = source_as_provider(&scan.source) else {
        return Ok(None);
    };
    let any: &dyn std::any::Any = provider.as_ref();
    let Some(table) = any.downcast_ref::<SondeTable>() else {
        return Ok(None);
    };
    let Some(schema) = table.storage.table_schema(&table.tenant, &table.table) else {
        return Ok(None);
    };
    let event = schema.kind == MetricKind::Event;
    // The tags the tier keeps (event tiers leave out `event_drop_tags`): a query
    // naming any other stays on raw rows.
    let tier_tags =
        sonde_storage::rollup::tier_schema(&schema, table.storage.event_drop_tags()).tags;
    let tags: Vec<&str> = tier_tags.iter().map(String::as_str).collect();
    let fields: Vec<&str> = schema.fields.iter().map(|f| f.name.as_str()).collect();
    let float_field = |f: &str| {
        schema
            .fields
            .iter()
            .any(|d| d.name == f && d.ty == sonde_types::FieldType::F64)
    };

    // Every millisecond amount the tier must divide: the bins and the time bounds.
    let mut must_divide: Vec<i64> = Vec::new();
    let mut has_bin = false;
    for g in &agg.group_expr {
        match g {
            Expr::Column(c) if tags.contains(&c.name.as_str()) => {}
            e => match date_bin_ms(e) {
                Some(ms) => {
                    has_bin = true;
                    must_divide.push(ms);
                }
                None => return Ok(None),
            },
        }
    }
    if !has_bin {
        return Ok(None);
    }
    if let Some(p) = predicate
        && !collect_bounds(p, &tags, &mut must_divide)
    {
        return Ok(None);
    }
    // A tier holding none of the table's days (not built yet, or built without the
    // table because it would save too few rows) would only roll raw rows up on the
    // fly: the next finer tier, else the raw table. Event tables keep their tiers
    // (their quantiles come from the sketches).
    let holds = |t: i64| {
        event
            || table
                .storage
                .rollup_cover(&table.tenant, t, &table.table, i64::MIN, i64::MAX)
                .days
                > 0
    };
    let tier = table
        .storage
        .rollup_tiers()
        .into_iter()
        .rev()
        .find(|&t| must_divide.iter().all(|ms| ms % t == 0) && holds(t));
    let Some(tier) = tier else {
        return Ok(None);
    };

    // count/sum/min/max/avg of a field → statistics of the tier; on event tables
    // approx_percentile_cont/approx_median of a float field → its sketches.
    let single_field = fields.len() == 1 && !event;
    let mut tier_aggs: Vec<Expr> = Vec::new();
    let mut outputs: Vec<Expr> = Vec::new();
    let field_of = |args: &[Expr]| -> Option<String> {
        match args {
            [Expr::Column(c)] if fields.contains(&c.name.as_str()) => Some(c.name.clone()),
            _ => None,
        }
    };
    for (i, a) in agg.aggr_expr.iter().enumerate() {
        let (inner, alias) = match a {
            Expr::Alias(al) => (al.expr.as_ref(), Some(al.name.clone())),
            e => (e, None),
        };
        let Expr::AggregateFunction(AggregateFunction { func, params }) = inner else {
            return Ok(None);
        };
        let name = func.name();
        // `approx_percentile_cont(q) WITHIN GROUP (ORDER BY f)` carries f as its
        // first argument and as its (ascending) order.
        let within_group = name == "approx_percentile_cont"
            && matches!(params.order_by.as_slice(),
                [o] if o.asc && params.args.first() == Some(&o.expr));
        if params.distinct
            || params.filter.is_some()
            || (!params.order_by.is_empty() && !within_group)
        {
            return Ok(None);
        }
        let out_name =
            alias.unwrap_or_else(|| agg.schema.field(agg.group_expr.len() + i).name().clone());
        let out_type = agg
            .schema
            .field(agg.group_expr.len() + i)
            .data_type()
            .clone();
        let stat = |f: &str, s: &str| {
            col(Column::new(
                Some(scan.table_name.clone()),
                format!("{f}_{s}"),
            ))
        };
        let k = |n: &str| format!("__tier_{i}_{n}");
        // approx_percentile_cont(f, q[, centroids]) / approx_median(f): the field and q.
        let quantile = match (name, params.args.as_slice()) {
            ("approx_percentile_cont", [f, q, ..]) if event => {
                quantile_literal(q).map(|q| (field_of(std::slice::from_ref(f)), q))
            }
            ("approx_median", [f]) if event => Some((field_of(std::slice::from_ref(f)), 0.5)),
            _ => None,
        };
        if let Some((field, q)) = quantile {
            let Some(field) = field.filter(|f| float_field(f)) else {
                return Ok(None);
            };
            let s = "sketch";
            tier_aggs.push(
                crate::functions::sketch_quantile()
                    .call(vec![
                        stat(&field, s),
                        Expr::Literal(ScalarValue::Float64(Some(q)), None),
                    ])
                    .alias(k(s)),
            );
            outputs.push(cast(col(k(s)), out_type).alias(out_name));
            continue;
        }
        let field = match (name, field_of(&params.args)) {
            (_, Some(f)) => f,
            // count(*) of a one-field table counts that field's samples.
            ("count", None) if single_field && is_count_star(&params.args) => fields[0].to_string(),
            _ => return Ok(None),
        };
        use datafusion::functions_aggregate::expr_fn::{max, min, sum};
        // Aggregates `stat` of the field with `f` into the column `__tier_<i>_<stat>`.
        let mut over = |f: fn(Expr) -> Expr, s: &str| {
            tier_aggs.push(f(stat(&field, s)).alias(k(s)));
            col(k(s))
        };
        let out = match name {
            // count is never null: no bucket → 0.
            "count" => datafusion::functions::expr_fn::coalesce(vec![
                over(sum, "count"),
                Expr::Literal(ScalarValue::Int64(Some(0)), None),
            ]),
            "sum" => over(sum, "sum"),
            "min" => over(min, "min"),
            "max" => over(max, "max"),
            "avg" => Expr::BinaryExpr(BinaryExpr::new(
                Box::new(over(sum, "sum")),
                Operator::Divide,
                Box::new(cast(over(sum, "count"), DataType::Float64)),
            )),
            _ => return Ok(None),
        };
        outputs.push(cast(out, out_type).alias(out_name));
    }

    // The tier table, under the raw table's name so every column keeps its qualifier.
    let tier_table = RollupTable::new(
        table.storage.clone(),
        &table.tenant,
        &table.table,
        tier,
        &schema,
    );
    let tier_name = format!(
        "{}_{}",
        table.table,
        sonde_storage::rollup::tier_suffix(tier)
    );
    let mut b =
        LogicalPlanBuilder::scan(tier_name, provider_as_source(Arc::new(tier_table)), None)?
            .alias(scan.table_name.clone())?;
    if let Some(p) = predicate {
        b = b.filter(p.clone())?;
    }
    // Group expressions keep their output names (a re-planned date_bin over a cast
    // would otherwise be named differently).
    let groups: Vec<Expr> = agg
        .group_expr
        .iter()
        .enumerate()
        .map(|(i, g)| match g {
            Expr::Column(_) => g.clone(),
            g => g.clone().alias(agg.schema.field(i).name()),
        })
        .collect();
    let b = b.aggregate(groups, tier_aggs)?;
    // Restore the aggregate's output: group columns as they were, then the values.
    let mut proj: Vec<Expr> = agg
        .schema
        .iter()
        .take(agg.group_expr.len())
        .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))
        .collect();
    proj.extend(outputs);
    let new = b.project(proj)?.build()?;
    // The rule must not change the schema the rest of the plan sees.
    if new
        .schema()
        .as_ref()
        .has_equivalent_names_and_types(agg.schema.as_ref())
        .is_err()
    {
        return Ok(None);
    }
    Ok(Some(new))
}

/// A constant quantile in `[0, 1]`.
fn quantile_literal(e: &Expr) -> Option<f64> {
    match literal(e)?.cast_to(&DataType::Float64).ok()? {
        ScalarValue::Float64(Some(q)) if (0.0..=1.0).contains(&q) => Some(q),
        _ => None,
    }
}

fn is_count_star(args: &[Expr]) -> bool {
    matches!(args, [] | [Expr::Literal(ScalarValue::Int64(Some(1)), _)])
}

/// `date_bin(<interval>, time)` (time possibly cast; origin absent or the epoch):
/// the interval in ms.
fn date_bin_ms(e: &Expr) -> Option<i64> {
    let Expr::ScalarFunction(f) = e else {
        return None;
    };
    if f.func.name() != "date_bin" {
        return None;
    }
    let (interval, arg) = match f.args.as_slice() {
        [i, a] => (i, a),
        [i, a, Expr::Literal(origin, _)] if origin_is_epoch(origin) => (i, a),
        _ => return None,
    };
    if column_name(arg)? != TIME_COLUMN {
        return None;
    }
    let Expr::Literal(v, _) = interval else {
        return None;
    };
    let ms = match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => {
            i64::from(i.days) * 86_400_000 + i.nanoseconds / 1_000_000
        }
        ScalarValue::IntervalDayTime(Some(i)) => {
            i64::from(i.days) * 86_400_000 + i64::from(i.milliseconds)
        }
        _ => return None,
    };
    (ms > 0).then_some(ms)
}

fn origin_is_epoch(v: &ScalarValue) -> bool {
    matches!(
        v,
        ScalarValue::TimestampNanosecond(Some(0), _)
            | ScalarValue::TimestampMicrosecond(Some(0), _)
            | ScalarValue::TimestampMillisecond(Some(0), _)
            | ScalarValue::TimestampSecond(Some(0), _)
    )
}

/// Checks a WHERE clause the tier can answer: conjunctions of predicates on tags
/// (any form) and `time >= t` / `time < t` bounds, whose `t` (ms) go to `out`.
fn collect_bounds(p: &Expr, tags: &[&str], out: &mut Vec<i64>) -> bool {
    match p {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) if *op == Operator::And => {
            collect_bounds(left, tags, out) && collect_bounds(right, tags, out)
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right })
            if column_name(left) == Some(TIME_COLUMN) =>
        {
            if !matches!(op, Operator::GtEq | Operator::Lt) {
                return false;
            }
            match timestamp_literal_ms(right) {
                Some(ms) => {
                    out.push(ms);
                    true
                }
                None => false,
            }
        }
        e => {
            // Predicates that read tags only.
            let mut only_tags = true;
            let _ = e.apply(|x| {
                if let Expr::Column(c) = x
                    && !tags.contains(&c.name.as_str())
                {
                    only_tags = false;
                }
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            });
            only_tags
        }
    }
}

/// A timestamp literal in exact milliseconds (`None` when it has sub-ms parts).
fn timestamp_literal_ms(e: &Expr) -> Option<i64> {
    let (lo, hi) = timestamp_ms(&literal(e)?)?;
    (lo == hi).then_some(lo)
}
