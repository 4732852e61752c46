//! Prometheus remote_write 1.0: `POST /api/v1/write`, a snappy-compressed (block
//! format) protobuf `prometheus.WriteRequest`.
//!
//! Status codes follow the remote-write specification, so senders retry only what a
//! retry can fix: 204 stored; 400 bad snappy, bad protobuf or invalid series (not
//! retried; the valid tables of the request *are* stored and the body names the
//! first rejection); 413 a body or decompressed payload over the limit; 429 with
//! `Retry-After` when the head is full and flushing is behind; 503 while shutting
//! down; 500 for internal faults.
//!
//! Each metric name becomes a table with one f64 field `value`. Its kind is the
//! existing table's kind when the table exists (remote_write 1.0 sends metadata in
//! separate requests, so a later guess must not contradict the first); else the
//! request's metadata when present; else from the name: `_total` → counter,
//! `_bucket`, `_sum`, `_count` → histogram series, otherwise gauge.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prost::Message;
use sonde_proto::prometheus::{WriteRequest, metric_metadata::MetricType};
use sonde_types::{FieldType, Labels, MetricKind, NAME_LABEL, SeriesBatch, TableBatch};

use crate::AppState;
use crate::ingest::{Rejected, ingest};

/// Largest compressed body accepted.
pub const MAX_BODY_BYTES: usize = 32 << 20;
/// Largest decompressed payload accepted.
pub const MAX_DECOMPRESSED_BYTES: usize = 256 << 20;

fn plain(code: StatusCode, msg: String) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain")], msg + "\n").into_response()
}

pub async fn write(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let tenant = match crate::http::tenant(&state, &headers) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    let len = match snap::raw::decompress_len(&body) {
        Ok(n) => n,
        Err(e) => {
            state.metrics.rejected("remote_write", "bad_snappy", 0);
            return plain(StatusCode::BAD_REQUEST, format!("snappy: {e}"));
        }
    };
    if len > MAX_DECOMPRESSED_BYTES {
        return plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "decompressed payload: {len} bytes exceeds the limit of {MAX_DECOMPRESSED_BYTES}"
            ),
        );
    }
    let raw = match snap::raw::Decoder::new().decompress_vec(&body) {
        Ok(raw) => raw,
        Err(e) => {
            state.metrics.rejected("remote_write", "bad_snappy", 0);
            return plain(StatusCode::BAD_REQUEST, format!("snappy: {e}"));
        }
    };
    let req = match WriteRequest::decode(raw.as_slice()) {
        Ok(r) => r,
        Err(e) => {
            state.metrics.rejected("remote_write", "bad_protobuf", 0);
            return plain(StatusCode::BAD_REQUEST, format!("protobuf: {e}"));
        }
    };
    crate::metadata::record_remote_write(&state, &tenant, &req.metadata);
    let tables = convert(req, |t| state.storage.table_kind(&tenant, t));
    match ingest(&state, &tenant, "remote_write", tables, Vec::new()).await {
        Ok(outcome) => match outcome.rejections.first() {
            None => StatusCode::NO_CONTENT.into_response(),
            Some(r) => plain(
                StatusCode::BAD_REQUEST,
                format!(
                    "{} samples rejected ({} stored); first: table {:?}: {}",
                    outcome.rejected_samples, outcome.accepted_samples, r.table, r.reason
                ),
            ),
        },
        Err(e @ sonde_storage::Error::HeadFull { .. }) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            format!("{e}\n"),
        )
            .into_response(),
        Err(e) => crate::http::error_response(&e),
    }
}

fn kind_of(name: &str, metadata: &HashMap<String, MetricType>) -> MetricKind {
    let family = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s));
    let meta = metadata
        .get(name)
        .or_else(|| family.and_then(|f| metadata.get(f)));
    match meta {
        Some(MetricType::Counter) => MetricKind::Counter,
        Some(MetricType::Histogram | MetricType::Gaugehistogram | MetricType::Summary)
            if family.is_some() =>
        {
            MetricKind::Histogram
        }
        Some(MetricType::Gauge) => MetricKind::Gauge,
        _ if name.ends_with("_total") => MetricKind::Counter,
        _ if family.is_some() => MetricKind::Histogram,
        _ => MetricKind::Gauge,
    }
}

/// Groups the series by metric name into table batches; series Sonde cannot take are
/// returned as rejections.
pub fn convert(
    req: WriteRequest,
    existing_kind: impl Fn(&str) -> Option<MetricKind>,
) -> Vec<Result<TableBatch, Rejected>> {
    let metadata: HashMap<String, MetricType> = req
        .metadata
        .iter()
        .map(|m| (m.metric_family_name.clone(), m.r#type()))
        .collect();
    let mut tables: BTreeMap<String, TableBatch> = BTreeMap::new();
    let mut out = Vec::new();
    for ts in req.timeseries {
        let name = ts
            .labels
            .iter()
            .find(|l| l.name == NAME_LABEL)
            .map(|l| l.value.clone());
        let samples = ts.samples.len() as u64;
        let Some(name) = name else {
            out.push(Err(Rejected {
                table: String::new(),
                reason: "series without a __name__ label".into(),
                samples,
            }));
            continue;
        };
        if !ts.histograms.is_empty() {
            out.push(Err(Rejected {
                table: name,
                reason: "native histograms are not supported; send classic buckets".into(),
                samples: ts.histograms.len() as u64,
            }));
            continue;
        }
        let labels = match Labels::new(
            ts.labels
                .iter()
                .filter(|l| l.name != NAME_LABEL)
                .map(|l| (l.name.as_str(), l.value.as_str())),
        ) {
            Ok(l) => l,
            Err(e) => {
                out.push(Err(Rejected {
                    table: name,
                    reason: e.to_string(),
                    samples,
                }));
                continue;
            }
        };
        let table = tables.entry(name.clone()).or_insert_with(|| {
            let kind = existing_kind(&name).unwrap_or_else(|| kind_of(&name, &metadata));
            TableBatch::single(&name, kind, FieldType::F64)
        });
        table.series.push(SeriesBatch::f64(
            labels,
            ts.samples.iter().map(|s| s.timestamp).collect(),
            ts.samples.iter().map(|s| s.value).collect(),
        ));
    }
    out.extend(tables.into_values().map(Ok));
    out
}
