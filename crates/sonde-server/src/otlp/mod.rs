//! OTLP metrics ingest: `opentelemetry.proto.collector.metrics.v1.MetricsService/Export`
//! on the gRPC port (gzip accepted) and OTLP/HTTP `POST /v1/metrics` on the HTTP
//! port (`application/x-protobuf` or `application/json`, optionally gzip).
//!
//! Outcomes, per the OTLP specification:
//! - everything stored → success, no `partial_success`;
//! - some points rejected (invalid labels or names, timestamps outside the window,
//!   malformed buckets, a metric whose type contradicts the stored table, the
//!   cardinality cap) → success with `partial_success.rejected_data_points` and the
//!   first reason in `error_message`; the other points are stored;
//! - every point rejected → `InvalidArgument` / HTTP 400 (not retried);
//! - undecodable payload → `InvalidArgument` / 400; oversized → `ResourceExhausted`
//!   from tonic's size limit / HTTP 413;
//! - head full → `ResourceExhausted` with a `RetryInfo` / HTTP 429 with
//!   `Retry-After` (retried by exporters); shutting down → `Unavailable` / 503.

pub mod convert;
pub mod names;

use std::io::Read;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response as GrpcResponse, Status};

use crate::AppState;
use crate::ingest::ingest;

/// Largest request accepted (compressed body, and decompressed payload), in bytes.
pub const MAX_REQUEST_BYTES: usize = 64 << 20;

/// Why an export failed as a whole.
#[derive(Debug)]
pub enum ExportError {
    /// Every point was rejected; not retryable.
    Invalid(String),
    Storage(sonde_storage::Error),
}

/// Converts and stores one export request for `tenant`.
pub async fn export(
    state: &Arc<AppState>,
    tenant: &str,
    req: ExportMetricsServiceRequest,
) -> Result<ExportMetricsServiceResponse, ExportError> {
    let storage = &state.storage;
    let mut converted = convert::convert(req, storage.limits(), storage.now_ms(), &|t| {
        storage.table_kind(tenant, t)
    });
    if converted.rejected_samples > 0 {
        state
            .metrics
            .rejected("otlp", "invalid", converted.rejected_samples);
    }
    let tables = std::mem::take(&mut converted.tables);
    let outcome = ingest(state, tenant, "otlp", tables, Vec::new())
        .await
        .map_err(ExportError::Storage)?;
    // Describe only families that were stored: a rejected request must not
    // rewrite the metadata of the table it conflicted with.
    let lost: std::collections::HashSet<&String> = outcome
        .rejections
        .iter()
        .filter_map(|r| converted.table_family.get(&r.table))
        .collect();
    let stored: Vec<_> = converted
        .metadata
        .iter()
        .filter(|(family, _)| {
            converted.family_points.get(family).is_some_and(|&n| n > 0) && !lost.contains(family)
        })
        .cloned()
        .collect();
    state.metadata.record(tenant, stored);
    let rejected = converted.rejected_points
        + converted.points_of_tables(outcome.rejections.iter().map(|r| r.table.as_str()));
    let first = converted.first_error.or_else(|| {
        outcome
            .rejections
            .first()
            .map(|r| format!("table {:?}: {}", r.table, r.reason))
    });
    if rejected == 0 {
        return Ok(ExportMetricsServiceResponse {
            partial_success: None,
        });
    }
    let message = first.unwrap_or_default();
    if outcome.accepted_samples == 0 {
        return Err(ExportError::Invalid(format!(
            "all {rejected} data points rejected; first: {message}"
        )));
    }
    Ok(ExportMetricsServiceResponse {
        partial_success: Some(ExportMetricsPartialSuccess {
            rejected_data_points: rejected as i64,
            error_message: message,
        }),
    })
}

/// The gRPC `MetricsService`, ready to add to a tonic server.
pub fn service(state: Arc<AppState>) -> MetricsServiceServer<OtlpService> {
    MetricsServiceServer::new(OtlpService { state })
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(MAX_REQUEST_BYTES)
}

#[derive(Debug)]
pub struct OtlpService {
    state: Arc<AppState>,
}

#[tonic::async_trait]
impl MetricsService for OtlpService {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<GrpcResponse<ExportMetricsServiceResponse>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let tenant = self
            .state
            .auth
            .tenant(header)
            .map_err(|_| Status::unauthenticated("missing or invalid bearer token"))?;
        match export(&self.state, &tenant, request.into_inner()).await {
            Ok(r) => Ok(GrpcResponse::new(r)),
            Err(ExportError::Invalid(msg)) => Err(Status::invalid_argument(msg)),
            Err(ExportError::Storage(e @ sonde_storage::Error::HeadFull { .. })) => {
                Err(retry_status(&e))
            }
            Err(ExportError::Storage(e)) => Err(crate::grpc::status(&e)),
        }
    }
}

/// `ResourceExhausted` with a `google.rpc.RetryInfo` detail: OTLP exporters retry
/// this code only when the server says recovery is possible.
fn retry_status(e: &sonde_storage::Error) -> Status {
    let info = RetryInfo {
        retry_delay: Some(Duration {
            seconds: 1,
            nanos: 0,
        }),
    };
    let detail = Any {
        type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
        value: info.encode_to_vec(),
    };
    let status = RpcStatus {
        code: tonic::Code::ResourceExhausted as i32,
        message: format!("{e}; retry after about 1 s"),
        details: vec![detail],
    };
    Status::with_details(
        tonic::Code::ResourceExhausted,
        status.message.clone(),
        status.encode_to_vec().into(),
    )
}

/// `google.rpc.Status`, the error body of OTLP/HTTP and the details of gRPC errors.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<Any>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
struct Any {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<Duration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, Message)]
struct Duration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// An OTLP/HTTP error response: a `google.rpc.Status` in the request's encoding.
fn http_error(status: StatusCode, enc: Encoding, message: String) -> Response {
    let code = match status {
        StatusCode::BAD_REQUEST => tonic::Code::InvalidArgument,
        StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::PAYLOAD_TOO_LARGE => {
            tonic::Code::ResourceExhausted
        }
        StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => tonic::Code::InvalidArgument,
        _ => tonic::Code::Internal,
    } as i32;
    let body = match enc {
        Encoding::Protobuf => RpcStatus {
            code,
            message,
            details: Vec::new(),
        }
        .encode_to_vec(),
        Encoding::Json => serde_json::json!({ "code": code, "message": message })
            .to_string()
            .into_bytes(),
    };
    let mut resp = (status, [(header::CONTENT_TYPE, enc.content_type())], body).into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    resp
}

/// `POST /v1/metrics`.
pub async fn http_export(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/x-protobuf");
    let media = content_type.split(';').next().unwrap_or("").trim();
    let enc = match media {
        "application/x-protobuf" | "application/protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        other => {
            return http_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Encoding::Protobuf,
                format!("content-type {other:?}: use application/x-protobuf or application/json"),
            );
        }
    };
    let tenant = match crate::http::tenant(&state, &headers) {
        Ok(t) => t,
        Err(_) => {
            return http_error(
                StatusCode::UNAUTHORIZED,
                enc,
                "missing or invalid bearer token".into(),
            );
        }
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let raw: Bytes = match encoding.as_str() {
        "identity" | "" => body,
        "gzip" => {
            let mut out = Vec::new();
            let mut dec =
                flate2::read::GzDecoder::new(body.as_ref()).take(MAX_REQUEST_BYTES as u64 + 1);
            if let Err(e) = dec.read_to_end(&mut out) {
                state.metrics.rejected("otlp", "bad_gzip", 0);
                return http_error(StatusCode::BAD_REQUEST, enc, format!("gzip: {e}"));
            }
            if out.len() > MAX_REQUEST_BYTES {
                return http_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    enc,
                    format!("decompressed payload exceeds the limit of {MAX_REQUEST_BYTES} bytes"),
                );
            }
            out.into()
        }
        other => {
            return http_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                enc,
                format!("content-encoding {other:?}: use gzip or none"),
            );
        }
    };
    let req = match enc {
        Encoding::Protobuf => {
            ExportMetricsServiceRequest::decode(raw.as_ref()).map_err(|e| format!("protobuf: {e}"))
        }
        Encoding::Json => serde_json::from_slice::<ExportMetricsServiceRequest>(&raw)
            .map_err(|e| format!("json: {e}")),
    };
    let req = match req {
        Ok(r) => r,
        Err(msg) => {
            state.metrics.rejected("otlp", "bad_payload", 0);
            return http_error(StatusCode::BAD_REQUEST, enc, msg);
        }
    };
    match export(&state, &tenant, req).await {
        Ok(resp) => {
            let body = match enc {
                Encoding::Protobuf => resp.encode_to_vec(),
                Encoding::Json => serde_json::to_vec(&resp).unwrap_or_default(),
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, enc.content_type())],
                body,
            )
                .into_response()
        }
        Err(ExportError::Invalid(msg)) => http_error(StatusCode::BAD_REQUEST, enc, msg),
        Err(ExportError::Storage(e)) => {
            let (code, msg) = match &e {
                e if e.is_invalid_input() => (StatusCode::BAD_REQUEST, e.to_string()),
                sonde_storage::Error::HeadFull { .. } => {
                    (StatusCode::TOO_MANY_REQUESTS, e.to_string())
                }
                sonde_storage::Error::Closed(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server is shutting down; retry".into(),
                ),
                e => {
                    tracing::error!(error = %e, "storage fault while writing OTLP");
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
                }
            };
            http_error(code, enc, msg)
        }
    }
}
