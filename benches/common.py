"""Helpers the benchmark scripts share: HTTP to the systems under test, waiting for
them to come up, and reading a process's peak RSS and CPU time."""

import os
import socket
import subprocess
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def http(url, data=None):
    """GET (or POST `data`, form-encoded) and return the body."""
    req = urllib.request.Request(url, data=data)
    if data is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    with urllib.request.urlopen(req, timeout=600) as r:
        return r.read()


def wait(url, seconds=60):
    """Waits until `url` answers."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            http(url)
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def peak_rss_mib(pid):
    """The process's peak resident set (VmHWM), MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) // 1024
    return 0


def cpu_seconds(pid):
    """User + system CPU time of the process so far."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def free_port():
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sonde(sonde, data, *args):
    """Starts `sonde serve` on `data` with free loopback ports and `args`, waits
    until it is ready; returns (process, http base URL, gRPC address)."""
    port = free_port()
    proc = subprocess.Popen(
        [sonde, "serve", "--data-dir", data, "--http-addr", f"127.0.0.1:{port}",
         "--grpc-addr", f"127.0.0.1:{free_port()}", *args],
        env={**os.environ, "SONDE_LOG": "warn"}, stdout=subprocess.PIPE)
    line = proc.stdout.readline().decode()
    grpc = [w.split("=", 1)[1] for w in line.split() if w.startswith("grpc=")][0]
    base = f"http://127.0.0.1:{port}"
    wait(f"{base}/readyz")
    return proc, base, grpc

