//! OTLP metrics → Sonde tables. One table per normalised metric name (histograms
//! and summaries: one per suffix), one f64 field `value`.
//!
//! | OTLP | tables | kind |
//! |---|---|---|
//! | Gauge | `name` | gauge |
//! | Sum, monotonic, cumulative | `name_total` | counter |
//! | Sum, monotonic, delta | `name_total` | delta_sum |
//! | Sum, non-monotonic, cumulative | `name` | gauge |
//! | Sum, non-monotonic, delta | `name` | delta_sum |
//! | Histogram (explicit buckets) | `name_bucket{le}` (cumulative over `le`, `+Inf` = count), `name_sum`, `name_count` | histogram (cumulative) / delta_sum (delta) |
//! | Exponential histogram | the same three, with `le` = each bucket's upper bound `base^(index+1)` (negative buckets `-base^index`, the zero bucket `zero_threshold`) | as above |
//! | Summary | `name{quantile}`, `name_sum`, `name_count` | gauge, histogram, histogram |
//!
//! Labels: every resource attribute, `job` (`service.namespace/service.name`) and
//! `instance` (`service.instance.id`) as Prometheus derives them, the scope as
//! `otel_scope_name`, `otel_scope_version` and `otel_scope_<attribute>`, then the
//! point's attributes (which win over resource attributes of the same name). Keys
//! are normalised ([`super::names::label_name`]); deprecated GenAI keys are stored
//! under their current name (`gen_ai.system` → `gen_ai_provider_name`); attributes
//! that normalise to the same name are joined with `;`; empty values are dropped.
//!
//! Points are checked one by one (labels, time window, bucket shapes), so one bad
//! point does not reject its neighbours. A point flagged `NO_RECORDED_VALUE` carries
//! no value and is skipped (counted in `skipped_points`).

use std::collections::{BTreeMap, HashMap, HashSet};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, ExponentialHistogramDataPoint, HistogramDataPoint, Metric,
    metric::Data, number_data_point,
};
use sonde_types::{
    FieldType, Labels, Limits, MetricKind, Samples, SeriesBatch, TableBatch, TimestampMs,
    validate_table_name,
};

use super::names::{NameKind, canonical_key, label_name, metric_name};
use crate::ingest::Rejected;
use crate::metadata::MetricMeta;

/// `DataPointFlags.NO_RECORDED_VALUE_MASK`.
const NO_RECORDED_VALUE: u32 = 1;

/// The tables of one request, and what could not be converted.
#[derive(Debug, Default)]
pub struct Converted {
    pub tables: Vec<Result<TableBatch, Rejected>>,
    /// Data points rejected before storage (bad labels, time, shape).
    pub rejected_points: u64,
    /// Samples those points would have produced (for the rejection metric).
    pub rejected_samples: u64,
    pub first_error: Option<String>,
    /// Points with the `NO_RECORDED_VALUE` flag.
    pub skipped_points: u64,
    /// Data points per metric family, and the family of each table, so a table
    /// rejected by storage maps back to the OTLP points it held.
    pub family_points: HashMap<String, u64>,
    pub table_family: HashMap<String, String>,
    pub metadata: Vec<(String, MetricMeta)>,
}

impl Converted {
    /// OTLP data points lost with the given rejected tables (each family once).
    pub fn points_of_tables<'a>(&self, tables: impl Iterator<Item = &'a str>) -> u64 {
        let families: HashSet<&String> = tables.filter_map(|t| self.table_family.get(t)).collect();
        families
            .into_iter()
            .map(|f| self.family_points.get(f).copied().unwrap_or(0))
            .sum()
    }
}

struct TableAcc {
    batch: TableBatch,
    index: HashMap<Labels, usize>,
}

struct Builder<'a> {
    limits: &'a Limits,
    now_ms: TimestampMs,
    existing_kind: &'a dyn Fn(&str) -> Option<MetricKind>,
    tables: BTreeMap<String, TableAcc>,
    out: Converted,
}

/// One sample a point produces: table suffix, extra label, value.
type Sample = (&'static str, Option<(&'static str, String)>, f64);

impl Builder<'_> {
    fn reject(&mut self, samples: u64, reason: String) {
        self.out.rejected_points += 1;
        self.out.rejected_samples += samples;
        self.out.first_error.get_or_insert(reason);
    }

    /// Checks one point and, if it passes, adds all its samples; false if rejected.
    fn point(
        &mut self,
        family: &str,
        kind: MetricKind,
        base: &BTreeMap<String, String>,
        attributes: &[KeyValue],
        time_unix_nano: u64,
        samples: Vec<Sample>,
    ) -> bool {
        let n = samples.len() as u64;
        if time_unix_nano == 0 {
            self.reject(n, format!("metric {family:?}: time_unix_nano is 0"));
            return false;
        }
        let ts = (time_unix_nano / 1_000_000) as TimestampMs;
        if ts > self.now_ms + self.limits.max_future_ms {
            self.reject(
                n,
                format!(
                    "metric {family:?}: timestamp {ts} ms is more than {} ms in the future",
                    self.limits.max_future_ms
                ),
            );
            return false;
        }
        if let Some(past) = self.limits.max_past_ms
            && ts < self.now_ms - past
        {
            self.reject(
                n,
                format!("metric {family:?}: timestamp {ts} ms is more than {past} ms in the past"),
            );
            return false;
        }
        let mut labels = base.clone();
        add_attributes(&mut labels, attributes, "");
        let build = |l: &BTreeMap<String, String>| {
            Labels::new(l.iter().filter(|(_, v)| !v.is_empty()))
                .and_then(|l| l.validate(self.limits).map(|()| l))
        };
        // The point's own label set, built once; samples with an extra label
        // (`le`, `quantile`) add it to the map and take it out again.
        let mut plain: Option<Labels> = None;
        // Check everything first: a point is stored whole or not at all.
        let mut checked = Vec::with_capacity(samples.len());
        for (suffix, extra, value) in samples {
            let table = format!("{family}{suffix}");
            let built = match extra {
                None => match &plain {
                    Some(l) => Ok(l.clone()),
                    None => build(&labels).inspect(|l| plain = Some(l.clone())),
                },
                Some((k, v)) => {
                    let old = labels.insert(k.to_string(), v);
                    let l = build(&labels);
                    match old {
                        Some(o) => labels.insert(k.to_string(), o),
                        None => labels.remove(k),
                    };
                    l
                }
            };
            let labels = match built {
                Ok(l) => l,
                Err(e) => {
                    self.reject(n, format!("metric {family:?}: {e}"));
                    return false;
                }
            };
            if let Err(e) = self.table(&table, family, kind) {
                self.reject(n, e);
                return false;
            }
            checked.push((table, labels, value));
        }
        for (table, labels, value) in checked {
            let acc = self.tables.get_mut(&table).expect("table() created it");
            let i = match acc.index.get(&labels) {
                Some(&i) => i,
                None => {
                    acc.batch.series.push(SeriesBatch::f64(
                        labels.clone(),
                        Samples::new(),
                        Samples::new(),
                    ));
                    acc.index.insert(labels, acc.batch.series.len() - 1);
                    acc.batch.series.len() - 1
                }
            };
            let s = &mut acc.batch.series[i];
            s.timestamps.push(ts);
            match &mut s.fields[0] {
                sonde_types::FieldColumn::F64(v) => v.push(value),
                sonde_types::FieldColumn::I64(_) => unreachable!("OTLP tables are f64"),
            }
        }
        true
    }

    /// Counts one OTLP data point of `family` as converted.
    fn count(&mut self, family: &str) {
        *self
            .out
            .family_points
            .entry(family.to_string())
            .or_insert(0) += 1;
    }

    /// The accumulator of `table`, created on first use; refuses a kind that
    /// contradicts the stored table or another metric of this request.
    fn table(&mut self, table: &str, family: &str, kind: MetricKind) -> Result<(), String> {
        if let Some(acc) = self.tables.get(table) {
            if acc.batch.kind != kind {
                return Err(format!(
                    "metric {family:?}: table {table:?} is {} in this request; got {}",
                    acc.batch.kind.as_str(),
                    kind.as_str()
                ));
            }
            return Ok(());
        }
        validate_table_name(table, self.limits).map_err(|e| e.to_string())?;
        if let Some(existing) = (self.existing_kind)(table)
            && existing != kind
        {
            return Err(format!(
                "metric {family:?}: table {table:?} holds {} data; got {} (a metric keeps its type and temporality)",
                existing.as_str(),
                kind.as_str()
            ));
        }
        self.tables.insert(
            table.to_string(),
            TableAcc {
                batch: TableBatch::single(table, kind, FieldType::F64),
                index: HashMap::new(),
            },
        );
        self.out
            .table_family
            .insert(table.to_string(), family.to_string());
        Ok(())
    }
}

/// Converts a request; `existing_kind` gives the kind of a table already stored.
pub fn convert(
    req: ExportMetricsServiceRequest,
    limits: &Limits,
    now_ms: TimestampMs,
    existing_kind: &dyn Fn(&str) -> Option<MetricKind>,
) -> Converted {
    let mut b = Builder {
        limits,
        now_ms,
        existing_kind,
        tables: BTreeMap::new(),
        out: Converted::default(),
    };
    for rm in req.resource_metrics {
        let mut resource = BTreeMap::new();
        if let Some(r) = &rm.resource {
            add_attributes(&mut resource, &r.attributes, "");
            let attr = |k: &str| {
                r.attributes
                    .iter()
                    .find(|kv| kv.key == k)
                    .map(|kv| value_string(kv.value.as_ref()))
                    .filter(|v| !v.is_empty())
            };
            if let Some(service) = attr("service.name") {
                let job = match attr("service.namespace") {
                    Some(ns) => format!("{ns}/{service}"),
                    None => service,
                };
                resource.insert("job".to_string(), job);
            }
            if let Some(instance) = attr("service.instance.id") {
                resource.insert("instance".to_string(), instance);
            }
        }
        for sm in rm.scope_metrics {
            let mut base = resource.clone();
            if let Some(scope) = &sm.scope {
                if !scope.name.is_empty() {
                    base.insert("otel_scope_name".into(), scope.name.clone());
                }
                if !scope.version.is_empty() {
                    base.insert("otel_scope_version".into(), scope.version.clone());
                }
                add_attributes(&mut base, &scope.attributes, "otel_scope_");
            }
            for m in sm.metrics {
                metric(&mut b, &base, m);
            }
        }
    }
    let mut out = b.out;
    out.tables
        .extend(b.tables.into_values().map(|acc| Ok(acc.batch)));
    out
}

fn metric(b: &mut Builder<'_>, base: &BTreeMap<String, String>, m: Metric) {
    let Some(data) = m.data else {
        b.reject(
            0,
            format!("metric {:?}: no data (gauge, sum, histogram, …)", m.name),
        );
        return;
    };
    let delta = |t: i32| t == AggregationTemporality::Delta as i32;
    let valid_temporality = |t: i32| {
        t == AggregationTemporality::Delta as i32 || t == AggregationTemporality::Cumulative as i32
    };
    let (name_kind, kind, meta_kind, points) = match &data {
        Data::Gauge(g) => (
            NameKind::Gauge,
            MetricKind::Gauge,
            "gauge",
            g.data_points.len(),
        ),
        Data::Sum(s) => {
            let (nk, k, mk) = match (s.is_monotonic, delta(s.aggregation_temporality)) {
                (true, false) => (NameKind::Counter, MetricKind::Counter, "counter"),
                (true, true) => (NameKind::Counter, MetricKind::DeltaSum, "delta_sum"),
                (false, false) => (NameKind::Other, MetricKind::Gauge, "gauge"),
                (false, true) => (NameKind::Other, MetricKind::DeltaSum, "delta_sum"),
            };
            if !valid_temporality(s.aggregation_temporality) {
                return reject_all(b, &m.name, s.data_points.len(), "aggregation_temporality");
            }
            (nk, k, mk, s.data_points.len())
        }
        Data::Histogram(h) => {
            if !valid_temporality(h.aggregation_temporality) {
                return reject_all(b, &m.name, h.data_points.len(), "aggregation_temporality");
            }
            let d = delta(h.aggregation_temporality);
            (
                NameKind::Other,
                if d {
                    MetricKind::DeltaSum
                } else {
                    MetricKind::Histogram
                },
                if d { "delta_histogram" } else { "histogram" },
                h.data_points.len(),
            )
        }
        Data::ExponentialHistogram(h) => {
            if !valid_temporality(h.aggregation_temporality) {
                return reject_all(b, &m.name, h.data_points.len(), "aggregation_temporality");
            }
            let d = delta(h.aggregation_temporality);
            (
                NameKind::Other,
                if d {
                    MetricKind::DeltaSum
                } else {
                    MetricKind::Histogram
                },
                if d { "delta_histogram" } else { "histogram" },
                h.data_points.len(),
            )
        }
        Data::Summary(s) => (
            NameKind::Other,
            MetricKind::Histogram,
            "summary",
            s.data_points.len(),
        ),
    };
    let Some(family) = metric_name(&m.name, &m.unit, name_kind) else {
        return reject_all(
            b,
            &m.name,
            points,
            "name (nothing usable after normalisation)",
        );
    };
    b.out.metadata.push((
        family.clone(),
        MetricMeta {
            kind: meta_kind.to_string(),
            help: m.description.clone(),
            unit: m.unit.clone(),
            otel_name: m.name.clone(),
        },
    ));
    match data {
        Data::Gauge(g) => number_points(b, &family, kind, base, g.data_points),
        Data::Sum(s) => number_points(b, &family, kind, base, s.data_points),
        Data::Histogram(h) => bucket_points(b, &family, kind, base, h.data_points, |p| {
            (
                p.flags,
                &p.attributes,
                p.time_unix_nano,
                histogram_samples(p),
            )
        }),
        Data::ExponentialHistogram(h) => {
            bucket_points(b, &family, kind, base, h.data_points, |p| {
                (
                    p.flags,
                    &p.attributes,
                    p.time_unix_nano,
                    exponential_samples(p),
                )
            })
        }
        Data::Summary(s) => {
            for p in s.data_points {
                if p.flags & NO_RECORDED_VALUE != 0 {
                    b.out.skipped_points += 1;
                    continue;
                }
                // Quantiles are gauges, sum and count cumulative: two tables of
                // different kinds from one point.
                let quantiles: Vec<Sample> = p
                    .quantile_values
                    .iter()
                    .map(|q| ("", Some(("quantile", le_string(q.quantile))), q.value))
                    .collect();
                let q_ok = quantiles.is_empty()
                    || b.point(
                        &family,
                        MetricKind::Gauge,
                        base,
                        &p.attributes,
                        p.time_unix_nano,
                        quantiles,
                    );
                let s_ok = q_ok
                    && b.point(
                        &family,
                        MetricKind::Histogram,
                        base,
                        &p.attributes,
                        p.time_unix_nano,
                        vec![("_sum", None, p.sum), ("_count", None, p.count as f64)],
                    );
                if s_ok {
                    b.count(&family);
                }
            }
        }
    }
}

/// (flags, attributes, time, samples) of a histogram-like point.
type Parts<'a> = (u32, &'a [KeyValue], u64, Result<Vec<Sample>, String>);

/// Explicit and exponential histogram points: skip the empty, convert, store.
fn bucket_points<P>(
    b: &mut Builder<'_>,
    family: &str,
    kind: MetricKind,
    base: &BTreeMap<String, String>,
    points: Vec<P>,
    parts: fn(&P) -> Parts<'_>,
) {
    for p in &points {
        let (flags, attributes, time, samples) = parts(p);
        if flags & NO_RECORDED_VALUE != 0 {
            b.out.skipped_points += 1;
            continue;
        }
        match samples {
            Ok(s) => {
                if b.point(family, kind, base, attributes, time, s) {
                    b.count(family);
                }
            }
            Err(e) => b.reject(0, format!("metric {family:?}: {e}")),
        }
    }
}

fn reject_all(b: &mut Builder<'_>, name: &str, points: usize, what: &str) {
    b.out.rejected_points += points as u64;
    b.out
        .first_error
        .get_or_insert(format!("metric {name:?}: invalid {what}"));
}

fn number_points(
    b: &mut Builder<'_>,
    family: &str,
    kind: MetricKind,
    base: &BTreeMap<String, String>,
    points: Vec<opentelemetry_proto::tonic::metrics::v1::NumberDataPoint>,
) {
    for p in points {
        if p.flags & NO_RECORDED_VALUE != 0 {
            b.out.skipped_points += 1;
            continue;
        }
        let value = match p.value {
            Some(number_data_point::Value::AsDouble(v)) => v,
            Some(number_data_point::Value::AsInt(v)) => v as f64,
            None => {
                b.reject(
                    1,
                    format!("metric {family:?}: a data point without a value"),
                );
                continue;
            }
        };
        if b.point(
            family,
            kind,
            base,
            &p.attributes,
            p.time_unix_nano,
            vec![("", None, value)],
        ) {
            b.count(family);
        }
    }
}

/// `le` label values: the shortest decimal that reads back as the same f64.
fn le_string(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{v}")
    }
}

fn histogram_samples(p: &HistogramDataPoint) -> Result<Vec<Sample>, String> {
    let mut out = Vec::with_capacity(p.explicit_bounds.len() + 3);
    if !p.bucket_counts.is_empty() {
        if p.bucket_counts.len() != p.explicit_bounds.len() + 1 {
            return Err(format!(
                "{} bucket_counts for {} explicit_bounds (want bounds + 1)",
                p.bucket_counts.len(),
                p.explicit_bounds.len()
            ));
        }
        let mut acc = 0u64;
        for (bound, n) in p.explicit_bounds.iter().zip(&p.bucket_counts) {
            acc += n;
            out.push(("_bucket", Some(("le", le_string(*bound))), acc as f64));
        }
    }
    out.push(("_bucket", Some(("le", "+Inf".to_string())), p.count as f64));
    if let Some(sum) = p.sum {
        out.push(("_sum", None, sum));
    }
    out.push(("_count", None, p.count as f64));
    Ok(out)
}

/// Exponential buckets as classic cumulative buckets. Bucket `i` of the positive
/// range holds (base^i, base^(i+1)], of the negative range [-base^(i+1), -base^i).
fn exponential_samples(p: &ExponentialHistogramDataPoint) -> Result<Vec<Sample>, String> {
    if !(-10..=20).contains(&p.scale) {
        return Err(format!("scale {} outside -10..=20", p.scale));
    }
    let bound = |i: i64| 2f64.powf(i as f64 * 2f64.powi(-p.scale));
    let mut out = Vec::new();
    let mut acc = 0u64;
    if let Some(neg) = &p.negative {
        // Most negative first: the highest index has the lowest upper bound.
        for (k, n) in neg.bucket_counts.iter().enumerate().rev() {
            acc += n;
            let i = neg.offset as i64 + k as i64;
            out.push(("_bucket", Some(("le", le_string(-bound(i)))), acc as f64));
        }
    }
    acc += p.zero_count;
    out.push((
        "_bucket",
        Some(("le", le_string(p.zero_threshold.max(0.0)))),
        acc as f64,
    ));
    if let Some(pos) = &p.positive {
        for (k, n) in pos.bucket_counts.iter().enumerate() {
            acc += n;
            let i = pos.offset as i64 + k as i64;
            out.push(("_bucket", Some(("le", le_string(bound(i + 1)))), acc as f64));
        }
    }
    out.push(("_bucket", Some(("le", "+Inf".to_string())), p.count as f64));
    if let Some(sum) = p.sum {
        out.push(("_sum", None, sum));
    }
    out.push(("_count", None, p.count as f64));
    Ok(out)
}

/// Adds attributes as labels (`prefix` + normalised key). Keys that normalise to
/// the same name within one call are joined with `;` in key order; they replace
/// labels from earlier calls (point attributes win over resource attributes).
fn add_attributes(labels: &mut BTreeMap<String, String>, attributes: &[KeyValue], prefix: &str) {
    let mut mine: BTreeMap<String, Vec<(&str, String)>> = BTreeMap::new();
    let has_current = |new: &str| attributes.iter().any(|kv| kv.key == new);
    for kv in attributes {
        let key = canonical_key(&kv.key);
        // Both the old and the new spelling: the new one wins.
        if key != kv.key && has_current(key) {
            continue;
        }
        let Some(name) = label_name(key) else {
            continue;
        };
        let name = format!("{prefix}{name}");
        mine.entry(name)
            .or_default()
            .push((key, value_string(kv.value.as_ref())));
    }
    for (name, mut values) in mine {
        values.sort_by(|a, b| a.0.cmp(b.0));
        let joined = values
            .into_iter()
            .map(|(_, v)| v)
            .collect::<Vec<_>>()
            .join(";");
        labels.insert(name, joined);
    }
}

/// An attribute value as label text: strings as they are, numbers and booleans
/// in their usual spelling, arrays and maps as JSON, bytes as hex.
fn value_string(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(other) => match json(other) {
            serde_json::Value::String(s) => s,
            j => j.to_string(),
        },
    }
}

fn json(v: &any_value::Value) -> serde_json::Value {
    use any_value::Value as V;
    match v {
        V::StringValue(s) => serde_json::Value::String(s.clone()),
        V::BoolValue(b) => serde_json::Value::Bool(*b),
        V::IntValue(i) => serde_json::Value::from(*i),
        V::DoubleValue(d) => serde_json::Number::from_f64(*d)
            .map(serde_json::Value::Number)
            .unwrap_or_else(|| serde_json::Value::String(d.to_string())),
        V::BytesValue(b) => {
            serde_json::Value::String(b.iter().map(|x| format!("{x:02x}")).collect())
        }
        V::ArrayValue(a) => serde_json::Value::Array(
            a.values
                .iter()
                .map(|x| x.value.as_ref().map_or(serde_json::Value::Null, json))
                .collect(),
        ),
        V::KvlistValue(kv) => serde_json::Value::Object(
            kv.values
                .iter()
                .map(|x| {
                    (
                        x.key.clone(),
                        x.value
                            .as_ref()
                            .and_then(|v| v.value.as_ref())
                            .map_or(serde_json::Value::Null, json),
                    )
                })
                .collect(),
        ),
        V::StringValueStrindex(i) => serde_json::Value::String(format!("strindex:{i}")),
    }
}
