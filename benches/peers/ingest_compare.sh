#!/usr/bin/env bash
# Ingest side by side: Sonde (fsync always and every 100 ms), VictoriaMetrics and
# Prometheus receiving the same standard dataset over remote_write from `sonde load`,
# and Sonde also over sonde.v1 and OTLP gRPC. Prints a Markdown table: samples/s,
# p50/p99 request latency, server peak RSS. Peers come from Debian packages
# (installed if missing).
#
# Usage: benches/peers/ingest_compare.sh [SERIES] [BATCH] [CONCURRENCY]
set -euo pipefail
series=${1:-10000}; batch=${2:-10000}; conc=${3:-2}
cd "$(dirname "$0")/../.."
for p in victoria-metrics prometheus; do
  command -v "$p" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq victoria-metrics prometheus >/dev/null; }
done
systemctl stop prometheus victoria-metrics >/dev/null 2>&1 || true
cargo build --release -q -p sonde
sonde=./target/release/sonde
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

wait_http() { for _ in $(seq 100); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
peak() { awk '/VmHWM/ {printf "%d MiB", $2/1024}' "/proc/$1/status"; }
run_load() { # target [protocol]
  $sonde load --quiet --protocol "${2:-remote-write}" --target "$1" --series "$series" --samples 240 --batch "$batch" --concurrency "$conc" 2>/dev/null || true
}
row() { # name, load output, rss
  local rate p50 p99
  rate=$(sed -n 's/.*samples_per_sec=\([0-9]*\).*/\1/p' <<<"$2")
  p50=$(sed -n 's/.*p50_ms=\([0-9.]*\).*/\1/p' <<<"$2")
  p99=$(sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p' <<<"$2")
  echo "| $1 | $rate | $p50 | $p99 | $3 |"
}

echo "| system (${series} series × 240, ${batch} samples/request, ${conc} connections) | samples/s | p50 ms | p99 ms | peak RSS |"
echo "|---|---|---|---|---|"
for run in "always remote-write" "100 remote-write" "always sonde" "always otlp"; do
  read -r fsync proto <<<"$run"
  $sonde serve --data-dir "$work/sonde-$fsync-$proto" --grpc-addr 127.0.0.1:14317 --http-addr 127.0.0.1:14318 --fsync "$fsync" >/dev/null 2>&1 &
  pid=$!; wait_http http://127.0.0.1:14318/healthz
  if [ "$proto" = remote-write ]; then
    out=$(run_load http://127.0.0.1:14318/api/v1/write)
  else
    out=$(run_load http://127.0.0.1:14317 "$proto")
  fi
  rss=$(peak $pid); kill -TERM $pid; wait $pid || true
  row "Sonde $proto (fsync $fsync$([ "$fsync" = 100 ] && echo ' ms'))" "$out" "$rss"
done

victoria-metrics -storageDataPath="$work/vm" -httpListenAddr=127.0.0.1:18428 -retentionPeriod=100y >/dev/null 2>&1 &
pid=$!; wait_http http://127.0.0.1:18428/health
out=$(run_load http://127.0.0.1:18428/api/v1/write)
rss=$(peak $pid); kill $pid; wait $pid || true
row "VictoriaMetrics $(dpkg-query -W -f='${Version}' victoria-metrics) remote-write" "$out" "$rss"

prometheus --config.file=/dev/null --storage.tsdb.path="$work/prom" --web.listen-address=127.0.0.1:19090 \
  --web.enable-remote-write-receiver >/dev/null 2>&1 &
pid=$!; wait_http http://127.0.0.1:19090/-/ready
out=$(run_load http://127.0.0.1:19090/api/v1/write)
rss=$(peak $pid); kill $pid; wait $pid || true
row "Prometheus $(dpkg-query -W -f='${Version}' prometheus) remote-write" "$out" "$rss"
