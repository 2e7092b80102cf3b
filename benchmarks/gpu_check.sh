#!/usr/bin/env bash
# GPU checks of the torch CUDA backend, sized for under 8 minutes on one H200 (see gpu_check.py).
# The machine needs torch with CUDA; this package and its small dependencies are installed without
# touching that torch.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.cuda.get_device_name(0))"
python3 -m pip install -q --no-deps -e . 2>/dev/null || python3 -m pip install -q --no-deps .
out=${OUT:-benchmarks/results}
timeout 480 python3 benchmarks/gpu_check.py --out "$out/gpu_check" --steps "${STEPS:-20}" \
    --batches "${BATCHES:-1,16,64,256}" --repeats "${REPEATS:-3}"
