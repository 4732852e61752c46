//! Sonde's own metrics, rendered in the Prometheus text format on `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sonde_storage::Storage;

/// Counters updated by the services.
#[derive(Debug, Default)]
pub struct Metrics {
    ingested: Mutex<BTreeMap<&'static str, u64>>,
    rejected: Mutex<BTreeMap<(&'static str, String), u64>>,
    flushes: AtomicU64,
    flush_micros: AtomicU64,
    promql_queries: AtomicU64,
}

impl Metrics {
    pub fn ingested(&self, protocol: &'static str, samples: u64) {
        *self.ingested.lock().unwrap().entry(protocol).or_insert(0) += samples;
    }
    /// `reason` is a short, bounded label value (e.g. `invalid`, `head_full`).
    pub fn rejected(&self, protocol: &'static str, reason: &str, samples: u64) {
        *self
            .rejected
            .lock()
            .unwrap()
            .entry((protocol, reason.to_string()))
            .or_insert(0) += samples;
    }
    pub fn flushed(&self, elapsed: std::time::Duration) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.flush_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn promql_query(&self) {
        self.promql_queries.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text, including storage gauges.
    pub fn render(&self, storage: &Storage, cache: &crate::series_cache::SeriesCache) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP sonde_ingested_samples_total Samples acknowledged, by protocol.\n# TYPE sonde_ingested_samples_total counter"
        );
        for (p, n) in self.ingested.lock().unwrap().iter() {
            let _ = writeln!(out, "sonde_ingested_samples_total{{protocol=\"{p}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP sonde_rejected_samples_total Samples refused, by protocol and reason.\n# TYPE sonde_rejected_samples_total counter"
        );
        for ((p, r), n) in self.rejected.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "sonde_rejected_samples_total{{protocol=\"{p}\",reason=\"{r}\"}} {n}"
            );
        }
        let manifest = storage.manifest();
        let _ = writeln!(
            out,
            "# HELP sonde_head_bytes Approximate memory of the in-memory head.\n# TYPE sonde_head_bytes gauge\nsonde_head_bytes {}",
            storage.head_bytes()
        );
        let (lookups, hits) = cache.counts();
        let _ = writeln!(
            out,
            "# HELP sonde_remote_write_series_cache_lookups_total Series remote_write looked up in its series cache.\n# TYPE sonde_remote_write_series_cache_lookups_total counter\nsonde_remote_write_series_cache_lookups_total {lookups}\n# HELP sonde_remote_write_series_cache_hits_total Series found there (labels not decoded again).\n# TYPE sonde_remote_write_series_cache_hits_total counter\nsonde_remote_write_series_cache_hits_total {hits}\n# HELP sonde_remote_write_series_cache_entries Entries in the series cache.\n# TYPE sonde_remote_write_series_cache_entries gauge\nsonde_remote_write_series_cache_entries {}\n# HELP sonde_remote_write_series_cache_bytes Memory of the series cache beside the shared label sets.\n# TYPE sonde_remote_write_series_cache_bytes gauge\nsonde_remote_write_series_cache_bytes {}",
            cache.len(),
            cache.bytes()
        );
        let _ = writeln!(
            out,
            "# HELP sonde_segments Live segment files.\n# TYPE sonde_segments gauge\nsonde_segments {}",
            manifest.segments.len()
        );
        let _ = writeln!(
            out,
            "# HELP sonde_segment_bytes Bytes of live segment files.\n# TYPE sonde_segment_bytes gauge\nsonde_segment_bytes {}",
            manifest.segments.iter().map(|s| s.bytes).sum::<u64>()
        );
        let _ = writeln!(
            out,
            "# HELP sonde_admin_flush_duration_seconds Flushes requested through the admin API.\n# TYPE sonde_admin_flush_duration_seconds summary\nsonde_admin_flush_duration_seconds_sum {}\nsonde_admin_flush_duration_seconds_count {}",
            self.flush_micros.load(Ordering::Relaxed) as f64 / 1e6,
            self.flushes.load(Ordering::Relaxed)
        );
        let v = storage.volume_stats();
        for (name, help, n) in [
            (
                "sonde_ingest_dropped_series_total",
                "Series (per write) removed by drop/keep ingest rules.",
                v.dropped_series,
            ),
            (
                "sonde_ingest_dropped_samples_total",
                "Samples removed by drop/keep ingest rules.",
                v.dropped_samples,
            ),
            (
                "sonde_ingest_labels_dropped_total",
                "Labels removed by labeldrop ingest rules.",
                v.labels_dropped,
            ),
            (
                "sonde_ingest_overflow_series_total",
                "New series routed into an overflow series by a series cap.",
                v.overflow_series,
            ),
            (
                "sonde_ingest_overflow_samples_total",
                "Samples routed into an overflow series by a series cap.",
                v.overflow_samples,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {n}"
            );
        }
        let m = storage.maintenance_totals();
        for (name, help, n) in [
            (
                "sonde_compaction_input_segments_total",
                "Segments merged away by compaction.",
                m.compacted_inputs as u64,
            ),
            (
                "sonde_compaction_output_segments_total",
                "Segments written by compaction.",
                m.compacted_outputs as u64,
            ),
            (
                "sonde_deleted_segments_total",
                "Segments dropped whole by retention or deletes.",
                m.dropped_segments as u64,
            ),
            (
                "sonde_rewritten_segments_total",
                "Segments rewritten without expired or deleted rows.",
                m.rewritten_segments as u64,
            ),
            (
                "sonde_deleted_rows_total",
                "Rows removed by retention or deletes.",
                m.removed_rows,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP sonde_promql_rollup_calls_total Range-function calls answered from a rollup tier.\n# TYPE sonde_promql_rollup_calls_total counter\nsonde_promql_rollup_calls_total {}",
            sonde_promql::rollup::answered_from_tiers()
        );
        let _ = writeln!(
            out,
            "# HELP sonde_promql_queries_total PromQL queries answered.\n# TYPE sonde_promql_queries_total counter\nsonde_promql_queries_total {}",
            self.promql_queries.load(Ordering::Relaxed)
        );
        out
    }
}
