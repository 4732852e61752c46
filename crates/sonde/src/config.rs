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
}
