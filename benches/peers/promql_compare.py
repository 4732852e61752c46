#!/usr/bin/env python3
"""PromQL dashboard latency side by side: Sonde, VictoriaMetrics and Prometheus
holding the same standard dataset (loaded with `sonde load --protocol remote-write`
and identical timestamps), each answering six dashboard queries as `query_range`
(step 60 s over the dataset's hour). VictoriaMetrics runs with its response cache
off (-search.disableCache); Sonde's head is flushed to Parquet segments first, so
Sonde answers from persisted data. Also checks that the three agree.

Usage: benches/peers/promql_compare.py [--series 10000] [--runs 5] [--json FILE]
Peers come from Debian packages (installed if missing).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

QUERIES = [
    "sum by (model) (rate(llm_tokens_total[5m]))",
    "sum by (model, tenant) (rate(llm_cost_usd_total[5m])) * 3600",
    "histogram_quantile(0.95, sum by (le, model) (rate(llm_request_duration_seconds_bucket[5m])))",
    "sum by (provider) (rate(llm_request_duration_seconds_count[5m]))",
    "avg by (model) (llm_ttft_seconds)",
    "topk(5, sum by (tenant) (increase(llm_tokens_total{token_type=\"output\"}[10m])))",
]

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "benches"))
from common import http, wait, peak_rss_mib as peak_rss  # noqa: E402








def query_range(base, q, start, end):
    body = urllib.parse.urlencode(
        {"query": q, "start": start, "end": end, "step": "60"}
    ).encode()
    # The server's latency: until the whole answer is received (parsing it in
    # Python is the client's cost, the same for every system, and is left out).
    t0 = time.perf_counter()
    raw = http(base + "/api/v1/query_range", body)
    ms = (time.perf_counter() - t0) * 1000.0
    return ms, json.loads(raw)


def summary(out):
    """Series count and a checksum of the values, for a rough agreement check."""
    res = out["data"]["result"]
    total = 0.0
    for s in res:
        for _, v in s["values"]:
            f = float(v)
            if f == f and abs(f) != float("inf"):
                total += f
    return len(res), total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    for p in ("victoria-metrics", "prometheus"):
        if shutil.which(p) is None:
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "victoria-metrics", "prometheus"],
                check=True,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "sonde"], cwd=ROOT, check=True)
    sonde = os.path.join(ROOT, "target", "release", "sonde")
    work = tempfile.mkdtemp()
    samples = 240
    start_ms = (int(time.time()) // 60 * 60 - samples * 15 - 60) * 1000
    q_start = start_ms / 1000 + 300
    q_end = start_ms / 1000 + samples * 15
    systems = {
        "Sonde": (
            [sonde, "serve", "--data-dir", f"{work}/sonde", "--grpc-addr", "127.0.0.1:24317",
             "--http-addr", "127.0.0.1:24318"],
            "http://127.0.0.1:24318", "/healthz", "/api/v1/admin/flush",
        ),
        "VictoriaMetrics": (
            ["victoria-metrics", f"-storageDataPath={work}/vm", "-httpListenAddr=127.0.0.1:28428",
             "-retentionPeriod=100y", "-search.disableCache", "-search.latencyOffset=0s"],
            "http://127.0.0.1:28428", "/health", "/internal/force_flush",
        ),
        "Prometheus": (
            ["prometheus", "--config.file=/dev/null", f"--storage.tsdb.path={work}/prom",
             "--web.listen-address=127.0.0.1:29090", "--web.enable-remote-write-receiver",
             "--storage.tsdb.retention.time=100y"],
            "http://127.0.0.1:29090", "/-/ready", None,
        ),
    }
    results = {}
    try:
        for name, (cmd, base, health, flush) in systems.items():
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait(base + health)
                subprocess.run(
                    [sonde, "load", "--quiet", "--protocol", "remote-write", "--target",
                     base + "/api/v1/write", "--series", str(args.series), "--samples",
                     str(samples), "--start-ms", str(start_ms)],
                    check=True, stdout=subprocess.DEVNULL,
                )
                if flush:
                    if name == "Sonde":
                        http(base + flush, b"")
                    else:
                        http(base + flush)
                time.sleep(2)
                rows = []
                for q in QUERIES:
                    times = []
                    out = None
                    for _ in range(args.runs):
                        ms, out = query_range(base, q, q_start, q_end)
                        times.append(ms)
                    rows.append({"query": q, "median_ms": statistics.median(times),
                                 "min_ms": min(times), "summary": summary(out)})
                results[name] = {"queries": rows, "peak_rss_mib": peak_rss(proc.pid)}
            finally:
                proc.terminate()
                proc.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    names = list(results)
    print(f"PromQL query_range, {args.series} series x {samples} samples (15 s), "
          f"step 60 s over 55 min, median of {args.runs}\n")
    print("| query | " + " | ".join(f"{n} ms" for n in names) + " | Sonde / VM |")
    print("|---|" + "---|" * (len(names) + 1))
    for i, q in enumerate(QUERIES):
        cells = [f"{results[n]['queries'][i]['median_ms']:.1f}" for n in names]
        ratio = results["Sonde"]["queries"][i]["median_ms"] / results["VictoriaMetrics"]["queries"][i]["median_ms"]
        print(f"| `{q}` | " + " | ".join(cells) + f" | {ratio:.2f} |")
    print("| peak RSS MiB | " + " | ".join(str(results[n]["peak_rss_mib"]) for n in names) + " | |")
    for i, q in enumerate(QUERIES):
        sums = {n: results[n]["queries"][i]["summary"] for n in names}
        ref = sums["Prometheus"]
        for n, s in sums.items():
            same = s[0] == ref[0] and abs(s[1] - ref[1]) <= 1e-6 * max(1.0, abs(ref[1]))
            if not same:
                print(f"note: {n} differs from Prometheus on {q}: {s} vs {ref}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"series": args.series, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
