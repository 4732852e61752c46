#!/usr/bin/env python3
"""Rule evaluation cycle time: 1,000 rules (600 PromQL, 200 SQL, 200 spike) in 10
groups of 100 at a 30 s interval over the standard dataset (default 100k series),
then spike and budget rules over several days of backfilled data (5-minute samples)
so their baselines are real. Reports per-group evaluation time p50/p99, the summed
cycle time, missed iterations and Sonde's CPU share while the rules run.

Usage: benches/rules/cycle.py [--series 100000] [--cycles 4] [--days 3]
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

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "benches"))
from common import cpu_seconds, http, wait  # noqa: E402
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "claude-haiku-3.5",
          "gemini-1.5-pro", "gemini-2.0-flash", "llama-3.1-70b", "mistral-large"]








def rules_1000(interval):
    groups = []
    for g in range(10):
        rules = []
        for i in range(100):
            n = g * 100 + i
            tenant = f"tenant-{n % 50:02d}"
            model = MODELS[n % len(MODELS)]
            kind = i % 5
            if kind in (0, 1, 2):
                expr = [
                    f'sum by (model) (rate(llm_tokens_total{{tenant="{tenant}"}}[5m])) > 1e9',
                    f'histogram_quantile(0.95, sum by (le) (rate(llm_request_duration_seconds_bucket{{model="{model}",tenant="{tenant}"}}[5m]))) > 100',
                    f'max by (model) (llm_ttft_seconds{{tenant="{tenant}"}}) > 100',
                ][kind]
                rules.append({"alert": f"R{n}", "expr": expr})
            elif kind == 3:
                rules.append({"alert": f"R{n}", "sql":
                    f"SELECT model, sum(value) AS value FROM llm_ttft_seconds WHERE tenant = '{tenant}' "
                    f"AND time > now() - INTERVAL '5 minutes' GROUP BY model HAVING sum(value) > 1e9"})
            else:
                rules.append({"alert": f"R{n}", "spike": {
                    "expr": f'sum(rate(llm_tokens_total{{tenant="{tenant}"}}[5m]))',
                    "window": "5m", "baseline": "30m", "step": "1m", "factor": 1000}})
        groups.append({"name": f"g{g}", "interval": interval, "rules": rules})
    return {"groups": groups}


def rules_backfilled():
    rules = []
    for t in range(50):
        tenant = f"tenant-{t:02d}"
        rules.append({"alert": f"Spike{t}", "spike": {
            "expr": f'sum(rate(llm_tokens_total{{tenant="{tenant}"}}[15m]))',
            "window": "1h", "baseline": "2d", "step": "15m", "zscore": 50}})
        rules.append({"alert": f"Budget{t}", "budget": {
            "cost": f'llm_cost_usd_total{{tenant="{tenant}"}}', "by": ["tenant"],
            "period": "day", "limit": 1e12}})
    return {"groups": [{"name": "backfilled", "interval": "30s", "rules": rules}]}


def run(sonde, work, name, rules, load_args, cycles, interval_s):
    d = os.path.join(work, name)
    os.makedirs(d)
    # JSON is YAML: rule files are written as JSON.
    with open(os.path.join(d, "rules.yml"), "w") as f:
        json.dump(rules, f)
    proc = subprocess.Popen([sonde, "serve", "--data-dir", os.path.join(d, "data"),
                             "--grpc-addr", "127.0.0.1:34317", "--http-addr", "127.0.0.1:34318"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait("http://127.0.0.1:34318/healthz")
        subprocess.run([sonde, "load", "--quiet", "--protocol", "remote-write", "--target",
                        "http://127.0.0.1:34318/api/v1/write"] + load_args,
                       check=True, stdout=subprocess.DEVNULL)
        http("http://127.0.0.1:34318/api/v1/admin/flush", b"")
    finally:
        proc.terminate()
        proc.wait()
    # Restart with the rules, so loading does not compete with evaluation.
    proc = subprocess.Popen([sonde, "serve", "--data-dir", os.path.join(d, "data"),
                             "--grpc-addr", "127.0.0.1:34317", "--http-addr", "127.0.0.1:34318",
                             "--rule-file", os.path.join(d, "rules.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait("http://127.0.0.1:34318/healthz")
        cpu0, t0 = cpu_seconds(proc.pid), time.time()
        seen = {}
        while time.time() - t0 < cycles * interval_s + 5:
            data = json.loads(http("http://127.0.0.1:34318/api/v1/rules"))["data"]
            for g in data["groups"]:
                if g["lastEvaluation"].startswith("0001"):
                    continue
                seen[(g["name"], g["lastEvaluation"])] = g["evaluationTime"]
            time.sleep(1)
        cpu = (cpu_seconds(proc.pid) - cpu0) / (time.time() - t0)
        metrics = http("http://127.0.0.1:34318/metrics").decode()
        missed = [l for l in metrics.splitlines() if l.startswith("sonde_rule_group_iterations_missed_total")]
        health = json.loads(http("http://127.0.0.1:34318/api/v1/rules"))["data"]["groups"]
        errors = sum(1 for g in health for r in g["rules"] if r["health"] == "err")
    finally:
        proc.terminate()
        proc.wait()
    times = sorted(seen.values())
    q = lambda p: times[min(len(times) - 1, int(p * len(times)))] if times else float("nan")
    return {
        "rules": sum(len(g["rules"]) for g in rules["groups"]),
        "groups": len(rules["groups"]),
        "evaluations": len(times),
        "group_p50_s": statistics.median(times) if times else float("nan"),
        "group_p99_s": q(0.99),
        "group_max_s": max(times) if times else float("nan"),
        "cycle_sum_s": statistics.median(times) * len(rules["groups"]) if times else float("nan"),
        "cpu_share": cpu,
        "missed": missed[0].split()[-1] if missed else "?",
        "rule_errors": errors,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=100000)
    ap.add_argument("--cycles", type=int, default=4)
    ap.add_argument("--days", type=int, default=3)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "sonde"], cwd=ROOT, check=True)
    sonde = os.path.join(ROOT, "target", "release", "sonde")
    work = tempfile.mkdtemp()
    try:
        a = run(sonde, work, "live", rules_1000("30s"),
                ["--series", str(args.series), "--samples", "240"], args.cycles, 30)
        samples = args.days * 288
        b = run(sonde, work, "backfill", rules_backfilled(),
                ["--series", "10005", "--samples", str(samples), "--interval-ms", "300000"],
                args.cycles, 30)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"| run | rules | groups | group eval p50 s | p99 s | max s | cycle (sum of groups) s | CPU share | missed | rule errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in [(f"{args.series} series, 1h of 15 s samples: 600 PromQL + 200 SQL + 200 spike", a),
                    (f"10k series, {args.days} days of 5-min samples: 50 spike (2d baseline) + 50 budget", b)]:
        print(f"| {name} | {r['rules']} | {r['groups']} | {r['group_p50_s']:.3f} | {r['group_p99_s']:.3f} | "
              f"{r['group_max_s']:.3f} | {r['cycle_sum_s']:.2f} | {r['cpu_share']*100:.0f}% | {r['missed']} | {r['rule_errors']} |")


if __name__ == "__main__":
    main()
