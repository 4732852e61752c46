//! Data-volume controls at ingest, applied to every write before validation, whatever
//! the protocol: ordered drop / keep / labeldrop rules (Prometheus relabelling's three
//! most used actions, by table name and label regexes), and per-table series caps
//! that can route the excess into one overflow series instead of rejecting it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use regex::Regex;
use sonde_types::{Labels, TableBatch};

use crate::head::Head;
use crate::{Error, Result};

/// The label an overflow series carries (as OpenTelemetry SDKs name it).
pub const OVERFLOW_LABEL: &str = "otel_metric_overflow";

/// What a rule does to the series it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    /// Drop matching series.
    Drop,
    /// Drop series that do not match.
    Keep,
    /// Remove the labels whose names match `label_names` from matching series.
    LabelDrop,
}

/// One ingest rule. A series matches when its table name matches `table` and every
/// `labels` regex matches the label's value (`""` when absent). Regexes are anchored.
#[derive(Debug, Clone)]
pub struct IngestRule {
    pub action: RuleAction,
    pub table: Option<Regex>,
    pub labels: Vec<(String, Regex)>,
    /// For `LabelDrop`: which label names to remove.
    pub label_names: Option<Regex>,
}

impl IngestRule {
    /// Builds a rule from unanchored patterns; errors name the bad pattern.
    pub fn new(
        action: RuleAction,
        table: Option<&str>,
        labels: &BTreeMap<String, String>,
        label_names: Option<&str>,
    ) -> Result<Self> {
        let re = |what: &str, p: &str| {
            Regex::new(&format!("^(?:{p})$")).map_err(|e| Error::Matcher {
                label: what.to_string(),
                reason: e.to_string(),
            })
        };
        if action == RuleAction::LabelDrop && label_names.is_none() {
            return Err(Error::Matcher {
                label: "label_names".into(),
                reason: "a labeldrop rule needs label_names".into(),
            });
        }
        Ok(IngestRule {
            action,
            table: table.map(|t| re("table", t)).transpose()?,
            labels: labels
                .iter()
                .map(|(k, v)| Ok((k.clone(), re(k, v)?)))
                .collect::<Result<_>>()?,
            label_names: label_names.map(|p| re("label_names", p)).transpose()?,
        })
    }

    fn matches(&self, table: &str, labels: &Labels) -> bool {
        self.table.as_ref().is_none_or(|r| r.is_match(table))
            && self
                .labels
                .iter()
                .all(|(k, r)| r.is_match(labels.get(k).unwrap_or("")))
    }
}

/// Volume settings of the storage engine.
#[derive(Debug, Clone, Default)]
pub struct VolumeConfig {
    pub rules: Vec<IngestRule>,
    /// Per-table caps on active series, overriding `Limits::max_series_per_table`.
    pub series_caps: BTreeMap<String, usize>,
    /// Route new series past a cap into one overflow series per table (labels
    /// replaced by `otel_metric_overflow="true"`) instead of rejecting the table.
    pub overflow: bool,
}

/// Counters of what the volume controls did, for `/metrics`.
#[derive(Debug, Default)]
pub struct VolumeCounters {
    pub dropped_series: AtomicU64,
    pub dropped_samples: AtomicU64,
    pub labels_dropped: AtomicU64,
    pub overflow_series: AtomicU64,
    pub overflow_samples: AtomicU64,
}

/// A snapshot of [`VolumeCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VolumeStats {
    /// Series (per write) and samples removed by drop / keep rules.
    pub dropped_series: u64,
    pub dropped_samples: u64,
    /// Labels removed by labeldrop rules.
    pub labels_dropped: u64,
    /// New series routed into an overflow series, and their samples.
    pub overflow_series: u64,
    pub overflow_samples: u64,
}

impl VolumeCounters {
    pub fn snapshot(&self) -> VolumeStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        VolumeStats {
            dropped_series: g(&self.dropped_series),
            dropped_samples: g(&self.dropped_samples),
            labels_dropped: g(&self.labels_dropped),
            overflow_series: g(&self.overflow_series),
            overflow_samples: g(&self.overflow_samples),
        }
    }
}

impl VolumeConfig {
    /// Applies the rules to one table's series in place.
    pub(crate) fn apply_rules(&self, t: &mut TableBatch, c: &VolumeCounters) {
        if self.rules.is_empty() {
            return;
        }
        let nfields = t.fields.len().max(1) as u64;
        let table = t.table.as_str();
        t.series.retain_mut(|s| {
            for r in &self.rules {
                let m = r.matches(table, &s.labels);
                let drop = match r.action {
                    RuleAction::Drop => m,
                    RuleAction::Keep => !m,
                    RuleAction::LabelDrop => {
                        if m {
                            let names = r.label_names.as_ref().expect("checked in new");
                            let before = s.labels.len();
                            if s.labels.iter().any(|(k, _)| names.is_match(k)) {
                                let kept: Vec<(String, String)> = std::mem::take(&mut s.labels)
                                    .into_inner()
                                    .into_iter()
                                    .filter(|(k, _)| !names.is_match(k))
                                    .collect();
                                s.labels = Labels::from_sorted_unchecked(kept);
                                c.labels_dropped
                                    .fetch_add((before - s.labels.len()) as u64, Ordering::Relaxed);
                            }
                        }
                        false
                    }
                };
                if drop {
                    c.dropped_series.fetch_add(1, Ordering::Relaxed);
                    c.dropped_samples
                        .fetch_add(s.timestamps.len() as u64 * nfields, Ordering::Relaxed);
                    return false;
                }
            }
            true
        });
    }

    /// The active-series cap of a table.
    pub(crate) fn cap(&self, table: &str, default: usize) -> usize {
        self.series_caps.get(table).copied().unwrap_or(default)
    }

    /// Routes the new series of `t` that would take the table past its cap into the
    /// overflow series. Returns whether anything was routed.
    pub(crate) fn overflow(
        &self,
        head: &Head,
        tenant: &str,
        t: &mut TableBatch,
        cap: usize,
        c: &VolumeCounters,
    ) -> bool {
        let th = head.table(tenant, &t.table);
        let mut active = th.map_or(0, |th| th.series.len());
        let overflow =
            Labels::from_sorted_unchecked(vec![(OVERFLOW_LABEL.to_string(), "true".to_string())]);
        let mut routed = false;
        let mut seen_new = std::collections::HashSet::new();
        for s in &mut t.series {
            let known = th.is_some_and(|th| th.contains(&s.labels));
            if known || s.labels == overflow {
                continue;
            }
            if seen_new.contains(&s.labels) {
                continue;
            }
            if active < cap {
                active += 1;
                seen_new.insert(s.labels.clone());
                continue;
            }
            c.overflow_series.fetch_add(1, Ordering::Relaxed);
            c.overflow_samples.fetch_add(
                (s.timestamps.len() * t.fields.len()) as u64,
                Ordering::Relaxed,
            );
            s.labels = overflow.clone();
            routed = true;
        }
        routed
    }
}
