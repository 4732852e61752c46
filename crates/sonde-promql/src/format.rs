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

#[cfg(test)]
mod tests {
    use super::*;

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
