//! Segments on an object store: the real server against a real S3 API (moto's S3
//! server from PyPI on loopback; `.ci/run` installs it). Flushed data lives in the
//! bucket (a server with an empty local directory reads it back), unflushed data
//! survives SIGKILL through the local WAL, compaction deletes replaced objects, and a
//! second server on the same prefix loses the conditional manifest PUT instead of
//! overwriting the first one's manifest.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sonde_proto::prometheus::WriteRequest;

use crate::harness::{
    TestServer, free_port, http_request, now_ms, post_form, rw_body, rw_series, serve_fails,
};

const BUCKET: &str = "sonde-e2e";

/// moto's S3 server on a free loopback port, killed on drop.
struct S3 {
    child: Child,
    addr: String,
}

impl S3 {
    fn start() -> S3 {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs (moto[server] is installed by .ci/run)");
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "moto S3 server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let s3 = S3 { child, addr };
        let (status, body) = http_request(&s3.addr, "PUT", &format!("/{BUCKET}"), &[], b"");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        s3
    }

    /// Keys under `prefix/` (ListObjectsV2; fewer than 1,000 here).
    fn keys(&self, prefix: &str) -> Vec<String> {
        let (status, body) = http_request(
            &self.addr,
            "GET",
            &format!("/{BUCKET}?list-type=2&prefix={prefix}/"),
            &[],
            b"",
        );
        assert_eq!(status, 200);
        let xml = String::from_utf8_lossy(&body).into_owned();
        xml.split("<Key>")
            .skip(1)
            .map(|s| s.split("</Key>").next().unwrap().to_string())
            .collect()
    }

    /// A config file pointing a server at `prefix` in the bucket.
    fn config(&self, dir: &Path, prefix: &str) -> std::path::PathBuf {
        let path = dir.join(format!("{prefix}.toml"));
        std::fs::write(
            &path,
            format!(
                "[object_store]\nurl = \"s3://{BUCKET}/{prefix}\"\n\
                 endpoint = \"http://{}\"\nregion = \"us-east-1\"\n\
                 access_key_id = \"test\"\nsecret_access_key = \"test\"\n\
                 allow_http = true\ncache_mb = 16\n",
                self.addr
            ),
        )
        .unwrap();
        path
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, config: &Path) -> TestServer {
    TestServer::start_with(
        dir,
        &[
            "--config",
            config.to_str().unwrap(),
            "--compaction-interval-secs",
            "3600",
        ],
    )
}

const DAY: i64 = 86_400_000;

/// Yesterday 12:00 UTC: every sample of these tests is within an hour before it, so
/// all of them fall in one day whenever the test runs.
fn base() -> i64 {
    now_ms() / DAY * DAY - DAY / 2
}

/// Writes `n` samples (one a second, ending `offset` ms before [`base`]) to each of 3
/// series of `metric`.
fn write(server: &TestServer, metric: &str, n: i64, offset: i64) {
    let end = base() - offset;
    let ts = (0..3)
        .map(|i| {
            let samples: Vec<(i64, f64)> =
                (0..n).map(|k| (end - (n - k) * 1000, k as f64)).collect();
            rw_series(metric, &[("job", &format!("j{i}"))], &samples)
        })
        .collect();
    let req = WriteRequest {
        timeseries: ts,
        metadata: vec![],
    };
    let (status, body) = server.http_body(
        "POST",
        "/api/v1/write",
        "application/x-protobuf",
        &rw_body(&req),
    );
    assert_eq!(status, 204, "{body}");
}

/// Samples of `metric` in the 2 hours before [`base`].
fn count(server: &TestServer, metric: &str) -> f64 {
    let q = format!("sum(count_over_time({metric}[2h]))");
    let time = format!("{}", base() as f64 / 1000.0);
    let (status, body) = post_form(server, "/api/v1/query", &[("query", &q), ("time", &time)]);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["data"]["result"]
        .as_array()
        .unwrap()
        .first()
        .map_or(0.0, |s| s["value"][1].as_str().unwrap().parse().unwrap())
}

fn flush(server: &TestServer) -> (u16, String) {
    server.http("POST", "/api/v1/admin/flush")
}

fn local_files(dir: &Path, ext: &str) -> usize {
    fn walk(d: &Path, ext: &str, n: &mut usize) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, ext, n);
            } else if p.extension().is_some_and(|x| x == ext) || p.ends_with(ext) {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(dir, ext, &mut n);
    n
}

#[test]
fn segments_on_s3_survive_restart_kill_and_compaction() {
    let s3 = S3::start();
    let tmp = tempfile::tempdir().unwrap();
    let config = s3.config(tmp.path(), "prod");
    let dir = tmp.path().join("data");

    let server = start(&dir, &config);
    // Four flushes of 100 samples × 3 series: four segments of today in the bucket.
    for i in 0..4 {
        write(&server, "obj_metric", 100, i * 100_000);
        let (status, body) = flush(&server);
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(count(&server, "obj_metric"), 1200.0);
    let keys = s3.keys("prod");
    let raw = |keys: &[String], ext: &str| {
        keys.iter()
            .filter(|k| k.starts_with("prod/segments/") && k.ends_with(ext) && !k.contains("-r"))
            .count()
    };
    assert_eq!(raw(&keys, ".parquet"), 4, "{keys:?}");
    assert_eq!(raw(&keys, ".sidx"), 4, "{keys:?}");
    assert!(keys.contains(&"prod/MANIFEST".to_string()), "{keys:?}");
    assert!(
        keys.iter().any(|k| k.starts_with("prod/catalog/")),
        "{keys:?}"
    );
    assert!(keys.contains(&"prod/dedup.keys".to_string()), "{keys:?}");
    // Locally: the WAL and nothing else of the store.
    assert_eq!(local_files(&dir, "parquet"), 0);
    assert!(!dir.join("MANIFEST").exists());
    assert!(dir.join("wal").is_dir());

    // A second server cannot open the same data directory.
    let err = serve_fails(&dir, &[]);
    assert!(err.contains("in use by another process"), "{err}");

    // Compaction merges the four segments and deletes the replaced objects.
    let (status, body) = server.http("POST", "/api/v1/admin/compact");
    assert_eq!(status, 200, "{body}");
    let keys = s3.keys("prod");
    let left = raw(&keys, ".parquet");
    assert!(left < 4, "compaction left {left} segment objects: {keys:?}");
    assert_eq!(raw(&keys, ".sidx"), left, "{keys:?}");
    assert_eq!(count(&server, "obj_metric"), 1200.0);

    // Unflushed writes live in the local WAL: SIGKILL, restart, all rows there.
    write(&server, "obj_wal", 50, 0);
    Command::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status()
        .unwrap();
    drop(server);
    // An object no manifest names, written a moment ago (as another server's flush in
    // progress would be): opening leaves it alone (only orphans older than an hour go).
    let day = base() / DAY;
    let stray = format!("/{BUCKET}/prod/segments/default/{day}/9999999999999999.parquet");
    assert_eq!(
        http_request(&s3.addr, "PUT", &stray, &[], b"partial").0,
        200
    );
    let server = start(&dir, &config);
    assert!(
        s3.keys("prod")
            .contains(&stray[BUCKET.len() + 2..].to_string())
    );
    assert_eq!(count(&server, "obj_metric"), 1200.0);
    assert_eq!(count(&server, "obj_wal"), 150.0);
    let (status, _) = flush(&server);
    assert_eq!(status, 200);
    server.stop();

    // The bucket is the store: a server with an empty local directory reads it all,
    // label values included (the catalogs are in the bucket too).
    let fresh = tmp.path().join("fresh");
    let server = start(&fresh, &config);
    assert_eq!(count(&server, "obj_metric"), 1200.0);
    assert_eq!(count(&server, "obj_wal"), 150.0);
    let (status, body) = server.http("GET", "/api/v1/label/job/values");
    assert_eq!(status, 200);
    assert!(body.contains("\"j0\"") && body.contains("\"j2\""), "{body}");
    server.stop();
}

#[test]
fn two_servers_on_one_prefix_cannot_overwrite_each_other() {
    let s3 = S3::start();
    let tmp = tempfile::tempdir().unwrap();
    let config = s3.config(tmp.path(), "shared");

    let a = start(&tmp.path().join("a"), &config);
    write(&a, "from_a", 10, 0);
    assert_eq!(flush(&a).0, 200);
    // B opens after A's first manifest and commits its own.
    let b = start(&tmp.path().join("b"), &config);
    assert_eq!(count(&b, "from_a"), 30.0, "B sees A's first flush");
    write(&b, "from_b", 10, 0);
    assert_eq!(
        count(&b, "from_a"),
        30.0,
        "B sees A's first flush after a write"
    );
    assert_eq!(flush(&b).0, 200);
    assert_eq!(
        count(&b, "from_a"),
        30.0,
        "B sees A's first flush after its flush"
    );
    // A's manifest version is now stale: its conditional PUT loses.
    write(&a, "from_a", 10, 100_000);
    let (status, body) = flush(&a);
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("replaced by another writer"), "{body}");
    // Nothing of B's commit was lost.
    assert_eq!(count(&b, "from_b"), 30.0);
    assert_eq!(count(&b, "from_a"), 30.0);
    drop(a);
    b.stop();
    let c = start(&tmp.path().join("c"), &config);
    assert_eq!(count(&c, "from_b"), 30.0);
    assert_eq!(count(&c, "from_a"), 30.0);
    c.stop();
}

#[test]
fn bad_object_store_settings_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| serve_fails(&tmp.path().join("d"), extra);
    let err = run(&["--object-store", "gs://bucket/p"]);
    assert!(err.contains("only s3:// URLs"), "{err}");
    // Nothing listens on this port: the bucket cannot be listed, and the server says
    // so at start instead of at its first flush.
    let cfg = tmp.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[object_store]\nurl = \"s3://b/p\"\nendpoint = \"http://127.0.0.1:{}\"\n\
             allow_http = true\naccess_key_id = \"x\"\nsecret_access_key = \"y\"\n\
             region = \"us-east-1\"\n",
            free_port()
        ),
    )
    .unwrap();
    let err = run(&["--config", cfg.to_str().unwrap()]);
    assert!(err.contains("cannot list the bucket"), "{err}");
    std::fs::write(
        &cfg,
        "[object_store]\nurl = \"s3://b/p\"\nno_such_option = \"1\"\n",
    )
    .unwrap();
    let err = run(&["--config", cfg.to_str().unwrap()]);
    assert!(err.contains("object_store.no_such_option"), "{err}");
}
