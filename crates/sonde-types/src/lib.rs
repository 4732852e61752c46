//! Sonde's data model, shared by every other crate; no I/O here.
//!
//! The main types are [`WriteBatch`] (what a client sends: many series of many tables),
//! [`Labels`] (a sorted, validated tag set) and [`Limits`] (what validation enforces).
//!
//! Design decision: a write is *series-oriented* — labels once, then columns of
//! timestamps and field values — because every protocol Sonde speaks (remote_write,
//! OTLP, sonde.v1) is already shaped that way, and the head stores data by series.
//! Validation happens once, on the whole batch, before anything is written, so a
//! rejected batch never leaves a partial write behind.

mod batch;
mod clock;
mod labels;
mod limits;

pub use batch::{
    FieldColumn, FieldDef, FieldType, MetricKind, Samples, SeriesBatch, TableBatch, WriteBatch,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use labels::{Labels, NAME_LABEL, TIME_COLUMN};
pub use limits::Limits;
/// The inline vector of [`Samples`] and [`SeriesBatch::fields`], for building them.
pub use smallvec::{SmallVec, smallvec};

/// Time in milliseconds since the Unix epoch, UTC.
pub type TimestampMs = i64;

/// The fields of the `llm_calls` event table, in order: one row per LLM call.
pub const LLM_CALL_FIELDS: [(&str, FieldType); 7] = [
    ("input_tokens", FieldType::I64),
    ("output_tokens", FieldType::I64),
    ("cached_input_tokens", FieldType::I64),
    ("reasoning_tokens", FieldType::I64),
    ("ttft_seconds", FieldType::F64),
    ("duration_seconds", FieldType::F64),
    ("cost_usd", FieldType::F64),
];

/// Milliseconds in one UTC day; segments and the series catalog are partitioned by day.
pub const DAY_MS: i64 = 86_400_000;

/// A validation failure. Every variant names the offending field and, where one applies,
/// the limit that was exceeded, so a client can fix its request without guessing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{field}: {actual} exceeds the limit of {limit}")]
    LimitExceeded {
        field: String,
        actual: usize,
        limit: usize,
    },
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
    pub fn limit(field: impl Into<String>, actual: usize, limit: usize) -> Self {
        Error::LimitExceeded {
            field: field.into(),
            actual,
            limit,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks that `name` is a valid tenant id: 1..=64 characters of `[A-Za-z0-9_-]`.
/// Tenant ids become directory names, so the charset is deliberately narrow.
pub fn validate_tenant(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 {
        return Err(Error::invalid(
            "tenant",
            format!("must be 1 to 64 characters, got {}", name.len()),
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(Error::invalid(
            "tenant",
            format!("{name:?} may only contain [A-Za-z0-9_-]"),
        ));
    }
    Ok(())
}

/// Checks a table (metric) name against Prometheus' metric name rule
/// `[a-zA-Z_:][a-zA-Z0-9_:]*` and the length limit.
pub fn validate_table_name(name: &str, limits: &Limits) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("table", "must not be empty"));
    }
    if name.len() > limits.max_name_len {
        return Err(Error::limit(
            format!(
                "table {:?}… name length",
                &name[..name.floor_char_boundary(32)]
            ),
            name.len(),
            limits.max_name_len,
        ));
    }
    let ok = name.bytes().enumerate().all(|(i, b)| {
        b.is_ascii_alphabetic() || b == b'_' || b == b':' || (i > 0 && b.is_ascii_digit())
    });
    if !ok {
        return Err(Error::invalid(
            "table",
            format!("{name:?} must match [a-zA-Z_:][a-zA-Z0-9_:]*"),
        ));
    }
    Ok(())
}

/// Checks a label or field name: `[a-zA-Z_][a-zA-Z0-9_]*` within the length limit.
pub fn validate_identifier(kind: &str, name: &str, limits: &Limits) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(kind, "name must not be empty"));
    }
    if name.len() > limits.max_name_len {
        return Err(Error::limit(
            format!("{kind} name length"),
            name.len(),
            limits.max_name_len,
        ));
    }
    let ok = name
        .bytes()
        .enumerate()
        .all(|(i, b)| b.is_ascii_alphabetic() || b == b'_' || (i > 0 && b.is_ascii_digit()));
    if !ok {
        return Err(Error::invalid(
            kind,
            format!("{name:?} must match [a-zA-Z_][a-zA-Z0-9_]*"),
        ));
    }
    Ok(())
}

/// The UTC day number (days since the epoch) of a timestamp.
pub fn day_of(ts: TimestampMs) -> i64 {
    ts.div_euclid(DAY_MS)
}
