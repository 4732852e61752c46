//! PromQL over Sonde storage.
//!
//! Queries are parsed with `promql-parser` and evaluated over a step grid: every
//! expression yields its values at all steps at once, so a range query reads each
//! selector's data exactly once (one storage scan of `[start - range - offset,
//! end - offset]`, pruned by time and by the label index) and range functions run
//! over the samples of each series with a sliding window.
//!
//! Semantics follow Prometheus 2.x (the version the differential tests run against):
//! range selectors and the lookback window include both ends, counter resets and
//! `rate` extrapolation behave as in Prometheus, and staleness markers end a series.
//! Tables map to metric names as follows: a table whose only field is `value` is the
//! metric of the same name; any other table (e.g. the `llm_calls` event table) is one
//! metric per field, `<table>_<field>`. Tables of delta temporality (OTLP delta sums)
//! give `increase`/`rate`/`delta` as the sum of the deltas in the window (divided by
//! the range for `rate`), not Prometheus' extrapolation of a cumulative counter.

mod aggregate;
mod eval;
mod format;
mod funcs;
pub mod rollup;
mod select;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use parking_lot::Mutex;

use sonde_storage::Storage;
use sonde_storage::lru::Lru;

pub use eval::{Metric, QueryValue, Raw, Series};
pub use format::format_float;
pub use select::{MetricRef, delete_series, metric_refs, series_matching};

/// Limits and defaults of the PromQL engine.
#[derive(Debug, Clone)]
pub struct PromConfig {
    /// How far back an instant selector looks for the latest sample.
    pub lookback_delta: Duration,
    /// Most samples one query may load from storage (Prometheus' `--query.max-samples`).
    pub max_samples: usize,
    /// Wall-clock limit of one query.
    pub timeout: Duration,
    /// Most points per series of a range query.
    pub max_points_per_series: usize,
    /// Step of subqueries that do not give one.
    pub default_subquery_step: Duration,
    /// Answer range functions from rollup tiers where they fit (see [`rollup`]).
    pub use_rollups: bool,
    /// A fitting tier is used only when the raw samples it replaces are at least
    /// this many times its rows (a tier row carries a bucket's statistics, several
    /// columns, so it costs a few raw rows to read); 0 uses every fitting tier.
    pub rollup_min_saving: u64,
    /// Threads one query may use to read and evaluate series (default: the CPUs).
    pub threads: usize,
}

impl Default for PromConfig {
    fn default() -> Self {
        PromConfig {
            lookback_delta: Duration::from_secs(300),
            max_samples: 50_000_000,
            timeout: Duration::from_secs(120),
            max_points_per_series: 11_000,
            default_subquery_step: Duration::from_secs(60),
            use_rollups: true,
            rollup_min_saving: rollup::MIN_SAVING,
            threads: sonde_storage::par::available(),
        }
    }
}

/// Why a query failed. The variants map to Prometheus' `errorType`s.
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    /// The query or a parameter is malformed (`bad_data`, HTTP 400).
    #[error("{0}")]
    BadData(String),
    /// The query is valid but cannot be evaluated (`execution`, HTTP 422).
    #[error("{0}")]
    Execution(String),
    /// The query ran past its timeout (`timeout`, HTTP 503).
    #[error("query timed out in {0}")]
    Timeout(&'static str),
    /// Storage failed (`internal`, HTTP 500).
    #[error("storage: {0}")]
    Storage(#[from] sonde_storage::Error),
}

impl PromError {
    /// Prometheus' `errorType` of this error.
    pub fn error_type(&self) -> &'static str {
        match self {
            PromError::BadData(_) => "bad_data",
            PromError::Execution(_) => "execution",
            PromError::Timeout(_) => "timeout",
            PromError::Storage(_) => "internal",
        }
    }
}

pub type Result<T> = std::result::Result<T, PromError>;

/// Parses a PromQL expression, with Prometheus' error wording.
pub fn parse(query: &str) -> Result<promql_parser::parser::Expr> {
    promql_parser::parser::parse(query).map_err(|e| PromError::BadData(format!("parse error: {e}")))
}

/// [`parse`] through a process-wide cache of parsed queries keyed by their text:
/// dashboards and alerting rules send the same queries again and again, and the
/// parser rebuilds its grammar tables on every call. In a server, where the query
/// before it has left the CPU caches cold, one parse of a dashboard query took
/// ~120 µs (14 µs in a tight loop); a cached one is a hash lookup. Only queries
/// that parse are kept; at most [`PARSED_QUERIES`] of them, the least recently
/// used going first.
fn parse_cached(query: &str) -> Result<Arc<promql_parser::parser::Expr>> {
    static CACHE: LazyLock<Mutex<ParseCache>> =
        LazyLock::new(|| Mutex::new(ParseCache::new(PARSED_QUERIES)));
    if let Some(expr) = CACHE.lock().get(query) {
        return Ok(expr);
    }
    let expr = Arc::new(parse(query)?);
    if query.len() <= MAX_CACHED_QUERY_BYTES {
        CACHE.lock().insert(query.to_string(), expr.clone(), 1);
    }
    Ok(expr)
}

/// Most parsed queries [`parse_cached`] keeps.
pub const PARSED_QUERIES: usize = 512;
/// Longer queries are parsed every time: a generated query rarely repeats, and the
/// bound keeps large queries from filling the cache's memory (dashboard queries are
/// well under 1 KiB).
const MAX_CACHED_QUERY_BYTES: usize = 4 << 10;

/// Parsed queries by their text, each weighing one.
type ParseCache = Lru<String, Arc<promql_parser::parser::Expr>>;

/// An instant query at `time_ms`.
pub fn instant_query(
    storage: &Storage,
    tenant: &str,
    config: &PromConfig,
    query: &str,
    time_ms: i64,
) -> Result<QueryValue> {
    let expr = parse_cached(query)?;
    eval::Evaluator::new(storage, tenant, config, time_ms, time_ms).run(&expr, time_ms, 0, 1)
}

/// A range query over `[start_ms, end_ms]` every `step_ms`.
pub fn range_query(
    storage: &Storage,
    tenant: &str,
    config: &PromConfig,
    query: &str,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
) -> Result<QueryValue> {
    if step_ms <= 0 {
        return Err(PromError::BadData(
            "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
        ));
    }
    if end_ms < start_ms {
        return Err(PromError::BadData(
            "end timestamp must not be before start time".into(),
        ));
    }
    let points = (end_ms - start_ms) / step_ms + 1;
    if points as usize > config.max_points_per_series {
        return Err(PromError::BadData(format!(
            "exceeded maximum resolution of {} points per timeseries. Try decreasing the query resolution (?step=XX)",
            thousands(config.max_points_per_series)
        )));
    }
    let expr = parse_cached(query)?;
    match expr.value_type() {
        promql_parser::parser::value::ValueType::Vector
        | promql_parser::parser::value::ValueType::Scalar => {}
        other => {
            return Err(PromError::BadData(format!(
                "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                type_name(other)
            )));
        }
    }
    eval::Evaluator::new(storage, tenant, config, start_ms, end_ms).run(
        &expr,
        start_ms,
        step_ms,
        points as usize,
    )
}

/// `11000` → `11,000`, as Prometheus words the resolution limit.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A valid Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_label_name(s: &str) -> bool {
    is_name(s, false)
}

/// A valid Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_metric_name(s: &str) -> bool {
    is_name(s, true)
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || (colon && ch == ':'))
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || (colon && ch == ':'))
}

pub(crate) fn type_name(t: promql_parser::parser::value::ValueType) -> &'static str {
    use promql_parser::parser::value::ValueType;
    match t {
        ValueType::Vector => "instant vector",
        ValueType::Scalar => "scalar",
        ValueType::Matrix => "range vector",
        ValueType::String => "string",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_queries_are_reused_and_the_least_recently_used_goes_first() {
        let q = "sum by (job) (rate(parse_cache_test_total[5m]))";
        let a = parse_cached(q).unwrap();
        let b = parse_cached(q).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the second parse comes from the cache");
        assert_eq!(*a, parse(q).unwrap());
        // A query that does not parse is an error every time, never cached.
        for _ in 0..2 {
            assert!(
                matches!(parse_cached("sum(("), Err(PromError::BadData(m)) if m.starts_with("parse error"))
            );
        }

        let mut cache = ParseCache::new(PARSED_QUERIES);
        let expr = Arc::new(parse("up").unwrap());
        for i in 0..PARSED_QUERIES {
            cache.insert(format!("up{i}"), expr.clone(), 1);
        }
        // Used recently: `up0` stays when the next new query evicts one.
        assert!(cache.get("up0").is_some());
        cache.insert("new".to_string(), expr.clone(), 1);
        assert_eq!(cache.len(), PARSED_QUERIES);
        assert!(cache.get("up0").is_some(), "recently used");
        assert!(cache.get("up1").is_none(), "least recently used, evicted");
        assert!(cache.get("new").is_some());
        // Inserting a query already cached evicts nothing.
        cache.insert("new".to_string(), expr, 1);
        assert_eq!(cache.len(), PARSED_QUERIES);
        assert!(cache.get("up2").is_some());
    }
}
