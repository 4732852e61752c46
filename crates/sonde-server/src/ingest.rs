//! The write path every protocol shares: per-table validation, one storage write of
//! what passed, counters. Protocols only convert their wire format into table
//! batches and map the outcome to their status codes.

use std::sync::Arc;

use sonde_types::{TableBatch, WriteBatch};

use crate::AppState;

/// A table a protocol could not convert or that failed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub table: String,
    pub reason: String,
    pub samples: u64,
}

/// What happened to a request.
#[derive(Debug, Default)]
pub struct Outcome {
    /// A deduplication key was already claimed: nothing was stored.
    pub duplicate: bool,
    pub accepted_samples: u64,
    pub rejected_samples: u64,
    pub rejections: Vec<Rejected>,
}

/// Validates each table on its own, writes the valid ones in one storage write (one
/// WAL record, durable before this returns), and reports the rest. A storage error
/// (head full, shutdown, I/O) fails the whole call: nothing of it was stored.
pub async fn ingest(
    state: &Arc<AppState>,
    tenant: &str,
    protocol: &'static str,
    tables: Vec<Result<TableBatch, Rejected>>,
    keys: Vec<String>,
) -> Result<Outcome, sonde_storage::Error> {
    let mut outcome = Outcome::default();
    let mut accepted = WriteBatch::default();
    for t in tables {
        let checked = t.and_then(|tb| {
            let samples = tb.sample_count() as u64;
            let name = tb.table.clone();
            let one = WriteBatch { tables: vec![tb] };
            match state.storage.validate(tenant, &one) {
                Ok(()) => Ok(one),
                Err(e) => Err(Rejected {
                    table: name,
                    reason: e.to_string(),
                    samples,
                }),
            }
        });
        match checked {
            Ok(mut one) => accepted.tables.append(&mut one.tables),
            Err(r) => {
                state.metrics.rejected(protocol, "invalid", r.samples);
                outcome.rejected_samples += r.samples;
                outcome.rejections.push(r);
            }
        }
    }
    if accepted.tables.is_empty() {
        return Ok(outcome);
    }
    let samples = accepted.sample_count() as u64;
    let storage = state.storage.clone();
    let tenant = tenant.to_string();
    let result =
        tokio::task::spawn_blocking(move || storage.write_with_keys(&tenant, accepted, keys))
            .await
            .map_err(|e| sonde_storage::Error::Closed(format!("write task failed: {e}")))?;
    match result {
        Ok(None) => {
            outcome.duplicate = true;
            Ok(outcome)
        }
        Ok(Some(_)) => {
            state.metrics.ingested(protocol, samples);
            outcome.accepted_samples = samples;
            Ok(outcome)
        }
        Err(e) => {
            state.metrics.rejected(protocol, reason_label(&e), samples);
            Err(e)
        }
    }
}

/// A short, bounded label for the rejection metric.
pub fn reason_label(e: &sonde_storage::Error) -> &'static str {
    match e {
        sonde_storage::Error::HeadFull { .. } => "head_full",
        sonde_storage::Error::Closed(_) => "closed",
        e if e.is_invalid_input() => "invalid",
        _ => "internal",
    }
}
