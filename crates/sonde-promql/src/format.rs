//! Prometheus' JSON result encoding.

use std::io::Write;

use crate::eval::{Metric, QueryValue};

/// A sample value as Prometheus writes it: shortest round-trip decimal without an
/// exponent, `NaN`, `+Inf`, `-Inf`.
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
        write!(out, "{v}").expect("writing to memory");
    }
}

impl QueryValue {
    /// The `data` object of a query response as JSON text, written directly: a matrix
    /// of many points does not become a tree of `Value`s (one allocation per point).
    pub fn json_text(&self) -> String {
        let mut out = Vec::with_capacity(256);
        match self {
            QueryValue::Scalar(t, v) => {
                out.extend_from_slice(br#"{"resultType":"scalar","result":"#);
                write_point(&mut out, *t, *v);
                out.push(b'}');
            }
            QueryValue::String(t, s) => {
                out.extend_from_slice(br#"{"resultType":"string","result":["#);
                write_time(&mut out, *t);
                out.push(b',');
                write_json(&mut out, s);
                out.extend_from_slice(b"]}");
            }
            QueryValue::Vector(samples) => {
                out.extend_from_slice(br#"{"resultType":"vector","result":["#);
                for (i, (m, t, v)) in samples.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(br#"{"metric":"#);
                    write_metric(&mut out, m);
                    out.extend_from_slice(br#","value":"#);
                    write_point(&mut out, *t, *v);
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
                            let mut text = Vec::new();
                            write_series(&mut text, chunk);
                            text
                        });
                    for (i, text) in texts.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(text);
                    }
                } else {
                    write_series(&mut out, series);
                }
                out.extend_from_slice(b"]}");
            }
        }
        String::from_utf8(out).expect("JSON text is UTF-8")
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
    /// `json_text`): the reference the text must parse to.
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

    #[test]
    fn json_text_is_the_json_value() {
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
            let parsed: Value = serde_json::from_str(&v.json_text()).unwrap();
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
        assert_eq!(format_float(f64::NAN), "NaN");
        assert_eq!(format_float(f64::INFINITY), "+Inf");
        assert_eq!(format_time(1_700_000_000_500), json!(1_700_000_000.5));
        assert_eq!(format_time(1_700_000_000_000), json!(1_700_000_000));
    }
}
