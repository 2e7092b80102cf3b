#!/usr/bin/env bash
# CPU throughput of an export's engines against torch eager fp32, torch bf16 autocast and OpenVINO, in one
# process (hs-bench). Calibrate first (hs-calibrate) so that unet.int8.onnx is among the engines.
#   bash benchmarks/bench_cpu.sh [EXPORT] [OUT]
set -euo pipefail
export_dir=${1:-runs/demo/export}
out=${2:-benchmarks/results/cpu}
bin=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin
"$bin/hs-bench" --export "$export_dir" --batches 1,16 --steps 20 --repeats 5 --peers --out "$out"
