//! From PromQL selectors to storage scans: metric names resolve to (table, field)
//! pairs, label matchers go to the storage index, and what comes back becomes
//! [`Raw`] series with `__name__` among their labels.

use promql_parser::label::{MatchOp as PMatchOp, Matcher as PMatcher};
use sonde_storage::series::Values;
use sonde_storage::{Matcher, ScanRequest, Storage};
use sonde_types::{Labels, MetricKind, NAME_LABEL};

use crate::eval::{Metric, Raw};
use crate::{PromError, Result};

/// The bit pattern Prometheus writes to mark a series as stale.
pub(crate) const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// One PromQL metric name and where its samples live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricRef {
    pub name: String,
    pub table: String,
    pub field: String,
    pub kind: MetricKind,
}

/// Every metric name of a tenant: a table whose only field is `value` is the metric
/// of its name; any other table is one metric per field, `<table>_<field>`.
pub fn metric_refs(storage: &Storage, tenant: &str) -> Vec<MetricRef> {
    let mut out = Vec::new();
    for (table, schema) in storage.tables(tenant) {
        if schema.fields.len() == 1 && schema.fields[0].name == "value" {
            out.push(MetricRef {
                name: table.clone(),
                table,
                field: "value".into(),
                kind: schema.kind,
            });
        } else {
            for f in &schema.fields {
                out.push(MetricRef {
                    name: format!("{table}_{}", f.name),
                    table: table.clone(),
                    field: f.name.clone(),
                    kind: schema.kind,
                });
            }
        }
    }
    out
}

/// The metrics whose names pass the `__name__` matchers.
pub(crate) fn resolve(
    storage: &Storage,
    tenant: &str,
    name_matchers: &[&PMatcher],
) -> Vec<MetricRef> {
    // Fast path for the common `name{...}` form: no listing of every table.
    if let Some(m) = name_matchers
        .iter()
        .find(|m| matches!(m.op, PMatchOp::Equal))
    {
        let name = &m.value;
        let mut out = Vec::new();
        if let Some(s) = storage.table_schema(tenant, name)
            && s.fields.len() == 1
            && s.fields[0].name == "value"
        {
            out.push(MetricRef {
                name: name.clone(),
                table: name.clone(),
                field: "value".into(),
                kind: s.kind,
            });
        }
        for (i, _) in name.match_indices('_') {
            let (table, field) = (&name[..i], &name[i + 1..]);
            if let Some(s) = storage.table_schema(tenant, table)
                && !(s.fields.len() == 1 && s.fields[0].name == "value")
                && let Some(f) = s.fields.iter().find(|f| f.name == field)
            {
                out.push(MetricRef {
                    name: name.clone(),
                    table: table.into(),
                    field: f.name.clone(),
                    kind: s.kind,
                });
            }
        }
        out.retain(|r| name_matchers.iter().all(|m| m.is_match(&r.name)));
        return out;
    }
    metric_refs(storage, tenant)
        .into_iter()
        .filter(|r| name_matchers.iter().all(|m| m.is_match(&r.name)))
        .collect()
}

/// Converts label matchers (not `__name__`) to storage matchers.
pub(crate) fn storage_matchers(matchers: &[&PMatcher]) -> Result<Vec<Matcher>> {
    matchers
        .iter()
        .map(|m| {
            Ok(match &m.op {
                PMatchOp::Equal => Matcher::eq(&m.name, &m.value),
                PMatchOp::NotEqual => Matcher::ne(&m.name, &m.value),
                PMatchOp::Re(_) => {
                    Matcher::re(&m.name, &m.value).map_err(|e| PromError::BadData(e.to_string()))?
                }
                PMatchOp::NotRe(_) => Matcher::not_re(&m.name, &m.value)
                    .map_err(|e| PromError::BadData(e.to_string()))?,
            })
        })
        .collect()
}

/// Splits a selector's matchers into `__name__` matchers and the rest.
pub(crate) fn split(matchers: &[PMatcher]) -> (Vec<&PMatcher>, Vec<&PMatcher>) {
    matchers.iter().partition(|m| m.name == NAME_LABEL)
}

/// A series as [`fetch_map`] hands it over: its samples (`raw.metric` left empty)
/// and the label set naming it, turned into a [`Metric`] only when asked — an
/// aggregation needs just its group's labels.
pub(crate) struct Selected<'a> {
    pub name: &'a str,
    pub labels: &'a Labels,
    pub raw: Raw,
}

impl<'a> Selected<'a> {
    /// The series' labels with `__name__`, sorted.
    pub fn metric(&self) -> Metric {
        metric(self.name, self.labels)
    }

    /// The label pairs, with `__name__` when `with_name`, sorted by name.
    pub fn pairs(&self, with_name: bool) -> Vec<(&'a str, &'a str)> {
        let mut pairs: Vec<(&str, &str)> = self.labels.iter().collect();
        if with_name {
            pairs.push((NAME_LABEL, self.name));
            pairs.sort_unstable();
        }
        pairs
    }

    pub fn into_raw(self) -> Raw {
        let metric = self.metric();
        Raw { metric, ..self.raw }
    }
}

/// `labels` with `__name__` = `name`, sorted.
pub(crate) fn metric(name: &str, labels: &Labels) -> Metric {
    let mut metric: Metric = Vec::with_capacity(labels.len() + 1);
    metric.push((NAME_LABEL.to_string(), name.to_string()));
    metric.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    metric.sort();
    metric
}

/// The series matching `matchers` with samples in `[mint, maxt]`, each sorted by
/// time: each part of each metric's selection is handed to `f` as an iterator of
/// [`Selected`] series as soon as it is read (see [`Storage::scan_map`]), so a large
/// selection is never held whole; parts are read and mapped on up to `threads`
/// threads. Returns `f`'s results in order and how many metric names were read.
/// `budget` is decreased by the samples loaded; the call fails once it would go
/// below zero (checked as parts arrive).
pub(crate) fn fetch_map<U: Send>(
    storage: &Storage,
    tenant: &str,
    matchers: &[PMatcher],
    (mint, maxt): (i64, i64),
    budget: &mut usize,
    threads: usize,
    f: impl for<'s> Fn(&mut dyn Iterator<Item = Selected<'s>>) -> Result<U> + Sync,
) -> Result<(Vec<U>, usize)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (names, rest) = split(matchers);
    let refs = resolve(storage, tenant, &names);
    let label_matchers = storage_matchers(&rest)?;
    let loaded = AtomicUsize::new(0);
    let limit = *budget;
    let mut out = Vec::new();
    for r in &refs {
        let mut req = ScanRequest::new(&r.table, mint, maxt)
            .with_fields(vec![r.field.clone()])
            .with_threads(threads);
        req.matchers = label_matchers.clone();
        let delta = r.kind == MetricKind::DeltaSum;
        let (parts, _) = storage.scan_map(tenant, &req, |part| -> Result<U> {
            let n: usize = part.iter().map(|(_, d)| d.ts.len()).sum();
            if loaded.fetch_add(n, Ordering::Relaxed) + n > limit {
                return Err(too_many_samples());
            }
            // Converted one at a time as `f` asks: a series stays in cache from its
            // conversion through its evaluation.
            f(&mut part.iter_mut().filter_map(|(labels, data)| {
                Some(Selected {
                    name: &r.name,
                    labels,
                    raw: to_raw(data, delta)?,
                })
            }))
        })?;
        for p in parts {
            out.push(p?);
        }
    }
    *budget -= loaded.into_inner();
    Ok((out, refs.len()))
}

fn too_many_samples() -> PromError {
    PromError::Execution(
        "query processing would load too many samples into memory in query execution".into(),
    )
}

/// One scanned series' samples as a [`Raw`] without its metric (its columns moved
/// out when every value is valid, the common case); `None` when it has no valid
/// sample.
fn to_raw(data: &mut sonde_storage::series::SeriesData, delta: bool) -> Option<Raw> {
    let col = data.cols.pop()??;
    let n = data.ts.len();
    let (ts, vals) = match (col.valid, col.values) {
        (None, Values::F64(v)) => (std::mem::take(&mut data.ts), v),
        (None, Values::I64(v)) => (
            std::mem::take(&mut data.ts),
            v.into_iter().map(|x| x as f64).collect(),
        ),
        // Raw tables have no bytes fields (only rollup sketches are).
        (_, Values::Bytes(_)) => return None,
        (Some(valid), values) => {
            let mut ts = Vec::with_capacity(n);
            let mut vals = Vec::with_capacity(n);
            for i in (0..n).filter(|&i| valid[i]) {
                ts.push(data.ts[i]);
                vals.push(match &values {
                    Values::F64(v) => v[i],
                    Values::I64(v) => v[i] as f64,
                    Values::Bytes(_) => f64::NAN,
                });
            }
            (ts, vals)
        }
    };
    if ts.is_empty() {
        return None;
    }
    Some(Raw {
        metric: Vec::new(),
        ts,
        vals,
        delta,
    })
}

/// Label sets (with `__name__`) of the series matching any of `selectors` with data
/// in `[start, end]`, from the catalog and the head (no segment reads).
pub fn series_matching(
    storage: &Storage,
    tenant: &str,
    selectors: &[Vec<PMatcher>],
    start: i64,
    end: i64,
) -> Result<Vec<Metric>> {
    let all = storage.series(tenant, start, end)?;
    let mut refs_by_table: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for r in metric_refs(storage, tenant) {
        refs_by_table.entry(r.table).or_default().push(r.name);
    }
    let mut out = std::collections::BTreeSet::new();
    for (table, labels) in &all {
        let Some(names) = refs_by_table.get(table) else {
            continue;
        };
        for name in names {
            let matches = |sel: &Vec<PMatcher>| {
                sel.iter().all(|m| {
                    let v = if m.name == NAME_LABEL {
                        name.as_str()
                    } else {
                        labels.get(&m.name).unwrap_or("")
                    };
                    m.is_match(v)
                })
            };
            if selectors.iter().any(matches) {
                out.insert(metric(name, labels));
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// Deletes, from every segment, the rows in `[start, end]` of the series matching
/// any of `selectors`. A metric name selects its table (`llm_calls_cost_usd` →
/// `llm_calls`); a table's own name works too. A table is a row store, so a series'
/// rows go with all their fields. Returns what the storage removed.
pub fn delete_series(
    storage: &Storage,
    tenant: &str,
    selectors: &[Vec<PMatcher>],
    start: i64,
    end: i64,
) -> Result<sonde_storage::MaintenanceStats> {
    let mut total = sonde_storage::MaintenanceStats::default();
    for sel in selectors {
        let (names, rest) = split(sel);
        if names.is_empty() && rest.iter().all(|m| m.is_match("")) {
            return Err(PromError::BadData(
                "match[] must select something: name a metric or give a label matcher that does not match the empty string"
                    .into(),
            ));
        }
        let mut tables: std::collections::BTreeSet<String> = resolve(storage, tenant, &names)
            .into_iter()
            .map(|r| r.table)
            .collect();
        if let Some(m) = names.iter().find(|m| matches!(m.op, PMatchOp::Equal))
            && storage.table_schema(tenant, &m.value).is_some()
        {
            tables.insert(m.value.clone());
        }
        let matchers = storage_matchers(&rest)?;
        for table in tables {
            let s = storage.delete_series(tenant, &table, &matchers, start, end)?;
            total.dropped_segments += s.dropped_segments;
            total.rewritten_segments += s.rewritten_segments;
            total.removed_rows += s.removed_rows;
        }
    }
    Ok(total)
}
