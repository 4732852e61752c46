//! Notifications: routing by label matchers, grouping (`group_by`, `group_wait`,
//! `group_interval`, `repeat_interval`), resolved notifications, and delivery to
//! webhooks (Alertmanager's webhook v4 JSON, optionally HMAC-SHA256-signed) or to an
//! Alertmanager's `/api/v2/alerts`, with retries (exponential backoff and jitter).
//! Each receiver has its own delivery queue, so a dead receiver delays nobody else,
//! and evaluation only ever hands alerts over.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::eval::{Alert, Labels, State};

/// The kind of a receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverKind {
    /// POST the Alertmanager webhook v4 JSON to `url`.
    #[default]
    Webhook,
    /// POST alerts to an Alertmanager at `url` (its `/api/v2/alerts`).
    Alertmanager,
}

/// A notification target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: ReceiverKind,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Signs each body: header `X-Sonde-Signature: sha256=<hex HMAC-SHA256>`.
    pub hmac_secret: Option<String>,
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    /// Attempts per notification (first try included).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt up to `max_backoff_secs`, ±20% jitter.
    #[serde(default = "default_backoff")]
    pub initial_backoff_secs: f64,
    #[serde(default = "default_max_backoff")]
    pub max_backoff_secs: f64,
    #[serde(default = "default_true")]
    pub send_resolved: bool,
}

fn default_timeout() -> f64 {
    10.0
}
fn default_attempts() -> u32 {
    6
}
fn default_backoff() -> f64 {
    1.0
}
fn default_max_backoff() -> f64 {
    60.0
}
fn default_true() -> bool {
    true
}

/// Which alerts go to which receiver, grouped how.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub receiver: String,
    /// Label matchers, PromQL style: `severity="page"`, `model=~"gpt.*"`.
    #[serde(default)]
    pub matchers: Vec<String>,
    #[serde(default = "default_group_by")]
    pub group_by: Vec<String>,
    #[serde(default = "default_group_wait")]
    pub group_wait_secs: f64,
    #[serde(default = "default_group_interval")]
    pub group_interval_secs: f64,
    #[serde(default = "default_repeat")]
    pub repeat_interval_secs: f64,
    /// Keep matching later routes after this one matched.
    #[serde(default, rename = "continue")]
    pub continue_: bool,
}

fn default_group_by() -> Vec<String> {
    vec!["alertname".into()]
}
fn default_group_wait() -> f64 {
    30.0
}
fn default_group_interval() -> f64 {
    300.0
}
fn default_repeat() -> f64 {
    4.0 * 3600.0
}

/// Counters of deliveries, by receiver.
#[derive(Debug, Default)]
pub struct NotifyMetrics {
    pub sent: Mutex<BTreeMap<String, u64>>,
    pub failed: Mutex<BTreeMap<String, u64>>,
    pub retries: AtomicU64,
}

/// A compiled route.
#[derive(Debug)]
struct Route {
    cfg: RouteConfig,
    matchers: Vec<promql_parser::label::Matcher>,
}

/// One aggregation group's memory, persisted so a restart does not notify early.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GroupState {
    pub receiver: String,
    pub route: usize,
    pub labels: Labels,
    /// Active and recently resolved alerts by fingerprint, with their tenant.
    pub alerts: BTreeMap<String, (String, Alert)>,
    pub next_flush: i64,
    pub last_sent: i64,
    /// (fingerprint, firing?) of the last notification.
    pub last_sent_set: BTreeSet<(String, bool)>,
}

/// A notification ready for a receiver.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub receiver: String,
    pub body: Vec<u8>,
}

/// Routes alerts into groups and decides when each group notifies.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
    receivers: BTreeMap<String, ReceiverConfig>,
    external_url: String,
    pub groups: BTreeMap<String, GroupState>,
}

fn parse_matcher(s: &str) -> Result<promql_parser::label::Matcher, String> {
    let sel = format!("{{{s}}}");
    match promql_parser::parser::parse(&sel) {
        Ok(promql_parser::parser::Expr::VectorSelector(vs)) if vs.matchers.matchers.len() == 1 => {
            Ok(vs.matchers.matchers[0].clone())
        }
        _ => Err(format!(
            "invalid matcher {s:?}: expected e.g. severity=\"page\""
        )),
    }
}

fn ms(secs: f64) -> i64 {
    (secs * 1000.0) as i64
}

/// Unix milliseconds as RFC 3339 with milliseconds, UTC (`2026-11-28T10:00:00.000Z`).
pub(crate) fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Router {
    pub fn new(
        receivers: Vec<ReceiverConfig>,
        routes: Vec<RouteConfig>,
        external_url: &str,
    ) -> Result<Router, String> {
        let mut by_name = BTreeMap::new();
        for r in receivers {
            if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
                return Err(format!(
                    "receiver {:?}: url must be http(s)://, got {:?}",
                    r.name, r.url
                ));
            }
            if by_name.insert(r.name.clone(), r.clone()).is_some() {
                return Err(format!("receiver {:?} defined twice", r.name));
            }
        }
        let mut compiled = Vec::new();
        for cfg in routes {
            if !by_name.contains_key(&cfg.receiver) {
                return Err(format!("route names unknown receiver {:?}", cfg.receiver));
            }
            let matchers = cfg
                .matchers
                .iter()
                .map(|m| parse_matcher(m))
                .collect::<Result<_, _>>()?;
            compiled.push(Route { cfg, matchers });
        }
        // Without routes, every receiver gets every alert with default grouping.
        if compiled.is_empty() {
            for name in by_name.keys() {
                compiled.push(Route {
                    cfg: RouteConfig {
                        receiver: name.clone(),
                        matchers: Vec::new(),
                        group_by: default_group_by(),
                        group_wait_secs: default_group_wait(),
                        group_interval_secs: default_group_interval(),
                        repeat_interval_secs: default_repeat(),
                        continue_: true,
                    },
                    matchers: Vec::new(),
                });
            }
        }
        Ok(Router {
            routes: compiled,
            receivers: by_name,
            external_url: external_url.to_string(),
            groups: BTreeMap::new(),
        })
    }

    pub fn receiver(&self, name: &str) -> Option<&ReceiverConfig> {
        self.receivers.get(name)
    }

    /// Takes a tenant's current firing and resolved alerts (after an evaluation).
    pub fn update(&mut self, tenant: &str, alerts: &[Alert], now: i64) {
        for a in alerts {
            if a.state == State::Pending {
                continue;
            }
            let fp = crate::eval::fingerprint(&a.labels);
            for (ri, route) in self.routes.iter().enumerate() {
                let ok = route
                    .matchers
                    .iter()
                    .all(|m| m.is_match(a.labels.get(&m.name).map(String::as_str).unwrap_or("")));
                if !ok {
                    continue;
                }
                let labels: Labels = route
                    .cfg
                    .group_by
                    .iter()
                    .filter_map(|l| a.labels.get(l).map(|v| (l.clone(), v.clone())))
                    .collect();
                let key = format!("{ri}:{{}}/{}:{:?}", route.cfg.receiver, labels);
                let g = self.groups.entry(key).or_insert_with(|| GroupState {
                    receiver: route.cfg.receiver.clone(),
                    route: ri,
                    labels: labels.clone(),
                    next_flush: now + ms(route.cfg.group_wait_secs),
                    ..Default::default()
                });
                match g.alerts.get(&fp) {
                    // A resolved alert that was already notified and left: ignore
                    // the evaluator's retained copy.
                    None if a.state == State::Resolved => {}
                    _ => {
                        g.alerts.insert(fp.clone(), (tenant.to_string(), a.clone()));
                    }
                }
                if !route.cfg.continue_ {
                    break;
                }
            }
        }
    }

    /// The notifications due at `now`.
    pub fn flush(&mut self, now: i64) -> Vec<Delivery> {
        let mut out = Vec::new();
        let mut empty = Vec::new();
        for (key, g) in self.groups.iter_mut() {
            if now < g.next_flush {
                continue;
            }
            let route = &self.routes[g.route.min(self.routes.len() - 1)].cfg;
            let Some(recv) = self.receivers.get(&g.receiver) else {
                empty.push(key.clone());
                continue;
            };
            g.next_flush = now + ms(route.group_interval_secs);
            let firing: Vec<&(String, Alert)> = g
                .alerts
                .values()
                .filter(|(_, a)| a.state == State::Firing)
                .collect();
            let resolved: Vec<&(String, Alert)> = g
                .alerts
                .values()
                .filter(|(_, a)| a.state == State::Resolved)
                .collect();
            let set: BTreeSet<(String, bool)> = g
                .alerts
                .iter()
                .filter(|(_, (_, a))| a.state == State::Firing || recv.send_resolved)
                .map(|(fp, (_, a))| (fp.clone(), a.state == State::Firing))
                .collect();
            let changed = set != g.last_sent_set;
            let repeat = !firing.is_empty() && now - g.last_sent >= ms(route.repeat_interval_secs);
            let am_resend = recv.kind == ReceiverKind::Alertmanager && !firing.is_empty();
            if !set.is_empty() && (changed || repeat || am_resend) {
                let alerts: Vec<&(String, Alert)> = firing
                    .iter()
                    .chain(if recv.send_resolved {
                        resolved.iter()
                    } else {
                        [].iter()
                    })
                    .copied()
                    .collect();
                let body = match recv.kind {
                    ReceiverKind::Webhook => {
                        webhook_body(key, recv, g, &alerts, &self.external_url)
                    }
                    ReceiverKind::Alertmanager => alertmanager_body(
                        &alerts,
                        now,
                        route.group_interval_secs,
                        &self.external_url,
                    ),
                };
                out.push(Delivery {
                    receiver: g.receiver.clone(),
                    body,
                });
                g.last_sent = now;
                g.last_sent_set = set;
            }
            // Resolved alerts are notified once; then they leave the group.
            g.alerts.retain(|_, (_, a)| a.state != State::Resolved);
            g.last_sent_set.retain(|(_, firing)| *firing);
            if g.alerts.is_empty() {
                empty.push(key.clone());
            }
        }
        for k in empty {
            self.groups.remove(&k);
        }
        out
    }
}

fn generator_url(external_url: &str, a: &Alert) -> String {
    format!(
        "{}/api/v1/alerts?alertname={}",
        external_url.trim_end_matches('/'),
        a.labels.get("alertname").map(String::as_str).unwrap_or("")
    )
}

fn common(alerts: &[&(String, Alert)], f: impl Fn(&Alert) -> &Labels) -> Labels {
    let mut it = alerts.iter();
    let Some((_, first)) = it.next() else {
        return Labels::new();
    };
    let mut out = f(first).clone();
    for (_, a) in it {
        out.retain(|k, v| f(a).get(k) == Some(v));
    }
    out
}

/// The Alertmanager webhook v4 payload.
fn webhook_body(
    key: &str,
    recv: &ReceiverConfig,
    g: &GroupState,
    alerts: &[&(String, Alert)],
    external_url: &str,
) -> Vec<u8> {
    let firing = alerts.iter().any(|(_, a)| a.state == State::Firing);
    let list: Vec<Value> = alerts
        .iter()
        .map(|(_, a)| {
            json!({
                "status": if a.state == State::Firing { "firing" } else { "resolved" },
                "labels": a.labels,
                "annotations": a.annotations,
                "startsAt": rfc3339(a.fired_at.unwrap_or(a.active_at)),
                "endsAt": match a.resolved_at { Some(t) if a.state == State::Resolved => rfc3339(t), _ => "0001-01-01T00:00:00Z".into() },
                "generatorURL": generator_url(external_url, a),
                "fingerprint": crate::eval::fingerprint(&a.labels),
            })
        })
        .collect();
    let body = json!({
        "version": "4",
        "groupKey": key,
        "truncatedAlerts": 0,
        "status": if firing { "firing" } else { "resolved" },
        "receiver": recv.name,
        "groupLabels": g.labels,
        "commonLabels": common(alerts, |a| &a.labels),
        "commonAnnotations": common(alerts, |a| &a.annotations),
        "externalURL": external_url,
        "alerts": list,
    });
    body.to_string().into_bytes()
}

/// Alertmanager's `POST /api/v2/alerts` body. Firing alerts end a few group
/// intervals ahead, so Alertmanager resolves them if Sonde stops re-sending.
fn alertmanager_body(
    alerts: &[&(String, Alert)],
    now: i64,
    interval_secs: f64,
    external_url: &str,
) -> Vec<u8> {
    let hold = ms(interval_secs.max(60.0) * 4.0);
    let list: Vec<Value> = alerts
        .iter()
        .map(|(_, a)| {
            let ends = match (a.state, a.resolved_at) {
                (State::Resolved, Some(t)) => t,
                _ => now + hold,
            };
            json!({
                "labels": a.labels,
                "annotations": a.annotations,
                "startsAt": rfc3339(a.fired_at.unwrap_or(a.active_at)),
                "endsAt": rfc3339(ends),
                "generatorURL": generator_url(external_url, a),
            })
        })
        .collect();
    Value::Array(list).to_string().into_bytes()
}

/// `sha256=<hex>` HMAC of `body` with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(64);
    for b in tag {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("sha256={hex}")
}

/// Delivers one notification with retries; returns whether it got through.
pub async fn deliver(
    client: &reqwest::Client,
    recv: &ReceiverConfig,
    body: Vec<u8>,
    metrics: &NotifyMetrics,
) -> bool {
    let url = match recv.kind {
        ReceiverKind::Webhook => recv.url.clone(),
        ReceiverKind::Alertmanager => format!("{}/api/v2/alerts", recv.url.trim_end_matches('/')),
    };
    let mut backoff = recv.initial_backoff_secs.max(0.001);
    for attempt in 1..=recv.max_attempts.max(1) {
        let mut req = client
            .post(&url)
            .timeout(Duration::from_secs_f64(recv.timeout_secs.max(0.001)))
            .header("Content-Type", "application/json")
            .header("User-Agent", concat!("Sonde/", env!("CARGO_PKG_VERSION")));
        for (k, v) in &recv.headers {
            req = req.header(k, v);
        }
        if let Some(secret) = &recv.hmac_secret {
            req = req.header("X-Sonde-Signature", signature(secret, &body));
        }
        let outcome = req.body(body.clone()).send().await;
        let retryable = match outcome {
            Ok(resp) if resp.status().is_success() => {
                *metrics.sent.lock().entry(recv.name.clone()).or_insert(0) += 1;
                return true;
            }
            Ok(resp) => {
                let s = resp.status();
                tracing::warn!(receiver = %recv.name, status = %s, attempt, "notification refused");
                s.is_server_error() || s.as_u16() == 429
            }
            Err(e) => {
                tracing::warn!(receiver = %recv.name, error = %e, attempt, "notification failed");
                true
            }
        };
        if !retryable || attempt == recv.max_attempts {
            break;
        }
        metrics.retries.fetch_add(1, Ordering::Relaxed);
        let jitter = 0.8 + 0.4 * rand::random::<f64>();
        tokio::time::sleep(Duration::from_secs_f64(backoff * jitter)).await;
        backoff = (backoff * 2.0).min(recv.max_backoff_secs);
    }
    tracing::error!(receiver = %recv.name, "notification dropped after its retries");
    *metrics.failed.lock().entry(recv.name.clone()).or_insert(0) += 1;
    false
}

/// One delivery queue per receiver, each drained by its own task.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    queues: BTreeMap<String, tokio::sync::mpsc::UnboundedSender<Vec<u8>>>,
}

impl Dispatcher {
    pub fn start(receivers: &[ReceiverConfig], metrics: Arc<NotifyMetrics>) -> Dispatcher {
        let client = reqwest::Client::new();
        let mut queues = BTreeMap::new();
        for r in receivers {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
            let (client, recv, metrics) = (client.clone(), r.clone(), metrics.clone());
            tokio::spawn(async move {
                while let Some(body) = rx.recv().await {
                    deliver(&client, &recv, body, &metrics).await;
                }
            });
            queues.insert(r.name.clone(), tx);
        }
        Dispatcher { queues }
    }

    pub fn send(&self, d: Delivery) {
        if let Some(q) = self.queues.get(&d.receiver) {
            let _ = q.send(d.body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(name: &str, state: State, t: i64) -> Alert {
        Alert {
            labels: Labels::from([
                ("alertname".into(), name.into()),
                ("severity".into(), "page".into()),
            ]),
            annotations: Labels::from([("summary".into(), "s".into())]),
            state,
            value: 1.0,
            active_at: t,
            fired_at: Some(t),
            resolved_at: (state == State::Resolved).then_some(t),
            last_seen: t,
        }
    }

    fn router() -> Router {
        let recv: ReceiverConfig =
            serde_json::from_value(json!({"name": "hook", "url": "http://127.0.0.1:1/x"})).unwrap();
        let route: RouteConfig = serde_json::from_value(json!({
            "receiver": "hook", "matchers": ["severity=\"page\""],
            "group_wait_secs": 10, "group_interval_secs": 60, "repeat_interval_secs": 3600
        }))
        .unwrap();
        Router::new(vec![recv], vec![route], "http://sonde").unwrap()
    }

    #[test]
    fn group_wait_interval_repeat_and_resolved() {
        let mut r = router();
        r.update("t", &[alert("A", State::Firing, 0)], 0);
        assert!(r.flush(5_000).is_empty(), "group_wait");
        let d = r.flush(10_000);
        assert_eq!(d.len(), 1);
        let v: Value = serde_json::from_slice(&d[0].body).unwrap();
        assert_eq!(v["version"], "4");
        assert_eq!(v["status"], "firing");
        assert_eq!(v["groupLabels"]["alertname"], "A");
        assert_eq!(v["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
        // Unchanged: nothing at the next group_interval, until repeat_interval.
        r.update("t", &[alert("A", State::Firing, 0)], 70_000);
        assert!(r.flush(70_000).is_empty());
        r.update("t", &[alert("A", State::Firing, 0)], 3_610_000);
        assert_eq!(r.flush(3_610_000).len(), 1, "repeat_interval");
        // Resolved: notified once at the next flush, then the group is gone.
        r.update("t", &[alert("A", State::Resolved, 3_620_000)], 3_620_000);
        let d = r.flush(3_670_000);
        let v: Value = serde_json::from_slice(&d[0].body).unwrap();
        assert_eq!(v["status"], "resolved");
        assert!(r.groups.is_empty());
        r.update("t", &[alert("A", State::Resolved, 3_620_000)], 3_680_000);
        assert!(r.flush(3_800_000).is_empty(), "resolution sent once");
    }

    #[test]
    fn unmatched_alerts_go_nowhere_and_signatures_verify() {
        let mut r = router();
        let mut a = alert("B", State::Firing, 0);
        a.labels.insert("severity".into(), "info".into());
        r.update("t", &[a], 0);
        assert!(r.flush(100_000).is_empty());
        assert_eq!(
            signature("key", b"The quick brown fox jumps over the lazy dog"),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }
}
