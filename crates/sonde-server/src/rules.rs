//! Rules over this server's data: the [`sonde_rules::Backend`] over storage, PromQL
//! and SQL, and the HTTP endpoints `/api/v1/rules`, `/api/v1/alerts` and
//! `POST /-/reload`.

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sonde_rules::Labels;
use sonde_storage::Storage;
use sonde_types::{FieldType, MetricKind, SeriesBatch, TableBatch};

use crate::AppState;

/// Rules read with PromQL and SQL and write recording-rule output, all within the
/// rule's tenant.
#[derive(Debug)]
pub struct RulesBackend {
    pub storage: Arc<Storage>,
    pub promql: sonde_promql::PromConfig,
    pub query: Arc<sonde_query::QueryEngine>,
    pub runtime: tokio::runtime::Handle,
}

fn labels_of(m: &[(String, String)]) -> Labels {
    m.iter().cloned().collect()
}

impl sonde_rules::Backend for RulesBackend {
    fn instant(&self, tenant: &str, promql: &str, t: i64) -> Result<Vec<(Labels, f64)>, String> {
        let v = sonde_promql::instant_query(&self.storage, tenant, &self.promql, promql, t)
            .map_err(|e| e.to_string())?;
        Ok(match v {
            sonde_promql::QueryValue::Scalar(_, x) => vec![(Labels::new(), x)],
            sonde_promql::QueryValue::Vector(s) => {
                s.into_iter().map(|(m, _, x)| (labels_of(&m), x)).collect()
            }
            _ => return Err("expression must give an instant vector or a scalar".into()),
        })
    }

    fn range(
        &self,
        tenant: &str,
        promql: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<sonde_rules::eval::RangeSeries, String> {
        let mut cfg = self.promql.clone();
        cfg.max_points_per_series = usize::MAX;
        let v = sonde_promql::range_query(&self.storage, tenant, &cfg, promql, start, end, step)
            .map_err(|e| e.to_string())?;
        match v {
            sonde_promql::QueryValue::Matrix(rows) => Ok(rows
                .into_iter()
                .map(|r| (labels_of(&r.metric), r.ts.into_iter().zip(r.vals).collect()))
                .collect()),
            _ => Err("expression must give an instant vector".into()),
        }
    }

    fn sql(&self, tenant: &str, sql: &str, _t: i64) -> Result<Vec<(Labels, f64)>, String> {
        let out = self
            .runtime
            .block_on(self.query.sql(tenant, sql))
            .map_err(|e| e.to_string())?;
        let Some(vi) = out.schema.fields().iter().position(|f| f.name() == "value") else {
            return Err("a SQL rule must return a column named `value`".into());
        };
        let mut rows = Vec::new();
        for b in &out.batches {
            let value = arrow::compute::cast(b.column(vi), &DataType::Float64)
                .map_err(|e| format!("column value: {e}"))?;
            let value = value.as_primitive::<Float64Type>();
            let mut label_cols = Vec::new();
            for (i, f) in out.schema.fields().iter().enumerate() {
                if i == vi || matches!(f.data_type(), DataType::Timestamp(..)) {
                    continue;
                }
                let col = arrow::compute::cast(b.column(i), &DataType::Utf8)
                    .map_err(|e| format!("column {}: {e}", f.name()))?;
                label_cols.push((f.name().clone(), col));
            }
            for r in 0..b.num_rows() {
                if value.is_null(r) {
                    continue;
                }
                let mut l = Labels::new();
                for (name, col) in &label_cols {
                    let s = col.as_string::<i32>();
                    if !s.is_null(r) && !s.value(r).is_empty() {
                        l.insert(name.clone(), s.value(r).to_string());
                    }
                }
                rows.push((l, value.value(r)));
            }
        }
        Ok(rows)
    }

    fn write(
        &self,
        tenant: &str,
        name: &str,
        samples: Vec<(Labels, f64)>,
        t: i64,
    ) -> Result<(), String> {
        if samples.is_empty() {
            return Ok(());
        }
        let mut table = TableBatch::single(name, MetricKind::Gauge, FieldType::F64);
        for (l, v) in samples {
            let labels = sonde_types::Labels::new(l).map_err(|e| e.to_string())?;
            table
                .series
                .push(SeriesBatch::f64(labels, vec![t], vec![v]));
        }
        let outcome = self
            .storage
            .write_tables(tenant, vec![table], Vec::new())
            .map_err(|e| e.to_string())?;
        match outcome.rejected.first() {
            Some(r) => Err(r.error.to_string()),
            None => Ok(()),
        }
    }
}

/// The caller's tenant's part of what the rule manager lists; `empty` without rules.
fn listing(
    state: &AppState,
    headers: &HeaderMap,
    list: fn(&sonde_rules::Manager, &str) -> serde_json::Value,
    empty: serde_json::Value,
) -> Response {
    let tenant = match crate::http::tenant(state, headers) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    crate::prom_api::success(state.rules.get().map_or(empty, |m| list(m, &tenant)))
}

/// `GET /api/v1/rules`
pub async fn rules(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    listing(
        &state,
        &headers,
        sonde_rules::Manager::rules_json,
        json!({"groups": []}),
    )
}

/// `GET /api/v1/alerts`
pub async fn alerts(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    listing(
        &state,
        &headers,
        sonde_rules::Manager::alerts_json,
        json!({"alerts": []}),
    )
}

/// `POST /-/reload`: re-reads the rule files; a bad file leaves the rules in force.
pub async fn reload(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = crate::http::tenant(&state, &headers) {
        return *r;
    }
    let Some(m) = state.rules.get().cloned() else {
        return (StatusCode::OK, "no rules configured\n").into_response();
    };
    match tokio::task::spawn_blocking(move || m.reload()).await {
        Ok(Ok(n)) => (StatusCode::OK, format!("reloaded {n} rules\n")).into_response(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "rule reload failed; the previous rules stay in force");
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
