#!/usr/bin/env python3
"""Rollup tiers: bytes on disk per tier and a 30-day dashboard from rollups vs raw.

Backfills the standard dataset (default 1,000 series, one sample every 15 s, 30 days:
about 170 M samples) into a fresh Sonde (release build) with raw retention long
enough to hold it, flushes, compacts and builds the rollups, then times two dashboard
queries over the whole span at a 1 h step — cost per model per hour and p99 latency
per model per hour — answered from the 1 h tier and with `rollups=false` (raw
samples), median of --runs, and checks both answers agree.

Usage: benches/rollups/run.py [--series 1000] [--days 30] [--runs 5]
           [--sonde target/release/sonde] [--json out.json] [--keep DIR]
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

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "benches"))
from common import http, peak_rss_mib, start_sonde  # noqa: E402

DAY = 86_400_000
HOUR = 3_600_000
QUERIES = {
    "cost per model per hour": "sum by (model) (increase(llm_cost_usd_total[1h]))",
    "p99 latency per model per hour":
        "histogram_quantile(0.99, sum by (le, model) (rate(llm_request_duration_seconds_bucket[1h])))",
}


def du(path, pattern=None):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            if pattern is None or pattern(f):
                total += os.path.getsize(os.path.join(d, f))
    return total


def settle(base, data):
    """Flushes, compacts and builds the rollups; returns (seconds, maintenance answer,
    raw bytes, {tier ms: bytes})."""
    http(f"{base}/api/v1/admin/flush", b"")
    t = time.time()
    maint = json.loads(http(f"{base}/api/v1/admin/compact", b""))["data"]
    maint_s = time.time() - t
    print(f"compaction + rollups: {maint_s:.1f} s {maint}", flush=True)
    raw = du(os.path.join(data, "segments"), lambda f: "-r" not in f)
    tiers = {t: du(os.path.join(data, "segments"), lambda f, t=t: f"-r{t}." in f)
             for t in (60_000, 3_600_000)}
    return maint_s, maint, raw, tiers


def query(base, q, start, end, step, rollups):
    params = {"query": q, "start": start / 1000, "end": end / 1000, "step": step / 1000}
    if not rollups:
        params["rollups"] = "false"
    t = time.perf_counter()
    body = http(f"{base}/api/v1/query_range", urllib.parse.urlencode(params).encode())
    return time.perf_counter() - t, json.loads(body)


def same(a, b):
    ra = {json.dumps(s["metric"], sort_keys=True): s["values"] for s in a["data"]["result"]}
    rb = {json.dumps(s["metric"], sort_keys=True): s["values"] for s in b["data"]["result"]}
    if ra.keys() != rb.keys():
        return False
    for k in ra:
        if len(ra[k]) != len(rb[k]):
            return False
        for (t1, v1), (t2, v2) in zip(ra[k], rb[k]):
            x, y = float(v1), float(v2)
            if t1 != t2 or not (x == y or abs(x - y) <= 1e-9 * max(abs(x), abs(y))
                                or (x != x and y != y)):
                return False
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sonde", default=os.path.join(ROOT, "target/release/sonde"))
    ap.add_argument("--json")
    ap.add_argument("--keep", help="data directory to load into and keep; reused (not "
                    "reloaded) when it already holds data")
    a = ap.parse_args()

    data = a.keep or tempfile.mkdtemp(prefix="sonde-rollups-")
    reuse = a.keep is not None and os.path.exists(os.path.join(data, "MANIFEST"))
    now = int(time.time() * 1000)
    day0 = (now // DAY - a.days) * DAY
    samples = a.days * DAY // 15_000
    proc, base, grpc = start_sonde(
        a.sonde, data, "--fsync", "100", "--retention", f"{a.days + 30}d",
        "--promql-max-samples", "2000000000", "--promql-timeout-secs", "600")
    try:
        t = time.time()
        if reuse:
            # Loaded by an earlier run: its first day starts the span.
            day0 = min(int(d) for d in os.listdir(os.path.join(data, "segments", "default"))) * DAY
            load_s = 0.0
        else:
            out = subprocess.run(
                [a.sonde, "load", "--target", f"http://{grpc}", "--series", str(a.series),
                 "--samples", str(samples), "--start-ms", str(day0), "--batch", "50000",
                 "--quiet"], capture_output=True, text=True, check=True).stdout
            load_s = time.time() - t
            print(out.strip(), f"({load_s:.0f} s)", flush=True)
        maint_s, _, raw, tiers = settle(base, data)
        # The dataset rounds the series count up to whole groups of 15.
        total_samples = -(-a.series // 15) * 15 * samples
        start = day0 + HOUR
        end = day0 + a.days * DAY
        rows = []
        for name, q in QUERIES.items():
            times = {}
            answers = {}
            for rollups in (True, False):
                ts = []
                for _ in range(a.runs if rollups else max(1, a.runs // 2)):
                    dt, ans = query(base, q, start, end, HOUR, rollups)
                    ts.append(dt)
                times[rollups] = statistics.median(ts)
                answers[rollups] = ans
            ok = same(answers[True], answers[False])
            rows.append({"query": name, "rollup_ms": times[True] * 1000,
                         "raw_ms": times[False] * 1000,
                         "speedup": times[False] / times[True], "same_answer": ok})
        rss = peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
        if a.keep is None:
            shutil.rmtree(data, ignore_errors=True)

    print(f"\n{a.series} series × {a.days} days ({total_samples/1e6:.0f} M samples), "
          f"load {load_s:.0f} s, compaction + rollup build {maint_s:.0f} s, peak RSS {rss} MiB\n")
    print("| tier | bytes on disk | bytes/raw sample |")
    print("|---|---:|---:|")
    print(f"| raw | {raw/1e6:.1f} MB | {raw/total_samples:.3f} |")
    for t, b in tiers.items():
        print(f"| {t//60000} m | {b/1e6:.1f} MB | {b/total_samples:.3f} |")
    print(f"\n| query ({a.days} d, step 1 h) | from 1 h tier | from raw | speed-up | same answer |")
    print("|---|---:|---:|---:|:-:|")
    for r in rows:
        print(f"| {r['query']} | {r['rollup_ms']:.1f} ms | {r['raw_ms']:.0f} ms | "
              f"{r['speedup']:.0f}× | {'yes' if r['same_answer'] else 'NO'} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"series": a.series, "days": a.days, "samples": total_samples,
                       "reused_data": reuse,
                       "load_s": load_s, "maintenance_s": maint_s, "raw_bytes": raw,
                       "tier_bytes": tiers, "queries": rows, "peak_rss_mib": rss}, f, indent=1)
    if not all(r["same_answer"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
