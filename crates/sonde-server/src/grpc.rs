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
use sonde_types::TableBatch;

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
        let tenant = tenant_of(&self.state, &request)?;
        write_one(&self.state, &tenant, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn write_stream(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let tenant = tenant_of(&self.state, &request)?;
        let mut stream = request.into_inner();
        let mut total = WriteResponse::default();
        while let Some(req) = stream.message().await? {
            let r = write_one(&self.state, &tenant, req).await?;
            total.accepted_samples += r.accepted_samples;
            total.rejected_samples += r.rejected_samples;
            total.rejections.extend(r.rejections);
        }
        Ok(Response::new(total))
    }
}

/// The caller's tenant from the `authorization` metadata (`Bearer <token>`).
fn tenant_of<T>(state: &AppState, request: &Request<T>) -> Result<String, Status> {
    let header = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    state
        .auth
        .tenant(header)
        .map_err(|_| Status::unauthenticated("missing or invalid bearer token"))
}

async fn write_one(
    state: &Arc<AppState>,
    tenant: &str,
    req: WriteRequest,
) -> Result<WriteResponse, Status> {
    let storage = &state.storage;
    let request_key =
        (!req.idempotency_key.is_empty()).then(|| format!("req:{}", req.idempotency_key));
    if let Some(k) = &request_key
        && storage.key_seen(tenant, k)
    {
        return Ok(WriteResponse {
            duplicate: true,
            ..Default::default()
        });
    }
    // Tables are converted once. Only a request with call ids and no request key can
    // be retried below, so only then is a copy kept for the retry.
    let may_retry = request_key.is_none() && req.calls.iter().any(|c| !c.call_id.is_empty());
    let mut converted: Vec<Result<TableBatch, Rejected>> = req
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
        .collect();
    // A concurrent request may claim one of our call ids between the check and the
    // write; the write then stores nothing and we filter again (bounded).
    for _ in 0..3 {
        let mut duplicate_calls = 0u64;
        let mut keys: Vec<String> = Vec::new();
        let mut in_request = std::collections::HashSet::new();
        let calls: Vec<_> = req
            .calls
            .iter()
            .filter(|c| {
                if c.call_id.is_empty() {
                    return true;
                }
                let k = format!("call:{}", c.call_id);
                let dup = !in_request.insert(k.clone()) || storage.key_seen(tenant, &k);
                if dup {
                    duplicate_calls += 1;
                } else {
                    keys.push(k);
                }
                !dup
            })
            .cloned()
            .collect();
        keys.extend(request_key.clone());
        let mut tables = if may_retry {
            converted.clone()
        } else {
            std::mem::take(&mut converted)
        };
        tables.extend(crate::calls::convert(calls, &state.prices));
        let outcome = ingest(state, tenant, "sonde", tables, keys)
            .await
            .map_err(|e| status(&e))?;
        if outcome.duplicate {
            if request_key.is_some() {
                return Ok(WriteResponse {
                    duplicate: true,
                    ..Default::default()
                });
            }
            continue;
        }
        if outcome.accepted_samples == 0
            && let Some(r) = outcome.rejections.first()
        {
            return Err(Status::invalid_argument(format!(
                "table {:?}: {}",
                r.table, r.reason
            )));
        }
        return Ok(WriteResponse {
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
            duplicate: false,
            duplicate_calls,
        });
    }
    Err(Status::aborted(
        "call ids kept being claimed by concurrent requests; retry",
    ))
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
