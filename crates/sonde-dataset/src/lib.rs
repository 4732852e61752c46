//! The standard LLM telemetry dataset: one generator that every test, benchmark and
//! `sonde load` uses, so figures from different places describe the same data.
//!
//! For each combination of (model, provider, tenant, user_id) — 8 models across 4
//! providers, 50 tenants, a user per combination — 15 series are sampled every
//! 15 s, as an exporter would report them:
//! - `llm_tokens_total{token_type="input"|"output"}`: cumulative counters (integers);
//! - `llm_request_duration_seconds_bucket{le=…}` (8 finite buckets and `+Inf`),
//!   `_sum` and `_count`: a classic histogram;
//! - `llm_ttft_seconds`: a gauge, rounded to 0.1 ms;
//! - `llm_cost_usd_total`: a cumulative counter rounded to 1e-6 USD.
//!
//! Values are random but plausible and fully determined by the seed. The dataset's
//! `tenant` is an ordinary label (the LLM application's customer).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, Poisson};
use sonde_types::{FieldType, Labels, MetricKind, SeriesBatch, TableBatch, WriteBatch};

/// (model, provider, USD per million input tokens, USD per million output tokens).
pub const MODELS: [(&str, &str, f64, f64); 8] = [
    ("gpt-4o", "openai", 2.5, 10.0),
    ("gpt-4o-mini", "openai", 0.15, 0.6),
    ("claude-sonnet-4", "anthropic", 3.0, 15.0),
    ("claude-haiku-3.5", "anthropic", 0.8, 4.0),
    ("gemini-2.0-flash", "google", 0.1, 0.4),
    ("gemini-1.5-pro", "google", 1.25, 5.0),
    ("llama-3.1-70b", "meta", 0.88, 0.88),
    ("llama-3.1-8b", "meta", 0.18, 0.18),
];

/// Upper bounds of the duration histogram's finite buckets, in seconds.
pub const BUCKETS: [f64; 8] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Series per (model, provider, tenant, user) combination.
pub const SERIES_PER_COMBO: usize = 15;
pub const TENANTS: usize = 50;

/// The shape of a dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DatasetConfig {
    /// Target series count (rounded up to a multiple of 15).
    pub series: usize,
    /// Samples per series.
    pub samples: usize,
    pub interval_ms: i64,
    /// Timestamp of the first sample.
    pub start_ms: i64,
    pub seed: u64,
}

impl DatasetConfig {
    /// 10k series × 240 samples (2.4 M samples).
    pub fn small(start_ms: i64) -> Self {
        Self::sized(10_000, 240, start_ms)
    }
    /// 100k series × 240 samples (24 M samples).
    pub fn large(start_ms: i64) -> Self {
        Self::sized(100_000, 240, start_ms)
    }
    pub fn sized(series: usize, samples: usize, start_ms: i64) -> Self {
        DatasetConfig {
            series,
            samples,
            interval_ms: 15_000,
            start_ms,
            seed: 42,
        }
    }
    pub fn combos(&self) -> usize {
        self.series.div_ceil(SERIES_PER_COMBO)
    }
    pub fn total_series(&self) -> usize {
        self.combos() * SERIES_PER_COMBO
    }
    pub fn total_samples(&self) -> usize {
        self.total_series() * self.samples
    }
}

#[derive(Debug, Clone)]
struct Combo {
    labels: Labels,
    model: usize,
    rate: f64,
    input: f64,
    output: f64,
    buckets: [u64; 9],
    sum: f64,
    count: u64,
    cost: f64,
}

/// Produces the dataset one scrape (all series, one timestamp) at a time.
#[derive(Debug)]
pub struct Generator {
    config: DatasetConfig,
    rng: ChaCha8Rng,
    combos: Vec<Combo>,
    step: usize,
}

fn round_to(v: f64, decimals: i32) -> f64 {
    let p = 10f64.powi(decimals);
    (v * p).round() / p
}

impl Generator {
    pub fn new(config: DatasetConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let combos = (0..config.combos())
            .map(|i| {
                let model = i % MODELS.len();
                let tenant = (i / MODELS.len()) % TENANTS;
                let (name, provider, _, _) = MODELS[model];
                Combo {
                    labels: Labels::new([
                        ("model", name.to_string()),
                        ("provider", provider.to_string()),
                        ("tenant", format!("tenant-{tenant:02}")),
                        ("user_id", format!("user-{i:06}")),
                    ])
                    .expect("valid labels"),
                    model,
                    rate: rng.random_range(0.2..3.0),
                    input: 0.0,
                    output: 0.0,
                    buckets: [0; 9],
                    sum: 0.0,
                    count: 0,
                    cost: 0.0,
                }
            })
            .collect();
        Generator {
            config,
            rng,
            combos,
            step: 0,
        }
    }

    pub fn config(&self) -> &DatasetConfig {
        &self.config
    }

    /// The next scrape, or `None` after `samples` scrapes.
    pub fn next_step(&mut self) -> Option<WriteBatch> {
        if self.step >= self.config.samples {
            return None;
        }
        let ts = self.config.start_ms + self.step as i64 * self.config.interval_ms;
        self.step += 1;
        let latency = LogNormal::<f64>::new(-0.3, 0.9).expect("valid lognormal");
        let ttft = LogNormal::<f64>::new(-1.2, 0.6).expect("valid lognormal");
        let mut tokens =
            TableBatch::single("llm_tokens_total", MetricKind::Counter, FieldType::F64);
        let mut bucket = TableBatch::single(
            "llm_request_duration_seconds_bucket",
            MetricKind::Histogram,
            FieldType::F64,
        );
        let mut sum = TableBatch::single(
            "llm_request_duration_seconds_sum",
            MetricKind::Histogram,
            FieldType::F64,
        );
        let mut count = TableBatch::single(
            "llm_request_duration_seconds_count",
            MetricKind::Histogram,
            FieldType::F64,
        );
        let mut first_token =
            TableBatch::single("llm_ttft_seconds", MetricKind::Gauge, FieldType::F64);
        let mut cost =
            TableBatch::single("llm_cost_usd_total", MetricKind::Counter, FieldType::F64);
        for c in &mut self.combos {
            let requests = Poisson::new(c.rate)
                .map(|p| p.sample(&mut self.rng) as u64)
                .unwrap_or(0);
            let (_, _, price_in, price_out) = MODELS[c.model];
            for _ in 0..requests {
                let tin = self.rng.random_range(20..4000) as f64;
                let tout = self.rng.random_range(10..1500) as f64;
                c.input += tin;
                c.output += tout;
                c.cost = round_to(c.cost + (tin * price_in + tout * price_out) / 1e6, 6);
                let d = round_to(latency.sample(&mut self.rng).min(120.0), 4);
                c.sum = round_to(c.sum + d, 4);
                c.count += 1;
                for (i, &le) in BUCKETS.iter().enumerate() {
                    if d <= le {
                        c.buckets[i] += 1;
                    }
                }
                c.buckets[8] += 1;
            }
            let with = |extra: &[(&str, &str)]| {
                let mut pairs: Vec<(String, String)> = c.labels.clone().into_inner();
                pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
                Labels::new(pairs).expect("valid labels")
            };
            let one = |labels: Labels, v: f64| SeriesBatch::f64(labels, vec![ts], vec![v]);
            tokens
                .series
                .push(one(with(&[("token_type", "input")]), c.input));
            tokens
                .series
                .push(one(with(&[("token_type", "output")]), c.output));
            for (i, le) in BUCKETS
                .iter()
                .map(|b| b.to_string())
                .chain(["+Inf".to_string()])
                .enumerate()
            {
                bucket
                    .series
                    .push(one(with(&[("le", le.as_str())]), c.buckets[i] as f64));
            }
            sum.series.push(one(c.labels.clone(), c.sum));
            count.series.push(one(c.labels.clone(), c.count as f64));
            let t = round_to(ttft.sample(&mut self.rng).min(30.0), 4);
            first_token.series.push(one(c.labels.clone(), t));
            cost.series.push(one(c.labels.clone(), c.cost));
        }
        Some(WriteBatch {
            tables: vec![tokens, bucket, sum, count, first_token, cost],
        })
    }
}

impl Iterator for Generator {
    type Item = WriteBatch;
    fn next(&mut self) -> Option<WriteBatch> {
        self.next_step()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_determinism() {
        let cfg = DatasetConfig::sized(150, 3, 0);
        let a: Vec<WriteBatch> = Generator::new(cfg).collect();
        let b: Vec<WriteBatch> = Generator::new(cfg).collect();
        assert_eq!(a.len(), 3);
        assert_eq!(a, b);
        assert_eq!(a[0].sample_count(), 150);
        // counters never decrease
        let first = &a[0].tables[0].series[0].fields[0];
        let last = &a[2].tables[0].series[0].fields[0];
        match (first, last) {
            (sonde_types::FieldColumn::F64(x), sonde_types::FieldColumn::F64(y)) => {
                assert!(y[0] >= x[0])
            }
            _ => unreachable!(),
        }
    }
}
