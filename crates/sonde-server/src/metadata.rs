//! Metric metadata: what is known about a metric family beyond its samples — type,
//! unit, help text and, for OTLP metrics, the original OpenTelemetry name before
//! normalisation. Served at `GET /api/v1/metadata` in Prometheus' format.
//!
//! Design decision: metadata changes rarely (once per new metric family), so it is
//! kept in one small JSON file per data directory (`metadata.json`), rewritten
//! atomically (temp file, fsync, rename, fsync of the directory) only when an entry
//! changes. Losing it loses descriptions, never samples; a corrupt file is logged
//! and replaced.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sonde_proto::prometheus::MetricMetadata;
use sonde_proto::prometheus::metric_metadata::MetricType;

use crate::AppState;

/// The metadata of one metric family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricMeta {
    /// `counter`, `gauge`, `histogram`, `summary`, `delta_sum`, `delta_histogram`,
    /// `unknown`, …
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub help: String,
    #[serde(default)]
    pub unit: String,
    /// The OpenTelemetry metric name the family was normalised from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub otel_name: String,
}

type Families = BTreeMap<String, MetricMeta>;

/// All tenants' metadata, persisted in `metadata.json`.
#[derive(Debug)]
pub struct MetadataStore {
    path: PathBuf,
    tenants: Mutex<BTreeMap<String, Families>>,
}

/// Most families kept per tenant; further new families are not described (their
/// samples are stored as usual).
pub const MAX_FAMILIES_PER_TENANT: usize = 100_000;

impl MetadataStore {
    /// Loads `<dir>/metadata.json` if it exists.
    pub fn open(dir: &Path) -> Self {
        let path = dir.join("metadata.json");
        let tenants = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "unreadable metric metadata; starting empty");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        MetadataStore {
            path,
            tenants: Mutex::new(tenants),
        }
    }

    /// Records entries, persisting only when something changed.
    pub fn record(&self, tenant: &str, entries: impl IntoIterator<Item = (String, MetricMeta)>) {
        let mut tenants = self.tenants.lock().unwrap();
        let mut changed = false;
        for (name, meta) in entries {
            let families = match tenants.get_mut(tenant) {
                Some(f) => f,
                None => tenants.entry(tenant.to_string()).or_default(),
            };
            match families.get(&name) {
                Some(old) if *old == meta => {}
                Some(_) => {
                    families.insert(name, meta);
                    changed = true;
                }
                None if families.len() < MAX_FAMILIES_PER_TENANT => {
                    families.insert(name, meta);
                    changed = true;
                }
                None => {}
            }
        }
        if changed && let Err(e) = self.persist(&tenants) {
            tracing::warn!(path = %self.path.display(), error = %e, "writing metric metadata");
        }
    }

    /// A tenant's families, by name.
    pub fn families(&self, tenant: &str) -> Families {
        self.tenants
            .lock()
            .unwrap()
            .get(tenant)
            .cloned()
            .unwrap_or_default()
    }

    fn persist(&self, tenants: &BTreeMap<String, Families>) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(tenants).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// Records the metadata a remote_write request carries.
pub fn record_remote_write(state: &AppState, tenant: &str, metadata: &[MetricMetadata]) {
    if metadata.is_empty() {
        return;
    }
    state.metadata.record(
        tenant,
        metadata.iter().map(|m| {
            let kind = match m.r#type() {
                MetricType::Counter => "counter",
                MetricType::Gauge => "gauge",
                MetricType::Histogram => "histogram",
                MetricType::Gaugehistogram => "gaugehistogram",
                MetricType::Summary => "summary",
                MetricType::Info => "info",
                MetricType::Stateset => "stateset",
                MetricType::Unknown => "unknown",
            };
            (
                m.metric_family_name.clone(),
                MetricMeta {
                    kind: kind.to_string(),
                    help: m.help.clone(),
                    unit: m.unit.clone(),
                    otel_name: String::new(),
                },
            )
        }),
    );
}
