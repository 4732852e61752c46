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

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prost::Message;
use sonde_proto::prometheus::{MetricMetadata, metric_metadata::MetricType};
use sonde_types::{FieldType, Labels, MetricKind, NAME_LABEL, Samples, SeriesBatch, TableBatch};

use crate::AppState;
use crate::ingest::{Rejected, ingest};
use crate::series_cache::Lookups;

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
    let decoded = {
        let cache = state.series_cache.lookups();
        let decoded = decode(
            &raw,
            |t| state.storage.table_kind(&tenant, t),
            cache.as_ref(),
        );
        if let Some(c) = cache {
            c.finish();
        }
        decoded
    };
    let (tables, metadata) = match decoded {
        Ok(d) => d,
        Err(e) => {
            state.metrics.rejected("remote_write", "bad_protobuf", 0);
            return plain(StatusCode::BAD_REQUEST, format!("protobuf: {e}"));
        }
    };
    crate::metadata::record_remote_write(&state, &tenant, &metadata);
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

fn kind_of(name: &str, metadata: &HashMap<&str, MetricType>) -> MetricKind {
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

/// The tables (or rejections) of a request, and its metadata.
pub type Decoded = (Vec<Result<TableBatch, Rejected>>, Vec<MetricMetadata>);

/// Decodes a `prometheus.WriteRequest` straight into table batches, reading label
/// names and values out of the request buffer (no per-label `String`s: decoding
/// into generated structs first was the largest cost of remote_write ingest). Series
/// are grouped by metric name; series Sonde cannot take are returned as
/// rejections. Also returns the request's metadata.
///
/// With `cache`, a series whose label bytes were decoded before (same tenant, same
/// bytes) reuses that label set and table name instead of decoding its labels again
/// (see [`crate::series_cache`]); the result is the same either way.
pub fn decode(
    raw: &[u8],
    existing_kind: impl Fn(&str) -> Option<MetricKind>,
    cache: Option<&Lookups<'_>>,
) -> Result<Decoded, String> {
    let mut series_msgs = Vec::new();
    let mut metadata = Vec::new();
    let mut r = Reader(raw);
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, LEN) => series_msgs.push(r.bytes()?),
            (3, LEN) => metadata
                .push(MetricMetadata::decode(r.bytes()?).map_err(|e| format!("metadata: {e}"))?),
            _ => r.skip(wire)?,
        }
    }
    let meta: HashMap<&str, MetricType> = metadata
        .iter()
        .map(|m| (m.metric_family_name.as_str(), m.r#type()))
        .collect();
    // Tables in order of first appearance, found by name; consecutive series of one
    // metric (the usual order) skip the search.
    let mut tables: Vec<(Arc<str>, TableBatch)> = Vec::new();
    let mut by_name: HashMap<Arc<str>, usize> = HashMap::new();
    let mut last: Option<usize> = None;
    let mut out = Vec::new();
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for msg in series_msgs {
        let series = scan_series(msg)?;
        let samples = series.timestamps.len() as u64;
        let hit = match (cache, series.label_span) {
            (Some(c), Some(wire)) => c.get(wire),
            _ => None,
        };
        let (name, labels): (&str, Labels) = match hit {
            Some(e) => (&e.table, e.labels.clone()),
            None => {
                let mut name: Option<&str> = None;
                pairs.clear();
                let mut l = Reader(series.label_span.unwrap_or(msg));
                while let Some((n, v)) = l.label()? {
                    let (n, v) = (utf8(n)?, utf8(v)?);
                    if n == NAME_LABEL {
                        name = Some(v);
                    } else {
                        pairs.push((n, v));
                    }
                }
                let Some(name) = name else {
                    out.push(Err(Rejected {
                        table: String::new(),
                        reason: "series without a __name__ label".into(),
                        samples,
                    }));
                    continue;
                };
                match Labels::from_strs(&mut pairs) {
                    Ok(l) => (name, l),
                    Err(e) => {
                        out.push(Err(Rejected {
                            table: name.to_string(),
                            reason: e.to_string(),
                            samples,
                        }));
                        continue;
                    }
                }
            }
        };
        // Checked after the labels, whichever way they were found: a series the
        // cache knows may come with native histograms this time.
        if series.histograms > 0 {
            out.push(Err(Rejected {
                table: name.to_string(),
                reason: "native histograms are not supported; send classic buckets".into(),
                samples: series.histograms,
            }));
            continue;
        }
        let idx = match last.filter(|&i| *tables[i].0 == *name) {
            Some(i) => i,
            None => match by_name.get(name) {
                Some(&i) => i,
                None => {
                    let kind = existing_kind(name).unwrap_or_else(|| kind_of(name, &meta));
                    let shared: Arc<str> = Arc::from(name);
                    by_name.insert(shared.clone(), tables.len());
                    tables.push((shared, TableBatch::single(name, kind, FieldType::F64)));
                    tables.len() - 1
                }
            },
        };
        last = Some(idx);
        if hit.is_none()
            && let (Some(c), Some(wire)) = (cache, series.label_span)
        {
            c.add(wire, tables[idx].0.clone(), labels.clone());
        }
        tables[idx]
            .1
            .series
            .push(SeriesBatch::f64(labels, series.timestamps, series.values));
    }
    out.extend(tables.into_iter().map(|(_, t)| Ok(t)));
    Ok((out, metadata))
}

/// One `prometheus.TimeSeries`, its labels not yet decoded.
struct ScannedSeries<'a> {
    /// The label fields (`Label` messages, with their keys) when nothing else sits
    /// between them (the usual layout): the series-cache key. `None` when there are
    /// none or they interleave with other fields (the labels are then read from the
    /// whole message, skipping the rest).
    label_span: Option<&'a [u8]>,
    timestamps: Samples<i64>,
    values: Samples<f64>,
    histograms: u64,
}

/// Reads a series' samples and finds its label fields.
fn scan_series(msg: &[u8]) -> Result<ScannedSeries<'_>, String> {
    let mut r = Reader(msg);
    let (mut first, mut end, mut contiguous) = (None::<usize>, 0, true);
    let (mut timestamps, mut values) = (Samples::new(), Samples::new());
    let mut histograms = 0u64;
    loop {
        let at = msg.len() - r.0.len();
        let Some((field, wire)) = r.key()? else { break };
        match (field, wire) {
            (1, LEN) => {
                r.bytes()?;
                if first.is_some() && end != at {
                    contiguous = false;
                }
                first.get_or_insert(at);
                end = msg.len() - r.0.len();
            }
            (2, LEN) => {
                let (mut value, mut t) = (0.0, 0i64);
                let mut smp = Reader(r.bytes()?);
                while let Some((f, w)) = smp.key()? {
                    match (f, w) {
                        (1, I64) => value = f64::from_bits(smp.fixed64()?),
                        (2, VARINT) => t = smp.varint()? as i64,
                        _ => smp.skip(w)?,
                    }
                }
                timestamps.push(t);
                values.push(value);
            }
            (4, LEN) => {
                r.bytes()?;
                histograms += 1;
            }
            _ => r.skip(wire)?,
        }
    }
    Ok(ScannedSeries {
        label_span: first.filter(|_| contiguous).map(|start| &msg[start..end]),
        timestamps,
        values,
        histograms,
    })
}

fn utf8(b: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(b).map_err(|e| format!("label text: {e}"))
}

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

/// A label's name and value, undecoded.
type LabelBytes<'a> = (&'a [u8], &'a [u8]);

/// A protobuf wire-format reader over a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        // Keys and most lengths fit one byte.
        if let Some((&b, rest)) = self.0.split_first()
            && b < 0x80
        {
            self.0 = rest;
            return Ok(u64::from(b));
        }
        let mut v = 0u64;
        for i in 0..10 {
            let Some((&b, rest)) = self.0.split_first() else {
                return Err("truncated varint".into());
            };
            self.0 = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }
    /// The next field number and wire type, or `None` at the end.
    fn key(&mut self) -> Result<Option<(u32, u8)>, String> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let k = self.varint()?;
        Ok(Some(((k >> 3) as u32, (k & 7) as u8)))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.0.len() {
            return Err(format!(
                "field of {n} bytes with {} left in the message",
                self.0.len()
            ));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.varint()?;
        self.take(usize::try_from(n).map_err(|_| "length overflow".to_string())?)
    }
    /// The next `Label` field's name and value bytes, skipping other fields; `None`
    /// at the end.
    fn label(&mut self) -> Result<Option<LabelBytes<'a>>, String> {
        while let Some((field, wire)) = self.key()? {
            if (field, wire) != (1, LEN) {
                self.skip(wire)?;
                continue;
            }
            let (mut n, mut v): (&[u8], &[u8]) = (b"", b"");
            let mut l = Reader(self.bytes()?);
            while let Some((f, w)) = l.key()? {
                match (f, w) {
                    (1, LEN) => n = l.bytes()?,
                    (2, LEN) => v = l.bytes()?,
                    _ => l.skip(w)?,
                }
            }
            return Ok(Some((n, v)));
        }
        Ok(None)
    }
    fn fixed64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn skip(&mut self, wire: u8) -> Result<(), String> {
        match wire {
            VARINT => self.varint().map(drop),
            I64 => self.take(8).map(drop),
            LEN => self.bytes().map(drop),
            I32 => self.take(4).map(drop),
            w => Err(format!("unsupported wire type {w}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};

    fn ts(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
        TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            samples: samples
                .iter()
                .map(|&(timestamp, value)| Sample { value, timestamp })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn decodes_what_prost_encodes() {
        let req = WriteRequest {
            timeseries: vec![
                ts(
                    &[("__name__", "up_total"), ("job", "a"), ("empty", "")],
                    &[(1_000, 1.5), (2_000, -0.0), (-5, f64::NAN)],
                ),
                ts(&[("__name__", "up_total"), ("job", "b")], &[(1_000, 2.0)]),
                ts(&[("job", "nameless")], &[(1, 1.0)]),
                ts(&[("__name__", "g"), ("a", "1"), ("a", "2")], &[(1, 1.0)]),
            ],
            metadata: vec![MetricMetadata {
                r#type: MetricType::Gauge as i32,
                metric_family_name: "up_total".into(),
                help: "h".into(),
                unit: String::new(),
            }],
        };
        let (tables, meta) = decode(&req.encode_to_vec(), |_| None, None).unwrap();
        assert_eq!(meta.len(), 1);
        let ok: Vec<&TableBatch> = tables.iter().filter_map(|t| t.as_ref().ok()).collect();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].table, "up_total");
        assert_eq!(ok[0].kind, MetricKind::Gauge, "metadata wins over the name");
        let a = &ok[0].series[0];
        assert_eq!(a.labels.iter().collect::<Vec<_>>(), vec![("job", "a")]);
        assert_eq!(a.timestamps[..], [1_000, 2_000, -5]);
        match &a.fields[0] {
            sonde_types::FieldColumn::F64(v) => {
                assert_eq!(v[0], 1.5);
                assert_eq!(
                    v[1], 0.0,
                    "proto3 omits zero values; the default is read back"
                );
                assert!(v[2].is_nan());
            }
            other => panic!("{other:?}"),
        }
        let b = &ok[0].series[1];
        assert_eq!(b.timestamps[..], [1_000]);
        assert!(
            !b.timestamps.spilled() && !b.fields.spilled(),
            "a one-sample series allocates nothing of its own"
        );
        match &b.fields[0] {
            sonde_types::FieldColumn::F64(v) => assert!(!v.spilled()),
            other => panic!("{other:?}"),
        }
        let errs: Vec<&Rejected> = tables.iter().filter_map(|t| t.as_ref().err()).collect();
        assert_eq!(errs.len(), 2);
        assert!(errs[0].reason.contains("__name__"));
        assert!(errs[1].reason.contains("more than once"));
        assert!(decode(&[0x0a, 0xff], |_| None, None).is_err(), "truncated");
        assert!(decode(b"\x0b", |_| None, None).is_err(), "group wire type");
    }

    #[test]
    fn cache_hits_decode_the_same() {
        let req = |order: &[(&str, &str)]| {
            WriteRequest {
                timeseries: vec![
                    ts(order, &[(1_000, 1.0)]),
                    ts(&[("__name__", "b"), ("x", "1")], &[(1_000, 2.0)]),
                    ts(&[("x", "1")], &[(1, 1.0)]),
                ],
                metadata: vec![],
            }
            .encode_to_vec()
        };
        let cache = crate::series_cache::SeriesCache::new(100);
        let run = |raw: &[u8]| {
            let l = cache.lookups().unwrap();
            let (tables, _) = decode(raw, |_| None, Some(&l)).unwrap();
            l.finish();
            tables
        };
        let sorted = [("__name__", "a_total"), ("job", "j"), ("zone", "z")];
        let cold = run(&req(&sorted));
        assert_eq!(cache.len(), 2, "the two named series; not the rejected one");
        let warm = run(&req(&sorted));
        let uncached = decode(&req(&sorted), |_| None, None).unwrap().0;
        assert_eq!(cold, warm);
        assert_eq!(cold, uncached);
        let (c, w) = (cold[1].as_ref().unwrap(), warm[1].as_ref().unwrap());
        assert_eq!((c.table.as_str(), c.kind), ("a_total", MetricKind::Counter));
        assert!(
            c.series[0].labels.same(&w.series[0].labels),
            "the hit hands out the first decode's shared label set"
        );
        // Other bytes for the same set (another label order): decoded in full, equal.
        let shuffled = run(&req(&[
            ("zone", "z"),
            ("job", "j"),
            ("__name__", "a_total"),
        ]));
        assert_eq!(shuffled, cold);
        // A known series that now carries a native histogram is still refused.
        let mut with_hist = ts(&sorted, &[(2_000, 1.0)]);
        with_hist.histograms = vec![Default::default()];
        let raw = WriteRequest {
            timeseries: vec![with_hist],
            metadata: vec![],
        }
        .encode_to_vec();
        let t = run(&raw);
        let r = t[0].as_ref().unwrap_err();
        assert!(r.reason.contains("native histograms"), "{r:?}");
        assert_eq!(r.table, "a_total");
        assert!(
            !shuffled[1].as_ref().unwrap().series[0]
                .labels
                .same(&c.series[0].labels)
        );
        assert_eq!(cache.len(), 3);
    }
}
