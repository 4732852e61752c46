#!/usr/bin/env bash
# VictoriaMetrics on the standard dataset: bytes/sample on disk after a forced flush and
# merge, import rate, and peak RSS. The side-by-side counterpart of
# `cargo bench -p sonde-storage --bench footprint`.
#
# Usage: benches/peers/vm_footprint.sh [SERIES]   (default 10000; 240 samples each)
# Needs the Debian package victoria-metrics (installed if missing).
set -euo pipefail
series=${1:-10000}
cd "$(dirname "$0")/../.."
command -v victoria-metrics >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq victoria-metrics >/dev/null; }
cargo build --release -q -p sonde-dataset --example exposition
data=$(mktemp -d)
port=18428
victoria-metrics -storageDataPath="$data" -httpListenAddr=127.0.0.1:$port -retentionPeriod=100y \
  -search.disableCache >"$data.log" 2>&1 &
vm=$!
trap 'kill $vm 2>/dev/null; wait $vm 2>/dev/null; rm -rf "$data" "$data.log"' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.2; done
samples=$((((series + 14) / 15) * 15 * 240))
start=$(date +%s.%N)
./target/release/examples/exposition "$series" 240 \
  | curl -sf -X POST -T - "http://127.0.0.1:$port/api/v1/import/prometheus"
end=$(date +%s.%N)
curl -sf "http://127.0.0.1:$port/internal/force_flush" >/dev/null
curl -sf "http://127.0.0.1:$port/internal/force_merge" >/dev/null
sleep 15 # force_merge runs in the background
bytes=$(du -sb "$data" | cut -f1)
rss=$(awk '/VmHWM/ {print $2}' /proc/$vm/status)
stored=$(curl -sf "http://127.0.0.1:$port/api/v1/query?query=sum(count_over_time(%7B__name__%3D~%22llm_.*%22%7D%5B2h%5D))&time=1700003700" | sed 's/.*"value":\[[^,]*,"\([0-9]*\)".*/\1/')
version=$(dpkg-query -W -f='${Version}' victoria-metrics 2>/dev/null || true)
echo "| VictoriaMetrics ${version} | ${series} series × 240 | samples $samples (stored $stored) | $(echo "scale=3; $bytes / $samples" | bc) bytes/sample (whole data dir) | import $(echo "scale=0; $samples / ($end - $start)" | bc) samples/s (text, incl. generation) | peak RSS $((rss / 1024)) MiB |"
