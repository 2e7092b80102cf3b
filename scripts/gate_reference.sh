#!/usr/bin/env bash
# After the reference model is trained (scripts/reference.sh): export it, pick its sampler with the quality
# gate, gate the faster engines, measure the headline against the paper's pipeline, and pack the model the
# package ships (histosmith/pretrained/hgsc-64). Writes under runs/ (and the packed model with PACK=1).
#   scripts/gate_reference.sh [runs/reference]
# Env: MARKER (watershed setting; default: the recipe's per-class depths + the real p99 split limits), GUIDANCE,
#      STEPS (the sweep's step counts), SAMPLERS, N (requests per run, >= 500), PACK=1 (write the packed model).
set -euo pipefail
out=${1:-runs/reference}
bin=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin
n=${N:-500}
steps=${STEPS:-8,10,15,20}
samplers=${SAMPLERS:-unipc,dpmpp-2m,ddim}
start=$(date +%s)
stamp() { echo "   [$(( $(date +%s) - start ))s]"; }
limits=$("$bin/python" -c 'import json, sys; print(",".join(f"{n}>{a:g}" for n, a in json.load(open(sys.argv[1]))["area_p99"].items() if a))' \
  "$out/data_info.json")
marker=${MARKER:-0.25,neoplastic=0.2,inflammatory=0.1,$limits}
echo "   marker depth $marker"

echo "== 1/5 export (ONNX fp32/fp16, torch.export programs) =="
"$bin/hs-export" --checkpoint "$out/ldm" --out "$out/export" --force; stamp

echo "== 2/5 the real-only segmenter the gate measures with =="
[ -f "$out/seg/checkpoint.pt" ] || "$bin/hs-train" seg --data "$out/data" --config small --out "$out/seg"; stamp

echo "== 3/5 sampler sweep: the fewest steps that pass become the export's default =="
common=(--export "$out/export" --real "$out/data" --segmenter "$out/seg" --n "$n" --marker-depth "$marker"
        --reference-guidance "${GUIDANCE:-3}")  # 3: the recipe's scale (hs-eval guidance, docs/experiments)
"$bin/hs-eval" sampler "${common[@]}" --samplers "$samplers" --steps "$steps" --out "$out/gate" --record || true
stamp
default=$("$bin/python" -c 'import json, sys; s = json.load(open(sys.argv[1]))["sampling"]; print(s["sampler"], s["steps"])' \
  "$out/export/manifest.json")
read -r sampler k <<< "$default"
echo "   default: $sampler at $k steps"

echo "== 4/5 the faster engines through the gate at the default sampler =="
"$bin/hs-eval" gate "${common[@]}" --engine "$out/export/unet.bf16.pt2" --compile --sampler "$sampler" --steps "$k" \
  --out "$out/gate" || true
"$bin/hs-eval" gate "${common[@]}" --sampler ddim --steps 50 --candidate-seed-offset 2 --out "$out/gate" || true
stamp

echo "== 5/5 headline: tiles/s end to end against the paper's pipeline =="
"$bin/hs-bench" --export "$out/export" --headline \
  "unet.bf16.pt2:$sampler:$k:compile,unet.onnx:$sampler:$k,unet.onnx:ddim:50" \
  --batches 1,16 --repeats "${REPEATS:-2}" --checkpoint "$out/ldm" --out "$out/headline"
stamp
if [ "${PACK:-0}" = 1 ]; then
  rm -rf histosmith/pretrained/hgsc-64
  "$bin/hs-export" --out "$out/export" --pack histosmith/pretrained/hgsc-64 --pack-precision fp32 \
    --card docs/model-card-hgsc-64.md
fi
