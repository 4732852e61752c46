//! `POST /api/v1/sql`: one read-only SQL statement for the caller's tenant.
//!
//! Body: JSON `{"sql": "..."}` (`Content-Type: application/json`), or the SQL text
//! itself with any other content type. The answer's format follows `Accept`:
//! - default / `application/json`: a JSON array of row objects;
//! - `text/csv`: CSV with a header row;
//! - `application/vnd.apache.arrow.stream`: an Arrow IPC stream.
//!
//! Headers `Sonde-Rows` and `Sonde-Truncated` (`true` when the row limit cut the
//! answer). Errors are JSON `{"status":"error","errorType":…,"error":…}`: 400 bad SQL
//! or a refused statement kind, 422 over the memory limit, 503 over the timeout,
//! 401 without a valid token.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sonde_query::{QueryError, format};

use crate::AppState;

/// Largest request body (the SQL text), in bytes.
pub const MAX_SQL_BYTES: usize = 1 << 20;

pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

#[derive(Debug, serde::Deserialize)]
struct SqlRequest {
    sql: String,
}

fn error(code: StatusCode, kind: &str, msg: &str) -> Response {
    let body = serde_json::json!({"status": "error", "errorType": kind, "error": msg});
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string() + "\n",
    )
        .into_response()
}

/// The HTTP answer for a query error.
pub fn error_response(e: &QueryError) -> Response {
    let msg = e.to_string();
    match e {
        QueryError::Refused(_) => error(StatusCode::BAD_REQUEST, "refused", &msg),
        QueryError::Invalid(_) => error(StatusCode::BAD_REQUEST, "bad_sql", &msg),
        QueryError::MemoryLimit { .. } => {
            error(StatusCode::UNPROCESSABLE_ENTITY, "memory_limit", &msg)
        }
        QueryError::Timeout(_) => error(StatusCode::SERVICE_UNAVAILABLE, "timeout", &msg),
        QueryError::Internal(_) => {
            tracing::error!(error = %msg, "SQL internal error");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &msg)
        }
    }
}

pub async fn http_sql(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let tenant = match crate::http::tenant(&state, &headers) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let sql = if is_json {
        match serde_json::from_slice::<SqlRequest>(&body) {
            Ok(r) => r.sql,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("body: expected {{\"sql\": \"...\"}}: {e}"),
                );
            }
        }
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(s) => s,
            Err(_) => return error(StatusCode::BAD_REQUEST, "bad_request", "body: not UTF-8"),
        }
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let out = match state.query.sql(&tenant, &sql).await {
        Ok(o) => o,
        Err(e) => return error_response(&e),
    };
    let (ctype, bytes) = if accept.contains(ARROW_STREAM) {
        (ARROW_STREAM, format::arrow_ipc(&out.schema, &out.batches))
    } else if accept.contains("text/csv") {
        ("text/csv", format::csv(&out.schema, &out.batches))
    } else {
        ("application/json", format::json(&out.batches))
    };
    let bytes = match bytes {
        Ok(b) => b,
        Err(e) => {
            return error_response(&QueryError::Internal(format!("encoding the answer: {e}")));
        }
    };
    let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, ctype)], bytes).into_response();
    let h = resp.headers_mut();
    h.insert("sonde-rows", HeaderValue::from(out.num_rows()));
    h.insert(
        "sonde-truncated",
        HeaderValue::from_static(if out.truncated { "true" } else { "false" }),
    );
    resp
}
