//! HTTP endpoints. `router()` builds the whole app so tests can call it without a
//! socket.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::AppState;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/api/v1/admin/flush", post(flush))
        .route("/api/v1/admin/compact", post(compact))
        .route("/api/v1/admin/delete_tenant", post(delete_tenant))
        .route(
            "/api/v1/admin/tsdb/delete_series",
            post(crate::prom_api::delete_series).put(crate::prom_api::delete_series),
        )
        .route("/metrics", get(metrics))
        .route(
            "/api/v1/write",
            post(crate::remote_write::write)
                .layer(DefaultBodyLimit::max(crate::remote_write::MAX_BODY_BYTES)),
        )
        .route(
            "/v1/metrics",
            post(crate::otlp::http_export)
                .layer(DefaultBodyLimit::max(crate::otlp::MAX_REQUEST_BYTES)),
        )
        .route("/api/v1/metadata", get(metadata))
        .route(
            "/api/v1/query",
            get(crate::prom_api::query).post(crate::prom_api::query),
        )
        .route(
            "/api/v1/query_range",
            get(crate::prom_api::query_range).post(crate::prom_api::query_range),
        )
        .route(
            "/api/v1/series",
            get(crate::prom_api::series).post(crate::prom_api::series),
        )
        .route(
            "/api/v1/labels",
            get(crate::prom_api::labels).post(crate::prom_api::labels),
        )
        .route(
            "/api/v1/label/{name}/values",
            get(crate::prom_api::label_values),
        )
        .route("/api/v1/status/buildinfo", get(crate::prom_api::buildinfo))
        .route("/api/v1/rules", get(crate::rules::rules))
        .route("/api/v1/alerts", get(crate::rules::alerts))
        .route(
            "/-/reload",
            post(crate::rules::reload).put(crate::rules::reload),
        )
        .route(
            "/api/v1/query_exemplars",
            get(crate::prom_api::query_exemplars).post(crate::prom_api::query_exemplars),
        )
        .route(
            "/api/v1/sql",
            post(crate::sql::http_sql).layer(DefaultBodyLimit::max(crate::sql::MAX_SQL_BYTES)),
        )
        .with_state(state)
}

#[derive(Debug, serde::Deserialize)]
struct MetadataParams {
    metric: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/metadata[?metric=NAME][&limit=N]`, in Prometheus' response format;
/// OTLP metrics also carry `otel_name`, the name before normalisation.
async fn metadata(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(params): axum::extract::Query<MetadataParams>,
) -> Response {
    let tenant = match tenant(&state, &headers) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    let families = state.metadata.families(&tenant);
    let data: serde_json::Map<String, serde_json::Value> = families
        .into_iter()
        .filter(|(name, _)| params.metric.as_ref().is_none_or(|m| m == name))
        .take(params.limit.unwrap_or(usize::MAX))
        .map(|(name, meta)| (name, serde_json::json!([meta])))
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({"status": "success", "data": data}).to_string(),
    )
        .into_response()
}

/// The caller's tenant from `Authorization: Bearer <token>`, or a 401 response.
pub fn tenant(state: &AppState, headers: &axum::http::HeaderMap) -> Result<String, Box<Response>> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    state.auth.tenant(header).map_err(|_| {
        Box::new(
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "missing or invalid bearer token\n",
            )
                .into_response(),
        )
    })
}

/// Persists the head into segments; returns when the manifest naming them is durable.
/// With authentication on, any valid token may ask.
async fn flush(State(state): State<Arc<AppState>>, headers: axum::http::HeaderMap) -> Response {
    if let Err(resp) = tenant(&state, &headers) {
        return *resp;
    }
    let storage = state.storage.clone();
    let started = Instant::now();
    match tokio::task::spawn_blocking(move || storage.flush()).await {
        Ok(Ok(stats)) => {
            state.metrics.flushed(started.elapsed());
            (
                [(header::CONTENT_TYPE, "application/json")],
                format!(
                    "{{\"status\":\"success\",\"segments\":{},\"rows\":{},\"bytes\":{}}}\n",
                    stats.segments, stats.rows, stats.bytes
                ),
            )
                .into_response()
        }
        Ok(Err(e)) => error_response(&e),
        Err(e) => {
            tracing::error!(error = %e, "flush task failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
        }
    }
}

/// Runs retention, a compaction pass and the rollup build now (they also run in the
/// background).
async fn compact(State(state): State<Arc<AppState>>, headers: axum::http::HeaderMap) -> Response {
    if let Err(resp) = tenant(&state, &headers) {
        return *resp;
    }
    let storage = state.storage.clone();
    let res = tokio::task::spawn_blocking(move || {
        let r = storage.enforce_retention()?;
        let tiers = storage.expire_rollups()?;
        let c = storage.compact()?;
        let built = storage.build_rollups()?;
        Ok::<_, sonde_storage::Error>((r, tiers, c, built))
    })
    .await;
    match res {
        Ok(Ok((r, tiers, c, built))) => json_ok(serde_json::json!({
            "rollup_days_built": built,
            "expired_rollup_segments": tiers,
            "compacted_inputs": c.compacted_inputs,
            "compacted_outputs": c.compacted_outputs,
            "expired_segments": r.dropped_segments,
            "expired_rewritten_segments": r.rewritten_segments,
            "expired_rows": r.removed_rows,
            "segments": state.storage.manifest().segments.len(),
        })),
        Ok(Err(e)) => error_response(&e),
        Err(e) => {
            tracing::error!(error = %e, "compaction task failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
        }
    }
}

/// Deletes every row of the caller's tenant (everything acknowledged before the call).
async fn delete_tenant(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let tenant = match tenant(&state, &headers) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    let storage = state.storage.clone();
    let t = tenant.clone();
    match tokio::task::spawn_blocking(move || storage.delete_tenant(&t)).await {
        Ok(Ok(s)) => {
            tracing::info!(%tenant, rows = s.removed_rows, "deleted tenant data");
            json_ok(serde_json::json!({
                "tenant": tenant,
                "removed_rows": s.removed_rows,
                "dropped_segments": s.dropped_segments,
            }))
        }
        Ok(Err(e)) => error_response(&e),
        Err(e) => {
            tracing::error!(error = %e, "delete task failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
        }
    }
}

fn json_ok(data: serde_json::Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({"status": "success", "data": data}).to_string() + "\n",
    )
        .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&state.storage, &state.series_cache)
            + &state
                .rules
                .get()
                .map(|m| m.render_metrics())
                .unwrap_or_default(),
    )
        .into_response()
}

/// The one place a storage error becomes an HTTP response.
pub fn error_response(e: &sonde_storage::Error) -> Response {
    let (code, msg) = match e {
        e if e.is_invalid_input() => (StatusCode::BAD_REQUEST, e.to_string()),
        sonde_storage::Error::HeadFull { .. } => (StatusCode::TOO_MANY_REQUESTS, e.to_string()),
        sonde_storage::Error::Closed(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "server is shutting down".to_string(),
        ),
        // The operator must see this one: nothing of it is secret.
        sonde_storage::Error::ManifestConflict { .. } => {
            tracing::error!(error = %e, "storage fault");
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        e => {
            tracing::error!(error = %e, "storage fault");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error".to_string(),
            )
        }
    };
    let body = format!("{{\"status\":\"error\",\"error\":{}}}\n", json_string(&msg));
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
