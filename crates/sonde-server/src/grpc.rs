//! The `sonde.v1.Ingest` service.
//!
//! A request is accepted table by table: a table that fails conversion or validation
//! is reported in `WriteResponse.rejections` and the rest is stored. When nothing is
//! accepted and something was rejected, the call fails with `InvalidArgument` carrying
//! the first reason, so clients that only look at the status still see the error.

use std::sync::Arc;

use sonde_proto::v1::ingest_server::{Ingest, IngestServer};
use sonde_proto::v1::{Rejection, WriteRequest, WriteResponse};
use sonde_storage::Error as StorageError;
use sonde_types::WriteBatch;
use tonic::{Request, Response, Status, Streaming};

use crate::{AppState, DEFAULT_TENANT};

/// Largest request accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 64 << 20;

/// The gRPC service, ready to add to a tonic server.
pub fn service(state: Arc<AppState>) -> IngestServer<IngestService> {
    IngestServer::new(IngestService { state }).max_decoding_message_size(MAX_REQUEST_BYTES)
}

#[derive(Debug)]
pub struct IngestService {
    state: Arc<AppState>,
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn write(
        &self,
        request: Request<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        write_one(&self.state, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn write_stream(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let mut stream = request.into_inner();
        let mut total = WriteResponse::default();
        while let Some(req) = stream.message().await? {
            let r = write_one(&self.state, req).await?;
            total.accepted_samples += r.accepted_samples;
            total.rejected_samples += r.rejected_samples;
            total.rejections.extend(r.rejections);
        }
        Ok(Response::new(total))
    }
}

async fn write_one(state: &Arc<AppState>, req: WriteRequest) -> Result<WriteResponse, Status> {
    let mut accepted = WriteBatch::default();
    let mut resp = WriteResponse::default();
    for t in req.tables {
        let name = t.table.clone();
        let samples = t
            .series
            .iter()
            .map(|s| s.timestamps_ms.len() * t.fields.len().max(1))
            .sum::<usize>() as u64;
        let checked = sonde_proto::table_batch(t)
            .map_err(|e| e.reason)
            .and_then(|tb| {
                let one = WriteBatch { tables: vec![tb] };
                state
                    .storage
                    .validate(DEFAULT_TENANT, &one)
                    .map(|()| one)
                    .map_err(|e| e.to_string())
            });
        match checked {
            Ok(mut one) => accepted.tables.append(&mut one.tables),
            Err(reason) => {
                state.metrics.rejected("sonde", "invalid", samples);
                resp.rejected_samples += samples;
                resp.rejections.push(Rejection {
                    table: name,
                    reason,
                    samples,
                });
            }
        }
    }
    if accepted.tables.is_empty() {
        return match resp.rejections.first() {
            Some(r) => Err(Status::invalid_argument(format!(
                "table {:?}: {}",
                r.table, r.reason
            ))),
            None => Ok(resp),
        };
    }
    let samples = accepted.sample_count() as u64;
    let storage = state.storage.clone();
    let result = tokio::task::spawn_blocking(move || storage.write(DEFAULT_TENANT, accepted))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "write task failed");
            Status::internal("internal error")
        })?;
    match result {
        Ok(_) => {
            state.metrics.ingested("sonde", samples);
            resp.accepted_samples = samples;
            Ok(resp)
        }
        Err(e) => {
            state.metrics.rejected("sonde", reason_label(&e), samples);
            Err(status(&e))
        }
    }
}

/// A short, bounded label for the rejection metric.
pub fn reason_label(e: &StorageError) -> &'static str {
    match e {
        StorageError::HeadFull { .. } => "head_full",
        StorageError::Closed(_) => "closed",
        e if e.is_invalid_input() => "invalid",
        _ => "internal",
    }
}

/// The one place a storage error becomes a gRPC status.
pub fn status(e: &StorageError) -> Status {
    match e {
        e if e.is_invalid_input() => Status::invalid_argument(e.to_string()),
        StorageError::HeadFull { .. } => {
            Status::resource_exhausted(format!("{e}; retry after about 1 s"))
        }
        StorageError::Closed(_) => Status::unavailable("server is shutting down; retry"),
        e => {
            tracing::error!(error = %e, "storage fault while writing");
            Status::internal("internal error")
        }
    }
}
