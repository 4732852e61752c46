//! `sonde load`: sends the standard LLM dataset (or per-call records) to a server over
//! sonde.v1 gRPC, OTLP/gRPC or Prometheus remote_write, with N concurrent connections, and prints
//! throughput and request latency. Works against any remote_write receiver, so the same
//! command drives Prometheus and VictoriaMetrics in benchmarks.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use prost::Message;
use sonde_dataset::{CallConfig, CallGenerator, DatasetConfig, Generator};
use sonde_proto::v1::ingest_client::IngestClient;
use sonde_types::WriteBatch;

use crate::otlp_load::otlp_chunks;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// sonde.v1.Ingest/Write over gRPC.
    Sonde,
    /// Prometheus remote_write 1.0 over HTTP.
    RemoteWrite,
    /// OTLP metrics (MetricsService/Export) over gRPC, shaped as an OpenTelemetry SDK
    /// sends them: counters as cumulative sums, the duration histogram as one
    /// histogram point per series and scrape.
    Otlp,
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    #[arg(long, value_enum, default_value = "sonde")]
    protocol: Protocol,
    /// Server URL. Default: http://127.0.0.1:4317 (sonde, otlp),
    /// http://127.0.0.1:4318/api/v1/write (remote-write).
    #[arg(long)]
    target: Option<String>,
    /// Series in the standard dataset (rounded up to a multiple of 15).
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    /// Samples per series (one every --interval-ms, ending now).
    #[arg(long, default_value_t = 240)]
    samples: usize,
    /// Milliseconds between a series' samples (the dataset's scrape interval).
    #[arg(long, default_value_t = 15_000)]
    interval_ms: i64,
    /// Samples (or calls) per request, at most: a scrape is cut into at least one
    /// request per connection.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Send this many LLM call records (table llm_calls) instead of the metric dataset.
    #[arg(long)]
    calls: Option<usize>,
    /// Start of the data, ms since the epoch (default: so that it ends now). A fixed
    /// start makes the data identical run to run (golden tests).
    #[arg(long)]
    start_ms: Option<i64>,
    /// LLM calls per second of data time (with --calls).
    #[arg(long, default_value_t = 50.0)]
    call_rate: f64,
    /// Bearer token for servers with authentication on.
    #[arg(long, env = "SONDE_TOKEN")]
    token: Option<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Generate and encode every request before the clock starts (held in memory:
    /// ~25 bytes a sample for remote_write), so the measured rate is the server's, not
    /// this generator's, on a machine both share.
    #[arg(long)]
    pregenerate: bool,
    /// Send nothing: decode the pregenerated remote_write payloads (snappy +
    /// protobuf, with the server's own decoder, on every CPU) and report that rate —
    /// the ceiling an ingest path with no storage at all would reach.
    #[arg(long, requires = "pregenerate")]
    decode_only: bool,
}

/// Decodes the remote_write payloads on every CPU with the server's decoder (no
/// storage) and prints the rate: the ceiling of remote_write ingest on this machine.
fn decode_ceiling(items: &[(usize, Payload, u64)]) -> anyhow::Result<()> {
    let mut bodies: Vec<(&[u8], u64)> = items
        .iter()
        .filter_map(|(_, p, n)| match p {
            Payload::RemoteWrite(body) => Some((body.as_slice(), *n)),
            _ => None,
        })
        .collect();
    if bodies.is_empty() {
        bail!("--decode-only measures remote_write payloads: use --protocol remote-write");
    }
    let threads = sonde_storage::par::available();
    let started = Instant::now();
    let decoded: u64 = sonde_storage::par::map_parts(&mut bodies, threads, 1, |part| {
        let mut samples = 0u64;
        for (body, _) in part.iter() {
            let raw = snap::raw::Decoder::new().decompress_vec(body)?;
            let (tables, _) = sonde_server::remote_write::decode(&raw, |_| None, None)
                .map_err(|e| anyhow::anyhow!(e))?;
            samples += tables
                .iter()
                .flatten()
                .map(|t| t.sample_count() as u64)
                .sum::<u64>();
        }
        anyhow::Ok(samples)
    })
    .into_iter()
    .sum::<anyhow::Result<u64>>()?;
    let secs = started.elapsed().as_secs_f64();
    let expected: u64 = bodies.iter().map(|(_, n)| n).sum();
    if decoded != expected {
        bail!("decoded {decoded} samples, sent batches hold {expected}");
    }
    println!(
        "protocol=RemoteWrite decode_only threads={threads} samples={decoded} requests={} seconds={secs:.2} samples_per_sec={:.0}",
        bodies.len(),
        decoded as f64 / secs
    );
    Ok(())
}

enum Payload {
    Sonde(sonde_proto::v1::WriteRequest),
    RemoteWrite(Vec<u8>),
    Otlp(ExportMetricsServiceRequest),
}

/// Samples per request for one scrape of `scrape` samples: at most `batch`, and few
/// enough that the scrape makes a request for every connection. (With 10,005 series
/// and batches of 10,000, a scrape was one request of 10,000 samples and one of 5, so
/// one connection carried the whole load.)
fn per_request(batch: usize, scrape: usize, conns: usize) -> usize {
    batch.min(scrape.div_ceil(conns)).max(1)
}

/// Splits a batch into batches of about `max` samples (whole series).
fn split(batch: WriteBatch, max: usize) -> Vec<WriteBatch> {
    let mut out = Vec::new();
    let mut cur = WriteBatch::default();
    let mut n = 0;
    for mut t in batch.tables {
        let series = std::mem::take(&mut t.series);
        let mut part = t.clone();
        for s in series {
            n += s.timestamps.len() * t.fields.len();
            part.series.push(s);
            if n >= max {
                cur.tables.push(std::mem::replace(&mut part, t.clone()));
                out.push(std::mem::take(&mut cur));
                n = 0;
            }
        }
        if !part.series.is_empty() {
            cur.tables.push(part);
        }
    }
    if !cur.tables.is_empty() {
        out.push(cur);
    }
    out
}

/// The generator's `llm_calls` rows as first-class `LlmCall` records (so the server
/// computes costs and the per-call metrics).
fn calls_request(b: &WriteBatch) -> sonde_proto::v1::WriteRequest {
    use sonde_proto::v1::{Label, LlmCall};
    use sonde_types::FieldColumn;
    let mut calls = Vec::new();
    for t in &b.tables {
        for s in &t.series {
            let i = |j: usize| match &s.fields[j] {
                FieldColumn::I64(v) => v[0],
                FieldColumn::F64(v) => v[0] as i64,
            };
            let f = |j: usize| match &s.fields[j] {
                FieldColumn::F64(v) => v[0],
                FieldColumn::I64(v) => v[0] as f64,
            };
            let get = |k: &str| s.labels.get(k).unwrap_or("").to_string();
            calls.push(LlmCall {
                time_ms: s.timestamps[0],
                provider: get("provider"),
                model: get("model"),
                operation: get("operation"),
                labels: s
                    .labels
                    .iter()
                    .filter(|(k, _)| !["provider", "model", "operation", "status"].contains(k))
                    .map(|(k, v)| Label {
                        name: k.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                input_tokens: i(0),
                output_tokens: i(1),
                cached_input_tokens: i(2),
                reasoning_tokens: i(3),
                ttft_seconds: f(4),
                duration_seconds: f(5),
                status: get("status"),
                error_type: if get("status") == "error" {
                    "server_error".into()
                } else {
                    String::new()
                },
                cost_usd: None,
                call_id: String::new(),
            });
        }
    }
    sonde_proto::v1::WriteRequest {
        tables: Vec::new(),
        calls,
        idempotency_key: String::new(),
    }
}

/// A gRPC channel with large HTTP/2 windows, so a multi-megabyte request does not
/// wait for a window update every 64 KiB.
async fn channel(target: &str) -> anyhow::Result<tonic::transport::Channel> {
    tonic::transport::Endpoint::from_shared(target.to_string())
        .with_context(|| format!("target {target:?}"))?
        .initial_stream_window_size(Some(sonde_server::GRPC_STREAM_WINDOW))
        .initial_connection_window_size(Some(sonde_server::GRPC_CONNECTION_WINDOW))
        .connect()
        .await
        .with_context(|| format!("connecting to {target}"))
}

pub fn run(args: LoadArgs) -> anyhow::Result<()> {
    if args.calls.is_some() && args.protocol != Protocol::Sonde {
        bail!("--calls sends LLM call records, which need --protocol sonde");
    }
    let target = args.target.clone().unwrap_or_else(|| match args.protocol {
        Protocol::Sonde | Protocol::Otlp => "http://127.0.0.1:4317".into(),
        Protocol::RemoteWrite => "http://127.0.0.1:4318/api/v1/write".into(),
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    // Each item carries a shard: the chunk's position within its scrape. Chunks split
    // the same way every scrape, so a series always travels on the same connection,
    // in time order (as Prometheus shards remote_write), and receivers that refuse
    // out-of-order samples accept the load.
    type Batches = Box<dyn Iterator<Item = (usize, WriteBatch)> + Send>;
    let conns = args.concurrency.max(1);
    let (total, batches): (u64, Batches) = match args.calls {
        Some(n) => {
            let start = args
                .start_ms
                .unwrap_or(now - (n as f64 * 1000.0 / args.call_rate) as i64);
            let mut cfg = CallConfig::new(n, start);
            cfg.calls_per_second = args.call_rate;
            let mut g = CallGenerator::new(cfg);
            let batch = args.batch;
            (
                n as u64 * sonde_dataset::CALL_FIELDS.len() as u64,
                Box::new(std::iter::from_fn(move || g.next_batch(batch)).enumerate()),
            )
        }
        None => {
            let interval = args.interval_ms.max(1);
            let start = args
                .start_ms
                .unwrap_or(now - args.samples as i64 * interval);
            let mut ds = DatasetConfig::sized(args.series, args.samples, start);
            ds.interval_ms = interval;
            let batch = args.batch;
            let scrapes = Generator::new(ds);
            (
                ds.total_samples() as u64,
                if args.protocol == Protocol::Otlp {
                    // Split per OTLP data point by the producer.
                    Box::new(scrapes.map(|b| (0, b)))
                } else {
                    Box::new(scrapes.flat_map(move |b| {
                        let max = per_request(batch, b.sample_count(), conns);
                        split(b, max).into_iter().enumerate()
                    }))
                },
            )
        }
    };
    let protocol = args.protocol;
    let is_calls = args.calls.is_some();
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..conns)
        .map(|_| tokio::sync::mpsc::channel::<(Payload, u64)>(4))
        .unzip();
    let batch = args.batch;
    // One generated batch as the requests it becomes, each with its shard.
    let encode = move |shard: usize, b: WriteBatch| -> Vec<(usize, Payload, u64)> {
        if protocol == Protocol::Otlp {
            return otlp_chunks(&b, per_request(batch, b.sample_count(), conns))
                .into_iter()
                .enumerate()
                .map(|(i, (req, samples))| (i, Payload::Otlp(req), samples))
                .collect();
        }
        let samples = b.sample_count() as u64;
        let payload = match protocol {
            Protocol::Sonde if is_calls => Payload::Sonde(calls_request(&b)),
            Protocol::Sonde => Payload::Sonde(sonde_proto::to_v1(&b)),
            Protocol::Otlp => unreachable!("encoded above"),
            Protocol::RemoteWrite => {
                let raw = sonde_proto::to_remote_write(&b).encode_to_vec();
                Payload::RemoteWrite(
                    snap::raw::Encoder::new()
                        .compress_vec(&raw)
                        .expect("snappy compresses into memory"),
                )
            }
        };
        vec![(shard, payload, samples)]
    };
    let send = move |items: &mut dyn Iterator<Item = (usize, Payload, u64)>| {
        for (shard, payload, samples) in items {
            if txs[shard % txs.len()]
                .blocking_send((payload, samples))
                .is_err()
            {
                return;
            }
        }
    };
    let producer = if args.pregenerate {
        let t = Instant::now();
        let all: Vec<_> = batches.flat_map(|(shard, b)| encode(shard, b)).collect();
        eprintln!(
            "pregenerated {} requests in {:.1} s",
            all.len(),
            t.elapsed().as_secs_f64()
        );
        if args.decode_only {
            return decode_ceiling(&all);
        }
        std::thread::spawn(move || send(&mut all.into_iter()))
    } else {
        std::thread::spawn(move || {
            send(&mut batches.flat_map(|(shard, b)| encode(shard, b)));
        })
    };
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} samples {per_sec} eta {eta}")
                .expect("valid template"),
        )
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let started = Instant::now();
    let (latencies, errors, sent) = runtime.block_on(async {
        let http = reqwest::Client::new();
        let mut tasks = Vec::new();
        for mut rx in rxs {
            let bar = bar.clone();
            let http = http.clone();
            let target = target.clone();
            let token = args.token.clone();
            let mut grpc = match protocol {
                Protocol::Sonde => Some(
                    IngestClient::new(channel(&target).await?).max_encoding_message_size(64 << 20),
                ),
                Protocol::RemoteWrite | Protocol::Otlp => None,
            };
            let mut otlp = match protocol {
                Protocol::Otlp => Some(
                    MetricsServiceClient::new(channel(&target).await?)
                        .max_encoding_message_size(64 << 20),
                ),
                _ => None,
            };
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let (mut errors, mut sent) = (Vec::new(), 0u64);
                loop {
                    let next = rx.recv().await;
                    let Some((payload, samples)) = next else {
                        break;
                    };
                    let t = Instant::now();
                    let result = match payload {
                        Payload::Sonde(req) => {
                            let mut req = tonic::Request::new(req);
                            if let Some(t) = &token
                                && let Ok(v) = format!("Bearer {t}").parse()
                            {
                                req.metadata_mut().insert("authorization", v);
                            }
                            grpc.as_mut()
                                .expect("gRPC client")
                                .write(req)
                                .await
                                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
                                .and_then(|r| {
                                    // Partly rejected writes are errors too.
                                    let r = r.into_inner();
                                    match r.rejections.first() {
                                        None => Ok(()),
                                        Some(x) => Err(format!(
                                            "{} samples rejected; table {:?}: {}",
                                            r.rejected_samples, x.table, x.reason
                                        )),
                                    }
                                })
                        }
                        Payload::Otlp(req) => {
                            let mut req = tonic::Request::new(req);
                            if let Some(t) = &token
                                && let Ok(v) = format!("Bearer {t}").parse()
                            {
                                req.metadata_mut().insert("authorization", v);
                            }
                            match otlp.as_mut().expect("OTLP client").export(req).await {
                                Ok(r) => match r.into_inner().partial_success {
                                    Some(p) if p.rejected_data_points > 0 => Err(format!(
                                        "{} data points rejected: {}",
                                        p.rejected_data_points, p.error_message
                                    )),
                                    _ => Ok(()),
                                },
                                Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
                            }
                        }
                        Payload::RemoteWrite(body) => match http
                            .post(&target)
                            .bearer_auth(token.as_deref().unwrap_or(""))
                            .header("Content-Encoding", "snappy")
                            .header("Content-Type", "application/x-protobuf")
                            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                            .body(body)
                            .send()
                            .await
                        {
                            Ok(r) if r.status().is_success() => Ok(()),
                            Ok(r) => Err(format!(
                                "HTTP {}: {}",
                                r.status(),
                                r.text().await.unwrap_or_default().trim()
                            )),
                            Err(e) => Err(e.to_string()),
                        },
                    };
                    lat.push(t.elapsed());
                    match result {
                        Ok(()) => sent += samples,
                        Err(e) => errors.push(e),
                    }
                    bar.inc(samples);
                }
                anyhow::Ok((lat, errors, sent))
            }));
        }
        let (mut lat, mut errors, mut sent) = (Vec::new(), Vec::new(), 0);
        for t in tasks {
            let (l, e, s) = t.await??;
            lat.extend(l);
            errors.extend(e);
            sent += s;
        }
        anyhow::Ok((lat, errors, sent))
    })?;
    let _ = producer.join();
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let mut lat: Vec<Duration> = latencies;
    lat.sort();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1e3
    };
    println!(
        "protocol={:?} target={target} samples={sent} requests={} seconds={secs:.2} samples_per_sec={:.0} p50_ms={:.2} p99_ms={:.2} errors={}",
        protocol,
        lat.len(),
        sent as f64 / secs,
        pct(0.50),
        pct(0.99),
        errors.len()
    );
    if let Some(e) = errors.first() {
        eprintln!("first error: {e}");
        bail!("{} of {} requests failed", errors.len(), lat.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_dataset::{DatasetConfig, Generator};

    #[test]
    fn a_scrape_makes_a_request_for_every_connection() {
        let scrape = Generator::new(DatasetConfig::sized(10_000, 1, 1_700_000_000_000))
            .next_step()
            .unwrap();
        let n = scrape.sample_count();
        assert!(n > 10_000, "the 10k dataset has {n} series");
        let sizes: Vec<usize> = split(scrape.clone(), per_request(10_000, n, 2))
            .iter()
            .map(|b| b.sample_count())
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), n);
        assert_eq!(sizes.len(), 2, "{sizes:?}");
        assert!(sizes.iter().all(|&k| k.abs_diff(n / 2) <= 2), "{sizes:?}");
        // One connection: requests of at most `batch`, as before.
        let sizes: Vec<usize> = split(scrape, per_request(10_000, n, 1))
            .iter()
            .map(|b| b.sample_count())
            .collect();
        assert_eq!(sizes, vec![10_000, n - 10_000]);
    }
}
