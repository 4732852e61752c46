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
//!
//! A second shape, [`CallGenerator`], produces per-call LLM records (the `llm_calls`
//! event table) at irregular times, with new `user_id`s every hour (user churn).

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

/// The shape of the per-call dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallConfig {
    /// Calls in total.
    pub calls: usize,
    /// Mean calls per second (inter-arrival times are exponential).
    pub calls_per_second: f64,
    /// Distinct users active in any one hour; each hour brings a fresh set.
    pub users_per_hour: usize,
    pub start_ms: i64,
    pub seed: u64,
}

impl CallConfig {
    pub fn new(calls: usize, start_ms: i64) -> Self {
        CallConfig {
            calls,
            calls_per_second: 50.0,
            users_per_hour: 200,
            start_ms,
            seed: 7,
        }
    }
}

/// Produces `llm_calls` rows: one row per call, fields `input_tokens`,
/// `output_tokens`, `cached_input_tokens`, `reasoning_tokens` (i64), `ttft_seconds`,
/// `duration_seconds`, `cost_usd` (f64), labels `provider`, `model`, `operation`,
/// `app`, `tenant`, `user_id`, `status`.
#[derive(Debug)]
pub struct CallGenerator {
    config: CallConfig,
    rng: ChaCha8Rng,
    made: usize,
    now_ms: f64,
}

/// Field names of `llm_calls`, in the order [`CallGenerator`] writes them.
pub use sonde_types::LLM_CALL_FIELDS as CALL_FIELDS;

impl CallGenerator {
    pub fn new(config: CallConfig) -> Self {
        CallGenerator {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            made: 0,
            now_ms: config.start_ms as f64,
            config,
        }
    }

    /// The next batch of up to `n` calls (one series per call's label set), or `None`
    /// when all calls were produced.
    pub fn next_batch(&mut self, n: usize) -> Option<WriteBatch> {
        if self.made >= self.config.calls {
            return None;
        }
        let gap = rand_distr::Exp::new(self.config.calls_per_second / 1000.0).expect("rate > 0");
        let latency = LogNormal::<f64>::new(0.0, 0.8).expect("valid lognormal");
        let mut table = TableBatch {
            table: "llm_calls".into(),
            kind: MetricKind::Event,
            fields: CALL_FIELDS
                .iter()
                .map(|(n, t)| sonde_types::FieldDef::new(*n, *t))
                .collect(),
            series: Vec::new(),
        };
        for _ in 0..n.min(self.config.calls - self.made) {
            self.made += 1;
            self.now_ms += gap.sample(&mut self.rng);
            let ts = self.now_ms as i64;
            let hour = (ts - self.config.start_ms).div_euclid(3_600_000);
            let user = self.rng.random_range(0..self.config.users_per_hour);
            let m = self.rng.random_range(0..MODELS.len());
            let (model, provider, price_in, price_out) = MODELS[m];
            let failed = self.rng.random_bool(0.02);
            let tin = self.rng.random_range(20..8000i64);
            let tout = if failed {
                0
            } else {
                self.rng.random_range(5..2000i64)
            };
            let cached = if self.rng.random_bool(0.3) {
                tin / 2
            } else {
                0
            };
            let reasoning = if m % 3 == 0 { tout / 4 } else { 0 };
            let duration = round_to(latency.sample(&mut self.rng).min(120.0), 4);
            let ttft = round_to((duration * self.rng.random_range(0.05..0.5)).max(0.0001), 4);
            let cost = round_to((tin as f64 * price_in + tout as f64 * price_out) / 1e6, 6);
            let labels = Labels::new([
                ("provider", provider.to_string()),
                ("model", model.to_string()),
                ("operation", "chat".to_string()),
                ("app", format!("app-{}", user % 5)),
                ("tenant", format!("tenant-{:02}", user % TENANTS)),
                ("user_id", format!("u{hour}-{user:04}")),
                ("status", if failed { "error" } else { "ok" }.to_string()),
            ])
            .expect("valid labels");
            table.series.push(SeriesBatch {
                labels,
                timestamps: sonde_types::smallvec![ts],
                fields: sonde_types::smallvec![
                    sonde_types::FieldColumn::I64(sonde_types::smallvec![tin]),
                    sonde_types::FieldColumn::I64(sonde_types::smallvec![tout]),
                    sonde_types::FieldColumn::I64(sonde_types::smallvec![cached]),
                    sonde_types::FieldColumn::I64(sonde_types::smallvec![reasoning]),
                    sonde_types::FieldColumn::F64(sonde_types::smallvec![ttft]),
                    sonde_types::FieldColumn::F64(sonde_types::smallvec![duration]),
                    sonde_types::FieldColumn::F64(sonde_types::smallvec![cost]),
                ],
            });
        }
        Some(WriteBatch {
            tables: vec![table],
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
    fn calls_churn_users_and_are_valid() {
        let cfg = CallConfig {
            calls: 2000,
            calls_per_second: 0.5, // a bit over an hour of calls
            ..CallConfig::new(2000, 0)
        };
        let mut g = CallGenerator::new(cfg);
        let mut users = std::collections::BTreeSet::new();
        let mut n = 0;
        while let Some(b) = g.next_batch(500) {
            b.validate(&sonde_types::Limits::default(), i64::MAX / 2)
                .unwrap();
            for s in &b.tables[0].series {
                users.insert(s.labels.get("user_id").unwrap().to_string());
            }
            n += b.row_count();
        }
        assert_eq!(n, 2000);
        assert!(
            users.iter().any(|u| u.starts_with("u0-"))
                && users.iter().any(|u| u.starts_with("u1-"))
        );
    }

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
