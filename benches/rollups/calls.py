#!/usr/bin/env python3
"""Event-table tiers: LLM call percentiles from quantile sketches vs raw rows.

Backfills --days of per-call records (`llm_calls`, default one call a second for 30
days: 2.6 M calls) into a fresh Sonde (release build), flushes, compacts and builds
the rollups, then times two SQL dashboard queries over the whole span — p50/p99
call duration per model per hour, and cost per model per hour — answered from the
1 h tier (the optimizer rule rewrites them; EXPLAIN checked) and from raw rows (a
predicate on a field value keeps them raw), median of --runs. Checks that the cost
sums agree and reports how far the sketch p99 (and DataFusion's t-digest
`approx_percentile_cont` over raw rows) is from the exact order statistic.

Usage: benches/rollups/calls.py [--days 30] [--rate 1.0] [--runs 5]
           [--sonde target/release/sonde] [--json out.json]
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

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "benches"))
from common import peak_rss_mib, start_sonde  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import settle  # noqa: E402

DAY = 86_400_000
HOUR = 3_600_000


def sql(base, q):
    req = urllib.request.Request(f"{base}/api/v1/sql", data=json.dumps({"sql": q}).encode(),
                                 headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        body = r.read()
    return time.perf_counter() - t, json.loads(body)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--rate", type=float, default=1.0, help="calls per second")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sonde", default=os.path.join(ROOT, "target/release/sonde"))
    ap.add_argument("--json")
    a = ap.parse_args()

    data = tempfile.mkdtemp(prefix="sonde-calls-")
    now = int(time.time() * 1000)
    day0 = (now // DAY - a.days) * DAY
    calls = int(a.days * 86_400 * a.rate)
    # Every call adds per-user series to the derived metrics: backfilling weeks of
    # them passes the default 1 M active series per table.
    proc, base, grpc = start_sonde(
        a.sonde, data, "--fsync", "100", "--retention", f"{a.days + 30}d",
        "--max-series-per-table", "100000000")
    try:
        t = time.time()
        out = subprocess.run(
            [a.sonde, "load", "--target", f"http://{grpc}", "--calls", str(calls),
             "--call-rate", str(a.rate), "--start-ms", str(day0), "--quiet"],
            capture_output=True, text=True, check=True).stdout
        load_s = time.time() - t
        print(out.strip(), f"({load_s:.0f} s)", flush=True)
        maint_s, _, raw, tiers = settle(base, data)
        rng = (f"time >= to_timestamp_millis({day0}) AND "
               f"time < to_timestamp_millis({day0 + a.days * DAY})")
        keep_raw = " AND duration_seconds > -1e300"

        def q(select, extra=""):
            return (f"SELECT model, date_bin(INTERVAL '1 hour', time) AS h, {select} "
                    f"FROM llm_calls WHERE {rng}{extra} GROUP BY model, h ORDER BY model, h")

        p99 = ("approx_percentile_cont(duration_seconds, 0.5) AS p50, "
               "approx_percentile_cont(duration_seconds, 0.99) AS p99")
        cost = "sum(cost_usd) AS cost, count(duration_seconds) AS n"
        _, plan = sql(base, "EXPLAIN " + q(p99))
        assert "llm_calls_1h" in json.dumps(plan), plan
        rows = []
        answers = {}
        for name, sel in (("p50 + p99 duration per model per hour", p99),
                          ("cost per model per hour", cost)):
            times = {}
            for tier in (True, False):
                ts = []
                for _ in range(a.runs if tier else max(1, a.runs // 2)):
                    dt, ans = sql(base, q(sel, "" if tier else keep_raw))
                    ts.append(dt)
                times[tier] = statistics.median(ts)
                answers[(name, tier)] = ans
            rows.append({"query": name, "tier_ms": times[True] * 1000,
                         "raw_ms": times[False] * 1000,
                         "speedup": times[False] / times[True]})
        # Cost: equal to raw (float rounding).
        ct = answers[("cost per model per hour", True)]
        cr = answers[("cost per model per hour", False)]
        cost_ok = len(ct) == len(cr) and all(
            x["n"] == y["n"] and abs(x["cost"] - y["cost"]) <= 1e-9 * max(1.0, abs(y["cost"]))
            for x, y in zip(ct, cr))
        # p99: the sketch, and DataFusion's t-digest over raw rows, vs the exact order
        # statistic of rank floor(0.99 (n - 1)) of the raw rows.
        _, exact = sql(base, q(
            "array_element(array_agg(duration_seconds ORDER BY duration_seconds), "
            "CAST(floor(0.99 * (count(duration_seconds) - 1)) AS BIGINT) + 1) AS p99", keep_raw))
        sk = answers[("p50 + p99 duration per model per hour", True)]
        td = answers[("p50 + p99 duration per model per hour", False)]
        rel = [abs(x["p99"] - y["p99"]) / y["p99"] for x, y in zip(sk, exact) if y["p99"]]
        rel_td = [abs(x["p99"] - y["p99"]) / y["p99"] for x, y in zip(td, exact) if y["p99"]]
        rss = peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(data, ignore_errors=True)

    print(f"\n{calls/1e6:.2f} M calls over {a.days} days, load {load_s:.0f} s, "
          f"compaction + rollup build {maint_s:.0f} s, peak RSS {rss} MiB\n")
    print("| data | bytes on disk | bytes/call |")
    print("|---|---:|---:|")
    print(f"| raw (llm_calls + derived metrics) | {raw/1e6:.1f} MB | {raw/calls:.2f} |")
    for t, b in tiers.items():
        print(f"| {t//60000} m tier (all tables) | {b/1e6:.1f} MB | {b/calls:.2f} |")
    print(f"\n| SQL query ({a.days} d, per hour) | from 1 h tier | from raw | speed-up |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['query']} | {r['tier_ms']:.1f} ms | {r['raw_ms']:.0f} ms | "
              f"{r['speedup']:.0f}× |")
    print(f"\ncost equal to raw: {'yes' if cost_ok else 'NO'}; p99 vs the exact order "
          f"statistic over {len(rel)} model-hours: sketch (tier) median "
          f"{statistics.median(rel)*100:.2f} %, max {max(rel)*100:.2f} %; t-digest (raw) "
          f"median {statistics.median(rel_td)*100:.2f} %, max {max(rel_td)*100:.2f} %")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"days": a.days, "calls": calls, "load_s": load_s,
                       "maintenance_s": maint_s, "raw_bytes": raw, "tier_bytes": tiers,
                       "queries": rows, "cost_equal": cost_ok,
                       "p99_rel_err_median": statistics.median(rel),
                       "p99_rel_err_max": max(rel),
                       "tdigest_p99_rel_err_median": statistics.median(rel_td),
                       "tdigest_p99_rel_err_max": max(rel_td), "peak_rss_mib": rss}, f, indent=1)
    if not cost_ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
