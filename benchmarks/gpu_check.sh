#!/usr/bin/env bash
# The one GPU check (benchmarks/gpu_check.py), sized for under 8 minutes on one H200: the exported
# engines' parity with the CPU fp32 reference, then tiles/s. Results are appended to
# $OUT/gpu_check.{json,md} (default benchmarks/results) as each is measured.
#   benchmarks/gpu_check.sh            on a machine with torch+CUDA (installs this package without deps)
#   benchmarks/gpu_check.sh --dry-run  the whole script on the CPU with tiny models (the tests run this)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
out=${OUT:-benchmarks/results}
if [ "${1:-}" = "--dry-run" ]; then
    exec "$PYTHON" benchmarks/gpu_check.py --dry-run --out "$out/gpu_check"
fi
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.cuda.get_device_name(0))"
"$PYTHON" -m pip install -q --no-deps -e . 2>/dev/null || "$PYTHON" -m pip install -q --no-deps .
timeout 480 "$PYTHON" benchmarks/gpu_check.py --out "$out/gpu_check" --steps "${STEPS:-20}" \
    --batches "${BATCHES:-1,16,64,256}" --repeats "${REPEATS:-3}"
