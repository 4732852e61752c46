#!/usr/bin/env python3
"""SQL dashboard latency: Sonde (POST /api/v1/sql) against DuckDB reading the very same
Parquet segment files directly — the practical ceiling for scanning Parquet here.

Loads the standard metric dataset (SERIES series x 240 samples, 15 s apart) into a
fresh release `sonde serve`, flushes it into segments, then runs each dashboard query
RUNS times on both and prints p50/p95 latency per query as a Markdown table (and
JSON with --json FILE). DuckDB gets each table's values decoded from Sonde's
physical columns (exact decimals, per-series deltas for counters and histograms) as
storage-format.md documents; results of both engines are compared.

usage: benches/sql_compare/run.py [--series 100000] [--samples 240] [--interval-s 15]
                                  [--runs 7] [--json out.json]
(the backfilled shape: --series 10000 --samples 2016 --interval-s 300 = 7 days)
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
import urllib.request

import duckdb

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benches"))
from common import free_port  # noqa: E402

SONDE = os.path.join(ROOT, "target", "release", "sonde")

# (name, Sonde SQL, table, DuckDB SQL over the decoded table `t`). The first user of
# the dataset is user-000000; tenants are tenant-00..49.
QUERIES = [
    ("full scan: count, avg TTFT",
     "SELECT count(*) AS n, round(avg(value), 6) AS v FROM llm_ttft_seconds",
     "llm_ttft_seconds",
     "SELECT count(*) AS n, round(avg(value), 6) AS v FROM t"),
    ("avg TTFT per model",
     "SELECT model, round(avg(value), 6) AS v FROM llm_ttft_seconds GROUP BY model ORDER BY model",
     "llm_ttft_seconds",
     "SELECT model, round(avg(value), 6) AS v FROM t GROUP BY model ORDER BY model"),
    ("max TTFT per 15 min",
     "SELECT date_bin(INTERVAL '15 minutes', time) AS b, max(value) AS v FROM llm_ttft_seconds GROUP BY b ORDER BY b",
     "llm_ttft_seconds",
     "SELECT time_bucket(INTERVAL '15 minutes', time) AS b, max(value) AS v FROM t GROUP BY b ORDER BY b"),
    ("tokens by token type (counter)",
     "SELECT token_type, max(value) AS v FROM llm_tokens_total GROUP BY token_type ORDER BY token_type",
     "llm_tokens_total",
     "SELECT token_type, max(value) AS v FROM t GROUP BY token_type ORDER BY token_type"),
    ("histogram buckets per model (counter)",
     "SELECT model, le, max(value) AS v FROM llm_request_duration_seconds_bucket GROUP BY model, le ORDER BY model, le",
     "llm_request_duration_seconds_bucket",
     "SELECT model, le, max(value) AS v FROM t GROUP BY model, le ORDER BY model, le"),
    ("one user's TTFT (tag-selective)",
     "SELECT count(*) AS n, round(sum(value), 6) AS v FROM llm_ttft_seconds WHERE user_id = 'user-000000'",
     "llm_ttft_seconds",
     "SELECT count(*) AS n, round(sum(value), 6) AS v FROM t WHERE user_id = 'user-000000'"),
    ("one customer's cost per user (tag-selective counter)",
     "SELECT user_id, round(max(value), 6) AS v FROM llm_cost_usd_total WHERE tenant = 'tenant-07' GROUP BY user_id ORDER BY user_id",
     "llm_cost_usd_total",
     "SELECT user_id, round(max(value), 6) AS v FROM t WHERE tenant = 'tenant-07' GROUP BY user_id ORDER BY user_id"),
    ("one model's TTFT in the last 10 minutes (tag + time)",
     "SELECT count(*) AS n, round(max(value), 6) AS v FROM llm_ttft_seconds WHERE model = 'gpt-4o' AND time >= TO_TIMESTAMP_MILLIS({t_last10})",
     "llm_ttft_seconds",
     "SELECT count(*) AS n, round(max(value), 6) AS v FROM t WHERE model = 'gpt-4o' AND time >= to_timestamp({t_last10} / 1000.0)"),
]


def post_sql(http, sql):
    req = urllib.request.Request(
        f"http://{http}/api/v1/sql",
        data=json.dumps({"sql": sql}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.load(r)


def decoded(files, table):
    """DuckDB SQL yielding `table` with tags, time and the decoded `value`."""
    return f"""
      SELECT * EXCLUDE ("value:m", "value:s", "value:f", "value:w", filename, file_row_number,
                        __name__),
        coalesce("value:f",
          CASE WHEN "value:s" >= 0 THEN coalesce("value:m", "value:w") / pow(10, "value:s")
          ELSE sum(coalesce("value:m", "value:w"))
                 OVER (PARTITION BY filename, __series ORDER BY file_row_number)
               / pow(10, -"value:s" - 1) END) AS value
      FROM (SELECT * FROM read_parquet({files!r}, union_by_name = true, filename = true,
                                       file_row_number = true)
            WHERE __name__ = '{table}')"""


def timed(fn, runs):
    out, lat = None, []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        lat.append((time.perf_counter() - t0) * 1e3)
    lat.sort()
    p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]
    return out, statistics.median(lat), p95


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=240)
    ap.add_argument("--interval-s", type=int, default=15)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "sonde"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="sonde-sql-")
    grpc, http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    server = subprocess.Popen(
        [SONDE, "serve", "--data-dir", work, "--grpc-addr", grpc, "--http-addr", http],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://{http}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        span_s = args.samples * args.interval_s
        start_ms = (int(time.time()) // 60 * 60 - span_s) * 1000
        subprocess.run([SONDE, "load", "--quiet", "--target", f"http://{grpc}",
                        "--series", str(args.series), "--samples", str(args.samples),
                        "--interval-ms", str(args.interval_s * 1000),
                        "--start-ms", str(start_ms)], check=True)
        urllib.request.urlopen(urllib.request.Request(
            f"http://{http}/api/v1/admin/flush", method="POST"), timeout=600).read()
        # Raw segments only, not rollups (<id>-r<tier ms>.parquet).
        files = os.path.join(work, "segments", "default", "*", "????????????????.parquet")
        seg_bytes = sum(os.path.getsize(os.path.join(d, f))
                        for d, _, fs in os.walk(os.path.join(work, "segments")) for f in fs
                        if f.endswith(".parquet"))
        t_last10 = start_ms + span_s * 1000 - 600_000
        con = duckdb.connect()
        rows = []
        for name, sonde_sql, table, duck_sql in QUERIES:
            sonde_sql = sonde_sql.format(t_last10=t_last10)
            duck_sql = duck_sql.format(t_last10=t_last10)
            duck_full = f"WITH t AS ({decoded(files, table)}) {duck_sql}"
            s_out, s50, s95 = timed(lambda: post_sql(http, sonde_sql), args.runs)
            d_out, d50, d95 = timed(lambda: con.execute(duck_full).fetchall(), args.runs)
            same = len(s_out) == len(d_out) and all(
                all(str(a) == str(b) or (isinstance(b, float) and abs(float(a) - b) <= 1e-6 * max(1, abs(b)))
                    for a, b in zip(list(sr.values())[-1:], list(dr)[-1:]))
                for sr, dr in zip(s_out, d_out))
            rows.append({"query": name, "sonde_p50_ms": round(s50, 1), "sonde_p95_ms": round(s95, 1),
                         "duckdb_p50_ms": round(d50, 1), "duckdb_p95_ms": round(d95, 1),
                         "ratio_p50": round(s50 / d50, 2), "rows": len(s_out), "same_answer": same})
        print(f"| query ({args.series} series x {args.samples} every {args.interval_s} s, "
              f"{seg_bytes / 1e6:.1f} MB of segments, "
              f"{args.runs} runs) | Sonde p50 ms | p95 | DuckDB p50 ms | p95 | Sonde/DuckDB | same answer |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['query']} | {r['sonde_p50_ms']} | {r['sonde_p95_ms']} | {r['duckdb_p50_ms']} | "
                  f"{r['duckdb_p95_ms']} | {r['ratio_p50']} | {r['same_answer']} |")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"series": args.series, "segment_bytes": seg_bytes, "queries": rows}, f, indent=1)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
