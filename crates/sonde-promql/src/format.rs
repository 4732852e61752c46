//! Prometheus' JSON result encoding.

use crate::eval::{Metric, QueryValue};

/// A sample value as Prometheus writes it: shortest round-trip decimal without an
/// exponent (of two equally near shortest ones, the one ending in an even digit),
/// `NaN`, `+Inf`, `-Inf`.
pub fn format_float(v: f64) -> String {
    let mut out = Vec::new();
    write_float(&mut out, v);
    String::from_utf8(out).expect("a float is ASCII")
}

/// [`format_float`] appended to `out`.
fn write_float(out: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if v == f64::INFINITY {
        out.extend_from_slice(b"+Inf");
    } else if v == f64::NEG_INFINITY {
        out.extend_from_slice(b"-Inf");
    } else {
        write_plain(out, ryu::Buffer::new().format_finite(v));
    }
}

/// Writes `s`, a finite float as `ryu` writes it (shortest round-trip digits:
/// `477563.0`, `0.25`, `1.5e-7`, `-1e21`), without an exponent and without a
/// trailing `.0`: `477563`, `0.25`, `0.00000015`, `-1000000000000000000000`, as Rust's
/// and Go's shortest formatting give it. `core::fmt` took a fifth of the 10k-series
/// cost query's CPU finding the digits; `ryu` takes under half of that.
fn write_plain(out: &mut Vec<u8>, s: &str) {
    let s = s.as_bytes();
    let Some(e) = s.iter().position(|&c| c == b'e') else {
        out.extend_from_slice(s.strip_suffix(b".0").unwrap_or(s));
        return;
    };
    let exp: i32 = std::str::from_utf8(&s[e + 1..])
        .ok()
        .and_then(|x| x.parse().ok())
        .expect("ryu writes a decimal exponent");
    let (neg, mantissa) = match s[..e].strip_prefix(b"-") {
        Some(m) => (true, m),
        None => (false, &s[..e]),
    };
    // The mantissa is `d` or `d.ddd` (at most 17 digits), its first digit not 0 and
    // its last not 0 either (shortest digits: a trailing 0 could be dropped).
    let mut buf = [0u8; 24];
    let mut n = 0;
    for &c in mantissa.iter().filter(|&&c| c != b'.') {
        buf[n] = c;
        n += 1;
    }
    let digits = &buf[..n];
    // Where the decimal point falls among the digits.
    let point = 1 + exp;
    if neg {
        out.push(b'-');
    }
    if point <= 0 {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', (-point) as usize));
        out.extend_from_slice(digits);
    } else if point as usize >= digits.len() {
        out.extend_from_slice(digits);
        out.extend(std::iter::repeat_n(b'0', point as usize - digits.len()));
    } else {
        let (a, b) = digits.split_at(point as usize);
        out.extend_from_slice(a);
        out.push(b'.');
        out.extend_from_slice(b);
    }
}

impl QueryValue {
    /// Appends the `data` object of a query response to `out` as JSON text, written
    /// directly: a matrix of many points does not become a tree of `Value`s (one
    /// allocation per point), and the response's envelope and its data share one
    /// buffer (a 10k-series answer of 400 series is ~740 KB).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            QueryValue::Scalar(t, v) => {
                out.extend_from_slice(br#"{"resultType":"scalar","result":"#);
                write_point(out, *t, *v);
                out.push(b'}');
            }
            QueryValue::String(t, s) => {
                out.extend_from_slice(br#"{"resultType":"string","result":["#);
                write_time(out, *t);
                out.push(b',');
                write_json(out, s);
                out.extend_from_slice(b"]}");
            }
            QueryValue::Vector(samples) => {
                out.extend_from_slice(br#"{"resultType":"vector","result":["#);
                for (i, (m, t, v)) in samples.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(br#"{"metric":"#);
                    write_metric(out, m);
                    out.extend_from_slice(br#","value":"#);
                    write_point(out, *t, *v);
                    out.push(b'}');
                }
                out.extend_from_slice(b"]}");
            }
            QueryValue::Matrix(series) => {
                out.extend_from_slice(br#"{"resultType":"matrix","result":["#);
                let points: usize = series.iter().map(|s| s.ts.len()).sum();
                if points >= PARALLEL_POINTS && series.len() > 1 {
                    // Formatting the values is most of a large answer's cost (a third
                    // of the server's CPU for 400 series × 56 points): chunks of
                    // series are written on the query threads and joined in order.
                    let chunk = series.len().div_ceil(4 * rayon::current_num_threads());
                    let texts =
                        sonde_storage::par::map_each(series.chunks(chunk).collect(), |chunk| {
                            // ~25 bytes a point (`[1795983120,"477563.25"],`).
                            let points: usize = chunk.iter().map(|s| s.ts.len()).sum();
                            let mut text = Vec::with_capacity(points * 25 + 256);
                            write_series(&mut text, chunk);
                            text
                        });
                    out.reserve(texts.iter().map(|t| t.len() + 1).sum::<usize>() + 2);
                    for (i, text) in texts.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(text);
                    }
                } else {
                    write_series(out, series);
                }
                out.extend_from_slice(b"]}");
            }
        }
    }
}

/// Points in a matrix answer from which its text is written on several threads.
const PARALLEL_POINTS: usize = 4096;

/// `series` as matrix entries separated by commas.
fn write_series(out: &mut Vec<u8>, series: &[crate::eval::Raw]) {
    for (i, s) in series.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"metric":"#);
        write_metric(out, &s.metric);
        out.extend_from_slice(br#","values":["#);
        for (j, (t, v)) in s.ts.iter().zip(&s.vals).enumerate() {
            if j > 0 {
                out.push(b',');
            }
            write_point(out, *t, *v);
        }
        out.extend_from_slice(b"]}");
    }
}

fn write_json(out: &mut Vec<u8>, v: &(impl serde::Serialize + ?Sized)) {
    serde_json::to_writer(&mut *out, v).expect("writing to memory");
}

fn write_metric(out: &mut Vec<u8>, m: &Metric) {
    out.push(b'{');
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json(out, k);
        out.push(b':');
        write_json(out, v);
    }
    out.push(b'}');
}

/// A timestamp in milliseconds as Prometheus' JSON number of seconds: an integer
/// for whole seconds, else a decimal.
fn write_time(out: &mut Vec<u8>, ms: i64) {
    if ms % 1000 == 0 {
        out.extend_from_slice(itoa::Buffer::new().format(ms / 1000).as_bytes());
    } else {
        write_json(out, &(ms as f64 / 1000.0));
    }
}

/// `[time, "value"]`, as [`write_time`] and [`format_float`] write them.
fn write_point(out: &mut Vec<u8>, t: i64, v: f64) {
    out.push(b'[');
    write_time(out, t);
    out.extend_from_slice(b",\"");
    write_float(out, v);
    out.extend_from_slice(b"\"]");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// A timestamp as a JSON `Value`, written independently of [`write_time`].
    fn format_time(ms: i64) -> Value {
        if ms % 1000 == 0 {
            json!(ms / 1000)
        } else {
            json!(ms as f64 / 1000.0)
        }
    }

    /// The encoding as `serde_json` values (what the server answered with before
    /// `write_json`): the reference the text must parse to.
    fn reference_json(v: &QueryValue) -> Value {
        let metric_json = |m: &Metric| -> Value {
            Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            )
        };
        match v {
            QueryValue::Scalar(t, v) => json!({
                "resultType": "scalar",
                "result": [format_time(*t), format_float(*v)],
            }),
            QueryValue::String(t, s) => json!({
                "resultType": "string",
                "result": [format_time(*t), s],
            }),
            QueryValue::Vector(samples) => json!({
                "resultType": "vector",
                "result": samples.iter().map(|(m, t, v)| json!({
                    "metric": metric_json(m),
                    "value": [format_time(*t), format_float(*v)],
                })).collect::<Vec<_>>(),
            }),
            QueryValue::Matrix(series) => json!({
                "resultType": "matrix",
                "result": series.iter().map(|s| json!({
                    "metric": metric_json(&s.metric),
                    "values": s.ts.iter().zip(&s.vals)
                        .map(|(t, v)| json!([format_time(*t), format_float(*v)]))
                        .collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            }),
        }
    }

    /// Floats are written with the shortest round-trip digits and no exponent, as
    /// Rust's `Display` writes them, over edge cases and two million pseudo-random
    /// bit patterns. The one difference allowed is a tie between two shortest digit
    /// strings equally near the value: `Display` rounds the last digit up, Prometheus
    /// (Go's `FormatFloat(v, 'f', -1, 64)`) and `ryu` to even.
    #[test]
    fn floats_are_written_as_display_writes_them() {
        let check = |v: f64| {
            if !v.is_finite() {
                return;
            }
            let (ours, display) = (format_float(v), format!("{v}"));
            if ours != display {
                let (a, b) = (ours.as_bytes(), display.as_bytes());
                let last = a.len() - 1;
                assert!(
                    a.len() == b.len()
                        && a[..last] == b[..last]
                        && a[last] % 2 == 0
                        && a[last] + 1 == b[last]
                        && ours.parse::<f64>() == Ok(v),
                    "{:#x}: {ours} vs {display}",
                    v.to_bits()
                );
            }
        };
        for v in [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.1,
            1.0 / 3.0,
            477_563.0,
            1e15,
            1e16,
            1e21,
            1e22,
            123_456_789_012_345_680.0,
            1e-5,
            1e-7,
            1.5e-7,
            -2.5e-300,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            5e-324,
            f64::EPSILON,
            9_007_199_254_740_993.0,
        ] {
            check(v);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..1_000_000 {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let bits = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
            check(f64::from_bits(bits));
            // Also values of everyday size: a random mantissa, exponents near zero.
            check(f64::from_bits(
                (bits & 0x800f_ffff_ffff_ffff) | ((1000 + bits % 100) << 52),
            ));
        }
    }

    #[test]
    fn written_json_is_the_json_value() {
        let metric: Metric = vec![
            ("__name__".into(), "m".into()),
            ("q".into(), "quote \" back \\ nl \n tab \t ü \u{1}".into()),
        ];
        let vals = [
            1.0,
            -2.5,
            1e-7,
            1e21,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.1,
        ];
        let ts: Vec<i64> = vec![0, 1_700_000_000_500, -1500, 1_700_000_000_000, 7, 8, 9, 10];
        let values = [
            QueryValue::Matrix(vec![
                crate::eval::Raw {
                    metric: metric.clone(),
                    ts: ts.clone(),
                    vals: vals.to_vec(),
                    delta: false,
                },
                crate::eval::Raw {
                    metric: Vec::new(),
                    ts: vec![1000],
                    vals: vec![3.0],
                    delta: false,
                },
            ]),
            QueryValue::Matrix(Vec::new()),
            // Enough points to be written on several threads.
            QueryValue::Matrix(
                (0..300)
                    .map(|i: i64| crate::eval::Raw {
                        metric: vec![("s".into(), i.to_string())],
                        ts: (0..20).map(|j| i * 7 + j * 1500).collect(),
                        vals: (0..20).map(|j| (i * 20 + j) as f64 / 7.0).collect(),
                        delta: false,
                    })
                    .collect(),
            ),
            QueryValue::Vector(
                ts.iter()
                    .zip(vals)
                    .map(|(&t, v)| (metric.clone(), t, v))
                    .collect(),
            ),
            QueryValue::Vector(Vec::new()),
            QueryValue::Scalar(1500, 2.0),
            QueryValue::String(0, "s".into()),
        ];
        for v in values {
            let mut text = Vec::new();
            v.write_json(&mut text);
            let parsed: Value = serde_json::from_slice(&text).unwrap();
            assert_eq!(parsed, reference_json(&v), "{v:?}");
        }
    }

    #[test]
    fn floats_like_go() {
        assert_eq!(format_float(1.0), "1");
        assert_eq!(format_float(0.1), "0.1");
        assert_eq!(format_float(1e-7), "0.0000001");
        assert_eq!(format_float(1e21), "1000000000000000000000");
        assert_eq!(format_float(-2.5), "-2.5");
        // A tie, rounded to even as Prometheus (2.42) answers `-1511490363518567.25`.
        assert_eq!(
            format_float(-1_511_490_363_518_567.2),
            "-1511490363518567.2"
        );
        assert_eq!(format_float(1.5e-7), "0.00000015");
        assert_eq!(format_float(-0.0), "-0");
        assert_eq!(format_float(f64::NAN), "NaN");
        assert_eq!(format_float(f64::INFINITY), "+Inf");
        assert_eq!(format_time(1_700_000_000_500), json!(1_700_000_000.5));
        assert_eq!(format_time(1_700_000_000_000), json!(1_700_000_000));
    }
}
