//! The TOML config file of `sonde serve`, and how it combines with flags: a flag (or
//! its `SONDE_*` environment variable) wins over the file, the file over the default.
//!
//! ```toml
//! data_dir = "/var/lib/sonde"
//! grpc_addr = "127.0.0.1:4317"
//! http_addr = "127.0.0.1:4318"
//! fsync = "always"              # or milliseconds, e.g. "100"
//! max_head_mb = 256
//! max_series_per_table = 1000000
//! dedup_window_secs = 3600
//! sql_timeout_secs = 30         # per SQL query
//! sql_memory_mb = 1024          # memory all SQL queries may hold together
//! sql_max_rows = 100000         # rows per SQL response
//! sql_partitions = 2            # parallelism of one SQL query (default: CPUs)
//! promql_timeout_secs = 120     # per PromQL query
//! promql_max_samples = 50000000 # samples one PromQL query may load
//! promql_lookback_secs = 300    # lookback window of instant selectors
//! promql_threads = 2            # parallelism of one PromQL query (default: CPUs)
//! retention = "15d"             # raw data; "forever" keeps everything
//!
//! [retention_overrides]         # per tenant, per table ("table" or "tenant/table")
//! tenants = { acme = "30d" }
//! tables = { llm_calls = "90d", "acme/llm_calls" = "1y" }
//!
//! [compaction]
//! interval_secs = 60            # how often compaction and retention run
//! target_mb = 256               # largest segment compaction writes
//! min_inputs = 4                # small segments in a row before a day is merged
//!
//! [rollups]                     # tiers PromQL range functions are answered from
//! tiers = ["1m", "1h"]          # bucket widths; each must divide a day
//! retention = ["90d", "2y"]     # per tier ("forever" keeps)
//! current_day_every_secs = 3600  # rebuild cadence of today's rollups
//! event_drop_tags = ["user_id", "session_id", "request_id", "trace_id", "span_id", "call_id"]
//!                               # tags event-table (llm_calls) rollups leave out
//! min_saving = 8                # a tier holds a table's day only if it has 8× fewer rows
//!                               # than raw (or the raw rows expire within a day); PromQL
//!                               # reads a tier under the same rule
//! [rollups.retention_overrides] # one value per tier; "tenant/table" > "table" > tenant
//! tenants = { acme = ["1y", "5y"] }
//! tables = { llm_calls = ["30d", "1y"] }
//!
//! [object_store]                # optional: segments on S3 / MinIO / R2 (WAL stays local)
//! url = "s3://bucket/prefix"    # or --object-store / SONDE_OBJECT_STORE
//! endpoint = "http://127.0.0.1:9000"  # other keys: object_store's S3 options
//! region = "us-east-1"          # (access_key_id, secret_access_key, allow_http …);
//! cache_mb = 256                # AWS_* environment variables fill in the rest
//!
//! [ingest]                      # data-volume controls, applied to every protocol
//! overflow = true               # excess series → one otel_metric_overflow="true" series
//! series_caps = { llm_calls = 100000 }   # per-table active-series caps
//! series_cache = 500000         # label sets remote_write remembers by their wire
//!                               # bytes, per generation (2 kept; 0: off)
//! [[ingest.rules]]              # applied in order
//! action = "drop"               # drop | keep | labeldrop
//! table = "go_.*"               # regex on the table (metric) name, anchored
//! labels = { env = "test" }     # regexes on label values, all must match
//! [[ingest.rules]]
//! action = "labeldrop"
//! label_names = "request_id|session_id"
//!
//! [auth_tokens]                 # token = tenant
//! "acme-secret-token" = "acme"
//!
//! [[pricing]]                   # USD per million tokens; added to the defaults
//! model = "my-finetune-*"       # `*` matches anything; longest pattern wins
//! input = 3.0
//! output = 12.0
//! cached_input = 1.5            # optional, default = input
//! reasoning = 0.0               # optional
//! effective = "2025-01-01"      # optional, UTC date from which the price applies
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use sonde_server::pricing::{self, Price};

use crate::ServeArgs;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    data_dir: Option<PathBuf>,
    grpc_addr: Option<String>,
    http_addr: Option<String>,
    fsync: Option<String>,
    max_head_mb: Option<usize>,
    max_series_per_table: Option<usize>,
    dedup_window_secs: Option<u64>,
    sql_timeout_secs: Option<u64>,
    sql_memory_mb: Option<usize>,
    sql_max_rows: Option<usize>,
    sql_partitions: Option<usize>,
    promql_timeout_secs: Option<u64>,
    promql_max_samples: Option<usize>,
    promql_lookback_secs: Option<u64>,
    promql_threads: Option<usize>,
    retention: Option<String>,
    #[serde(default)]
    retention_overrides: RetentionOverrides,
    #[serde(default)]
    compaction: CompactionFile,
    #[serde(default)]
    ingest: IngestFile,
    #[serde(default)]
    rollups: RollupsFile,
    object_store: Option<ObjectStoreFile>,
    #[serde(default)]
    auth_tokens: BTreeMap<String, String>,
    #[serde(default)]
    alerting: sonde_rules::AlertingConfig,
    #[serde(default)]
    pricing: Vec<PriceEntry>,
    /// Drop the shipped prices and use only `pricing`.
    #[serde(default)]
    pricing_replace_defaults: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceEntry {
    model: String,
    input: f64,
    output: f64,
    cached_input: Option<f64>,
    #[serde(default)]
    reasoning: f64,
    effective: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionOverrides {
    #[serde(default)]
    tenants: BTreeMap<String, String>,
    #[serde(default)]
    tables: BTreeMap<String, String>,
}

/// `[object_store]`: segments on S3 or an S3-compatible store.
#[derive(Debug, Default, Deserialize)]
struct ObjectStoreFile {
    url: Option<String>,
    cache_mb: Option<usize>,
    /// Every other key is an S3 option (`endpoint`, `region`, `access_key_id`, …).
    #[serde(flatten)]
    options: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompactionFile {
    enabled: Option<bool>,
    interval_secs: Option<u64>,
    target_mb: Option<u64>,
    min_inputs: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollupsFile {
    enabled: Option<bool>,
    tiers: Option<Vec<String>>,
    retention: Option<Vec<String>>,
    current_day_every_secs: Option<u64>,
    event_drop_tags: Option<Vec<String>>,
    min_saving: Option<u64>,
    #[serde(default)]
    retention_overrides: TierRetentionOverrides,
}

/// `[rollups.retention_overrides]`: per tenant and per table, one retention per tier.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TierRetentionOverrides {
    #[serde(default)]
    tenants: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    tables: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestFile {
    #[serde(default)]
    overflow: bool,
    #[serde(default)]
    series_caps: BTreeMap<String, usize>,
    #[serde(default)]
    rules: Vec<IngestRuleFile>,
    /// Label sets remote_write remembers by their wire bytes, per generation.
    series_cache: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestRuleFile {
    action: String,
    table: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    label_names: Option<String>,
}

/// `15d`, `36h`, `1y` …; `forever` (or `0`) is `None`.
pub fn parse_retention(what: &str, s: &str) -> anyhow::Result<Option<std::time::Duration>> {
    let s = s.trim();
    if s == "forever" || s == "0" {
        return Ok(None);
    }
    let d = humantime::parse_duration(s).with_context(|| {
        format!("{what}: expected a duration like 15d, 36h or 1y, or `forever`; got {s:?}")
    })?;
    if d.as_secs() < 3600 {
        bail!("{what}: {s:?} is shorter than the 1h minimum");
    }
    Ok(Some(d))
}

/// Parses per-tenant or per-table tier retentions: one value per tier each.
fn tier_overrides(
    m: &BTreeMap<String, Vec<String>>,
    what: &str,
    tiers: usize,
) -> anyhow::Result<BTreeMap<String, Vec<Option<std::time::Duration>>>> {
    m.iter()
        .map(|(k, v)| {
            if v.len() != tiers {
                bail!("{what}.{k}: {} values for {tiers} tiers", v.len());
            }
            let parsed = v
                .iter()
                .map(|s| parse_retention(&format!("{what}.{k}"), s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok((k.clone(), parsed))
        })
        .collect()
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` → milliseconds since the epoch (UTC midnight).
fn parse_date(s: &str) -> anyhow::Result<i64> {
    let parts: Vec<&str> = s.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        bail!("pricing effective: expected YYYY-MM-DD, got {s:?}");
    };
    let (y, m, d): (i64, i64, i64) = (y.parse()?, m.parse()?, d.parse()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        bail!("pricing effective: {s:?} is not a date");
    }
    Ok(days_from_civil(y, m, d) * 86_400_000)
}

/// The resolved settings of `sonde serve`.
#[derive(Debug)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub grpc_addr: String,
    pub http_addr: String,
    pub fsync: String,
    pub auth_tokens: Vec<String>,
    pub max_series_per_table: usize,
    pub max_head_mb: usize,
    pub dedup_window: std::time::Duration,
    pub sql: sonde_query::QueryConfig,
    pub promql: sonde_promql::PromConfig,
    pub alerting: sonde_rules::AlertingConfig,
    pub prices: Vec<Price>,
    pub retention: sonde_storage::RetentionConfig,
    pub compaction: sonde_storage::CompactionConfig,
    pub volume: sonde_storage::volume::VolumeConfig,
    pub rollups: sonde_storage::RollupConfig,
    pub object_store: Option<sonde_storage::ObjectStoreConfig>,
    /// Entries per generation of remote_write's series cache (0: off).
    pub series_cache: usize,
}

impl Settings {
    pub fn resolve(args: ServeArgs, file: FileConfig) -> anyhow::Result<Self> {
        let mut prices = if file.pricing_replace_defaults {
            Vec::new()
        } else {
            pricing::defaults()
        };
        for p in file.pricing {
            prices.push(Price {
                effective_ms: p
                    .effective
                    .as_deref()
                    .map(parse_date)
                    .transpose()?
                    .unwrap_or(0),
                cached_input: p.cached_input.unwrap_or(p.input),
                pattern: p.model,
                input: p.input,
                output: p.output,
                reasoning: p.reasoning,
            });
        }
        let retention = {
            let raw = match args.retention.as_deref().or(file.retention.as_deref()) {
                Some(r) => parse_retention("retention", r)?,
                None => sonde_storage::RetentionConfig::default().raw,
            };
            let over = |m: &BTreeMap<String, String>, what: &str| {
                m.iter()
                    .map(|(k, v)| {
                        let d = parse_retention(&format!("{what} {k:?}"), v)?
                            .unwrap_or(std::time::Duration::from_secs(u64::MAX / 4));
                        Ok((k.clone(), d))
                    })
                    .collect::<anyhow::Result<BTreeMap<_, _>>>()
            };
            sonde_storage::RetentionConfig {
                raw,
                tenants: over(&file.retention_overrides.tenants, "retention tenant")?,
                tables: over(&file.retention_overrides.tables, "retention table")?,
            }
        };
        let compaction = {
            let d = sonde_storage::CompactionConfig::default();
            let c = &file.compaction;
            sonde_storage::CompactionConfig {
                enabled: c.enabled.unwrap_or(d.enabled),
                interval: args
                    .compaction_interval_secs
                    .or(c.interval_secs)
                    .map_or(d.interval, |s| std::time::Duration::from_secs(s.max(1))),
                target_bytes: c.target_mb.map_or(d.target_bytes, |mb| mb.max(1) << 20),
                min_inputs: c.min_inputs.unwrap_or(d.min_inputs).max(2),
            }
        };
        let volume = {
            use sonde_storage::volume::{IngestRule, RuleAction};
            let mut rules = Vec::new();
            for (i, r) in file.ingest.rules.iter().enumerate() {
                let action = match r.action.as_str() {
                    "drop" => RuleAction::Drop,
                    "keep" => RuleAction::Keep,
                    "labeldrop" => RuleAction::LabelDrop,
                    a => bail!(
                        "ingest.rules[{i}].action: expected drop, keep or labeldrop, got {a:?}"
                    ),
                };
                rules.push(
                    IngestRule::new(
                        action,
                        r.table.as_deref(),
                        &r.labels,
                        r.label_names.as_deref(),
                    )
                    .map_err(|e| anyhow::anyhow!("ingest.rules[{i}]: {e}"))?,
                );
            }
            sonde_storage::volume::VolumeConfig {
                rules,
                series_caps: file.ingest.series_caps.clone(),
                overflow: file.ingest.overflow,
            }
        };
        let rollups = {
            let d = sonde_storage::RollupConfig::default();
            let r = &file.rollups;
            let tiers = match &r.tiers {
                None => d.tiers.clone(),
                Some(t) => t
                    .iter()
                    .map(|s| {
                        let d = humantime::parse_duration(s)
                            .with_context(|| format!("rollups.tiers: {s:?} is not a duration"))?;
                        let ms = d.as_millis() as i64;
                        if ms < 1000 || 86_400_000 % ms != 0 {
                            bail!("rollups.tiers: {s:?} must be at least 1s and divide a day");
                        }
                        Ok(d)
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?,
            };
            let retention = match &r.retention {
                None if r.tiers.is_none() => d.retention.clone(),
                None => vec![None; tiers.len()],
                Some(v) => {
                    if v.len() != tiers.len() {
                        bail!(
                            "rollups.retention: {} values for {} tiers",
                            v.len(),
                            tiers.len()
                        );
                    }
                    v.iter()
                        .map(|s| parse_retention("rollups.retention", s))
                        .collect::<anyhow::Result<Vec<_>>>()?
                }
            };
            sonde_storage::RollupConfig {
                enabled: r.enabled.unwrap_or(d.enabled),
                current_day_every: r
                    .current_day_every_secs
                    .map_or(d.current_day_every, std::time::Duration::from_secs),
                event_drop_tags: r.event_drop_tags.clone().unwrap_or(d.event_drop_tags),
                min_saving: r.min_saving.unwrap_or(d.min_saving),
                tenant_retention: tier_overrides(
                    &r.retention_overrides.tenants,
                    "rollups.retention_overrides.tenants",
                    tiers.len(),
                )?,
                table_retention: tier_overrides(
                    &r.retention_overrides.tables,
                    "rollups.retention_overrides.tables",
                    tiers.len(),
                )?,
                tiers,
                retention,
            }
        };
        let object_store = {
            let f = file.object_store.unwrap_or_default();
            match args.object_store.or(f.url) {
                None if f.options.is_empty() && f.cache_mb.is_none() => None,
                None => bail!("object_store: settings given but no url (s3://bucket/prefix)"),
                Some(url) => {
                    let mut c = sonde_storage::ObjectStoreConfig::new(url);
                    if let Some(mb) = f.cache_mb {
                        c.cache_bytes = mb << 20;
                    }
                    for (k, v) in f.options {
                        let v = match v {
                            toml::Value::String(s) => s,
                            toml::Value::Boolean(b) => b.to_string(),
                            toml::Value::Integer(i) => i.to_string(),
                            other => bail!("object_store.{k}: expected a string, got {other}"),
                        };
                        c.options.insert(k, v);
                    }
                    Some(c)
                }
            }
        };
        let mut auth_tokens: Vec<String> = file
            .auth_tokens
            .iter()
            .map(|(token, tenant)| format!("{token}={tenant}"))
            .collect();
        auth_tokens.extend(args.auth_tokens);
        Ok(Settings {
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| "./sonde-data".into()),
            grpc_addr: args
                .grpc_addr
                .or(file.grpc_addr)
                .unwrap_or_else(|| "127.0.0.1:4317".into()),
            http_addr: args
                .http_addr
                .or(file.http_addr)
                .unwrap_or_else(|| "127.0.0.1:4318".into()),
            fsync: args.fsync.or(file.fsync).unwrap_or_else(|| "always".into()),
            auth_tokens,
            max_series_per_table: args
                .max_series_per_table
                .or(file.max_series_per_table)
                .unwrap_or(1_000_000),
            max_head_mb: args.max_head_mb.or(file.max_head_mb).unwrap_or(256),
            dedup_window: std::time::Duration::from_secs(file.dedup_window_secs.unwrap_or(3600)),
            sql: {
                let d = sonde_query::QueryConfig::default();
                sonde_query::QueryConfig {
                    timeout: args
                        .sql_timeout_secs
                        .or(file.sql_timeout_secs)
                        .map_or(d.timeout, std::time::Duration::from_secs),
                    memory_limit_bytes: args
                        .sql_memory_mb
                        .or(file.sql_memory_mb)
                        .map_or(d.memory_limit_bytes, |mb| mb << 20),
                    max_rows: args
                        .sql_max_rows
                        .or(file.sql_max_rows)
                        .unwrap_or(d.max_rows),
                    target_partitions: args
                        .sql_partitions
                        .or(file.sql_partitions)
                        .unwrap_or(d.target_partitions)
                        .max(1),
                }
            },
            promql: {
                let d = sonde_promql::PromConfig::default();
                sonde_promql::PromConfig {
                    timeout: args
                        .promql_timeout_secs
                        .or(file.promql_timeout_secs)
                        .map_or(d.timeout, std::time::Duration::from_secs),
                    max_samples: args
                        .promql_max_samples
                        .or(file.promql_max_samples)
                        .unwrap_or(d.max_samples),
                    lookback_delta: args
                        .promql_lookback_secs
                        .or(file.promql_lookback_secs)
                        .map_or(d.lookback_delta, std::time::Duration::from_secs),
                    threads: args
                        .promql_threads
                        .or(file.promql_threads)
                        .unwrap_or(d.threads)
                        .max(1),
                    rollup_min_saving: file.rollups.min_saving.unwrap_or(d.rollup_min_saving),
                    ..d
                }
            },
            alerting: {
                let mut a = file.alerting;
                // Flags add rule files of the default tenant to the file's.
                a.rule_files.extend(args.rule_files);
                a
            },
            prices,
            retention,
            compaction,
            volume,
            rollups,
            object_store,
            series_cache: file
                .ingest
                .series_cache
                .unwrap_or(sonde_server::series_cache::DEFAULT_CAPACITY),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_file_parse() {
        assert_eq!(parse_date("1970-01-02").unwrap(), 86_400_000);
        assert_eq!(parse_date("2025-01-01").unwrap(), 1_735_689_600_000);
        assert!(parse_date("2025-13-01").is_err());
        let text = r#"
fsync = "100"
[auth_tokens]
"tok-123456" = "acme"
[[pricing]]
model = "x*"
input = 1.0
output = 2.0
"#;
        let f: FileConfig = toml::from_str(text).unwrap();
        assert_eq!(f.fsync.as_deref(), Some("100"));
        assert!(
            toml::from_str::<FileConfig>("nope = 1").is_err(),
            "unknown keys are errors"
        );
    }

    /// `[rollups] min_saving` sets the build rule and the PromQL planner's alike.
    #[test]
    fn rollup_min_saving_reaches_storage_and_promql() {
        use clap::Parser;
        let args = || match crate::Cli::parse_from(["sonde", "serve"]).command {
            crate::Command::Serve(a) => *a,
            other => panic!("{other:?}"),
        };
        let d = Settings::resolve(args(), FileConfig::default()).unwrap();
        assert_eq!(d.rollups.min_saving, sonde_storage::rollup::MIN_SAVING);
        assert_eq!(
            d.promql.rollup_min_saving,
            sonde_storage::rollup::MIN_SAVING
        );
        let f: FileConfig = toml::from_str("[rollups]\nmin_saving = 0\n").unwrap();
        let s = Settings::resolve(args(), f).unwrap();
        assert_eq!((s.rollups.min_saving, s.promql.rollup_min_saving), (0, 0));
    }
}
