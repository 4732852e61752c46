//! Prints the standard dataset in the Prometheus text exposition format with
//! timestamps, for loading peers that import text (VictoriaMetrics'
//! `/api/v1/import/prometheus`, `promtool tsdb create-blocks-from openmetrics`).
//!
//! Usage: `cargo run --release -p sonde-dataset --example exposition -- SERIES [SAMPLES] [--openmetrics]`

use std::io::{BufWriter, Write};

use sonde_dataset::{DatasetConfig, Generator};
use sonde_types::FieldColumn;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let series: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let samples: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(240);
    let openmetrics = args.iter().any(|a| a == "--openmetrics");
    let out = std::io::stdout().lock();
    let mut out = BufWriter::with_capacity(1 << 20, out);
    for batch in Generator::new(DatasetConfig::sized(series, samples, 1_700_000_000_000)) {
        for t in &batch.tables {
            for s in &t.series {
                let labels: Vec<String> = s
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect();
                let FieldColumn::F64(values) = &s.fields[0] else {
                    continue;
                };
                for (ts, v) in s.timestamps.iter().zip(values) {
                    if openmetrics {
                        // OpenMetrics timestamps are seconds.
                        writeln!(
                            out,
                            "{}{{{}}} {} {}.{:03}",
                            t.table,
                            labels.join(","),
                            v,
                            ts / 1000,
                            ts % 1000
                        )?;
                    } else {
                        writeln!(out, "{}{{{}}} {} {}", t.table, labels.join(","), v, ts)?;
                    }
                }
            }
        }
    }
    if openmetrics {
        writeln!(out, "# EOF")?;
    }
    out.flush()
}
