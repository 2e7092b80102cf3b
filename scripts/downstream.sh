#!/usr/bin/env bash
# Does the synthetic data help? (`make downstream`, after `make demo`; or `scripts/downstream.sh runs/reference OUT`.) Generates tiles with --balance from
# the demo's export and trains the downstream segmenter on real vs real + synthetic vs synthetic tiles,
# 3 seeds each, scored on the example data's held-out region. Safe to rerun: finished runs are reused.
set -euo pipefail
demo=${1:-runs/demo}
out=${2:-runs/downstream}
results=${DOWNSTREAM_RESULTS:-docs/results/downstream}
n=${DOWNSTREAM_N:-300}
guidance=${DOWNSTREAM_GUIDANCE:-4}
steps=${DOWNSTREAM_STEPS:+--steps $DOWNSTREAM_STEPS}  # segmenter optimiser steps (default: the config's 800)
# how real+synthetic batches are drawn (default: uniform over the union, throughout); e.g. DOWNSTREAM_EXTRA_RATIO=0.5
# DOWNSTREAM_EXTRA_UNTIL=0.5: half of each batch synthetic in the first half of the steps, real tiles alone after
mixing="${DOWNSTREAM_EXTRA_RATIO:+--extra-ratio $DOWNSTREAM_EXTRA_RATIO} ${DOWNSTREAM_EXTRA_UNTIL:+--extra-until $DOWNSTREAM_EXTRA_UNTIL}"
bin=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin
start=$(date +%s)
stamp() { echo "   [$(( $(date +%s) - start ))s]"; }

if [ ! -f "$demo/export/manifest.json" ] || [ ! -f "$demo/data/meta.json" ]; then
  echo "error: $demo: no trained demo export; run make demo first" >&2
  exit 2
fi
mkdir -p "$out"

echo "== 1/2 $n synthetic tiles from the demo generator, rare classes raised (--balance) =="
if [ -f "$out/synthetic/generation.json" ]; then resume=--resume; else resume=; fi
"$bin/hs-generate" --engine "$demo/export/unet.onnx" --n "$n" --balance --seed 1 --guidance "$guidance" \
  --out "$out/synthetic" $resume
stamp

echo "== 2/2 segmenters on real / real+synthetic (/ synthetic) tiles, ${DOWNSTREAM_SEEDS:-3} seeds, held-out real tiles =="
rm -rf "$out/eval"
"$bin/hs-eval" downstream --real "$demo/data" --synthetic "$out/synthetic" \
  --arms "${DOWNSTREAM_ARMS:-real,real+synthetic,synthetic}" --seeds "${DOWNSTREAM_SEEDS:-3}" \
  --jobs "${DOWNSTREAM_JOBS:-2}" $steps $mixing --out "$out/eval"
stamp

mkdir -p "$results"
cp "$out/eval/downstream.json" "$out/eval/downstream.md" "$out/eval/downstream.png" "$results/"
cp "$out/synthetic/preview.png" "$results/synthetic_preview.png"
cp "$out/synthetic/control.json" "$results/synthetic_control.json"
echo "   [$(( $(date +%s) - start ))s in all]" > "$results/downstream_time.txt"
echo "report: $out/eval/downstream.md (copied to $results/)"
