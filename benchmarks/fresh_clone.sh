#!/usr/bin/env bash
# A newcomer's first minutes, measured: a fresh clone of this checkout's HEAD, `make demo` in it (venv, lean
# install, 64 tiles from the shipped model), `git status` afterwards, and the size of the package's wheel.
#   benchmarks/fresh_clone.sh        # writes benchmarks/results/fresh_clone.json and .md
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$repo/benchmarks/results
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git clone -q "$repo" "$tmp/clone"
cd "$tmp/clone"
start=$(date +%s.%N)
make demo > "$tmp/demo.log" 2>&1
demo_s=$(python3 -c "import sys, time; print(round(time.time() - float(sys.argv[1]), 1))" "$start")
dirty=$(git status --porcelain | wc -l)
tiles=$(.venv/bin/python -c 'from histosmith.data.reader import Dataset; print(len(Dataset.open("runs/demo")))')
.venv/bin/python -m pip wheel --quiet --no-deps --no-build-isolation -w "$tmp/wheel" . > /dev/null 2>&1 \
  || .venv/bin/python -m pip wheel --quiet --no-deps -w "$tmp/wheel" . > /dev/null
wheel=$(ls "$tmp"/wheel/*.whl)
wheel_mb=$(python3 -c "import os, sys; print(round(os.path.getsize(sys.argv[1]) / 2**20, 2))" "$wheel")
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
avx512=$(grep -c -m1 avx512f /proc/cpuinfo || true)
commit=$(git rev-parse --short HEAD)
cat > "$out/fresh_clone.json" <<JSON
{"command": "benchmarks/fresh_clone.sh", "commit": "$commit", "date": "$(date -u +%F)", "cpu": "$cpu",
 "avx512": $([ "$avx512" -gt 0 ] && echo true || echo false), "make_demo_seconds": $demo_s, "tiles": $tiles,
 "git_status_lines_after": $dirty, "wheel": "$(basename "$wheel")", "wheel_mb": $wheel_mb}
JSON
printf '# A fresh clone\n\n`benchmarks/fresh_clone.sh` on %s (%s, AVX-512: %s), commit %s\n\n| | |\n|---|---|\n| `make demo` (venv, lean install, 64 tiles) | %.0f s |\n| tiles written | %s |\n| `git status` lines after | %s |\n| wheel (`pip wheel .`) | %s MB |\n' \
  "$(date -u +%F)" "$cpu" "$([ "$avx512" -gt 0 ] && echo yes || echo no)" "$commit" "$demo_s" "$tiles" "$dirty" \
  "$wheel_mb" > "$out/fresh_clone.md"
cat "$out/fresh_clone.md"
