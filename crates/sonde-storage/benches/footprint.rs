//! Bytes per sample on disk after flush, encodings compared, index selectivity, load
//! rate and peak memory, for the standard dataset. Prints a Markdown table.
//!
//! Run: `cargo bench -p sonde-storage --bench footprint -- [10k|100k|all]`
//!
//! Knobs (environment): `SONDE_HEAD_MB` (head bound), `SONDE_SAMPLES` (per series,
//! default 240), `SONDE_TRACE_RSS=1` (RSS every 20 scrapes), `SONDE_KEEP=1` (keep the
//! data directory, default encoding only).

use std::time::{Duration, Instant};

use sonde_dataset::{DatasetConfig, Generator};
use sonde_storage::segment::{ValueEncoding, WriteOptions};
use sonde_storage::{Config, FsyncPolicy, Matcher, ScanRequest, Storage};

/// The allocator a Sonde server runs with (glibc malloc fragments badly under this
/// load: long-lived series labels interleaved with per-flush buffers).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Row {
    dataset: String,
    encoding: &'static str,
    samples: usize,
    parquet: u64,
    index: u64,
    load_rate: f64,
    select_frac: f64,
    select_bytes: u64,
    select_ms: f64,
}

fn run(series: usize, enc: ValueEncoding, label: &'static str) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.retention.raw = None;
    if std::env::var_os("SONDE_KEEP").is_some() {
        eprintln!("keeping {}", dir.path().display());
        config.data_dir = dir.keep();
    }
    config.fsync = FsyncPolicy::Interval(Duration::from_millis(200));
    if let Some(mb) = std::env::var("SONDE_HEAD_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        config.max_head_bytes = mb << 20;
    }
    config.segment = WriteOptions {
        value_encoding: enc,
        ..WriteOptions::default()
    };
    let storage = Storage::open(config).unwrap();
    let samples = std::env::var("SONDE_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(240);
    let ds = DatasetConfig::sized(series, samples, 1_700_000_000_000);
    // Generate on the fly (the whole 100k dataset as batches would take gigabytes);
    // only the write calls are timed.
    let mut load = 0.0;
    for (i, b) in Generator::new(ds).enumerate() {
        let t = Instant::now();
        storage.write("default", b).unwrap();
        load += t.elapsed().as_secs_f64();
        if std::env::var_os("SONDE_TRACE_RSS").is_some() && i % 20 == 0 {
            let st = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let rss = st.lines().find(|l| l.starts_with("VmRSS")).unwrap_or("");
            eprintln!(
                "step {i}: {rss}, head {} MiB, segments {}",
                storage.head_bytes() >> 20,
                storage.manifest().segments.len()
            );
        }
    }
    storage.flush().unwrap();
    eprintln!(
        "peak RSS after load + flush, before the query: {:.0} MiB",
        peak_rss_mb()
    );
    let m = storage.manifest();
    let parquet: u64 = m.segments.iter().map(|s| s.bytes).sum();
    let index: u64 = m.segments.iter().map(|s| s.index_bytes).sum();
    // One series out of all: one user's output tokens.
    let req = ScanRequest::new("llm_tokens_total", i64::MIN, i64::MAX)
        .with(Matcher::eq(
            "user_id",
            format!("user-{:06}", ds.combos() / 2),
        ))
        .with(Matcher::eq("token_type", "output"));
    let t = Instant::now();
    let out = storage.scan("default", &req).unwrap();
    let select_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(out.series.len(), 1);
    assert_eq!(out.series[0].1.len(), samples);
    let total: u64 = parquet;
    Row {
        dataset: format!("{}k series × {samples}", ds.total_series() / 1000),
        encoding: label,
        samples: ds.total_samples(),
        parquet,
        index,
        load_rate: ds.total_samples() as f64 / load,
        select_frac: out.stats.bytes_read as f64 / total as f64,
        select_bytes: out.stats.bytes_read,
        select_ms,
    }
}

fn main() {
    let arg = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "10k".into());
    let sizes: Vec<usize> = match arg.as_str() {
        "100k" => vec![100_000],
        "all" => vec![10_000, 100_000],
        _ => vec![10_000],
    };
    println!(
        "| dataset | field encoding | samples | parquet bytes/sample | + index | load samples/s (interval) | 1-series read | fraction of segment bytes | 1-series scan ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &series in &sizes {
        let only_default = std::env::var_os("SONDE_KEEP").is_some();
        for (enc, label) in [
            (ValueEncoding::Decimal, "decimal (default)"),
            (ValueEncoding::ByteStreamSplit, "f64 BYTE_STREAM_SPLIT"),
            (ValueEncoding::Plain, "f64 PLAIN"),
        ] {
            // The encoding comparison runs on 10k; 100k runs the default only, so the
            // peak RSS printed below is that of one load + flush + query.
            if (only_default || series > 10_000) && enc != ValueEncoding::Decimal {
                continue;
            }
            let r = run(series, enc, label);
            println!(
                "| {} | {} | {} | {:.3} | {:.3} | {:.0} | {} B | {:.3}% | {:.1} |",
                r.dataset,
                r.encoding,
                r.samples,
                r.parquet as f64 / r.samples as f64,
                (r.parquet + r.index) as f64 / r.samples as f64,
                r.load_rate,
                r.select_bytes,
                r.select_frac * 100.0,
                r.select_ms,
            );
        }
    }
    println!("\npeak RSS of the whole run: {:.0} MiB", peak_rss_mb());
}
