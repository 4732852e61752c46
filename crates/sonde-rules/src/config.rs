//! Rule files: Prometheus' rule-group YAML (`groups[].rules[]` with `alert` or
//! `record`, `expr`, `for`, `keep_firing_for`, `labels`, `annotations`), plus Sonde's
//! `sql:`, `spike:` and `budget:` forms. Every error names `file:line`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::template::Template;

/// A rule file problem, with the file and line it is about.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct RuleError {
    pub file: String,
    pub line: u64,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    groups: Vec<GroupDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupDoc {
    name: Spanned<String>,
    interval: Option<String>,
    #[serde(default)]
    rules: Vec<RuleDoc>,
    /// Accepted for compatibility; Sonde does not cap alerts per rule.
    #[allow(dead_code)]
    limit: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    alert: Option<Spanned<String>>,
    record: Option<Spanned<String>>,
    expr: Option<Spanned<serde_json::Value>>,
    sql: Option<Spanned<String>>,
    spike: Option<Spanned<SpikeDoc>>,
    budget: Option<Spanned<BudgetDoc>>,
    #[serde(rename = "for")]
    for_: Option<String>,
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    no_data: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpikeDoc {
    expr: String,
    window: String,
    baseline: String,
    step: Option<String>,
    factor: Option<f64>,
    zscore: Option<f64>,
    #[serde(default)]
    min_baseline: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetDoc {
    cost: String,
    #[serde(default)]
    by: Vec<String>,
    period: String,
    limit: f64,
    #[serde(default = "yes")]
    forecast: bool,
}

fn yes() -> bool {
    true
}

/// Alerting or recording.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleKind {
    Alert,
    Record,
}

/// What to do when an alerting rule's query returns nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoData {
    /// Nothing is wrong: active alerts resolve (Prometheus' behaviour; the default).
    Ok,
    /// No data is itself alarming: one alert (labels of the rule) goes pending/firing.
    Alerting,
    /// Keep every alert as it is until data returns.
    KeepState,
}

/// How a spike is measured against its baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SpikeTest {
    /// recent / mean(baseline) ≥ factor.
    Ratio(f64),
    /// (recent − mean(baseline)) / stddev(baseline) ≥ k.
    ZScore(f64),
}

/// A `spike:` rule: the recent window of a query against a baseline window of the
/// same query, per series.
#[derive(Debug, Clone, PartialEq)]
pub struct Spike {
    pub expr: String,
    pub window: Duration,
    pub baseline: Duration,
    pub step: Duration,
    pub test: SpikeTest,
    /// A baseline mean below this never pages (volume guard).
    pub min_baseline: f64,
}

/// The period of a budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Period {
    /// The UTC calendar day.
    Day,
    /// The UTC calendar month.
    Month,
    /// The last `Duration`, rolling.
    Rolling(Duration),
}

/// A `budget:` rule: spend of a cost counter over a period against a limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// A selector of a cost counter, e.g. `llm_cost_usd_total{app="chat"}`.
    pub cost: String,
    pub by: Vec<String>,
    pub period: Period,
    pub limit: f64,
    /// Also fire when the burn rate would reach the limit before the period ends.
    pub forecast: bool,
}

/// What a rule evaluates.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    PromQL(String),
    Sql(String),
    Spike(Spike),
    Budget(Budget),
}

impl Query {
    /// A one-line description for APIs.
    pub fn text(&self) -> String {
        match self {
            Query::PromQL(q) => q.clone(),
            Query::Sql(q) => format!("sql: {q}"),
            Query::Spike(s) => format!(
                "spike: {} over {:?} vs {:?} baseline ({})",
                s.expr,
                s.window,
                s.baseline,
                match s.test {
                    SpikeTest::Ratio(f) => format!("ratio ≥ {f}"),
                    SpikeTest::ZScore(k) => format!("z-score ≥ {k}"),
                }
            ),
            Query::Budget(b) => format!(
                "budget: {} by ({}) over {:?} ≤ {}",
                b.cost,
                b.by.join(", "),
                b.period,
                b.limit
            ),
        }
    }
}

/// A validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub kind: RuleKind,
    pub query: Query,
    pub for_: Duration,
    pub keep_firing_for: Duration,
    /// Labels as written (recording rules and the rules API use them as is).
    pub labels: BTreeMap<String, String>,
    /// The same labels parsed once, rendered per alert.
    pub label_templates: BTreeMap<String, Template>,
    pub annotations: BTreeMap<String, Template>,
    /// The annotations as written, for the rules API.
    pub annotation_text: BTreeMap<String, String>,
    pub no_data: NoData,
    pub line: u64,
}

/// A validated rule group.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub file: String,
    pub tenant: String,
    pub interval: Duration,
    pub rules: Vec<Rule>,
}

/// A PromQL-style duration (`30s`, `5m`, `1h30m`, `1d`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s == "0" || s == "0s" {
        return Ok(Duration::ZERO);
    }
    promql_parser::util::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

fn valid_name(s: &str, metric: bool) -> bool {
    if metric {
        sonde_promql::is_metric_name(s)
    } else {
        sonde_promql::is_label_name(s)
    }
}

/// Checks SQL text without running it (the server supplies DataFusion's parser).
pub type SqlCheck<'a> = &'a dyn Fn(&str) -> Result<(), String>;

/// Parses and validates one rule file's text. `default_interval` applies to groups
/// without `interval`.
pub fn parse_rules(
    text: &str,
    file: &str,
    tenant: &str,
    default_interval: Duration,
    sql_check: SqlCheck<'_>,
) -> Result<Vec<Group>, RuleError> {
    let err = |line: u64, message: String| RuleError {
        file: file.to_string(),
        line,
        message,
    };
    let doc: FileDoc = serde_saphyr::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line()).unwrap_or(0);
        err(
            line,
            e.to_string()
                .lines()
                .next()
                .unwrap_or("invalid YAML")
                .to_string(),
        )
    })?;
    let mut groups = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for g in doc.groups {
        let gline = g.name.referenced.line();
        if g.name.value.is_empty() {
            return Err(err(gline, "group name must not be empty".into()));
        }
        if !names.insert(g.name.value.clone()) {
            return Err(err(
                gline,
                format!("group {:?}: repeated in the same file", g.name.value),
            ));
        }
        let interval = match &g.interval {
            None => default_interval,
            Some(s) => parse_duration(s).map_err(|e| err(gline, e))?,
        };
        if interval.is_zero() {
            return Err(err(gline, "group interval must be positive".into()));
        }
        let mut rules = Vec::new();
        for r in g.rules {
            rules.push(rule(r, &err)?);
        }
        groups.push(Group {
            name: g.name.value,
            file: file.to_string(),
            tenant: tenant.to_string(),
            interval,
            rules,
        });
    }
    // SQL is checked last so the YAML and PromQL errors come first.
    for g in &groups {
        for r in &g.rules {
            if let Query::Sql(q) = &r.query {
                sql_check(q).map_err(|e| err(r.line, format!("sql: {e}")))?;
            }
        }
    }
    Ok(groups)
}

fn rule(r: RuleDoc, err: &dyn Fn(u64, String) -> RuleError) -> Result<Rule, RuleError> {
    let (name, kind, line) = match (&r.alert, &r.record) {
        (Some(a), None) => (a.value.clone(), RuleKind::Alert, a.referenced.line()),
        (None, Some(rec)) => (rec.value.clone(), RuleKind::Record, rec.referenced.line()),
        (Some(a), Some(_)) => {
            return Err(err(
                a.referenced.line(),
                "only one of 'alert' and 'record' may be set".into(),
            ));
        }
        (None, None) => {
            let line = r
                .expr
                .as_ref()
                .map(|e| e.referenced.line())
                .or(r.sql.as_ref().map(|e| e.referenced.line()))
                .unwrap_or(0);
            return Err(err(line, "one of 'alert' or 'record' must be set".into()));
        }
    };
    if kind == RuleKind::Record && !valid_name(&name, true) {
        return Err(err(line, format!("invalid recording rule name: {name:?}")));
    }
    if kind == RuleKind::Alert && name.is_empty() {
        return Err(err(line, "alert name must not be empty".into()));
    }
    let forms = [
        r.expr.is_some(),
        r.sql.is_some(),
        r.spike.is_some(),
        r.budget.is_some(),
    ];
    if forms.iter().filter(|&&b| b).count() != 1 {
        return Err(err(
            line,
            "exactly one of 'expr', 'sql', 'spike' and 'budget' must be set".into(),
        ));
    }
    let query = if let Some(e) = r.expr {
        let l = e.referenced.line();
        let text = match e.value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            other => return Err(err(l, format!("expr must be a string, got {other}"))),
        };
        check_promql(&text).map_err(|m| err(l, m))?;
        Query::PromQL(text)
    } else if let Some(s) = r.sql {
        if s.value.trim().is_empty() {
            return Err(err(s.referenced.line(), "sql must not be empty".into()));
        }
        Query::Sql(s.value)
    } else if let Some(s) = r.spike {
        let l = s.referenced.line();
        let d = s.value;
        check_promql(&d.expr).map_err(|m| err(l, format!("spike.expr: {m}")))?;
        let dur = |name: &str, v: &str| {
            parse_duration(v).map_err(|e| err(l, format!("spike.{name}: {e}")))
        };
        let window = dur("window", &d.window)?;
        let baseline = dur("baseline", &d.baseline)?;
        let step = match &d.step {
            Some(s) => dur("step", s)?,
            None => Duration::from_secs(60),
        };
        if window.is_zero() || baseline.is_zero() || step.is_zero() {
            return Err(err(
                l,
                "spike: window, baseline and step must be positive".into(),
            ));
        }
        let test = match (d.factor, d.zscore) {
            (Some(f), None) if f > 0.0 => SpikeTest::Ratio(f),
            (None, Some(k)) if k > 0.0 => SpikeTest::ZScore(k),
            _ => {
                return Err(err(
                    l,
                    "spike: set exactly one of 'factor' or 'zscore', positive".into(),
                ));
            }
        };
        Query::Spike(Spike {
            expr: d.expr,
            window,
            baseline,
            step,
            test,
            min_baseline: d.min_baseline,
        })
    } else if let Some(b) = r.budget {
        let l = b.referenced.line();
        let d = b.value;
        let sel = promql_parser::parser::parse(&d.cost)
            .map_err(|e| err(l, format!("budget.cost: {e}")))?;
        if !matches!(sel, promql_parser::parser::Expr::VectorSelector(_)) {
            return Err(err(
                l,
                "budget.cost must be a series selector such as llm_cost_usd_total{app=\"x\"}"
                    .into(),
            ));
        }
        for by in &d.by {
            if !valid_name(by, false) {
                return Err(err(l, format!("budget.by: invalid label name {by:?}")));
            }
        }
        let period = match d.period.as_str() {
            "day" => Period::Day,
            "month" => Period::Month,
            other => Period::Rolling(parse_duration(other).map_err(|e| {
                err(
                    l,
                    format!("budget.period: 'day', 'month' or a duration: {e}"),
                )
            })?),
        };
        if d.limit.is_nan() || d.limit <= 0.0 {
            return Err(err(l, "budget.limit must be positive".into()));
        }
        Query::Budget(Budget {
            cost: d.cost,
            by: d.by,
            period,
            limit: d.limit,
            forecast: d.forecast,
        })
    } else {
        unreachable!("one form is set")
    };
    let dur = |name: &str, v: &Option<String>| -> Result<Duration, RuleError> {
        match v {
            None => Ok(Duration::ZERO),
            Some(s) => parse_duration(s).map_err(|e| err(line, format!("{name}: {e}"))),
        }
    };
    let for_ = dur("for", &r.for_)?;
    let keep_firing_for = dur("keep_firing_for", &r.keep_firing_for)?;
    if kind == RuleKind::Record
        && (for_ > Duration::ZERO
            || keep_firing_for > Duration::ZERO
            || !r.annotations.is_empty()
            || r.no_data.is_some())
    {
        return Err(err(
            line,
            "recording rules take no 'for', 'keep_firing_for', 'annotations' or 'no_data'".into(),
        ));
    }
    if kind == RuleKind::Record && matches!(query, Query::Spike(_) | Query::Budget(_)) {
        return Err(err(
            line,
            "spike and budget rules must be alerting rules".into(),
        ));
    }
    for k in r.labels.keys() {
        if !valid_name(k, false) {
            return Err(err(line, format!("invalid label name {k:?}")));
        }
    }
    let mut annotations = BTreeMap::new();
    let annotation_text = r.annotations.clone();
    for (k, v) in r.annotations {
        let t = Template::parse(&v).map_err(|e| err(line, format!("annotation {k:?}: {e}")))?;
        annotations.insert(k, t);
    }
    let mut label_templates = BTreeMap::new();
    for (k, v) in &r.labels {
        let t = Template::parse(v).map_err(|e| err(line, format!("label {k:?}: {e}")))?;
        label_templates.insert(k.clone(), t);
    }
    let no_data = match r.no_data.as_deref() {
        None | Some("ok") => NoData::Ok,
        Some("alerting") => NoData::Alerting,
        Some("keep_state") => NoData::KeepState,
        Some(other) => {
            return Err(err(
                line,
                format!("no_data: expected ok, alerting or keep_state, got {other:?}"),
            ));
        }
    };
    Ok(Rule {
        name,
        kind,
        query,
        for_,
        keep_firing_for,
        labels: r.labels,
        label_templates,
        annotations,
        annotation_text,
        no_data,
        line,
    })
}

fn check_promql(q: &str) -> Result<(), String> {
    let e =
        promql_parser::parser::parse(q).map_err(|e| format!("could not parse expression: {e}"))?;
    use promql_parser::parser::value::ValueType;
    match e.value_type() {
        ValueType::Vector | ValueType::Scalar => Ok(()),
        _ => Err("expression must be an instant vector or a scalar".into()),
    }
}

/// Loads rule files (glob patterns allowed in the last path component) for a tenant.
pub fn load_files(
    patterns: &[PathBuf],
    tenant: &str,
    default_interval: Duration,
    sql_check: SqlCheck<'_>,
) -> Result<Vec<Group>, RuleError> {
    let mut groups = Vec::new();
    for file in expand(patterns).map_err(|(f, m)| RuleError {
        file: f,
        line: 0,
        message: m,
    })? {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(&file).map_err(|e| RuleError {
            file: name.clone(),
            line: 0,
            message: e.to_string(),
        })?;
        groups.extend(parse_rules(
            &text,
            &name,
            tenant,
            default_interval,
            sql_check,
        )?);
    }
    Ok(groups)
}

/// Expands `*` in the file name of each pattern (e.g. `rules/*.yml`), sorted.
pub fn expand(patterns: &[PathBuf]) -> Result<Vec<PathBuf>, (String, String)> {
    let mut out = Vec::new();
    for p in patterns {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.contains('*') {
            out.push(p.clone());
            continue;
        }
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let re = regex::Regex::new(&format!("^{}$", regex::escape(name).replace("\\*", ".*")))
            .expect("escaped glob is a valid regex");
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| (p.display().to_string(), e.to_string()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|f| {
                f.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| re.is_match(n))
            })
            .collect();
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Group>, RuleError> {
        parse_rules(text, "r.yml", "default", Duration::from_secs(60), &|_| {
            Ok(())
        })
    }

    #[test]
    fn prometheus_rule_file() {
        let g = parse(
            r#"
groups:
  - name: llm
    interval: 30s
    rules:
      - record: model:llm_tokens:rate5m
        expr: sum by (model) (rate(llm_tokens_total[5m]))
      - alert: HighLatency
        expr: histogram_quantile(0.95, sum by (le) (rate(llm_request_duration_seconds_bucket[5m]))) > 10
        for: 5m
        keep_firing_for: 10m
        labels:
          severity: page
        annotations:
          summary: "p95 latency {{ $value }} on {{ $labels.model }}"
"#,
        )
        .unwrap();
        assert_eq!(g[0].interval, Duration::from_secs(30));
        assert_eq!(g[0].rules.len(), 2);
        assert_eq!(g[0].rules[1].for_, Duration::from_secs(300));
        assert_eq!(g[0].rules[1].line, 8);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("groups:\n  - name: a\n    rules:\n      - alert: X\n        expr: sum(\n")
            .unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        assert!(
            e.to_string()
                .starts_with("r.yml:5: could not parse expression"),
            "{e}"
        );
        let e = parse("groups:\n  - name: a\n    rules:\n      - alert: X\n        expr: up\n        for: 5x\n").unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        let e = parse("groups:\n  - name: a\n    rules:\n      - alert: X\n        expr: up\n        bogus: 1\n").unwrap_err();
        assert!(e.line >= 4, "{e}");
        let e = parse("groups:\n  - name: a\n    rules:\n      - alert: X\n        expr: up\n        annotations:\n          s: '{{ $labels.x '\n").unwrap_err();
        assert!(e.message.contains("annotation"), "{e}");
    }

    #[test]
    fn spike_and_budget_forms() {
        let g = parse(
            r#"
groups:
  - name: spend
    rules:
      - alert: InferenceSpike
        spike:
          expr: sum(rate(inference_time_sum[5m]))
          window: 10m
          baseline: 2h
          factor: 3
          min_baseline: 0.01
      - alert: TenantDailyBudget
        budget:
          cost: llm_cost_usd_total
          by: [tenant]
          period: day
          limit: 100
"#,
        )
        .unwrap();
        assert!(
            matches!(g[0].rules[0].query, Query::Spike(Spike { test: SpikeTest::Ratio(f), .. }) if f == 3.0)
        );
        assert!(
            matches!(&g[0].rules[1].query, Query::Budget(b) if b.period == Period::Day && b.by == ["tenant"])
        );
        assert!(parse("groups:\n  - name: a\n    rules:\n      - alert: X\n        spike:\n          expr: up\n          window: 1m\n          baseline: 1h\n").is_err());
    }
}
