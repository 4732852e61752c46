//! Prometheus' JSON result encoding.

use serde_json::{Value, json};

use crate::eval::{Metric, QueryValue};

/// A sample value as Prometheus writes it: shortest round-trip decimal without an
/// exponent, `NaN`, `+Inf`, `-Inf`.
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// A timestamp in milliseconds as Prometheus' JSON number of seconds.
pub fn format_time(ms: i64) -> Value {
    if ms % 1000 == 0 {
        json!(ms / 1000)
    } else {
        json!(ms as f64 / 1000.0)
    }
}

fn metric_json(m: &Metric) -> Value {
    let map: serde_json::Map<String, Value> = m
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    Value::Object(map)
}

impl QueryValue {
    /// The `data` object of a query response.
    pub fn to_json(&self) -> Value {
        match self {
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
}

impl QueryValue {
    /// [`QueryValue::to_json`] as JSON text, written directly: a matrix of many points
    /// does not become a tree of `Value`s (one allocation per point) first.
    pub fn json_text(&self) -> String {
        let mut out = Vec::with_capacity(256);
        match self {
            QueryValue::Scalar(..) | QueryValue::String(..) => return self.to_json().to_string(),
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
            }
            QueryValue::Matrix(series) => {
                out.extend_from_slice(br#"{"resultType":"matrix","result":["#);
                for (i, s) in series.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(br#"{"metric":"#);
                    write_metric(&mut out, &s.metric);
                    out.extend_from_slice(br#","values":["#);
                    for (j, (t, v)) in s.ts.iter().zip(&s.vals).enumerate() {
                        if j > 0 {
                            out.push(b',');
                        }
                        write_point(&mut out, *t, *v);
                    }
                    out.extend_from_slice(b"]}");
                }
            }
        }
        out.extend_from_slice(b"]}");
        String::from_utf8(out).expect("JSON text is UTF-8")
    }
}

fn write_metric(out: &mut Vec<u8>, m: &Metric) {
    out.push(b'{');
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, k).expect("writing to memory");
        out.push(b':');
        serde_json::to_writer(&mut *out, v).expect("writing to memory");
    }
    out.push(b'}');
}

/// `[time, "value"]`, as [`format_time`] and [`format_float`] write them.
fn write_point(out: &mut Vec<u8>, t: i64, v: f64) {
    use std::io::Write;
    out.push(b'[');
    if t % 1000 == 0 {
        write!(out, "{}", t / 1000).expect("writing to memory");
    } else {
        serde_json::to_writer(&mut *out, &(t as f64 / 1000.0)).expect("writing to memory");
    }
    out.extend_from_slice(b",\"");
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if v == f64::INFINITY {
        out.extend_from_slice(b"+Inf");
    } else if v == f64::NEG_INFINITY {
        out.extend_from_slice(b"-Inf");
    } else {
        write!(out, "{v}").expect("writing to memory");
    }
    out.extend_from_slice(b"\"]");
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(parsed, v.to_json(), "{v:?}");
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
