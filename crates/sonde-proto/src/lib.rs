//! Generated code for Sonde's protobuf APIs, kept inside this crate, and the one
//! conversion from the wire types to [`sonde_types`].
//!
//! Design decision: conversion checks only what the wire format cannot express
//! (field columns matching their declared types); everything else — names, limits,
//! lengths — is validated once, by [`sonde_types::WriteBatch::validate`], so every
//! protocol gets the same errors.

#![allow(missing_debug_implementations)]

/// `package sonde.v1`.
pub mod v1 {
    tonic::include_proto!("sonde.v1");
}

/// Prometheus remote_write 1.0 messages (`package prometheus`).
pub mod prometheus {
    tonic::include_proto!("prometheus");
}

use sonde_types::{FieldColumn, FieldDef, FieldType, Labels, MetricKind, SeriesBatch, TableBatch};

/// A table write that could not be converted: the table and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertError {
    pub table: String,
    pub reason: String,
}

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "table {:?}: {}", self.table, self.reason)
    }
}

impl std::error::Error for ConvertError {}

/// Converts one wire table write into a [`TableBatch`].
pub fn table_batch(t: v1::TableWrite) -> Result<TableBatch, ConvertError> {
    let err = |reason: String| ConvertError {
        table: t.table.clone(),
        reason,
    };
    let kind = match v1::MetricKind::try_from(t.kind) {
        Ok(v1::MetricKind::Gauge) => MetricKind::Gauge,
        Ok(v1::MetricKind::Counter) => MetricKind::Counter,
        Ok(v1::MetricKind::DeltaSum) => MetricKind::DeltaSum,
        Ok(v1::MetricKind::Histogram) => MetricKind::Histogram,
        Ok(v1::MetricKind::Event) => MetricKind::Event,
        Err(_) => return Err(err(format!("kind: unknown value {}", t.kind))),
    };
    let fields: Vec<FieldDef> = if t.fields.is_empty() {
        vec![FieldDef::new("value", FieldType::F64)]
    } else {
        t.fields
            .iter()
            .map(|f| match v1::FieldType::try_from(f.r#type) {
                Ok(v1::FieldType::F64) => Ok(FieldDef::new(&f.name, FieldType::F64)),
                Ok(v1::FieldType::I64) => Ok(FieldDef::new(&f.name, FieldType::I64)),
                Err(_) => Err(err(format!(
                    "field {:?} type: unknown value {}",
                    f.name, f.r#type
                ))),
            })
            .collect::<Result<_, _>>()?
    };
    let mut series = Vec::with_capacity(t.series.len());
    for s in &t.series {
        let labels = Labels::new(s.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())))
            .map_err(|e| err(e.to_string()))?;
        if s.fields.len() != fields.len() {
            return Err(err(format!(
                "series {labels}: {} field columns for {} declared fields",
                s.fields.len(),
                fields.len()
            )));
        }
        let cols = s
            .fields
            .iter()
            .zip(&fields)
            .map(|(v, def)| match def.ty {
                FieldType::F64 if v.i64.is_empty() => Ok(FieldColumn::F64(v.f64[..].into())),
                FieldType::I64 if v.f64.is_empty() => Ok(FieldColumn::I64(v.i64[..].into())),
                _ => Err(err(format!(
                    "series {labels} field {:?}: values must be in `{}`",
                    def.name,
                    if def.ty == FieldType::F64 {
                        "f64"
                    } else {
                        "i64"
                    }
                ))),
            })
            .collect::<Result<_, _>>()?;
        series.push(SeriesBatch {
            labels,
            timestamps: s.timestamps_ms[..].into(),
            fields: cols,
        });
    }
    Ok(TableBatch {
        table: t.table,
        kind,
        fields,
        series,
    })
}

/// The wire form of a [`sonde_types::WriteBatch`] for `sonde.v1.Ingest/Write`.
pub fn to_v1(batch: &sonde_types::WriteBatch) -> v1::WriteRequest {
    v1::WriteRequest {
        calls: Vec::new(),
        idempotency_key: String::new(),
        tables: batch
            .tables
            .iter()
            .map(|t| v1::TableWrite {
                table: t.table.clone(),
                kind: match t.kind {
                    MetricKind::Gauge => v1::MetricKind::Gauge,
                    MetricKind::Counter => v1::MetricKind::Counter,
                    MetricKind::DeltaSum => v1::MetricKind::DeltaSum,
                    MetricKind::Histogram => v1::MetricKind::Histogram,
                    MetricKind::Event => v1::MetricKind::Event,
                } as i32,
                fields: t
                    .fields
                    .iter()
                    .map(|f| v1::FieldDef {
                        name: f.name.clone(),
                        r#type: match f.ty {
                            FieldType::I64 => v1::FieldType::I64,
                            // No column carries bytes: such a batch is refused by
                            // validation on either side.
                            FieldType::F64 | FieldType::Bytes => v1::FieldType::F64,
                        } as i32,
                    })
                    .collect(),
                series: t
                    .series
                    .iter()
                    .map(|s| v1::Series {
                        labels: s
                            .labels
                            .iter()
                            .map(|(n, v)| v1::Label {
                                name: n.to_string(),
                                value: v.to_string(),
                            })
                            .collect(),
                        timestamps_ms: s.timestamps.to_vec(),
                        fields: s
                            .fields
                            .iter()
                            .map(|c| match c {
                                FieldColumn::F64(v) => v1::FieldValues {
                                    f64: v.to_vec(),
                                    i64: vec![],
                                },
                                FieldColumn::I64(v) => v1::FieldValues {
                                    f64: vec![],
                                    i64: v.to_vec(),
                                },
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The remote_write form of a batch: one time series per (table, series, field); a
/// table's non-`value` fields are named `<table>_<field>`. i64 values become doubles.
pub fn to_remote_write(batch: &sonde_types::WriteBatch) -> prometheus::WriteRequest {
    let mut out = prometheus::WriteRequest::default();
    for t in &batch.tables {
        for s in &t.series {
            for (f, col) in t.fields.iter().zip(&s.fields) {
                let name = if f.name == "value" {
                    t.table.clone()
                } else {
                    format!("{}_{}", t.table, f.name)
                };
                let mut labels = vec![prometheus::Label {
                    name: "__name__".into(),
                    value: name,
                }];
                labels.extend(s.labels.iter().map(|(n, v)| prometheus::Label {
                    name: n.to_string(),
                    value: v.to_string(),
                }));
                labels.sort_by(|a, b| a.name.cmp(&b.name));
                let values: Vec<f64> = match col {
                    FieldColumn::F64(v) => v.to_vec(),
                    FieldColumn::I64(v) => v.iter().map(|&x| x as f64).collect(),
                };
                out.timeseries.push(prometheus::TimeSeries {
                    labels,
                    samples: s
                        .timestamps
                        .iter()
                        .zip(values)
                        .map(|(&timestamp, value)| prometheus::Sample { value, timestamp })
                        .collect(),
                    ..Default::default()
                });
            }
        }
    }
    out
}
