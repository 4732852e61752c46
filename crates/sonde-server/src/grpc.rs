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
use tonic::{Request, Response, Status, Streaming};

use crate::AppState;
use crate::ingest::{Rejected, ingest};

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
    let calls = crate::calls::convert(req.calls, &state.prices);
    let tables = req
        .tables
        .into_iter()
        .map(|t| {
            let samples = t
                .series
                .iter()
                .map(|s| s.timestamps_ms.len() * t.fields.len().max(1))
                .sum::<usize>() as u64;
            sonde_proto::table_batch(t).map_err(|e| Rejected {
                table: e.table,
                reason: e.reason,
                samples,
            })
        })
        .chain(calls)
        .collect();
    let outcome = ingest(state, "sonde", tables)
        .await
        .map_err(|e| status(&e))?;
    if outcome.accepted_samples == 0
        && let Some(r) = outcome.rejections.first()
    {
        return Err(Status::invalid_argument(format!(
            "table {:?}: {}",
            r.table, r.reason
        )));
    }
    Ok(WriteResponse {
        accepted_samples: outcome.accepted_samples,
        rejected_samples: outcome.rejected_samples,
        rejections: outcome
            .rejections
            .into_iter()
            .map(|r| Rejection {
                table: r.table,
                reason: r.reason,
                samples: r.samples,
            })
            .collect(),
    })
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
