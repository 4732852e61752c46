//! `TestServer`: the real `sonde serve` process on port 0, stopped (SIGTERM) on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sonde_proto::v1::ingest_client::IngestClient;
use tonic::transport::Channel;

pub struct TestServer {
    child: Option<Child>,
    pub grpc: String,
    pub http: String,
}

/// `sonde serve` on `dir` with free ports and `extra` arguments.
fn serve_command(dir: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sonde"));
    c.args([
        "serve",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ])
    .arg("--data-dir")
    .arg(dir)
    .args(extra);
    c
}

/// Runs `sonde serve` on `dir` with `extra` arguments where it must fail to start;
/// its stderr.
pub fn serve_fails(dir: &Path, extra: &[&str]) -> String {
    let out = serve_command(dir, extra).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "sonde serve started: {err}");
    err
}

/// A form-encoded POST to `path` (how Grafana posts queries); (status, body).
pub fn post_form(server: &TestServer, path: &str, pairs: &[(&str, &str)]) -> (u16, String) {
    let (status, body) = http_request(
        &server.http,
        "POST",
        path,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form(pairs).as_bytes(),
    );
    (status, String::from_utf8_lossy(&body).into_owned())
}

impl TestServer {
    /// Starts `sonde serve` on `dir` with free ports and waits until it listens.
    pub fn start(dir: &Path) -> TestServer {
        Self::start_with(dir, &[])
    }

    /// Like [`TestServer::start`], with extra `sonde serve` arguments.
    pub fn start_with(dir: &Path, extra: &[&str]) -> TestServer {
        let mut child = serve_command(dir, extra)
            .env("SONDE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sonde starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .to_string()
        };
        TestServer {
            grpc: field("grpc="),
            http: field("http="),
            child: Some(child),
        }
    }

    pub async fn client(&self) -> IngestClient<Channel> {
        IngestClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("gRPC connects")
    }

    /// A minimal HTTP/1.1 request; returns (status, body).
    pub fn http(&self, method: &str, path: &str) -> (u16, String) {
        self.http_body(method, path, "text/plain", b"")
    }

    /// A minimal HTTP/1.1 request with a body; returns (status, body).
    pub fn http_body(&self, method: &str, path: &str, ctype: &str, body: &[u8]) -> (u16, String) {
        self.http_auth(method, path, ctype, body, None)
    }

    /// A minimal HTTP/1.1 request with a body and an optional bearer token.
    pub fn http_auth(
        &self,
        method: &str,
        path: &str,
        ctype: &str,
        body: &[u8],
        token: Option<&str>,
    ) -> (u16, String) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", ctype)];
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        let (status, body) = self.request(method, path, &headers, body);
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// A minimal HTTP/1.1 request with any headers; returns (status, raw body).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        http_request(&self.http, method, path, headers, body)
    }

    /// `sonde load --quiet --target http://<grpc> ARGS…`; must succeed; its stdout.
    pub fn load(&self, args: &[&str]) -> String {
        let target = format!("http://{}", self.grpc);
        let mut all = vec!["--target", target.as_str()];
        all.extend_from_slice(args);
        load(&all)
    }

    /// The server's process id (to send it signals).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, and the exit status must be success.
    pub fn stop(mut self) {
        let child = self.child.take().unwrap();
        terminate(child, true);
    }
}

fn terminate(mut child: Child, must_succeed: bool) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            if must_succeed {
                assert!(status.success(), "sonde exited with {status}");
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("sonde did not stop within 5 s of SIGTERM");
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child, false);
        }
    }
}

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Opens the data directory of a stopped server, to check what it stored.
pub fn reopen(dir: &Path) -> sonde_storage::Storage {
    let mut c = sonde_storage::Config::new(dir);
    c.background_flush = false;
    c.compaction.enabled = false;
    c.retention.raw = None;
    sonde_storage::Storage::open(c).unwrap()
}

/// Rows stored in `table` of `tenant`, all time.
pub fn rows(s: &sonde_storage::Storage, tenant: &str, table: &str) -> usize {
    s.scan(
        tenant,
        &sonde_storage::ScanRequest::new(table, i64::MIN, i64::MAX),
    )
    .unwrap()
    .stats
    .rows
}

/// `sonde load --quiet ARGS…`; must succeed; its stdout.
pub fn load(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sonde"))
        .arg("load")
        .arg("--quiet")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sonde load failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A minimal HTTP/1.1 request to `addr` with any headers; returns (status, raw body).
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body: ignore write errors.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let status = String::from_utf8_lossy(&raw[9..12]).parse().unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |i| i + 4);
    let mut body = raw[split..].to_vec();
    let chunked = String::from_utf8_lossy(&raw[..split])
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    if chunked {
        body = dechunk(&body);
    }
    (status, body)
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// A loopback port that was free a moment ago (for servers that cannot bind port 0
/// and report it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `application/x-www-form-urlencoded` text of `pairs` (how Grafana posts queries).
pub fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// One remote_write series: `name{labels}` (labels sorted, as senders send them).
pub fn rw_series(
    name: &str,
    labels: &[(&str, &str)],
    samples: &[(i64, f64)],
) -> sonde_proto::prometheus::TimeSeries {
    use sonde_proto::prometheus::{Label, Sample, TimeSeries};
    let mut l = vec![Label {
        name: "__name__".into(),
        value: name.into(),
    }];
    l.extend(labels.iter().map(|(n, v)| Label {
        name: n.to_string(),
        value: v.to_string(),
    }));
    l.sort_by(|a, b| a.name.cmp(&b.name));
    TimeSeries {
        labels: l,
        samples: samples
            .iter()
            .map(|&(timestamp, value)| Sample { value, timestamp })
            .collect(),
        ..Default::default()
    }
}

/// A remote_write request body (protobuf, snappy block format).
pub fn rw_body(req: &sonde_proto::prometheus::WriteRequest) -> Vec<u8> {
    use prost::Message;
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap()
}
