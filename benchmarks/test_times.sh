#!/usr/bin/env bash
# Wall time of the two test tiers on this machine, one after the other (nothing else should run):
#   benchmarks/test_times.sh [fast|all|both]     # writes benchmarks/results/test_times.md
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-both}
out=benchmarks/results/test_times.md
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
avx512=$(grep -q avx512f /proc/cpuinfo && echo yes || echo no)
run() {  # tier, make target
  local start end
  start=$(date +%s)
  make "$2" > "/tmp/hs-test-$1.log" 2>&1
  end=$(date +%s)
  printf '| `make %s` | %s | %d s | %s |\n' "$2" "$1" "$((end - start))" "$(tail -1 "/tmp/hs-test-$1.log" | tr -d '=' | xargs)" >> "$out"
}
printf '# Test tier times\n\n`benchmarks/test_times.sh %s` on %s (%s cores, AVX-512: %s), %s, commit %s\n\n| command | tier | wall | pytest |\n|---|---|---|---|\n' \
  "$which" "$cpu" "$(nproc)" "$avx512" "$(date -u +%F)" "$(git rev-parse --short HEAD)" > "$out"
[ "$which" = all ] || run fast test
[ "$which" = fast ] || run all test-all
cat "$out"
