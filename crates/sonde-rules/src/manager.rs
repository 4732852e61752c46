//! The rule manager: loads rule files per tenant, runs each group on its interval,
//! hands alerts to the notification router, persists alert and notification state in
//! the data directory, reloads on demand, and renders the rules/alerts APIs and the
//! evaluation metrics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sonde_types::Clock;

use crate::config::{Group, RuleError, RuleKind, SqlCheck, load_files};
use crate::eval::{Alert, Backend, RuleState, State, eval_rule};
use crate::notify::{
    Dispatcher, GroupState, NotifyMetrics, ReceiverConfig, RouteConfig, Router, rfc3339,
};

/// The `[alerting]` section of Sonde's config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertingConfig {
    /// Rule files of the default tenant (`*` allowed in the file name).
    #[serde(default)]
    pub rule_files: Vec<PathBuf>,
    /// Rule files per tenant (with authentication on).
    #[serde(default)]
    pub tenant_rule_files: BTreeMap<String, Vec<PathBuf>>,
    /// Interval of groups that set none. Default 60 s.
    pub evaluation_interval_secs: Option<f64>,
    /// Base URL of this Sonde in notifications (`generatorURL`, `externalURL`).
    pub external_url: Option<String>,
    #[serde(default)]
    pub receivers: Vec<ReceiverConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

impl AlertingConfig {
    pub fn default_interval(&self) -> Duration {
        Duration::from_secs_f64(self.evaluation_interval_secs.unwrap_or(60.0).max(0.001))
    }

    /// Every rule file, by tenant.
    fn files(&self, default_tenant: &str) -> Vec<(String, Vec<PathBuf>)> {
        let mut out = Vec::new();
        if !self.rule_files.is_empty() {
            out.push((default_tenant.to_string(), self.rule_files.clone()));
        }
        for (t, f) in &self.tenant_rule_files {
            out.push((t.clone(), f.clone()));
        }
        out
    }

    /// Loads and validates every rule file.
    pub fn load(
        &self,
        default_tenant: &str,
        sql_check: SqlCheck<'_>,
    ) -> Result<Vec<Group>, RuleError> {
        let mut groups = Vec::new();
        for (tenant, files) in self.files(default_tenant) {
            groups.extend(load_files(
                &files,
                &tenant,
                self.default_interval(),
                sql_check,
            )?);
        }
        Ok(groups)
    }
}

#[derive(Debug, Default)]
struct EvalMetrics {
    evaluations: AtomicU64,
    micros: AtomicU64,
    missed: AtomicU64,
    failures: AtomicU64,
}

#[derive(Debug)]
struct GroupRun {
    group: Group,
    stop: AtomicBool,
    /// (time of the last evaluation, its duration in seconds)
    last: Mutex<(i64, f64)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    rules: BTreeMap<String, RuleState>,
    groups: BTreeMap<String, GroupState>,
}

type SqlChecker = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

struct Inner {
    cfg: AlertingConfig,
    default_tenant: String,
    external_url: String,
    backend: Arc<dyn Backend>,
    clock: Arc<dyn Clock>,
    state_path: PathBuf,
    sql_check: SqlChecker,
    groups: Mutex<Vec<Arc<GroupRun>>>,
    states: Mutex<BTreeMap<String, RuleState>>,
    router: Mutex<Router>,
    dispatcher: Dispatcher,
    notify_metrics: Arc<NotifyMetrics>,
    metrics: EvalMetrics,
    /// Serialises state file writes.
    save_lock: Mutex<()>,
}

/// Runs rules and notifications; cheap to clone.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").finish_non_exhaustive()
    }
}

fn rule_key(g: &Group, i: usize) -> String {
    let r = &g.rules[i];
    format!(
        "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
        g.tenant,
        g.file,
        g.name,
        i,
        r.name,
        r.query.text()
    )
}

impl Manager {
    /// Loads the rules and state and starts the group and notification tasks on the
    /// current tokio runtime. An invalid rule file fails the start.
    pub fn start(
        cfg: AlertingConfig,
        default_tenant: &str,
        backend: Arc<dyn Backend>,
        clock: Arc<dyn Clock>,
        data_dir: &Path,
        sql_check: SqlChecker,
    ) -> Result<Manager, String> {
        let groups = cfg
            .load(default_tenant, &*sql_check)
            .map_err(|e| e.to_string())?;
        let external_url = cfg
            .external_url
            .clone()
            .unwrap_or_else(|| "http://127.0.0.1:4318".into());
        let mut router = Router::new(cfg.receivers.clone(), cfg.routes.clone(), &external_url)?;
        let state_path = data_dir.join("rules").join("state.json");
        let persisted: Persisted = std::fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        router.groups = persisted.groups;
        let notify_metrics = Arc::new(NotifyMetrics::default());
        let dispatcher = Dispatcher::start(&cfg.receivers, notify_metrics.clone());
        let inner = Arc::new(Inner {
            cfg,
            default_tenant: default_tenant.to_string(),
            external_url,
            backend,
            clock,
            state_path,
            sql_check,
            groups: Mutex::new(Vec::new()),
            states: Mutex::new(persisted.rules),
            router: Mutex::new(router),
            dispatcher,
            notify_metrics,
            metrics: EvalMetrics::default(),
            save_lock: Mutex::new(()),
        });
        let m = Manager { inner };
        m.install(groups);
        m.spawn_notifier();
        Ok(m)
    }

    /// Re-reads the rule files. On an error the rules in force stay and the error
    /// (with file:line) is returned.
    pub fn reload(&self) -> Result<usize, String> {
        let groups = self
            .inner
            .cfg
            .load(&self.inner.default_tenant, &*self.inner.sql_check)
            .map_err(|e| e.to_string())?;
        let n = groups.iter().map(|g| g.rules.len()).sum();
        self.install(groups);
        Ok(n)
    }

    fn install(&self, groups: Vec<Group>) {
        let mut current = self.inner.groups.lock();
        for g in current.iter() {
            g.stop.store(true, Ordering::SeqCst);
        }
        let keys: std::collections::BTreeSet<String> = groups
            .iter()
            .flat_map(|g| (0..g.rules.len()).map(move |i| rule_key(g, i)))
            .collect();
        self.inner.states.lock().retain(|k, _| keys.contains(k));
        *current = groups
            .into_iter()
            .map(|group| {
                Arc::new(GroupRun {
                    group,
                    stop: AtomicBool::new(false),
                    last: Mutex::new((0, 0.0)),
                })
            })
            .collect();
        for g in current.iter() {
            self.spawn_group(g.clone());
        }
    }

    fn spawn_group(&self, run: Arc<GroupRun>) {
        let m = self.clone();
        tokio::spawn(async move {
            let interval = run.group.interval.as_millis().max(1) as i64;
            // Groups of one interval spread over it (by name), as Prometheus does.
            let offset = (crate::eval::fingerprint(&BTreeMap::from([(
                run.group.file.clone(),
                run.group.name.clone(),
            )]))
            .bytes()
            .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64))
                % interval as u64) as i64;
            let mut next = {
                let now = m.inner.clock.now_ms();
                (now - offset).div_euclid(interval) * interval + offset + interval
            };
            loop {
                let now = m.inner.clock.now_ms();
                if next > now {
                    tokio::time::sleep(Duration::from_millis((next - now) as u64)).await;
                }
                if run.stop.load(Ordering::SeqCst) {
                    return;
                }
                let t = next;
                let m2 = m.clone();
                let r2 = run.clone();
                let started = Instant::now();
                let _ = tokio::task::spawn_blocking(move || m2.eval_group(&r2, t)).await;
                m.inner.metrics.evaluations.fetch_add(1, Ordering::Relaxed);
                m.inner
                    .metrics
                    .micros
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                let after = m.inner.clock.now_ms();
                next += interval;
                if after >= next {
                    let skipped = (after - next) / interval + 1;
                    m.inner
                        .metrics
                        .missed
                        .fetch_add(skipped as u64, Ordering::Relaxed);
                    next += skipped * interval;
                }
            }
        });
    }

    /// Evaluates every rule of a group at `now` (also used by tests with a manual
    /// clock) and hands the alerts to the router.
    fn eval_group(&self, run: &GroupRun, now: i64) {
        let started = Instant::now();
        let g = &run.group;
        let mut alerts: Vec<Alert> = Vec::new();
        for i in 0..g.rules.len() {
            let key = rule_key(g, i);
            let mut st = self.inner.states.lock().remove(&key).unwrap_or_default();
            eval_rule(
                &g.rules[i],
                &mut st,
                self.inner.backend.as_ref(),
                &g.tenant,
                now,
                &self.inner.external_url,
            );
            if st.health == "err" {
                self.inner.metrics.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(rule = %g.rules[i].name, group = %g.name, error = %st.last_error, "rule evaluation failed");
            }
            alerts.extend(st.alerts.values().cloned());
            self.inner.states.lock().insert(key, st);
        }
        *run.last.lock() = (now, started.elapsed().as_secs_f64());
        self.inner.router.lock().update(&g.tenant, &alerts, now);
        // One state write covers the evaluation and the notifications it caused.
        self.send_due();
        self.save();
    }

    /// Hands the notifications due now to their receivers' queues; whether any were.
    fn send_due(&self) -> bool {
        let deliveries = self.inner.router.lock().flush(self.inner.clock.now_ms());
        let any = !deliveries.is_empty();
        for d in deliveries {
            self.inner.dispatcher.send(d);
        }
        any
    }

    fn flush_notifications(&self) {
        if self.send_due() {
            self.save();
        }
    }

    fn spawn_notifier(&self) {
        let m = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let m2 = m.clone();
                let _ = tokio::task::spawn_blocking(move || m2.flush_notifications()).await;
            }
        });
    }

    /// Writes alert and notification state (tmp file, fsync, rename).
    fn save(&self) {
        let _guard = self.inner.save_lock.lock();
        let p = Persisted {
            rules: self.inner.states.lock().clone(),
            groups: self.inner.router.lock().groups.clone(),
        };
        let write = || -> std::io::Result<()> {
            let dir = self
                .inner
                .state_path
                .parent()
                .expect("state path has a parent");
            std::fs::create_dir_all(dir)?;
            let tmp = self.inner.state_path.with_extension("json.tmp");
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, &serde_json::to_vec(&p)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.inner.state_path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        if let Err(e) = write() {
            tracing::error!(error = %e, path = %self.inner.state_path.display(), "saving alert state");
        }
    }

    /// `/api/v1/rules` data for a tenant, in Prometheus' shape.
    pub fn rules_json(&self, tenant: &str) -> Value {
        let groups = self.inner.groups.lock().clone();
        let states = self.inner.states.lock();
        let mut out = Vec::new();
        for run in groups.iter().filter(|r| r.group.tenant == tenant) {
            let g = &run.group;
            let (last, took) = *run.last.lock();
            let rules: Vec<Value> = g
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let st = states.get(&rule_key(g, i)).cloned().unwrap_or_default();
                    let health = if st.health.is_empty() {
                        "unknown"
                    } else {
                        st.health.as_str()
                    };
                    let last_eval = if st.last_eval == 0 {
                        "0001-01-01T00:00:00Z".to_string()
                    } else {
                        rfc3339(st.last_eval)
                    };
                    match r.kind {
                        RuleKind::Record => json!({
                            "type": "recording",
                            "name": r.name,
                            "query": r.query.text(),
                            "labels": r.labels,
                            "health": health,
                            "lastError": st.last_error,
                            "evaluationTime": st.eval_seconds,
                            "lastEvaluation": last_eval,
                        }),
                        RuleKind::Alert => {
                            let alerts: Vec<Value> = st
                                .alerts
                                .values()
                                .filter(|a| a.state != State::Resolved)
                                .map(alert_json)
                                .collect();
                            let state = if st.alerts.values().any(|a| a.state == State::Firing) {
                                "firing"
                            } else if st.alerts.values().any(|a| a.state == State::Pending) {
                                "pending"
                            } else {
                                "inactive"
                            };
                            json!({
                                "type": "alerting",
                                "state": state,
                                "name": r.name,
                                "query": r.query.text(),
                                "duration": r.for_.as_secs_f64(),
                                "keepFiringFor": r.keep_firing_for.as_secs_f64(),
                                "labels": r.labels,
                                "annotations": r.annotation_text,
                                "alerts": alerts,
                                "health": health,
                                "lastError": st.last_error,
                                "evaluationTime": st.eval_seconds,
                                "lastEvaluation": last_eval,
                            })
                        }
                    }
                })
                .collect();
            out.push(json!({
                "name": g.name,
                "file": g.file,
                "interval": g.interval.as_secs_f64(),
                "limit": 0,
                "rules": rules,
                "evaluationTime": took,
                "lastEvaluation": if last == 0 { "0001-01-01T00:00:00Z".to_string() } else { rfc3339(last) },
            }));
        }
        json!({ "groups": out })
    }

    /// `/api/v1/alerts` data for a tenant: pending and firing alerts.
    pub fn alerts_json(&self, tenant: &str) -> Value {
        let groups = self.inner.groups.lock().clone();
        let states = self.inner.states.lock();
        let mut out = Vec::new();
        for run in groups.iter().filter(|r| r.group.tenant == tenant) {
            for i in 0..run.group.rules.len() {
                if let Some(st) = states.get(&rule_key(&run.group, i)) {
                    out.extend(
                        st.alerts
                            .values()
                            .filter(|a| a.state != State::Resolved)
                            .map(alert_json),
                    );
                }
            }
        }
        json!({ "alerts": out })
    }

    /// Evaluation and notification metrics in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let m = &self.inner.metrics;
        let n = &self.inner.notify_metrics;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP sonde_rule_group_evaluation_duration_seconds Time to evaluate a rule group.\n# TYPE sonde_rule_group_evaluation_duration_seconds summary\nsonde_rule_group_evaluation_duration_seconds_sum {}\nsonde_rule_group_evaluation_duration_seconds_count {}",
            m.micros.load(Ordering::Relaxed) as f64 / 1e6,
            m.evaluations.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP sonde_rule_group_iterations_missed_total Evaluations skipped because the previous one ran past its interval.\n# TYPE sonde_rule_group_iterations_missed_total counter\nsonde_rule_group_iterations_missed_total {}",
            m.missed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP sonde_rule_evaluation_failures_total Rule evaluations that failed.\n# TYPE sonde_rule_evaluation_failures_total counter\nsonde_rule_evaluation_failures_total {}",
            m.failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP sonde_notifications_total Notifications delivered, by receiver.\n# TYPE sonde_notifications_total counter"
        );
        for (r, v) in n.sent.lock().iter() {
            let _ = writeln!(out, "sonde_notifications_total{{receiver=\"{r}\"}} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP sonde_notifications_failed_total Notifications dropped after exhausting their retries, by receiver.\n# TYPE sonde_notifications_failed_total counter"
        );
        for (r, v) in n.failed.lock().iter() {
            let _ = writeln!(
                out,
                "sonde_notifications_failed_total{{receiver=\"{r}\"}} {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP sonde_notification_retries_total Notification attempts that were retried.\n# TYPE sonde_notification_retries_total counter\nsonde_notification_retries_total {}",
            n.retries.load(Ordering::Relaxed)
        );
        out
    }

    /// Number of loaded rules.
    pub fn rule_count(&self) -> usize {
        self.inner
            .groups
            .lock()
            .iter()
            .map(|g| g.group.rules.len())
            .sum()
    }
}

fn alert_json(a: &Alert) -> Value {
    json!({
        "labels": a.labels,
        "annotations": a.annotations,
        "state": match a.state { State::Pending => "pending", State::Firing => "firing", State::Resolved => "inactive" },
        "activeAt": rfc3339(a.active_at),
        "value": sonde_promql::format_float(a.value),
    })
}
