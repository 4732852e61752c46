//! Rule evaluation and alert state: inactive → pending → firing → resolved, with
//! `for`, `keep_firing_for` and the configured no-data behaviour. Evaluation takes
//! the time as an argument, so tests drive it with a manual clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{Budget, NoData, Period, Query, Rule, RuleKind, Spike, SpikeTest};

/// A label set.
pub type Labels = BTreeMap<String, String>;

/// Series of a range query: labels and (time, value) points.
pub type RangeSeries = Vec<(Labels, Vec<(i64, f64)>)>;

/// Where rules read and write data. The server implements it over storage, PromQL
/// and SQL; every call is scoped to one tenant.
pub trait Backend: Send + Sync {
    /// An instant PromQL query; a scalar result is one sample without labels.
    fn instant(&self, tenant: &str, promql: &str, t_ms: i64) -> Result<Vec<(Labels, f64)>, String>;
    /// A range PromQL query.
    fn range(
        &self,
        tenant: &str,
        promql: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<RangeSeries, String>;
    /// A SQL query returning label columns and a numeric `value` column.
    fn sql(&self, tenant: &str, sql: &str, t_ms: i64) -> Result<Vec<(Labels, f64)>, String>;
    /// Writes samples of metric `name` (a recording rule's output) at `t_ms`.
    fn write(
        &self,
        tenant: &str,
        name: &str,
        samples: Vec<(Labels, f64)>,
        t_ms: i64,
    ) -> Result<(), String>;
}

/// The state of one alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Firing,
    Resolved,
}

/// One alert instance of an alerting rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub labels: Labels,
    pub annotations: Labels,
    pub state: State,
    pub value: f64,
    /// When the condition first held (pending since).
    pub active_at: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    /// Evaluation at which the condition last held.
    pub last_seen: i64,
}

/// Resolved alerts are kept this long so their resolution can be notified.
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// What one rule remembers between evaluations.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RuleState {
    /// Alerts by fingerprint.
    pub alerts: BTreeMap<String, Alert>,
    #[serde(default)]
    pub health: String,
    #[serde(default)]
    pub last_error: String,
    #[serde(default)]
    pub last_eval: i64,
    #[serde(default)]
    pub eval_seconds: f64,
}

/// A stable fingerprint of a label set (FNV-1a, 16 hex digits), as Alertmanager
/// shows one.
pub fn fingerprint(labels: &Labels) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Runs the rule's query at `now`: (labels, value) of every series where the
/// condition holds (alerting) or of every output series (recording).
pub fn query(
    rule: &Rule,
    backend: &dyn Backend,
    tenant: &str,
    now: i64,
) -> Result<Vec<(Labels, f64)>, String> {
    match &rule.query {
        Query::PromQL(q) => backend.instant(tenant, q, now),
        Query::Sql(q) => backend.sql(tenant, q, now),
        Query::Spike(s) => spike(s, backend, tenant, now),
        Query::Budget(b) => budget(b, backend, tenant, now)
            .map(|v| v.into_iter().map(|(l, spend, _)| (l, spend)).collect()),
    }
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Series whose recent window spikes against their baseline; the value is the ratio
/// or the z-score.
fn spike(
    s: &Spike,
    backend: &dyn Backend,
    tenant: &str,
    now: i64,
) -> Result<Vec<(Labels, f64)>, String> {
    let window = s.window.as_millis() as i64;
    let baseline = s.baseline.as_millis() as i64;
    let step = s.step.as_millis() as i64;
    let split = now - window;
    let series = backend.range(tenant, &s.expr, split - baseline, now, step)?;
    let mut out = Vec::new();
    for (labels, points) in series {
        let recent: Vec<f64> = points.iter().filter(|p| p.0 > split).map(|p| p.1).collect();
        let base: Vec<f64> = points
            .iter()
            .filter(|p| p.0 <= split)
            .map(|p| p.1)
            .collect();
        if recent.is_empty() || base.len() < 2 {
            continue;
        }
        let (recent_mean, _) = mean_std(&recent);
        let (base_mean, base_std) = mean_std(&base);
        if base_mean.is_nan() || base_mean.abs() < s.min_baseline || !recent_mean.is_finite() {
            continue; // volume guard: a near-empty baseline never pages
        }
        let score = match s.test {
            SpikeTest::Ratio(_) => recent_mean / base_mean,
            SpikeTest::ZScore(_) => {
                if base_std == 0.0 {
                    if recent_mean > base_mean {
                        f64::INFINITY
                    } else {
                        0.0
                    }
                } else {
                    (recent_mean - base_mean) / base_std
                }
            }
        };
        let threshold = match s.test {
            SpikeTest::Ratio(f) => f,
            SpikeTest::ZScore(k) => k,
        };
        if score >= threshold {
            out.push((labels, score));
        }
    }
    Ok(out)
}

/// Start of the UTC day or month containing `t`, and the period's length.
fn period_bounds(p: Period, t: i64) -> (i64, i64) {
    use chrono::{Datelike, TimeZone, Utc};
    let day = 86_400_000;
    match p {
        Period::Day => (t.div_euclid(day) * day, day),
        Period::Rolling(d) => (t - d.as_millis() as i64, d.as_millis() as i64),
        Period::Month => {
            let dt = Utc.timestamp_millis_opt(t).single().unwrap_or_default();
            let start = Utc
                .with_ymd_and_hms(dt.year(), dt.month(), 1, 0, 0, 0)
                .single()
                .unwrap_or_default();
            let (ny, nm) = if dt.month() == 12 {
                (dt.year() + 1, 1)
            } else {
                (dt.year(), dt.month() + 1)
            };
            let next = Utc
                .with_ymd_and_hms(ny, nm, 1, 0, 0, 0)
                .single()
                .unwrap_or_default();
            (
                start.timestamp_millis(),
                next.timestamp_millis() - start.timestamp_millis(),
            )
        }
    }
}

/// Spend per group over the period so far and its forecast to the period's end;
/// only the groups at or over the limit (or forecast to reach it) are returned.
pub fn budget(
    b: &Budget,
    backend: &dyn Backend,
    tenant: &str,
    now: i64,
) -> Result<Vec<(Labels, f64, f64)>, String> {
    let (start, len) = period_bounds(b.period, now);
    let elapsed = (now - start).max(1000);
    let q = format!(
        "sum by ({}) (increase({}[{}ms]))",
        b.by.join(", "),
        b.cost,
        elapsed
    );
    let mut out = Vec::new();
    for (labels, spend) in backend.instant(tenant, &q, now)? {
        let forecast = match b.period {
            Period::Rolling(_) => spend,
            _ => spend / elapsed as f64 * len as f64,
        };
        if spend >= b.limit || (b.forecast && forecast >= b.limit) {
            out.push((labels, spend, forecast));
        }
    }
    Ok(out)
}

/// Evaluates one rule at `now` and updates its state. Recording rules write their
/// output; alerting rules move their alerts through the states.
pub fn eval_rule(
    rule: &Rule,
    state: &mut RuleState,
    backend: &dyn Backend,
    tenant: &str,
    now: i64,
    external_url: &str,
) {
    let started = std::time::Instant::now();
    state.last_eval = now;
    // Budget alerts carry spend, forecast and limit as annotations.
    let mut extra: BTreeMap<Labels, Labels> = BTreeMap::new();
    let result = match &rule.query {
        Query::Budget(b) => budget(b, backend, tenant, now).map(|v| {
            v.into_iter()
                .map(|(l, spend, forecast)| {
                    extra.insert(
                        l.clone(),
                        Labels::from([
                            ("budget_spend".into(), format!("{spend:.4}")),
                            ("budget_forecast".into(), format!("{forecast:.4}")),
                            ("budget_limit".into(), format!("{}", b.limit)),
                        ]),
                    );
                    (l, spend)
                })
                .collect()
        }),
        _ => query(rule, backend, tenant, now),
    };
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            state.health = "err".into();
            state.last_error = e;
            state.eval_seconds = started.elapsed().as_secs_f64();
            return;
        }
    };
    match rule.kind {
        RuleKind::Record => {
            let samples = result
                .into_iter()
                .map(|(mut l, v)| {
                    l.remove("__name__");
                    for (k, val) in &rule.labels {
                        l.insert(k.clone(), val.clone());
                    }
                    (l, v)
                })
                .collect();
            match backend.write(tenant, &rule.name, samples, now) {
                Ok(()) => {
                    state.health = "ok".into();
                    state.last_error.clear();
                }
                Err(e) => {
                    state.health = "err".into();
                    state.last_error = e;
                }
            }
        }
        RuleKind::Alert => {
            update_alerts(rule, state, result, &extra, now, external_url);
            state.health = "ok".into();
            state.last_error.clear();
        }
    }
    state.eval_seconds = started.elapsed().as_secs_f64();
}

fn update_alerts(
    rule: &Rule,
    state: &mut RuleState,
    mut result: Vec<(Labels, f64)>,
    extra: &BTreeMap<Labels, Labels>,
    now: i64,
    external_url: &str,
) {
    if result.is_empty() {
        match rule.no_data {
            NoData::KeepState => return,
            NoData::Alerting => result.push((
                Labels::from([("alertstate".into(), "nodata".into())]),
                f64::NAN,
            )),
            NoData::Ok => {}
        }
    }
    let for_ms = rule.for_.as_millis() as i64;
    let keep_ms = rule.keep_firing_for.as_millis() as i64;
    let mut seen = std::collections::BTreeSet::new();
    for (series, value) in result {
        let mut labels = series.clone();
        labels.remove("__name__");
        for (k, t) in &rule.label_templates {
            let rendered = t.render(&series, value, external_url);
            if rendered.is_empty() {
                labels.remove(k);
            } else {
                labels.insert(k.clone(), rendered);
            }
        }
        labels.insert("alertname".into(), rule.name.clone());
        let mut annotations: Labels = rule
            .annotations
            .iter()
            .map(|(k, t)| (k.clone(), t.render(&series, value, external_url)))
            .collect();
        if let Some(x) = extra.get(&series) {
            annotations.extend(x.clone());
        }
        let fp = fingerprint(&labels);
        seen.insert(fp.clone());
        match state.alerts.get_mut(&fp) {
            Some(a) if a.state != State::Resolved => {
                a.value = value;
                a.annotations = annotations;
                a.last_seen = now;
                if a.state == State::Pending && now - a.active_at >= for_ms {
                    a.state = State::Firing;
                    a.fired_at = Some(now);
                }
            }
            _ => {
                let firing = for_ms == 0;
                state.alerts.insert(
                    fp,
                    Alert {
                        labels,
                        annotations,
                        state: if firing {
                            State::Firing
                        } else {
                            State::Pending
                        },
                        value,
                        active_at: now,
                        fired_at: firing.then_some(now),
                        resolved_at: None,
                        last_seen: now,
                    },
                );
            }
        }
    }
    state.alerts.retain(|fp, a| {
        if seen.contains(fp) {
            return true;
        }
        match a.state {
            // The condition went away before `for` elapsed: back to inactive.
            State::Pending => false,
            State::Firing => {
                if keep_ms > 0 && now - a.last_seen < keep_ms {
                    return true;
                }
                a.state = State::Resolved;
                a.resolved_at = Some(now);
                true
            }
            State::Resolved => now - a.resolved_at.unwrap_or(now) < RESOLVED_RETENTION_MS,
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::config::parse_rules;

    /// Answers each query with whatever the test set for it.
    #[derive(Default)]
    struct Fake {
        results: Mutex<Vec<(Labels, f64)>>,
        written: Mutex<Vec<(String, Labels, f64, i64)>>,
    }
    impl Backend for Fake {
        fn instant(&self, _: &str, _: &str, _: i64) -> Result<Vec<(Labels, f64)>, String> {
            Ok(self.results.lock().unwrap().clone())
        }
        fn range(
            &self,
            _: &str,
            _: &str,
            _: i64,
            _: i64,
            _: i64,
        ) -> Result<Vec<(Labels, Vec<(i64, f64)>)>, String> {
            Ok(Vec::new())
        }
        fn sql(&self, _: &str, _: &str, _: i64) -> Result<Vec<(Labels, f64)>, String> {
            Ok(self.results.lock().unwrap().clone())
        }
        fn write(
            &self,
            _: &str,
            name: &str,
            samples: Vec<(Labels, f64)>,
            t: i64,
        ) -> Result<(), String> {
            let mut w = self.written.lock().unwrap();
            for (l, v) in samples {
                w.push((name.to_string(), l, v, t));
            }
            Ok(())
        }
    }

    fn rule(extra: &str) -> Rule {
        let text = format!(
            "groups:\n  - name: g\n    rules:\n      - alert: Hot\n        expr: temp > 10\n        labels:\n          severity: page\n        annotations:\n          summary: 'temp {{{{ $value }}}} on {{{{ $labels.host }}}}'\n{extra}"
        );
        parse_rules(&text, "t.yml", "default", Duration::from_secs(60), &|_| {
            Ok(())
        })
        .unwrap()
        .remove(0)
        .rules
        .remove(0)
    }

    fn host(h: &str) -> Labels {
        Labels::from([
            ("__name__".into(), "temp".into()),
            ("host".into(), h.into()),
        ])
    }

    fn states(s: &RuleState) -> Vec<State> {
        s.alerts.values().map(|a| a.state).collect()
    }

    #[test]
    fn pending_firing_resolved_at_the_exact_evaluations() {
        let r = rule("        for: 2m\n");
        let b = Fake::default();
        let mut s = RuleState::default();
        let m = 60_000;
        *b.results.lock().unwrap() = vec![(host("a"), 12.0)];
        eval_rule(&r, &mut s, &b, "default", 0, "");
        assert_eq!(states(&s), [State::Pending]);
        eval_rule(&r, &mut s, &b, "default", m, "");
        assert_eq!(states(&s), [State::Pending], "1m < for 2m");
        eval_rule(&r, &mut s, &b, "default", 2 * m, "");
        assert_eq!(states(&s), [State::Firing], "fires at exactly for");
        let a = s.alerts.values().next().unwrap();
        assert_eq!((a.active_at, a.fired_at), (0, Some(2 * m)));
        assert_eq!(a.labels["alertname"], "Hot");
        assert_eq!(a.labels["severity"], "page");
        assert!(!a.labels.contains_key("__name__"));
        assert_eq!(a.annotations["summary"], "temp 12 on a");
        b.results.lock().unwrap().clear();
        eval_rule(&r, &mut s, &b, "default", 3 * m, "");
        assert_eq!(states(&s), [State::Resolved]);
        assert_eq!(s.alerts.values().next().unwrap().resolved_at, Some(3 * m));
        // Retained for notification, then dropped.
        eval_rule(&r, &mut s, &b, "default", 3 * m + RESOLVED_RETENTION_MS, "");
        assert!(s.alerts.is_empty());
    }

    #[test]
    fn pending_that_clears_goes_back_to_inactive_and_starts_over() {
        let r = rule("        for: 2m\n");
        let b = Fake::default();
        let mut s = RuleState::default();
        *b.results.lock().unwrap() = vec![(host("a"), 12.0)];
        eval_rule(&r, &mut s, &b, "default", 0, "");
        b.results.lock().unwrap().clear();
        eval_rule(&r, &mut s, &b, "default", 60_000, "");
        assert!(s.alerts.is_empty());
        *b.results.lock().unwrap() = vec![(host("a"), 12.0)];
        eval_rule(&r, &mut s, &b, "default", 120_000, "");
        eval_rule(&r, &mut s, &b, "default", 180_000, "");
        assert_eq!(
            states(&s),
            [State::Pending],
            "for counts from the new start"
        );
        eval_rule(&r, &mut s, &b, "default", 240_000, "");
        assert_eq!(states(&s), [State::Firing]);
    }

    #[test]
    fn keep_firing_for_holds_a_firing_alert() {
        let r = rule("        keep_firing_for: 3m\n");
        let b = Fake::default();
        let mut s = RuleState::default();
        let m = 60_000;
        *b.results.lock().unwrap() = vec![(host("a"), 12.0)];
        eval_rule(&r, &mut s, &b, "default", 0, "");
        assert_eq!(states(&s), [State::Firing], "no for: fires at once");
        b.results.lock().unwrap().clear();
        for t in [m, 2 * m] {
            eval_rule(&r, &mut s, &b, "default", t, "");
            assert_eq!(states(&s), [State::Firing], "kept firing at {t}");
        }
        eval_rule(&r, &mut s, &b, "default", 3 * m, "");
        assert_eq!(
            states(&s),
            [State::Resolved],
            "3m after the last true evaluation"
        );
    }

    #[test]
    fn no_data_behaviours() {
        let m = 60_000;
        let b = Fake::default();
        // keep_state: a firing alert stays firing while the query returns nothing.
        let r = rule("        no_data: keep_state\n");
        let mut s = RuleState::default();
        *b.results.lock().unwrap() = vec![(host("a"), 12.0)];
        eval_rule(&r, &mut s, &b, "default", 0, "");
        b.results.lock().unwrap().clear();
        eval_rule(&r, &mut s, &b, "default", m, "");
        assert_eq!(states(&s), [State::Firing]);
        // alerting: no data raises its own alert, through `for`.
        let r = rule("        no_data: alerting\n        for: 1m\n");
        let mut s = RuleState::default();
        eval_rule(&r, &mut s, &b, "default", 0, "");
        assert_eq!(states(&s), [State::Pending]);
        eval_rule(&r, &mut s, &b, "default", m, "");
        assert_eq!(states(&s), [State::Firing]);
        let a = s.alerts.values().next().unwrap();
        assert_eq!(a.labels["alertstate"], "nodata");
        // ok (default): nothing fires.
        let r = rule("");
        let mut s = RuleState::default();
        eval_rule(&r, &mut s, &b, "default", 0, "");
        assert!(s.alerts.is_empty());
    }

    #[test]
    fn recording_rules_write_their_output() {
        let text = "groups:\n  - name: g\n    rules:\n      - record: job:temp:max\n        expr: max by (host) (temp)\n        labels:\n          source: rule\n";
        let r = parse_rules(text, "t.yml", "default", Duration::from_secs(60), &|_| {
            Ok(())
        })
        .unwrap()
        .remove(0)
        .rules
        .remove(0);
        let b = Fake::default();
        *b.results.lock().unwrap() = vec![(host("a"), 3.5)];
        let mut s = RuleState::default();
        eval_rule(&r, &mut s, &b, "default", 5_000, "");
        let w = b.written.lock().unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].0, "job:temp:max");
        assert_eq!(w[0].1.get("source").map(String::as_str), Some("rule"));
        assert!(!w[0].1.contains_key("__name__"));
        assert_eq!((w[0].2, w[0].3), (3.5, 5_000));
    }

    #[test]
    fn month_and_day_periods() {
        // 2026-02-10T12:00:00Z
        let t = 1_770_724_800_000;
        let (start, len) = period_bounds(Period::Month, t);
        assert_eq!(start, 1_769_904_000_000); // 2026-02-01
        assert_eq!(len, 28 * 86_400_000);
        let (start, len) = period_bounds(Period::Day, t);
        assert_eq!((start, len), (t - 43_200_000, 86_400_000));
    }
}
