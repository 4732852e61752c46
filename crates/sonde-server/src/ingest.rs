//! The write path every protocol shares: per-table validation, one storage write of
//! what passed, counters. Protocols only convert their wire format into table
//! batches and map the outcome to their status codes.

use std::sync::Arc;

use sonde_types::TableBatch;

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

/// Stores the tables that pass validation in one storage write (one WAL record,
/// durable before this returns; each table validated exactly once) and reports the
/// rest. A storage error (head full, shutdown, I/O) fails the whole call: nothing of
/// it was stored.
pub async fn ingest(
    state: &Arc<AppState>,
    tenant: &str,
    protocol: &'static str,
    tables: Vec<Result<TableBatch, Rejected>>,
    keys: Vec<String>,
) -> Result<Outcome, sonde_storage::Error> {
    let mut outcome = Outcome::default();
    let mut valid = Vec::with_capacity(tables.len());
    for t in tables {
        match t {
            Ok(tb) => valid.push(tb),
            Err(r) => outcome.rejections.push(r),
        }
    }
    let valid_samples: u64 = valid.iter().map(|t| t.sample_count() as u64).sum();
    let storage = state.storage.clone();
    let tenant = tenant.to_string();
    let result = if valid.is_empty() {
        Ok(sonde_storage::TablesOutcome::default())
    } else {
        tokio::task::spawn_blocking(move || storage.write_tables(&tenant, valid, keys))
            .await
            .map_err(|e| sonde_storage::Error::Closed(format!("write task failed: {e}")))?
    };
    let written = match result {
        Ok(w) => w,
        Err(e) => {
            state
                .metrics
                .rejected(protocol, reason_label(&e), valid_samples);
            return Err(e);
        }
    };
    outcome
        .rejections
        .extend(written.rejected.into_iter().map(|r| Rejected {
            table: r.table,
            reason: r.error.to_string(),
            samples: r.samples as u64,
        }));
    for r in &outcome.rejections {
        state.metrics.rejected(protocol, "invalid", r.samples);
        outcome.rejected_samples += r.samples;
    }
    outcome.duplicate = written.duplicate;
    if let Some(receipt) = written.receipt {
        let samples = receipt.samples as u64;
        state.metrics.ingested(protocol, samples);
        outcome.accepted_samples = samples;
    }
    Ok(outcome)
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
