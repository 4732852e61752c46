//! [`WriteBatch`]: many series of many tables, validated as a whole.

use std::collections::HashSet;

use smallvec::{SmallVec, smallvec};

use crate::{
    Error, Labels, Limits, Result, TIME_COLUMN, TimestampMs, validate_identifier,
    validate_table_name,
};

/// How samples of a table behave over time and at equal timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MetricKind {
    /// A value that goes up and down; the later write of a timestamp wins.
    Gauge = 0,
    /// A cumulative counter (resets to zero on restart); the later write wins.
    Counter = 1,
    /// A delta sum (OTLP delta temporality): samples at one timestamp add up.
    DeltaSum = 2,
    /// A classic histogram series (`_bucket` with `le`, `_sum`, `_count`); cumulative.
    Histogram = 3,
    /// An event table (e.g. `llm_calls`): every acknowledged row is kept.
    Event = 4,
}

impl MetricKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => MetricKind::Gauge,
            1 => MetricKind::Counter,
            2 => MetricKind::DeltaSum,
            3 => MetricKind::Histogram,
            4 => MetricKind::Event,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Gauge => "gauge",
            MetricKind::Counter => "counter",
            MetricKind::DeltaSum => "delta_sum",
            MetricKind::Histogram => "histogram",
            MetricKind::Event => "event",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        (0..=4).filter_map(Self::from_u8).find(|k| k.as_str() == s)
    }
}

/// The type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FieldType {
    F64 = 0,
    /// Integers such as token counts; stored and compressed as integers.
    I64 = 1,
    /// Opaque bytes: only Sonde writes these (the quantile sketches of rollup
    /// tiers); a write declaring one is refused, since no column carries bytes.
    Bytes = 2,
}

impl FieldType {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(FieldType::F64),
            1 => Some(FieldType::I64),
            _ => None,
        }
    }
}

/// A field's name and type, as declared by a write.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDef {
    pub name: String,
    pub ty: FieldType,
}

impl FieldDef {
    pub fn new(name: impl Into<String>, ty: FieldType) -> Self {
        FieldDef {
            name: name.into(),
            ty,
        }
    }
}

/// A series' timestamps or one field's values in a write: up to two kept inline,
/// more on the heap. A Prometheus or OTLP sender puts one or two samples of a
/// series in each request, and three heap vectors per such series (timestamps,
/// the field list, the values) were a tenth of remote_write's server time to
/// allocate and free.
pub type Samples<T> = SmallVec<[T; 2]>;

/// The values of one field for the rows of one [`SeriesBatch`].
#[derive(Debug, Clone, PartialEq)]
pub enum FieldColumn {
    F64(Samples<f64>),
    I64(Samples<i64>),
}

impl FieldColumn {
    pub fn len(&self) -> usize {
        match self {
            FieldColumn::F64(v) => v.len(),
            FieldColumn::I64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn ty(&self) -> FieldType {
        match self {
            FieldColumn::F64(_) => FieldType::F64,
            FieldColumn::I64(_) => FieldType::I64,
        }
    }
}

/// Rows of one series: timestamps and, for each of the table batch's fields, a column
/// of the same length.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesBatch {
    pub labels: Labels,
    pub timestamps: Samples<TimestampMs>,
    /// One column per field of the table batch (most tables have one: inline).
    pub fields: SmallVec<[FieldColumn; 1]>,
}

impl SeriesBatch {
    /// A single-field (`value`) float series.
    pub fn f64(
        labels: Labels,
        timestamps: impl Into<Samples<TimestampMs>>,
        values: impl Into<Samples<f64>>,
    ) -> Self {
        SeriesBatch {
            labels,
            timestamps: timestamps.into(),
            fields: smallvec![FieldColumn::F64(values.into())],
        }
    }
    /// A single-field (`value`) integer series.
    pub fn i64(
        labels: Labels,
        timestamps: impl Into<Samples<TimestampMs>>,
        values: impl Into<Samples<i64>>,
    ) -> Self {
        SeriesBatch {
            labels,
            timestamps: timestamps.into(),
            fields: smallvec![FieldColumn::I64(values.into())],
        }
    }
}

/// Series of one table. `fields` declares the fields this batch carries; a table's
/// schema is the union of all fields ever written, and a field a row does not carry
/// is null for that row.
#[derive(Debug, Clone, PartialEq)]
pub struct TableBatch {
    pub table: String,
    pub kind: MetricKind,
    pub fields: Vec<FieldDef>,
    pub series: Vec<SeriesBatch>,
}

impl TableBatch {
    /// A table batch with the single field `value` of type `ty`, as Prometheus and OTLP
    /// metrics have.
    pub fn single(table: impl Into<String>, kind: MetricKind, ty: FieldType) -> Self {
        TableBatch {
            table: table.into(),
            kind,
            fields: vec![FieldDef::new("value", ty)],
            series: Vec::new(),
        }
    }

    /// Rows × fields in this batch.
    pub fn sample_count(&self) -> usize {
        self.series
            .iter()
            .map(|s| s.timestamps.len() * self.fields.len())
            .sum()
    }
}

/// One write: many tables, each with many series.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WriteBatch {
    pub tables: Vec<TableBatch>,
}

impl WriteBatch {
    pub fn sample_count(&self) -> usize {
        self.tables.iter().map(TableBatch::sample_count).sum()
    }
    pub fn row_count(&self) -> usize {
        self.tables
            .iter()
            .flat_map(|t| &t.series)
            .map(|s| s.timestamps.len())
            .sum()
    }

    /// Checks everything a write must satisfy before any of it is stored: names,
    /// label limits, field declarations, column shapes and the time window
    /// (`now_ms` comes from the server's clock).
    pub fn validate(&self, limits: &Limits, now_ms: TimestampMs) -> Result<()> {
        let samples = self.sample_count();
        if samples > limits.max_samples_per_batch {
            return Err(Error::limit(
                "samples per write",
                samples,
                limits.max_samples_per_batch,
            ));
        }
        for t in &self.tables {
            validate_table_name(&t.table, limits)?;
            let table = &t.table;
            if t.fields.is_empty() {
                return Err(Error::invalid(
                    format!("table {table:?} fields"),
                    "at least one field is required",
                ));
            }
            if t.fields.len() > limits.max_fields {
                return Err(Error::limit(
                    format!("table {table:?} fields count"),
                    t.fields.len(),
                    limits.max_fields,
                ));
            }
            let mut seen = HashSet::new();
            for f in &t.fields {
                validate_identifier("field", &f.name, limits)?;
                if f.name == TIME_COLUMN || f.name.starts_with("__") {
                    return Err(Error::invalid(
                        format!("table {table:?} field {:?}", f.name),
                        "is reserved",
                    ));
                }
                if !seen.insert(f.name.as_str()) {
                    return Err(Error::invalid(
                        format!("table {table:?} field {:?}", f.name),
                        "declared more than once",
                    ));
                }
            }
            // A set whose names equal the previous set's passed the name check.
            let mut last: Option<&Labels> = None;
            for s in &t.series {
                s.labels.validate(limits)?;
                if !last.is_some_and(|l| l.same_names(&s.labels)) {
                    if let Some(f) = t.fields.iter().find(|f| s.labels.get(&f.name).is_some()) {
                        return Err(Error::invalid(
                            format!("table {table:?} label {:?}", f.name),
                            "has the same name as a field",
                        ));
                    }
                    last = Some(&s.labels);
                }
                if s.fields.len() != t.fields.len() {
                    return Err(Error::invalid(
                        format!("table {table:?} series {} fields", s.labels),
                        format!(
                            "has {} columns for {} declared fields",
                            s.fields.len(),
                            t.fields.len()
                        ),
                    ));
                }
                for (col, def) in s.fields.iter().zip(&t.fields) {
                    if col.len() != s.timestamps.len() {
                        return Err(Error::invalid(
                            format!("table {table:?} field {:?}", def.name),
                            format!(
                                "has {} values for {} timestamps",
                                col.len(),
                                s.timestamps.len()
                            ),
                        ));
                    }
                    if col.ty() != def.ty {
                        return Err(Error::invalid(
                            format!("table {table:?} field {:?}", def.name),
                            format!("declared {:?} but values are {:?}", def.ty, col.ty()),
                        ));
                    }
                }
                let limit = now_ms.saturating_add(limits.max_future_ms);
                if let Some(&ts) = s.timestamps.iter().find(|&&ts| ts > limit) {
                    return Err(Error::invalid(
                        format!("table {table:?} series {} timestamp", s.labels),
                        format!(
                            "{ts} is more than {} ms in the future (max_future_ms)",
                            limits.max_future_ms
                        ),
                    ));
                }
                if let Some(max_past) = limits.max_past_ms {
                    let floor = now_ms.saturating_sub(max_past);
                    if let Some(&ts) = s.timestamps.iter().find(|&&ts| ts < floor) {
                        return Err(Error::invalid(
                            format!("table {table:?} series {} timestamp", s.labels),
                            format!("{ts} is more than {max_past} ms in the past (max_past_ms)"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> WriteBatch {
        let mut t = TableBatch::single("llm_tokens_total", MetricKind::Counter, FieldType::I64);
        t.series.push(SeriesBatch::i64(
            Labels::new([("model", "m1")]).unwrap(),
            vec![1000, 2000],
            vec![5, 7],
        ));
        WriteBatch { tables: vec![t] }
    }

    #[test]
    fn valid_batch_passes() {
        batch().validate(&Limits::default(), 10_000).unwrap();
        assert_eq!(batch().sample_count(), 2);
    }

    #[test]
    fn errors_name_field_and_limit() {
        let mut b = batch();
        b.tables[0].series[0].timestamps.push(3000);
        let e = b.validate(&Limits::default(), 10_000).unwrap_err();
        assert!(e.to_string().contains("field \"value\""), "{e}");

        let mut b = batch();
        b.tables[0].table = "bad-name".into();
        let e = b.validate(&Limits::default(), 10_000).unwrap_err();
        assert!(e.to_string().starts_with("table:"), "{e}");

        let e = batch()
            .validate(
                &Limits {
                    max_samples_per_batch: 1,
                    ..Limits::default()
                },
                10_000,
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "samples per write: 2 exceeds the limit of 1");

        let e = batch()
            .validate(&Limits::default(), -1_000_000)
            .unwrap_err();
        assert!(e.to_string().contains("max_future_ms"), "{e}");

        let mut b = batch();
        b.tables[0].fields[0].ty = FieldType::F64;
        let e = b.validate(&Limits::default(), 10_000).unwrap_err();
        assert!(e.to_string().contains("declared F64"), "{e}");
    }

    #[test]
    fn a_label_named_like_a_field_is_found_in_any_series() {
        // Series whose names equal the previous series' are not checked again: the
        // offending label must still be found in a series after others.
        for offender in [1, 3] {
            let mut b = batch();
            let t = &mut b.tables[0];
            for (i, labels) in [
                vec![("model", "m2")],
                vec![("model", "m3"), ("region", "eu")],
                vec![("model", "m4"), ("region", "us")],
            ]
            .into_iter()
            .enumerate()
            {
                let mut labels = labels;
                if i + 1 == offender {
                    labels.push(("value", "x"));
                }
                t.series.push(SeriesBatch::i64(
                    Labels::new(labels).unwrap(),
                    vec![1000],
                    vec![1],
                ));
            }
            let e = b.validate(&Limits::default(), 10_000).unwrap_err();
            assert_eq!(
                e.to_string(),
                "table \"llm_tokens_total\" label \"value\": has the same name as a field",
                "offender {offender}"
            );
        }
    }
}
