//! The standard dataset as OTLP export requests, shaped as an OpenTelemetry SDK
//! would send it: cumulative counters as monotonic cumulative sums, gauges as
//! gauges, delta sums as monotonic delta sums, and each classic histogram
//! (`X_bucket{le}`, `X_sum`, `X_count`) as one explicit-bucket histogram `X`. Names
//! are chosen so Sonde's normalisation gives back the dataset's table names, so the
//! same queries run whichever protocol loaded the data.

use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
};
use sonde_types::{FieldColumn, Labels, MetricKind, WriteBatch};

/// One OTLP data point and the metric it belongs to.
enum Point {
    Number {
        metric: String,
        kind: MetricKind,
        point: NumberDataPoint,
    },
    Histogram {
        metric: String,
        point: HistogramDataPoint,
        samples: u64,
    },
}

impl Point {
    fn samples(&self) -> u64 {
        match self {
            Point::Number { .. } => 1,
            Point::Histogram { samples, .. } => *samples,
        }
    }
}

fn attributes(labels: &Labels, skip: &str) -> Vec<KeyValue> {
    labels
        .iter()
        .filter(|(k, _)| *k != skip)
        .map(|(k, v)| KeyValue {
            key: k.to_string(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.to_string())),
            }),
            ..Default::default()
        })
        .collect()
}

fn value(col: &FieldColumn, i: usize) -> f64 {
    match col {
        FieldColumn::F64(v) => v[i],
        FieldColumn::I64(v) => v[i] as f64,
    }
}

fn nanos(ms: i64) -> u64 {
    ms as u64 * 1_000_000
}

/// Requests of about `max` samples each (whole data points), in a fixed order: the
/// same series land in the same chunk every scrape.
pub fn otlp_chunks(batch: &WriteBatch, max: usize) -> Vec<(ExportMetricsServiceRequest, u64)> {
    let mut points = Vec::new();
    // Histogram parts by (base name, labels without `le`) and time.
    let mut buckets: HashMap<(String, Labels, i64), Vec<(f64, f64)>> = HashMap::new();
    let mut sums: HashMap<(String, Labels, i64), f64> = HashMap::new();
    for t in &batch.tables {
        if t.kind == MetricKind::Histogram {
            for (suffix, is_bucket) in [("_bucket", true), ("_sum", false)] {
                let Some(base) = t.table.strip_suffix(suffix) else {
                    continue;
                };
                for s in &t.series {
                    let (key_labels, le) = if is_bucket {
                        let le = s.labels.get("le").and_then(|v| v.parse::<f64>().ok());
                        let rest = Labels::new(s.labels.iter().filter(|(k, _)| *k != "le"))
                            .expect("a subset of valid labels");
                        (rest, le)
                    } else {
                        (s.labels.clone(), None)
                    };
                    for (i, &ts) in s.timestamps.iter().enumerate() {
                        let key = (base.to_string(), key_labels.clone(), ts);
                        let v = value(&s.fields[0], i);
                        if is_bucket {
                            buckets
                                .entry(key)
                                .or_default()
                                .push((le.unwrap_or(f64::INFINITY), v));
                        } else {
                            sums.insert(key, v);
                        }
                    }
                }
            }
        }
    }
    for t in &batch.tables {
        if t.kind == MetricKind::Histogram {
            let Some(base) = t.table.strip_suffix("_count") else {
                continue; // buckets and sums travel with their count
            };
            for s in &t.series {
                for (i, &ts) in s.timestamps.iter().enumerate() {
                    let key = (base.to_string(), s.labels.clone(), ts);
                    let mut b = buckets.remove(&key).unwrap_or_default();
                    b.sort_by(|x, y| x.0.total_cmp(&y.0));
                    let finite: Vec<(f64, f64)> =
                        b.iter().copied().filter(|(le, _)| le.is_finite()).collect();
                    let count = value(&s.fields[0], i);
                    let mut prev = 0.0;
                    let mut counts: Vec<u64> = finite
                        .iter()
                        .map(|&(_, c)| {
                            let n = (c - prev).max(0.0) as u64;
                            prev = c;
                            n
                        })
                        .collect();
                    counts.push((count - prev).max(0.0) as u64);
                    let sum = sums.remove(&key);
                    points.push(Point::Histogram {
                        metric: base.to_string(),
                        samples: b.len() as u64 + 1 + u64::from(sum.is_some()),
                        point: HistogramDataPoint {
                            attributes: attributes(&s.labels, ""),
                            time_unix_nano: nanos(ts),
                            count: count as u64,
                            sum,
                            bucket_counts: counts,
                            explicit_bounds: finite.iter().map(|&(le, _)| le).collect(),
                            ..Default::default()
                        },
                    });
                }
            }
            continue;
        }
        for (f, def) in t.fields.iter().enumerate() {
            let metric = if def.name == "value" {
                t.table.clone()
            } else {
                format!("{}_{}", t.table, def.name)
            };
            for s in &t.series {
                let attrs = attributes(&s.labels, "");
                for (i, &ts) in s.timestamps.iter().enumerate() {
                    points.push(Point::Number {
                        metric: metric.clone(),
                        kind: t.kind,
                        point: NumberDataPoint {
                            attributes: attrs.clone(),
                            time_unix_nano: nanos(ts),
                            value: Some(number_data_point::Value::AsDouble(value(&s.fields[f], i))),
                            ..Default::default()
                        },
                    });
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut metrics: Vec<Metric> = Vec::new();
    let mut n = 0u64;
    for p in points {
        n += p.samples();
        push(&mut metrics, p);
        if n >= max as u64 {
            out.push((request(std::mem::take(&mut metrics)), n));
            n = 0;
        }
    }
    if !metrics.is_empty() {
        out.push((request(metrics), n));
    }
    out
}

/// Appends a point to the last metric if it is the same one, else starts a metric.
fn push(metrics: &mut Vec<Metric>, p: Point) {
    let name = match &p {
        Point::Number { metric, .. } | Point::Histogram { metric, .. } => metric.clone(),
    };
    let same = metrics.last().is_some_and(|m| m.name == name);
    if !same {
        let data = match &p {
            Point::Number { kind, .. } => match kind {
                MetricKind::Counter => Data::Sum(Sum {
                    data_points: Vec::new(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                }),
                MetricKind::DeltaSum => Data::Sum(Sum {
                    data_points: Vec::new(),
                    aggregation_temporality: AggregationTemporality::Delta as i32,
                    is_monotonic: true,
                }),
                _ => Data::Gauge(Gauge {
                    data_points: Vec::new(),
                }),
            },
            Point::Histogram { .. } => Data::Histogram(Histogram {
                data_points: Vec::new(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
        };
        metrics.push(Metric {
            name,
            data: Some(data),
            ..Default::default()
        });
    }
    let m = metrics.last_mut().expect("pushed above");
    match (m.data.as_mut(), p) {
        (Some(Data::Sum(s)), Point::Number { point, .. }) => s.data_points.push(point),
        (Some(Data::Gauge(g)), Point::Number { point, .. }) => g.data_points.push(point),
        (Some(Data::Histogram(h)), Point::Histogram { point, .. }) => h.data_points.push(point),
        _ => unreachable!("a metric's points share its type"),
    }
}

fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_dataset::{DatasetConfig, Generator};

    #[test]
    fn chunks_carry_every_sample_once() {
        let mut g = Generator::new(DatasetConfig::sized(30, 2, 1_700_000_000_000));
        let scrape = g.next_step().unwrap();
        let chunks = otlp_chunks(&scrape, 10);
        let total: u64 = chunks.iter().map(|c| c.1).sum();
        assert_eq!(total, scrape.sample_count() as u64);
        assert!(chunks.len() > 1);
        // The histogram's buckets are per-bucket counts that add up to the count.
        let h = chunks
            .iter()
            .flat_map(|(r, _)| &r.resource_metrics[0].scope_metrics[0].metrics)
            .find_map(|m| match &m.data {
                Some(Data::Histogram(h)) => Some(h),
                _ => None,
            })
            .expect("a histogram");
        let p = &h.data_points[0];
        assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count);
        assert_eq!(m_name(&chunks), "llm_tokens_total");
    }

    fn m_name(chunks: &[(ExportMetricsServiceRequest, u64)]) -> String {
        chunks[0].0.resource_metrics[0].scope_metrics[0].metrics[0]
            .name
            .clone()
    }
}
