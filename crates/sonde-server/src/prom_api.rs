//! Prometheus' HTTP query API, so Grafana's Prometheus data source and existing
//! tools work against Sonde: `/api/v1/query`, `/api/v1/query_range`,
//! `/api/v1/series`, `/api/v1/labels`, `/api/v1/label/<name>/values`,
//! `/api/v1/status/buildinfo` and `/api/v1/query_exemplars`. GET and POST
//! (form-encoded) both work; responses and errors use Prometheus' JSON shape
//! (`{"status":"error","errorType":"bad_data","error":"…"}`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::Expr;
use serde_json::{Value, json};
use sonde_promql::PromError;
use sonde_types::NAME_LABEL;

use crate::AppState;

/// Earliest and latest times the series and label APIs default to.
const MIN_TIME_MS: i64 = i64::MIN / 4;
const MAX_TIME_MS: i64 = i64::MAX / 4;

/// The request's parameters from the query string and a form-encoded body.
struct Params(Vec<(String, String)>);

impl Params {
    fn new(query: Option<String>, headers: &HeaderMap, body: &Bytes) -> Params {
        let mut out: Vec<(String, String)> = Vec::new();
        if let Some(q) = query {
            out.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
        }
        let form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if form {
            out.extend(form_urlencoded::parse(body).into_owned());
        }
        Params(out)
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

fn bad(msg: impl Into<String>) -> PromError {
    PromError::BadData(msg.into())
}

/// A response's `data`: a JSON value, or a query result, whose whole response body
/// is written by the query's thread (results can be large: no `Value` tree, no copy
/// into an envelope).
pub(crate) enum Data {
    Json(Value),
    Body(Vec<u8>),
}

impl Data {
    /// The success response body for a query's result.
    fn query(v: &sonde_promql::QueryValue) -> Data {
        Data::Body(enveloped(|out| v.write_json(out)))
    }
}

/// Prometheus' success envelope, `{"status":"success","data":…}`, around the data
/// `write_data` appends.
fn enveloped(write_data: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut body = br#"{"status":"success","data":"#.to_vec();
    write_data(&mut body);
    body.push(b'}');
    body
}

impl From<Value> for Data {
    fn from(v: Value) -> Self {
        Data::Json(v)
    }
}

/// Prometheus' success envelope around `data`.
pub(crate) fn success(data: impl Into<Data>) -> Response {
    let body = match data.into() {
        Data::Json(v) => enveloped(|out| {
            serde_json::to_writer(out, &v).expect("writing JSON to memory");
        }),
        Data::Body(b) => b,
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Prometheus' error response for `e`.
pub fn error(e: &PromError) -> Response {
    let code = match e {
        PromError::BadData(_) => StatusCode::BAD_REQUEST,
        PromError::Execution(_) => StatusCode::UNPROCESSABLE_ENTITY,
        PromError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
        PromError::Storage(err) => {
            tracing::error!(error = %err, "storage fault in a PromQL query");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"status": "error", "errorType": e.error_type(), "error": e.to_string()}).to_string(),
    )
        .into_response()
}

/// A time parameter: Unix seconds (fractions allowed) or RFC 3339.
fn parse_time(name: &str, s: &str) -> Result<i64, PromError> {
    if let Ok(f) = s.parse::<f64>()
        && f.is_finite()
    {
        return Ok((f * 1000.0).round() as i64);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            bad(format!(
                "invalid parameter {name:?}: cannot parse {s:?} to a valid timestamp"
            ))
        })
}

/// A duration parameter: seconds (fractions allowed) or a PromQL duration (`1m30s`).
fn parse_duration(name: &str, s: &str) -> Result<Duration, PromError> {
    if let Ok(f) = s.parse::<f64>() {
        if !f.is_finite() || f < 0.0 {
            return Err(bad(format!(
                "invalid parameter {name:?}: cannot parse {s:?} to a valid duration"
            )));
        }
        return Ok(Duration::from_secs_f64(f));
    }
    promql_parser::util::parse_duration(s).map_err(|_| {
        bad(format!(
            "invalid parameter {name:?}: cannot parse {s:?} to a valid duration"
        ))
    })
}

fn time_param(p: &Params, name: &str, default: i64) -> Result<i64, PromError> {
    p.get(name)
        .filter(|s| !s.is_empty())
        .map(|s| parse_time(name, s))
        .unwrap_or(Ok(default))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The query's config: the server's, with a shorter `timeout` parameter applied.
fn query_config(state: &AppState, p: &Params) -> Result<sonde_promql::PromConfig, PromError> {
    let mut cfg = state.promql.clone();
    if let Some(t) = p.get("timeout").filter(|s| !s.is_empty()) {
        cfg.timeout = cfg.timeout.min(parse_duration("timeout", t)?);
    }
    if let Some(l) = p.get("lookback_delta").filter(|s| !s.is_empty()) {
        cfg.lookback_delta = parse_duration("lookback_delta", l)?;
    }
    // Sonde's own: `rollups=false` reads raw samples only (to compare, or to rule
    // the tiers out); `rollups=always` uses every fitting tier, even one that saves
    // few rows.
    match p.get("rollups") {
        None | Some("") | Some("true") => {}
        Some("false") => cfg.use_rollups = false,
        Some("always") => cfg.rollup_min_saving = 0,
        Some(v) => {
            return Err(bad(format!(
                "invalid parameter \"rollups\": expected true, false or always, got {v:?}"
            )));
        }
    }
    Ok(cfg)
}

/// Parses `match[]` selectors into matcher lists (the metric name as a matcher).
fn selectors(p: &Params) -> Result<Vec<Vec<Matcher>>, PromError> {
    p.all("match[]")
        .into_iter()
        .map(|s| match promql_parser::parser::parse(s) {
            Ok(Expr::VectorSelector(vs)) => {
                let mut ms = vs.matchers.matchers.clone();
                if let Some(name) = &vs.name {
                    ms.push(Matcher::new(MatchOp::Equal, NAME_LABEL, name));
                }
                Ok(ms)
            }
            Ok(_) => Err(bad(format!(
                "invalid parameter \"match[]\": {s:?} is not a series selector"
            ))),
            Err(e) => Err(bad(format!("invalid parameter \"match[]\": {e}"))),
        })
        .collect()
}

/// `match[]` selectors where at least one is required.
fn required_selectors(p: &Params) -> Result<Vec<Vec<Matcher>>, PromError> {
    let sel = selectors(p)?;
    if sel.is_empty() {
        return Err(bad("no match[] parameter provided"));
    }
    Ok(sel)
}

/// Runs `f` for the caller's tenant, off the async workers' duty, and renders the
/// result. On the multi-threaded runtime `f` runs on the connection's own thread
/// (`block_in_place`: the thread's other tasks move to another thread) rather than
/// being handed to the blocking pool: a query that arrives after an idle spell then
/// wakes no other thread to start nor this one to answer. With 60 ms between calls
/// the 10k-series dashboard queries took 1–10 % less time (`benches/README.md`). A
/// panic in `f` is answered as an internal error, as from a blocking-pool task.
async fn run<F, D>(state: Arc<AppState>, headers: HeaderMap, f: F) -> Response
where
    F: FnOnce(&AppState, &str) -> Result<D, PromError> + Send + 'static,
    D: Into<Data> + Send + 'static,
{
    let tenant = match crate::http::tenant(&state, &headers) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    let res = match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                tokio::task::block_in_place(|| f(&state, &tenant))
            }))
            .map_err(|_| "the query panicked".to_string())
        }
        _ => tokio::task::spawn_blocking(move || f(&state, &tenant))
            .await
            .map_err(|e| e.to_string()),
    };
    match res {
        Ok(Ok(data)) => success(data),
        Ok(Err(e)) => error(&e),
        Err(e) => {
            tracing::error!(error = %e, "PromQL task failed");
            error(&PromError::Execution("internal error".into()))
        }
    }
}

fn query_string(p: &Params) -> Result<String, PromError> {
    match p.get("query") {
        Some(q) if !q.trim().is_empty() => Ok(q.to_string()),
        _ => Err(bad("invalid parameter \"query\": query is empty")),
    }
}

fn with_query_context(e: PromError) -> PromError {
    match e {
        PromError::BadData(m) if m.starts_with("parse error") => {
            PromError::BadData(format!("invalid parameter \"query\": {m}"))
        }
        e => e,
    }
}

/// `/api/v1/query`
pub async fn query(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let p = Params::new(q, &headers, &body);
    run(state, headers, move |state, tenant| {
        let query = query_string(&p)?;
        let t = time_param(&p, "time", now_ms())?;
        let cfg = query_config(state, &p)?;
        let v = sonde_promql::instant_query(&state.storage, tenant, &cfg, &query, t)
            .map_err(with_query_context)?;
        state.metrics.promql_query();
        Ok(Data::query(&v))
    })
    .await
}

/// `/api/v1/query_range`
pub async fn query_range(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let p = Params::new(q, &headers, &body);
    run(state, headers, move |state, tenant| {
        let query = query_string(&p)?;
        let start = p
            .get("start")
            .ok_or_else(|| bad("invalid parameter \"start\": missing"))
            .and_then(|s| parse_time("start", s))?;
        let end = p
            .get("end")
            .ok_or_else(|| bad("invalid parameter \"end\": missing"))
            .and_then(|s| parse_time("end", s))?;
        let step = p
            .get("step")
            .ok_or_else(|| bad("invalid parameter \"step\": missing"))
            .and_then(|s| parse_duration("step", s))?;
        let cfg = query_config(state, &p)?;
        let v = sonde_promql::range_query(
            &state.storage,
            tenant,
            &cfg,
            &query,
            start,
            end,
            step.as_millis() as i64,
        )
        .map_err(with_query_context)?;
        state.metrics.promql_query();
        Ok(Data::query(&v))
    })
    .await
}

/// `/api/v1/series`
pub async fn series(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let p = Params::new(q, &headers, &body);
    run(state, headers, move |state, tenant| {
        let sel = required_selectors(&p)?;
        let start = time_param(&p, "start", MIN_TIME_MS)?;
        let end = time_param(&p, "end", MAX_TIME_MS)?;
        let limit = limit_param(&p)?;
        let found = sonde_promql::series_matching(&state.storage, tenant, &sel, start, end)?;
        Ok(Value::Array(
            found
                .iter()
                .take(limit)
                .map(|m| {
                    Value::Object(
                        m.iter()
                            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                            .collect(),
                    )
                })
                .collect(),
        ))
    })
    .await
}

fn limit_param(p: &Params) -> Result<usize, PromError> {
    match p.get("limit").filter(|s| !s.is_empty()) {
        None => Ok(usize::MAX),
        Some(s) => match s.parse::<usize>() {
            Ok(0) => Ok(usize::MAX),
            Ok(n) => Ok(n),
            Err(_) => Err(bad(format!(
                "invalid parameter \"limit\": cannot parse {s:?} to a non-negative integer"
            ))),
        },
    }
}

/// Label names (or one label's values) of the series in range, optionally only
/// those matching `match[]`.
fn label_data(
    state: &AppState,
    tenant: &str,
    p: &Params,
    values_of: Option<&str>,
) -> Result<Value, PromError> {
    let start = time_param(p, "start", MIN_TIME_MS)?;
    let end = time_param(p, "end", MAX_TIME_MS)?;
    let limit = limit_param(p)?;
    let mut sel = selectors(p)?;
    if sel.is_empty() {
        // Every series: a matcher every metric name passes.
        sel.push(vec![Matcher::new(
            MatchOp::Re(regex::Regex::new("^(?s:.*)$").expect("valid regex")),
            NAME_LABEL,
            ".*",
        )]);
    }
    let found = sonde_promql::series_matching(&state.storage, tenant, &sel, start, end)?;
    let mut out = std::collections::BTreeSet::new();
    for m in &found {
        match values_of {
            None => out.extend(m.iter().map(|(k, _)| k.clone())),
            Some(name) => {
                if let Some((_, v)) = m.iter().find(|(k, _)| k == name) {
                    out.insert(v.clone());
                }
            }
        }
    }
    Ok(Value::Array(
        out.into_iter().take(limit).map(Value::String).collect(),
    ))
}

/// `/api/v1/labels`
pub async fn labels(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let p = Params::new(q, &headers, &body);
    run(state, headers, move |state, tenant| {
        label_data(state, tenant, &p, None)
    })
    .await
}

/// `/api/v1/label/<name>/values`
pub async fn label_values(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let p = Params::new(q, &headers, &Bytes::new());
    run(state, headers, move |state, tenant| {
        if !sonde_promql::is_label_name(&name) {
            return Err(bad(format!("invalid label name: {name:?}")));
        }
        label_data(state, tenant, &p, Some(&name))
    })
    .await
}

/// `/api/v1/status/buildinfo`: Grafana reads the version to pick its features.
pub async fn buildinfo() -> Response {
    success(json!({
        "version": "2.42.0",
        "revision": "sonde",
        "branch": "sonde",
        "buildUser": "sonde",
        "buildDate": "",
        "goVersion": "none (Sonde is written in Rust)",
        "application": "sonde",
        "sondeVersion": env!("CARGO_PKG_VERSION"),
    }))
}

/// `/api/v1/query_exemplars`: Sonde stores no exemplars; an empty answer.
pub async fn query_exemplars() -> Response {
    success(json!([]))
}

/// `POST /api/v1/admin/tsdb/delete_series?match[]=…[&start=…][&end=…]` (Prometheus'
/// admin API): deletes the matching series' rows in the range (default: all time)
/// from every segment of the caller's tenant; the head is flushed first. Answers
/// what was removed.
pub async fn delete_series(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let p = Params::new(q, &headers, &body);
    run(state, headers, move |state, tenant| {
        let sel = required_selectors(&p)?;
        let start = time_param(&p, "start", i64::MIN)?;
        let end = time_param(&p, "end", i64::MAX)?;
        if end < start {
            return Err(bad(
                "invalid parameter \"end\": end timestamp must not be before start time",
            ));
        }
        let s = sonde_promql::delete_series(&state.storage, tenant, &sel, start, end)?;
        Ok(serde_json::json!({
            "removed_rows": s.removed_rows,
            "rewritten_segments": s.rewritten_segments,
            "dropped_segments": s.dropped_segments,
        }))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations() {
        assert_eq!(
            parse_time("time", "1700000000.5").unwrap(),
            1_700_000_000_500
        );
        assert_eq!(
            parse_time("time", "2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        assert!(parse_time("time", "yesterday").is_err());
        assert_eq!(
            parse_duration("step", "15").unwrap(),
            Duration::from_secs(15)
        );
        assert_eq!(
            parse_duration("step", "1m30s").unwrap(),
            Duration::from_secs(90)
        );
        assert!(parse_duration("step", "-1").is_err());
    }
}
