//! OpenTelemetry names → Prometheus-compatible table and label names, following the
//! rules Prometheus applies to OTLP metrics (underscore escaping with suffixes):
//!
//! - the metric name is split into words at every character outside `[A-Za-z0-9:]`
//!   and the words are joined with `_` (`gen_ai.client.operation.duration` →
//!   `gen_ai_client_operation_duration`);
//! - the unit becomes a suffix unless the name already contains it: annotations in
//!   braces are dropped (`{token}` adds nothing), UCUM units are spelled out (`s` →
//!   `seconds`, `By` → `bytes`, `ms` → `milliseconds`, …), `X/Y` becomes
//!   `X_per_Y` (`By/s` → `bytes_per_second`);
//! - monotonic sums end in `_total`; gauges with unit `1` end in `_ratio`;
//! - a name starting with a digit gets a leading `_`;
//! - label names: every character outside `[A-Za-z0-9_]` becomes `_`, a leading
//!   digit gets the prefix `key_`, a leading `__` the prefix `key`.

/// How a metric's type affects its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A monotonic sum: gets `_total`.
    Counter,
    /// A gauge: unit `1` becomes `_ratio`.
    Gauge,
    /// Histograms, summaries and non-monotonic sums.
    Other,
}

fn unit_word(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tebibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "%" => "percent",
        _ => return None,
    })
}

fn per_unit_word(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        _ => return None,
    })
}

fn words(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
        .filter(|w| !w.is_empty())
}

/// Spells a unit out: the mapped word, else the unit's own words.
fn unit_words(unit: &str, word: fn(&str) -> Option<&'static str>) -> Vec<String> {
    match word(unit) {
        Some(w) => vec![w.to_string()],
        None => words(unit).map(str::to_string).collect(),
    }
}

/// The Prometheus-style name of an OTLP metric; `None` when nothing usable is left.
pub fn metric_name(name: &str, unit: &str, kind: NameKind) -> Option<String> {
    let mut out: Vec<String> = words(name).map(str::to_string).collect();
    if out.is_empty() {
        return None;
    }
    // Drop `{annotations}`; what is left is a UCUM unit, maybe `X/Y`.
    let mut unit_clean = String::new();
    let mut depth = 0;
    for c in unit.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth > 0 => depth -= 1,
            c if depth == 0 => unit_clean.push(c),
            _ => {}
        }
    }
    let unit_clean = unit_clean.trim();
    let (main, per) = match unit_clean.split_once('/') {
        Some((m, p)) => (m.trim(), p.trim()),
        None => (unit_clean, ""),
    };
    let has = |out: &[String], w: &str| out.iter().any(|x| x.eq_ignore_ascii_case(w));
    if !main.is_empty() && main != "1" {
        for w in unit_words(main, unit_word) {
            if !has(&out, &w) {
                out.push(w);
            }
        }
    }
    if !per.is_empty() {
        let per_words = unit_words(per, per_unit_word);
        if !per_words.iter().all(|w| has(&out, w)) {
            out.push("per".to_string());
            out.extend(per_words);
        }
    }
    match kind {
        NameKind::Counter => {
            out.retain(|w| w != "total");
            out.push("total".to_string());
        }
        NameKind::Gauge if main == "1" && !has(&out, "ratio") => out.push("ratio".to_string()),
        _ => {}
    }
    let mut s = out.join("_");
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    Some(s)
}

/// The label name for an attribute key; `None` for an empty key.
pub fn label_name(key: &str) -> Option<String> {
    if key.is_empty() {
        return None;
    }
    let mut s: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert_str(0, "key_");
    } else if s.starts_with("__") {
        s.insert_str(0, "key");
    }
    Some(s)
}

/// GenAI semantic-convention attributes renamed between convention versions: the
/// old key → the current one. Both spellings are stored under the current name.
pub const GENAI_ALIASES: &[(&str, &str)] = &[
    ("gen_ai.system", "gen_ai.provider.name"),
    ("gen_ai.usage.prompt_tokens", "gen_ai.usage.input_tokens"),
    (
        "gen_ai.usage.completion_tokens",
        "gen_ai.usage.output_tokens",
    ),
];

/// The current attribute key for a possibly deprecated GenAI key.
pub fn canonical_key(key: &str) -> &str {
    GENAI_ALIASES
        .iter()
        .find(|(old, _)| *old == key)
        .map_or(key, |(_, new)| new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_follow_prometheus_rules() {
        let n = |name, unit, kind| metric_name(name, unit, kind).unwrap();
        assert_eq!(
            n("gen_ai.client.operation.duration", "s", NameKind::Other),
            "gen_ai_client_operation_duration_seconds"
        );
        assert_eq!(
            n("gen_ai.client.token.usage", "{token}", NameKind::Other),
            "gen_ai_client_token_usage"
        );
        assert_eq!(
            n("http.server.requests", "{request}", NameKind::Counter),
            "http_server_requests_total"
        );
        assert_eq!(
            n("system.network.io", "By/s", NameKind::Gauge),
            "system_network_io_bytes_per_second"
        );
        assert_eq!(
            n("cpu.utilization", "1", NameKind::Gauge),
            "cpu_utilization_ratio"
        );
        assert_eq!(
            n("request_duration_seconds", "s", NameKind::Other),
            "request_duration_seconds"
        );
        assert_eq!(n("requests.total", "", NameKind::Counter), "requests_total");
        assert_eq!(n("2xx.count", "", NameKind::Gauge), "_2xx_count");
        assert_eq!(n("queue..depth__", "", NameKind::Gauge), "queue_depth");
        assert_eq!(metric_name("...", "s", NameKind::Gauge), None);
    }

    #[test]
    fn label_names_are_sanitised() {
        assert_eq!(
            label_name("gen_ai.request.model").unwrap(),
            "gen_ai_request_model"
        );
        assert_eq!(label_name("1st").unwrap(), "key_1st");
        assert_eq!(label_name("__x").unwrap(), "key__x");
        assert_eq!(label_name("k8s.pod-name").unwrap(), "k8s_pod_name");
        assert_eq!(label_name(""), None);
        assert_eq!(canonical_key("gen_ai.system"), "gen_ai.provider.name");
        assert_eq!(
            canonical_key("gen_ai.operation.name"),
            "gen_ai.operation.name"
        );
    }
}
