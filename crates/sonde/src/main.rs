//! `sonde`: one binary, one data directory.
//!
//! `sonde load` sends the standard dataset to a server and measures the ingest rate.
//!
//! `sonde serve` starts the storage engine and the gRPC (4317) and HTTP (4318) servers
//! with embedded defaults; every flag can also come from a `SONDE_*` environment
//! variable. SIGINT/SIGTERM stop accepting, drain in-flight requests, make the WAL
//! durable, and exit 0.

mod config;
mod load;
mod otlp_load;
mod sql_cli;

/// jemalloc: ingest allocates and frees millions of small label strings per second
/// across threads; with glibc's allocator a sixth of server CPU went to malloc/free
/// and arena consolidation.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc settings (the `_RJEM_MALLOC_CONF` environment variable still overrides
/// them): one arena (with four per CPU each kept idle pages of its own; the thread
/// caches keep allocation fast), and freed pages returned to the OS after one second
/// instead of ten, so what a flush builds and frees does not stay resident.
/// 100k-series remote-write load + flush, peak RSS: 336 MiB with the defaults, 268 MiB
/// with a zero decay. Zero was tried and dropped: every query then faulted in fresh
/// pages for its decode buffers and ran 2.5–3.5× slower (`benches/README.md`); one
/// second keeps a dashboard's burst of queries on warm pages for +10 MiB of peak.
/// Thread caches of at least 512 blocks per small size class (jemalloc keeps 20 of
/// the 2 KiB class by default): a query decodes a part of series into a few blocks
/// per series and frees them together, and with 20 cached every part went to the
/// arena's slabs and extents for its blocks (jemalloc was 15 % of the server's CPU
/// on the cost query; 8–12 % less query CPU with the larger caches).
// The one unsafe item: jemalloc reads its compiled-in configuration from this
// symbol before `main` (the documented way; nothing else refers to it).
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8] = b"narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0,tcache_nslots_small_min:512,tcache_nslots_small_max:1024\0";

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sonde_server::{AppState, Listeners, Metrics};
use sonde_storage::{Config, FsyncPolicy, Storage};

#[derive(Debug, Parser)]
#[command(
    name = "sonde",
    version,
    about = "Time-series store and alerting for LLM telemetry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Send the standard LLM dataset (or call records) to a server and measure.
    Load(load::LoadArgs),
    /// Run one SQL statement against a server and print the answer.
    Sql(sql_cli::SqlArgs),
    /// Work with alerting and recording rule files.
    #[command(subcommand)]
    Rules(RulesCommand),
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Validate rule files offline (like `promtool check rules`); exit 1 on an error.
    Check {
        /// Rule files (Prometheus rule-group YAML, with Sonde's sql/spike/budget forms).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Every setting is optional here: a flag (or its environment variable) wins over the
/// config file, which wins over the built-in default.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML config file (see the README for its keys).
    #[arg(long, env = "SONDE_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (created if missing). Default ./sonde-data.
    #[arg(long, env = "SONDE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// gRPC listen address (sonde.v1.Ingest). Default 127.0.0.1:4317.
    #[arg(long, env = "SONDE_GRPC_ADDR")]
    grpc_addr: Option<String>,
    /// HTTP listen address (remote_write, admin, metrics). Default 127.0.0.1:4318.
    #[arg(long, env = "SONDE_HTTP_ADDR")]
    http_addr: Option<String>,
    /// WAL fsync policy: `always` (acknowledge after fsync; default) or a sync
    /// interval in milliseconds, e.g. `100` (acknowledge after the OS write).
    #[arg(long, env = "SONDE_FSYNC")]
    fsync: Option<String>,
    /// Bearer tokens as TOKEN=TENANT (repeat the flag, or comma-separate in the
    /// environment variable). None: every request goes to tenant "default".
    #[arg(long = "auth-token", env = "SONDE_AUTH_TOKENS", value_delimiter = ',')]
    auth_tokens: Vec<String>,
    /// Cardinality cap: most active series per table per tenant. Default 1000000.
    #[arg(long, env = "SONDE_MAX_SERIES_PER_TABLE")]
    max_series_per_table: Option<usize>,
    /// Flush the in-memory head to segments at this many MiB of samples. Default 256.
    #[arg(long, env = "SONDE_MAX_HEAD_MB")]
    max_head_mb: Option<usize>,
    /// Per-query SQL timeout in seconds. Default 30.
    #[arg(long, env = "SONDE_SQL_TIMEOUT_SECS")]
    sql_timeout_secs: Option<u64>,
    /// Memory all running SQL queries may hold together, MiB. Default 1024.
    #[arg(long, env = "SONDE_SQL_MEMORY_MB")]
    sql_memory_mb: Option<usize>,
    /// Most rows in one SQL response (the rest is cut off and flagged). Default 100000.
    #[arg(long, env = "SONDE_SQL_MAX_ROWS")]
    sql_max_rows: Option<usize>,
    /// Parallelism of one SQL query. Default: the number of CPUs.
    #[arg(long, env = "SONDE_SQL_PARTITIONS")]
    sql_partitions: Option<usize>,
    /// Per-query PromQL timeout in seconds. Default 120.
    #[arg(long, env = "SONDE_PROMQL_TIMEOUT_SECS")]
    promql_timeout_secs: Option<u64>,
    /// Most samples one PromQL query may load. Default 50000000.
    #[arg(long, env = "SONDE_PROMQL_MAX_SAMPLES")]
    promql_max_samples: Option<usize>,
    /// How far back an instant selector looks for a sample, seconds. Default 300.
    #[arg(long, env = "SONDE_PROMQL_LOOKBACK_SECS")]
    promql_lookback_secs: Option<u64>,
    /// Threads one PromQL query may use to read and evaluate series. Default: the
    /// number of CPUs.
    #[arg(long, env = "SONDE_PROMQL_THREADS")]
    promql_threads: Option<usize>,
    /// Alerting/recording rule files of the default tenant (repeat the flag; `*` in
    /// the file name allowed). More in the config file's `[alerting]` section.
    #[arg(long = "rule-file", env = "SONDE_RULE_FILES", value_delimiter = ',')]
    rule_files: Vec<PathBuf>,
    /// How long raw data is kept, e.g. `15d` (the default), `36h`, `1y`, or
    /// `forever`. Samples older than this are rejected at ingest.
    #[arg(long, env = "SONDE_RETENTION")]
    retention: Option<String>,
    /// How often compaction and retention run, seconds. Default 60.
    #[arg(long, env = "SONDE_COMPACTION_INTERVAL_SECS")]
    compaction_interval_secs: Option<u64>,
    /// Keep segments on an object store, e.g. `s3://bucket/prefix` (credentials and
    /// endpoint from the config file's `[object_store]` or the AWS_* variables).
    /// The WAL stays in the data directory. Default: segments in the data directory.
    #[arg(long, env = "SONDE_OBJECT_STORE")]
    object_store: Option<String>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SONDE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Load(args) => load::run(args),
        Command::Sql(args) => sql_cli::run(args),
        Command::Rules(RulesCommand::Check { files }) => rules_check(&files),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => config::FileConfig::load(path)?,
        None => config::FileConfig::default(),
    };
    let args = config::Settings::resolve(args, file)?;
    let auth = sonde_server::Auth::from_pairs(&args.auth_tokens).map_err(anyhow::Error::msg)?;
    let loopback =
        |a: &str| a.starts_with("127.") || a.starts_with("[::1]") || a.starts_with("localhost");
    let all_loopback = loopback(&args.grpc_addr) && loopback(&args.http_addr);
    if !auth.enabled() && !all_loopback {
        tracing::warn!(
            grpc = %args.grpc_addr,
            http = %args.http_addr,
            "authentication is off and Sonde listens beyond loopback: anyone who can reach it can write"
        );
    }
    let mut config = Config::new(&args.data_dir);
    config.fsync = match args.fsync.as_str() {
        "always" => FsyncPolicy::Always,
        ms => FsyncPolicy::Interval(std::time::Duration::from_millis(ms.parse().with_context(
            || format!("--fsync: expected `always` or milliseconds, got {ms:?}"),
        )?)),
    };
    config.max_head_bytes = args.max_head_mb << 20;
    config.limits.max_series_per_table = args.max_series_per_table;
    config.dedup_window = args.dedup_window;
    config.retention = args.retention.clone();
    config.compaction = args.compaction.clone();
    config.volume = args.volume.clone();
    config.rollups = args.rollups.clone();
    config.object_store = args.object_store.clone();
    let storage = Arc::new(
        Storage::open(config)
            .with_context(|| format!("opening data directory {}", args.data_dir.display()))?,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let state = Arc::new(AppState {
        storage: storage.clone(),
        metrics: Metrics::default(),
        prices: args.prices,
        auth,
        metadata: sonde_server::metadata::MetadataStore::open(&args.data_dir),
        query: Arc::new(
            sonde_query::QueryEngine::new(storage.clone(), args.sql.clone())
                .map_err(|e| anyhow::anyhow!("starting the SQL engine: {e}"))?,
        ),
        promql: args.promql.clone(),
        rules: std::sync::OnceLock::new(),
        series_cache: sonde_server::series_cache::SeriesCache::new(args.series_cache),
    });
    runtime.block_on(async {
        let alerting = &args.alerting;
        if !alerting.rule_files.is_empty()
            || !alerting.tenant_rule_files.is_empty()
            || !alerting.receivers.is_empty()
        {
            let backend = Arc::new(sonde_server::rules::RulesBackend {
                storage: storage.clone(),
                promql: args.promql.clone(),
                query: state.query.clone(),
                runtime: tokio::runtime::Handle::current(),
            });
            let manager = sonde_rules::Manager::start(
                alerting.clone(),
                sonde_server::DEFAULT_TENANT,
                backend,
                Arc::new(sonde_types::SystemClock),
                &args.data_dir,
                Box::new(|q: &str| sonde_query::check_statement(q).map_err(|e| e.to_string())),
            )
            .map_err(|e| anyhow::anyhow!("loading rules: {e}"))?;
            tracing::info!(rules = manager.rule_count(), "rules loaded");
            let _ = state.rules.set(manager);
        }
        // SIGHUP reloads the rule files (and never ends the process, rules or not).
        let hup_state = state.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                let Some(m) = hup_state.rules.get().cloned() else {
                    tracing::info!("SIGHUP: no rules configured");
                    continue;
                };
                match tokio::task::spawn_blocking(move || m.reload()).await {
                    Ok(Ok(n)) => tracing::info!(rules = n, "rules reloaded on SIGHUP"),
                    Ok(Err(e)) => tracing::error!(error = %e, "rule reload failed; the previous rules stay in force"),
                    Err(e) => tracing::error!(error = %e, "rule reload task failed"),
                }
            }
        });
        let listeners = Listeners::bind(&args.grpc_addr, &args.http_addr).await?;
        let (grpc, http) = (listeners.grpc_addr(), listeners.http_addr());
        tracing::info!(?grpc, ?http, data_dir = %args.data_dir.display(), "sonde serving");
        // One machine-readable line for scripts and tests that start on port 0.
        println!(
            "sonde listening grpc={} http={}",
            grpc.map(|a| a.to_string()).unwrap_or_default(),
            http.map(|a| a.to_string()).unwrap_or_default()
        );
        sonde_server::serve(state, listeners, shutdown_signal()).await?;
        Ok::<(), anyhow::Error>(())
    })?;
    drop(runtime);
    storage.close().context("making the WAL durable")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `sonde rules check FILE…`: parses and validates each file, printing what
/// `promtool check rules` prints.
fn rules_check(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut failed = false;
    for f in files {
        println!("Checking {}", f.display());
        let check = |q: &str| sonde_query::check_statement(q).map_err(|e| e.to_string());
        let result = std::fs::read_to_string(f)
            .map_err(|e| format!("{}:0: {e}", f.display()))
            .and_then(|text| {
                sonde_rules::parse_rules(
                    &text,
                    &f.display().to_string(),
                    sonde_server::DEFAULT_TENANT,
                    std::time::Duration::from_secs(60),
                    &check,
                )
                .map_err(|e| e.to_string())
            });
        match result {
            Ok(groups) => {
                let n: usize = groups.iter().map(|g| g.rules.len()).sum();
                println!("  SUCCESS: {n} rules found");
            }
            Err(e) => {
                failed = true;
                println!("  FAILED:");
                eprintln!("{e}");
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}
