//! Limits enforced on every write; all configurable, with defaults close to what
//! Prometheus and VictoriaMetrics accept out of the box.

/// Validation limits for writes. `Default` gives production defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Most labels (tags) one series may carry, not counting the table name.
    pub max_labels: usize,
    /// Longest label, field or table name, in bytes.
    pub max_name_len: usize,
    /// Longest label value, in bytes.
    pub max_label_value_len: usize,
    /// Most fields one table may have.
    pub max_fields: usize,
    /// Most samples (rows × fields) in one write batch.
    pub max_samples_per_batch: usize,
    /// How far in the future (ms, relative to the server clock) a sample may be.
    pub max_future_ms: i64,
    /// How far in the past (ms) a sample may be; `None` accepts anything inside retention.
    pub max_past_ms: Option<i64>,
    /// Most active series (written since the previous flush cycle) one table of one
    /// tenant may have in memory: the cardinality cap. New series past it are
    /// rejected; existing series keep being accepted.
    pub max_series_per_table: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_labels: 40,
            max_name_len: 256,
            max_label_value_len: 4096,
            max_fields: 64,
            max_samples_per_batch: 1_000_000,
            max_future_ms: 10 * 60 * 1000,
            max_past_ms: None,
            max_series_per_table: 1_000_000,
        }
    }
}
