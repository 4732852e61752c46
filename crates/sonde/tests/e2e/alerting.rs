//! Alerting end to end: data written over gRPC, rules evaluated by the real server,
//! notifications received by a real HTTP listener on loopback (and by a real
//! Alertmanager), with faults, a restart, and `sonde rules check`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use sonde_proto::v1::{FieldValues, Label, MetricKind, Series, TableWrite, WriteRequest};

use crate::harness::{TestServer, free_port, http_request, now_ms};

/// A request the hook received.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A real HTTP listener on loopback that records requests and answers with the
/// scripted status codes (then 200).
pub struct Hook {
    pub addr: String,
    pub got: Arc<Mutex<Vec<Received>>>,
    pub script: Arc<Mutex<VecDeque<u16>>>,
}

impl Hook {
    pub fn start() -> Hook {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let got = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let (g, s) = (got.clone(), script.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() || line.is_empty() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut headers = Vec::new();
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap();
                        }
                        headers.push((k.to_string(), v.trim().to_string()));
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                g.lock().unwrap().push(Received {
                    at: Instant::now(),
                    path,
                    headers,
                    body,
                });
                let status = s.lock().unwrap().pop_front().unwrap_or(200);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Hook { addr, got, script }
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the requests so far.
    pub fn wait_for(
        &self,
        what: &str,
        secs: u64,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.received();
            if pred(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; got {got:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn gauge(
    table: &str,
    labels: &[(&str, &str)],
    ts: Vec<i64>,
    v: Vec<f64>,
    kind: MetricKind,
) -> TableWrite {
    TableWrite {
        table: table.into(),
        kind: kind as i32,
        fields: vec![],
        series: vec![Series {
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            timestamps_ms: ts,
            fields: vec![FieldValues {
                f64: v,
                i64: vec![],
            }],
        }],
    }
}

async fn write(server: &TestServer, tables: Vec<TableWrite>) {
    let mut c = server.client().await;
    let resp = c
        .write(WriteRequest {
            tables,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.rejections.is_empty(), "{:?}", resp.rejections);
}

fn alert_names(r: &Received) -> Vec<String> {
    r.json()["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["labels"]["alertname"].as_str().unwrap().to_string())
        .collect()
}

fn verify_hmac(r: &Received, secret: &str) {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&r.body);
    let expect: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        r.header("X-Sonde-Signature"),
        Some(format!("sha256={expect}").as_str())
    );
}

const RULES: &str = r#"
groups:
  - name: llm
    interval: 1s
    rules:
      - alert: HighLatency
        expr: max by (model) (llm_latency_seconds) > 5
        labels:
          severity: page
        annotations:
          summary: "latency {{ $value }}s on {{ $labels.model }}"
      - alert: TokenBurst
        expr: sum by (model) (increase(tokens_total[5m])) > 1000
      - alert: InferenceSpike
        spike:
          expr: avg(inference_time_seconds)
          window: 20s
          baseline: 5m
          step: 5s
          factor: 3
          min_baseline: 0.1
      - record: model:llm_latency_seconds:max
        expr: max by (model) (llm_latency_seconds)
"#;

fn config(dir: &std::path::Path, rules: &str, receivers: &str) -> std::path::PathBuf {
    let rules_path = dir.join("rules.yml");
    std::fs::write(&rules_path, rules).unwrap();
    let cfg = dir.join("sonde.toml");
    std::fs::write(
        &cfg,
        format!(
            "[alerting]\nrule_files = [{:?}]\nexternal_url = \"http://sonde.test\"\n{receivers}",
            rules_path.display().to_string()
        ),
    )
    .unwrap();
    cfg
}

fn webhook(hook: &Hook, extra: &str) -> String {
    format!(
        "[[alerting.receivers]]\nname = \"hook\"\nurl = \"http://{}/hook\"\nhmac_secret = \"s3cret\"\ninitial_backoff_secs = 0.3\n{extra}\n[[alerting.routes]]\nreceiver = \"hook\"\ngroup_wait_secs = 1\ngroup_interval_secs = 1\nrepeat_interval_secs = 3600\n",
        hook.addr
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn threshold_increase_and_spike_rules_notify_a_webhook() {
    let hook = Hook::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), RULES, &webhook(&hook, ""));
    let server = TestServer::start_with(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let now = now_ms();
    // A quiet baseline for the spike rule: 5 minutes of ~1 s inference times.
    let ts: Vec<i64> = (1..=30).map(|i| now - 310_000 + i * 10_000).collect();
    let base: Vec<f64> = (0..30).map(|i| 1.0 + (i % 3) as f64 * 0.1).collect();
    write(
        &server,
        vec![
            gauge("inference_time_seconds", &[], ts, base, MetricKind::Gauge),
            gauge(
                "llm_latency_seconds",
                &[("model", "gpt-4o")],
                vec![now - 2_000],
                vec![1.0],
                MetricKind::Gauge,
            ),
        ],
    )
    .await;
    // Nothing fires on normal data.
    std::thread::sleep(Duration::from_millis(2_500));
    assert!(hook.received().is_empty(), "{:?}", hook.received());

    // Now all three conditions: latency 9 s, 5,000 tokens in a burst, 12 s inference.
    let t = now_ms();
    write(
        &server,
        vec![
            gauge(
                "llm_latency_seconds",
                &[("model", "gpt-4o")],
                vec![t],
                vec![9.0],
                MetricKind::Gauge,
            ),
            gauge(
                "tokens_total",
                &[("model", "gpt-4o")],
                vec![t - 60_000, t - 30_000, t],
                vec![100.0, 2_000.0, 5_100.0],
                MetricKind::Counter,
            ),
            gauge(
                "inference_time_seconds",
                &[],
                vec![t],
                vec![12.0],
                MetricKind::Gauge,
            ),
        ],
    )
    .await;
    let sent_at = Instant::now();
    let got = hook.wait_for("three firing alerts", 20, |g| {
        let mut names: Vec<String> = g.iter().flat_map(alert_names).collect();
        names.sort();
        names.dedup();
        names == ["HighLatency", "InferenceSpike", "TokenBurst"]
    });
    // Each within one interval (1 s) plus group_wait (1 s), plus delivery slack.
    for name in ["HighLatency", "InferenceSpike", "TokenBurst"] {
        let first = got
            .iter()
            .filter(|r| alert_names(r).iter().any(|n| n == name))
            .map(|r| r.at)
            .min()
            .unwrap();
        let took = first.duration_since(sent_at);
        assert!(took < Duration::from_millis(3_500), "{name} after {took:?}");
    }
    for r in &got {
        verify_hmac(r, "s3cret");
        let v = r.json();
        for key in [
            "version",
            "groupKey",
            "truncatedAlerts",
            "status",
            "receiver",
            "groupLabels",
            "commonLabels",
            "commonAnnotations",
            "externalURL",
            "alerts",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert_eq!(v["version"], "4");
        assert_eq!(v["receiver"], "hook");
        assert_eq!(v["status"], "firing");
        assert_eq!(v["externalURL"], "http://sonde.test");
        for a in v["alerts"].as_array().unwrap() {
            for key in [
                "status",
                "labels",
                "annotations",
                "startsAt",
                "endsAt",
                "generatorURL",
                "fingerprint",
            ] {
                assert!(a.get(key).is_some(), "{key} missing in {a}");
            }
            assert_eq!(a["status"], "firing");
        }
    }
    let latency = got
        .iter()
        .find(|r| alert_names(r) == ["HighLatency"])
        .unwrap()
        .json();
    assert_eq!(latency["alerts"][0]["labels"]["severity"], "page");
    assert_eq!(latency["alerts"][0]["labels"]["model"], "gpt-4o");
    assert_eq!(
        latency["alerts"][0]["annotations"]["summary"],
        "latency 9s on gpt-4o"
    );
    assert_eq!(latency["groupLabels"]["alertname"], "HighLatency");

    // The APIs list the rules and the firing alerts.
    let (_, rules) = server.http("GET", "/api/v1/rules");
    let rules: Value = serde_json::from_str(&rules).unwrap();
    let list = rules["data"]["groups"][0]["rules"].as_array().unwrap();
    assert_eq!(list.len(), 4);
    assert_eq!(list[0]["state"], "firing");
    assert_eq!(list[3]["type"], "recording");
    assert_eq!(list[3]["health"], "ok");
    let (_, alerts) = server.http("GET", "/api/v1/alerts");
    assert!(
        alerts.contains("\"HighLatency\"") && alerts.contains("\"firing\""),
        "{alerts}"
    );
    // The recording rule wrote its series back.
    let (_, rec) = server.http("GET", "/api/v1/query?query=model:llm_latency_seconds:max");
    assert!(rec.contains("\"gpt-4o\""), "{rec}");

    // Back to normal: a resolved notification follows.
    write(
        &server,
        vec![gauge(
            "llm_latency_seconds",
            &[("model", "gpt-4o")],
            vec![now_ms()],
            vec![1.0],
            MetricKind::Gauge,
        )],
    )
    .await;
    let got = hook.wait_for("resolved HighLatency", 15, |g| {
        g.iter()
            .any(|r| r.json()["status"] == "resolved" && alert_names(r) == ["HighLatency"])
    });
    let resolved = got
        .iter()
        .find(|r| r.json()["status"] == "resolved")
        .unwrap();
    verify_hmac(resolved, "s3cret");
    assert_ne!(
        resolved.json()["alerts"][0]["endsAt"],
        "0001-01-01T00:00:00Z"
    );
    // Each firing group was notified once (repeat_interval is an hour).
    let firing_latency = got
        .iter()
        .filter(|r| r.json()["status"] == "firing" && alert_names(r) == ["HighLatency"])
        .count();
    assert_eq!(firing_latency, 1);
    server.stop();
}

const ONE_RULE: &str = "groups:\n  - name: g\n    interval: 1s\n    rules:\n      - alert: Always\n        expr: vector(1) > 0\n";

#[test]
fn failing_receiver_gets_exactly_one_delivery_after_backoff() {
    let hook = Hook::start();
    hook.script.lock().unwrap().extend([500, 500, 500]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), ONE_RULE, &webhook(&hook, ""));
    let server = TestServer::start_with(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let got = hook.wait_for("4 attempts", 20, |g| g.len() >= 4);
    std::thread::sleep(Duration::from_secs(3));
    let got_after = hook.received();
    assert_eq!(
        got_after.len(),
        4,
        "three refusals, one success, nothing more: {got_after:?}"
    );
    assert!(
        got.iter().all(|r| r.body == got[0].body),
        "the same notification retried"
    );
    // Exponential backoff: 0.3 s, 0.6 s, 1.2 s (±20% jitter).
    let gaps: Vec<f64> = got
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at).as_secs_f64())
        .collect();
    assert!(
        gaps[0] >= 0.2 && gaps[1] >= 0.45 && gaps[2] >= 0.9,
        "{gaps:?}"
    );
    assert!(gaps[2] > gaps[0], "{gaps:?}");
    let (_, metrics) = server.http("GET", "/metrics");
    assert!(
        metrics.contains("sonde_notifications_total{receiver=\"hook\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sonde_notification_retries_total 3"),
        "{metrics}"
    );
    server.stop();
}

#[test]
fn dead_receiver_does_not_delay_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let dead = format!(
        "[[alerting.receivers]]\nname = \"dead\"\nurl = \"http://127.0.0.1:{}/x\"\ntimeout_secs = 5\ninitial_backoff_secs = 0.5\n[[alerting.routes]]\nreceiver = \"dead\"\ngroup_wait_secs = 0\ngroup_interval_secs = 1\nrepeat_interval_secs = 1\n",
        free_port()
    );
    let cfg = config(dir.path(), ONE_RULE, &dead);
    let server = TestServer::start_with(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let last_eval = || {
        let (_, r) = server.http("GET", "/api/v1/rules");
        let v: Value = serde_json::from_str(&r).unwrap();
        v["data"]["groups"][0]["lastEvaluation"]
            .as_str()
            .unwrap()
            .to_string()
    };
    std::thread::sleep(Duration::from_millis(1_500));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        seen.insert(last_eval());
        std::thread::sleep(Duration::from_millis(500));
    }
    // 6 s at a 1 s interval: about 6 distinct evaluations, none missed.
    assert!(seen.len() >= 5, "{seen:?}");
    let (_, metrics) = server.http("GET", "/metrics");
    assert!(
        metrics.contains("sonde_rule_group_iterations_missed_total 0"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("sonde_notification_retries_total 0\n"),
        "{metrics}"
    );
    server.stop();
}

#[test]
fn firing_alert_survives_a_restart_without_renotifying() {
    let hook = Hook::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), ONE_RULE, &webhook(&hook, ""));
    let args = ["--config", cfg.to_str().unwrap()];
    let server = TestServer::start_with(&dir.path().join("data"), &args);
    hook.wait_for("the firing notification", 15, |g| !g.is_empty());
    std::thread::sleep(Duration::from_millis(1_500));
    let alerts_before = {
        let (_, a) = server.http("GET", "/api/v1/alerts");
        serde_json::from_str::<Value>(&a).unwrap()["data"]["alerts"][0].clone()
    };
    server.stop();
    let server = TestServer::start_with(&dir.path().join("data"), &args);
    std::thread::sleep(Duration::from_secs(4));
    let (_, a) = server.http("GET", "/api/v1/alerts");
    let after = serde_json::from_str::<Value>(&a).unwrap()["data"]["alerts"][0].clone();
    assert_eq!(after["state"], "firing", "{after}");
    assert_eq!(
        after["activeAt"], alerts_before["activeAt"],
        "the same alert, not a new one"
    );
    assert_eq!(
        hook.received().len(),
        1,
        "not re-sent before repeat_interval: {:?}",
        hook.received()
    );
    server.stop();
}

#[test]
fn real_alertmanager_receives_and_delivers() {
    let hook = Hook::start();
    let dir = tempfile::tempdir().unwrap();
    let am_port = free_port();
    let am_cfg = dir.path().join("am.yml");
    std::fs::write(
        &am_cfg,
        format!(
            "route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 1s\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: http://{}/from-am\n",
            hook.addr
        ),
    )
    .unwrap();
    let mut am = Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", am_cfg.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("am").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-alertmanager runs (.ci/run installs the Debian package)");
    let am_addr = format!("127.0.0.1:{am_port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(std::net::TcpStream::connect(&am_addr).is_ok()
        && http_request(&am_addr, "GET", "/-/ready", &[], b"").0 == 200)
    {
        assert!(Instant::now() < deadline, "alertmanager not ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    let receivers = format!(
        "[[alerting.receivers]]\nname = \"am\"\ntype = \"alertmanager\"\nurl = \"http://{am_addr}\"\n[[alerting.routes]]\nreceiver = \"am\"\ngroup_wait_secs = 0\ngroup_interval_secs = 1\n"
    );
    let cfg = config(dir.path(), ONE_RULE, &receivers);
    let server = TestServer::start_with(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let got = hook.wait_for("Alertmanager's webhook", 30, |g| !g.is_empty());
    let v = got[0].json();
    assert_eq!(got[0].path, "/from-am");
    assert_eq!(v["receiver"], "hook");
    assert_eq!(v["status"], "firing");
    assert_eq!(v["alerts"][0]["labels"]["alertname"], "Always");
    assert_eq!(
        v["alerts"][0]["generatorURL"],
        "http://sonde.test/api/v1/alerts?alertname=Always"
    );
    server.stop();
    let _ = am.kill();
    let _ = am.wait();
}

#[test]
fn rules_check_accepts_valid_and_rejects_broken_files() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yml");
    std::fs::write(&good, RULES).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args(["rules", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 4 rules found"),
        "{out:?}"
    );
    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "groups:\n  - name: g\n    rules:\n      - alert: X\n        expr: sum(rate(x[5m])\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args(["rules", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:5:", bad.display())), "{err}");
    // A broken SQL rule is caught offline too.
    std::fs::write(
        &bad,
        "groups:\n  - name: g\n    rules:\n      - alert: X\n        sql: DROP TABLE llm_calls\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args(["rules", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(":4: sql:"),
        "{out:?}"
    );
}

#[test]
fn reload_keeps_rules_in_force_on_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), ONE_RULE, "");
    let server = TestServer::start_with(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    std::fs::write(
        dir.path().join("rules.yml"),
        "groups:\n  - name: g\n    rules:\n      - alert: X\n        expr: (\n",
    )
    .unwrap();
    let (code, body) = server.http("POST", "/-/reload");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("rules.yml:5:"), "{body}");
    let (_, rules) = server.http("GET", "/api/v1/rules");
    assert!(rules.contains("\"Always\""), "the old rules stay: {rules}");
    std::fs::write(dir.path().join("rules.yml"), RULES).unwrap();
    let (code, body) = server.http("POST", "/-/reload");
    assert_eq!(code, 200, "{body}");
    let (_, rules) = server.http("GET", "/api/v1/rules");
    assert!(
        rules.contains("\"InferenceSpike\"") && !rules.contains("\"Always\""),
        "{rules}"
    );
    // SIGHUP reloads too.
    std::fs::write(dir.path().join("rules.yml"), ONE_RULE).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, rules) = server.http("GET", "/api/v1/rules");
        if rules.contains("\"Always\"") && !rules.contains("\"InferenceSpike\"") {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload: {rules}");
        std::thread::sleep(Duration::from_millis(100));
    }
    server.stop();
}
