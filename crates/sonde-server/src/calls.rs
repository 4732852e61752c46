//! LLM call records → rows. Each call is one row of the event table `llm_calls` and
//! adds to the per-call metrics, all materialised at ingest in the same write:
//!
//! | table | kind | labels | value |
//! |---|---|---|---|
//! | `llm_calls` | event | provider, model, operation, status, error_type, the call's labels | fields `input_tokens`, `output_tokens`, `cached_input_tokens`, `reasoning_tokens` (i64), `ttft_seconds`, `duration_seconds`, `cost_usd` (f64) |
//! | `llm_tokens_total` | delta sum | provider, model, operation, call labels, `token_type` = input, output, cached_input, reasoning | the call's tokens of that type (zero counts are not written) |
//! | `llm_cost_usd_total` | delta sum | provider, model, operation, call labels | the call's cost |
//! | `llm_requests_total` | delta sum | provider, model, operation, call labels, status, error_type | 1 |
//! | `llm_request_duration_seconds` | event | provider, model, operation, call labels | duration |
//! | `llm_ttft_seconds` | event | provider, model, operation, call labels | time to first token (when > 0) |
//! | `llm_request_duration_seconds_bucket`, `_sum`, `_count` | delta sum | provider, model, operation, call labels (+ `le`) | a classic histogram of the duration: 1 in each bucket whose bound ≥ the duration ([`DURATION_BUCKETS`] and `+Inf`) |
//! | `llm_ttft_seconds_bucket`, `_sum`, `_count` | delta sum | as above | the same for time to first token ([`TTFT_BUCKETS`]) |
//!
//! The histograms make latency percentiles a PromQL query that Grafana and existing
//! dashboards already know — `histogram_quantile(0.95, sum by (le, model)
//! (rate(llm_request_duration_seconds_bucket[5m])))` — with the usual bucket
//! interpolation error; exact percentiles come from the event tables in SQL.
//!
//! Delta sums add up per timestamp, so `sum`/`increase` over any window count every
//! call, late or sparse; the event tables keep one observation per call for
//! percentiles. The metric tables have one f64 field `value`, like metrics from
//! remote_write and OTLP (integer values still compress as integers on disk). A table
//! keeps the kind of its first write: do not send these names from another source
//! (e.g. an exporter's cumulative `llm_tokens_total`) into the same tenant.

use std::collections::BTreeMap;

use sonde_proto::v1::LlmCall;
use sonde_types::{FieldColumn, FieldDef, FieldType, Labels, MetricKind, SeriesBatch, TableBatch};

use crate::ingest::Rejected;
use crate::pricing::{self, Price};

/// Upper bounds (seconds) of the per-call duration histogram; `+Inf` is added.
pub const DURATION_BUCKETS: [f64; 11] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0];
/// Upper bounds (seconds) of the per-call time-to-first-token histogram.
pub const TTFT_BUCKETS: [f64; 9] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Field names and types of `llm_calls`, in order.
pub use sonde_types::LLM_CALL_FIELDS as CALL_FIELDS;

type Rows = (MetricKind, Vec<FieldDef>, BTreeMap<Labels, SeriesBatch>);

/// Accumulates rows per (table, field set, labels) so a request's calls form few
/// series. `llm_calls` rows of calls without a cost leave out `cost_usd` (null).
#[derive(Default)]
struct Tables {
    tables: BTreeMap<(&'static str, usize), Rows>,
}

impl Tables {
    fn push(
        &mut self,
        table: &'static str,
        kind: MetricKind,
        labels: &Labels,
        ts: i64,
        values: &[Value],
    ) {
        let (_, fields, series) = self.tables.entry((table, values.len())).or_insert_with(|| {
            let fields = if table == "llm_calls" {
                CALL_FIELDS[..values.len()]
                    .iter()
                    .map(|(n, t)| FieldDef::new(*n, *t))
                    .collect()
            } else {
                vec![FieldDef::new("value", values[0].ty())]
            };
            (kind, fields, BTreeMap::new())
        });
        let s = series.entry(labels.clone()).or_insert_with(|| SeriesBatch {
            labels: labels.clone(),
            timestamps: Default::default(),
            fields: fields
                .iter()
                .map(|f| match f.ty {
                    FieldType::I64 => FieldColumn::I64(Default::default()),
                    // Call fields are numbers (these defs come from the values).
                    FieldType::F64 | FieldType::Bytes => FieldColumn::F64(Default::default()),
                })
                .collect(),
        });
        s.timestamps.push(ts);
        for (col, v) in s.fields.iter_mut().zip(values) {
            match (col, v) {
                (FieldColumn::F64(c), Value::F(x)) => c.push(*x),
                (FieldColumn::I64(c), Value::I(x)) => c.push(*x),
                (FieldColumn::F64(c), Value::I(x)) => c.push(*x as f64),
                (FieldColumn::I64(c), Value::F(x)) => c.push(*x as i64),
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Value {
    I(i64),
    F(f64),
}

impl Value {
    fn ty(self) -> FieldType {
        match self {
            Value::I(_) => FieldType::I64,
            Value::F(_) => FieldType::F64,
        }
    }
}

fn with(base: &[(String, String)], extra: &[(&str, &str)]) -> Result<Labels, sonde_types::Error> {
    Labels::new(
        base.iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string()))),
    )
}

/// Converts calls into table batches (one per table); a call that cannot be converted
/// is rejected alone.
pub fn convert(calls: Vec<LlmCall>, prices: &[Price]) -> Vec<Result<TableBatch, Rejected>> {
    let mut out = Vec::new();
    let mut t = Tables::default();
    for c in calls {
        let reject = |reason: String| Rejected {
            table: "llm_calls".into(),
            reason,
            samples: CALL_FIELDS.len() as u64,
        };
        if c.model.is_empty() {
            out.push(Err(reject("call model: must not be empty".into())));
            continue;
        }
        let status = match (c.status.as_str(), c.error_type.is_empty()) {
            ("", true) => "ok",
            ("", false) => "error",
            (s, _) => s,
        }
        .to_string();
        let operation = if c.operation.is_empty() {
            "chat"
        } else {
            &c.operation
        }
        .to_string();
        let mut base: Vec<(String, String)> = c
            .labels
            .iter()
            .map(|l| (l.name.clone(), l.value.clone()))
            .collect();
        base.push(("provider".into(), c.provider.clone()));
        base.push(("model".into(), c.model.clone()));
        base.push(("operation".into(), operation));
        let cost = c.cost_usd.or_else(|| {
            pricing::lookup(prices, &c.model, c.time_ms).map(|p| {
                pricing::cost(
                    p,
                    c.input_tokens,
                    c.output_tokens,
                    c.cached_input_tokens,
                    c.reasoning_tokens,
                )
            })
        });
        let (metric_labels, req_labels) = match (
            with(&base, &[]),
            with(&base, &[("status", &status), ("error_type", &c.error_type)]),
        ) {
            (Ok(m), Ok(r)) => (m, r),
            (Err(e), _) | (_, Err(e)) => {
                out.push(Err(reject(e.to_string())));
                continue;
            }
        };
        let ts = c.time_ms;
        let row = [
            Value::I(c.input_tokens),
            Value::I(c.output_tokens),
            Value::I(c.cached_input_tokens),
            Value::I(c.reasoning_tokens),
            Value::F(c.ttft_seconds),
            Value::F(c.duration_seconds),
            Value::F(cost.unwrap_or(0.0)),
        ];
        // Without a cost (unknown model, none sent) the row's cost_usd stays null.
        let n = if cost.is_some() {
            row.len()
        } else {
            row.len() - 1
        };
        t.push("llm_calls", MetricKind::Event, &req_labels, ts, &row[..n]);
        for (kind, n) in [
            ("input", c.input_tokens),
            ("output", c.output_tokens),
            ("cached_input", c.cached_input_tokens),
            ("reasoning", c.reasoning_tokens),
        ] {
            if n != 0 {
                match with(&base, &[("token_type", kind)]) {
                    Ok(l) => t.push(
                        "llm_tokens_total",
                        MetricKind::DeltaSum,
                        &l,
                        ts,
                        &[Value::I(n)],
                    ),
                    Err(e) => out.push(Err(reject(e.to_string()))),
                }
            }
        }
        if let Some(cost) = cost {
            t.push(
                "llm_cost_usd_total",
                MetricKind::DeltaSum,
                &metric_labels,
                ts,
                &[Value::F(cost)],
            );
        }
        t.push(
            "llm_requests_total",
            MetricKind::DeltaSum,
            &req_labels,
            ts,
            &[Value::I(1)],
        );
        t.push(
            "llm_request_duration_seconds",
            MetricKind::Event,
            &metric_labels,
            ts,
            &[Value::F(c.duration_seconds)],
        );
        let mut hist = |family: [&'static str; 3], bounds: &[f64], v: f64| {
            for b in bounds.iter().filter(|&&b| v <= b) {
                match with(&base, &[("le", &format!("{b}"))]) {
                    Ok(l) => t.push(family[0], MetricKind::DeltaSum, &l, ts, &[Value::F(1.0)]),
                    Err(e) => out.push(Err(reject(e.to_string()))),
                }
            }
            match with(&base, &[("le", "+Inf")]) {
                Ok(l) => t.push(family[0], MetricKind::DeltaSum, &l, ts, &[Value::F(1.0)]),
                Err(e) => out.push(Err(reject(e.to_string()))),
            }
            t.push(
                family[1],
                MetricKind::DeltaSum,
                &metric_labels,
                ts,
                &[Value::F(v)],
            );
            t.push(
                family[2],
                MetricKind::DeltaSum,
                &metric_labels,
                ts,
                &[Value::F(1.0)],
            );
        };
        hist(
            [
                "llm_request_duration_seconds_bucket",
                "llm_request_duration_seconds_sum",
                "llm_request_duration_seconds_count",
            ],
            &DURATION_BUCKETS,
            c.duration_seconds,
        );
        if c.ttft_seconds > 0.0 {
            hist(
                [
                    "llm_ttft_seconds_bucket",
                    "llm_ttft_seconds_sum",
                    "llm_ttft_seconds_count",
                ],
                &TTFT_BUCKETS,
                c.ttft_seconds,
            );
            t.push(
                "llm_ttft_seconds",
                MetricKind::Event,
                &metric_labels,
                ts,
                &[Value::F(c.ttft_seconds)],
            );
        }
    }
    for ((name, _), (kind, fields, series)) in t.tables {
        out.push(Ok(TableBatch {
            table: name.to_string(),
            kind,
            fields,
            series: series.into_values().collect(),
        }));
    }
    out
}
