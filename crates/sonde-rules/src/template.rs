//! The part of Prometheus' alert templating that rule files use in practice:
//! `{{ $labels.name }}` (or `.Labels.name`), `{{ $value }}` (or `.Value`),
//! `{{ $externalURL }}`, optionally piped through `humanize`, `humanizePercentage`,
//! `humanizeDuration` or `printf "%.Nf"`. Other actions are kept as written.

use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Label(String, Pipe),
    Value(Pipe),
    ExternalUrl,
    Verbatim(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Pipe {
    None,
    Humanize,
    Percentage,
    Duration,
    Fixed(usize),
}

/// A parsed annotation or label template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("unclosed action in template {s:?}"))?;
            let action = after[..close].trim().trim_matches('-').trim();
            parts.push(parse_action(action));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    pub fn render(
        &self,
        labels: &BTreeMap<String, String>,
        value: f64,
        external_url: &str,
    ) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Verbatim(t) => {
                    let _ = write!(out, "{{{{ {t} }}}}");
                }
                Part::ExternalUrl => out.push_str(external_url),
                Part::Label(name, pipe) => {
                    let v = labels.get(name).map(String::as_str).unwrap_or("");
                    match (pipe, v.parse::<f64>()) {
                        (Pipe::None, _) | (_, Err(_)) => out.push_str(v),
                        (p, Ok(x)) => out.push_str(&apply(*p, x)),
                    }
                }
                Part::Value(pipe) => out.push_str(&apply(*pipe, value)),
            }
        }
        out
    }
}

fn parse_action(action: &str) -> Part {
    let mut segs = action.split('|').map(str::trim);
    let head = segs.next().unwrap_or("");
    let pipe = match segs.next() {
        None => Pipe::None,
        Some("humanize") => Pipe::Humanize,
        Some("humanizePercentage") => Pipe::Percentage,
        Some("humanizeDuration") => Pipe::Duration,
        Some(p) if p.starts_with("printf") => {
            let fmt = p.trim_start_matches("printf").trim().trim_matches('"');
            match fmt
                .strip_prefix("%.")
                .and_then(|f| f.strip_suffix('f'))
                .and_then(|n| n.parse().ok())
            {
                Some(n) => Pipe::Fixed(n),
                None => return Part::Verbatim(action.to_string()),
            }
        }
        Some(_) => return Part::Verbatim(action.to_string()),
    };
    if segs.next().is_some() {
        return Part::Verbatim(action.to_string());
    }
    if head == "$value" || head == ".Value" {
        return Part::Value(pipe);
    }
    if head == "$externalURL" || head == ".ExternalURL" {
        return Part::ExternalUrl;
    }
    for prefix in ["$labels.", ".Labels."] {
        if let Some(name) = head.strip_prefix(prefix)
            && !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Part::Label(name.to_string(), pipe);
        }
    }
    Part::Verbatim(action.to_string())
}

fn apply(pipe: Pipe, v: f64) -> String {
    match pipe {
        Pipe::None => sonde_promql::format_float(v),
        Pipe::Fixed(n) => format!("{v:.n$}"),
        Pipe::Percentage => format!("{}%", humanize(v * 100.0)),
        Pipe::Duration => format!("{}s", humanize(v)),
        Pipe::Humanize => humanize(v),
    }
}

/// Like Prometheus' `humanize`: SI prefixes, four significant digits.
fn humanize(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return sonde_promql::format_float(v);
    }
    let units = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    for (f, u) in units {
        if v.abs() >= f {
            return format!("{}{u}", sig4(v / f));
        }
    }
    if v.abs() >= 1.0 {
        return sig4(v);
    }
    for (f, u) in [(1e-3, "m"), (1e-6, "u"), (1e-9, "n")] {
        if v.abs() >= f {
            return format!("{}{u}", sig4(v / f));
        }
    }
    sig4(v)
}

fn sig4(v: f64) -> String {
    let digits = (4 - (v.abs().log10().floor() as i32 + 1)).max(0) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labels_and_values() {
        let t = Template::parse("p95 of {{ $labels.model }} is {{ $value | printf \"%.2f\" }} ({{ .Value | humanize }}) {{ $labels.none }}!").unwrap();
        let labels = BTreeMap::from([("model".to_string(), "gpt-4o".to_string())]);
        assert_eq!(
            t.render(&labels, 1234.5678, ""),
            "p95 of gpt-4o is 1234.57 (1.235k) !"
        );
        assert_eq!(
            Template::parse("{{ $value | humanizePercentage }}")
                .unwrap()
                .render(&labels, 0.123, ""),
            "12.3%"
        );
        assert!(Template::parse("{{ $labels.x ").is_err());
        assert_eq!(
            Template::parse("{{ if x }}")
                .unwrap()
                .render(&labels, 0.0, ""),
            "{{ if x }}"
        );
    }
}
