#!/usr/bin/env bash
# Guidance distillation of the reference model (after scripts/gate_reference.sh): the one-pass student, its
# sampler sweep through the quality gate against the teacher's reference configuration (fp32 two-pass DDIM 50,
# whose runs the teacher's gate already cached), its INT8 graphs (kept only if they pass the same gate at the
# student's default sampler), and the headline with the student beside the teacher.
#   scripts/distill_reference.sh [runs/reference]
# Env: STEPS (distillation steps, 3000), SWEEP (step counts, 4,5,6,8), SAMPLERS (unipc,dpmpp-2m), N (>= 500),
#      MARKER (as scripts/gate_reference.sh), REPEATS (headline repeats, 2).
set -euo pipefail
out=${1:-runs/reference}
bin=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin
start=$(date +%s)
stamp() { echo "   [$(( $(date +%s) - start ))s]"; }
limits=$("$bin/python" -c 'import json, sys; print(",".join(f"{n}>{a:g}" for n, a in json.load(open(sys.argv[1]))["area_p99"].items() if a))' \
  "$out/data_info.json")
marker=${MARKER:-0.25,neoplastic=0.2,inflammatory=0.1,$limits}

echo "== 1/5 distil the teacher's guidance into a one-pass student =="
if [ -f "$out/distill/checkpoint.pt" ]; then resume=(--resume); else resume=(); fi
"$bin/hs-train" distill --teacher "$out/ldm" --out "$out/distill" --max-steps "${STEPS:-3000}" "${resume[@]}"
stamp

echo "== 2/5 export the student =="
"$bin/hs-export" --checkpoint "$out/distill" --out "$out/export-distilled" --force; stamp

echo "== 3/5 the student's sampler sweep against the teacher's reference configuration =="
mkdir -p "$out/gate-distilled"
[ -e "$out/gate-distilled/runs" ] || ln -s ../gate/runs "$out/gate-distilled/runs"  # the cached reference runs
common=(--export "$out/export" --real "$out/data" --segmenter "$out/seg" --n "${N:-500}" --marker-depth "$marker"
        --reference-guidance "${GUIDANCE:-3}")
"$bin/hs-eval" sampler "${common[@]}" --engine "$out/export-distilled/unet.onnx" \
  --samplers "${SAMPLERS:-unipc,dpmpp-2m}" --steps "${SWEEP:-4,5,6,8}" --out "$out/gate-distilled" --record || true
stamp
default=$("$bin/python" -c 'import json, sys; s = json.load(open(sys.argv[1]))["sampling"]; print(s["sampler"], s["steps"])' \
  "$out/export-distilled/manifest.json")
read -r sampler k <<< "$default"
echo "   student default: $sampler at $k steps"

echo "== 4/5 the student's INT8 graphs, gated at its default sampler =="
int8=()
if "$bin/hs-calibrate" --export "$out/export-distilled" --data "$out/data" --segmenter "$out/seg" \
    --reference "$out/export" --gate-runs "$out/gate-distilled/runs" --gate-n "${N:-500}"; then
  int8=("../export-distilled/unet.int8.onnx:$sampler:$k")
fi
stamp

echo "== 5/5 headline: teacher and student against the paper's pipeline, one run =="
teacher=$("$bin/python" -c 'import json, sys; s = json.load(open(sys.argv[1]))["sampling"]; print(s["sampler"] + ":" + str(s["steps"]))' \
  "$out/export/manifest.json")
configs=$(IFS=,; echo "${int8[*]:+${int8[*]},}../export-distilled/unet.onnx:$sampler:$k,unet.onnx:$teacher")
"$bin/hs-bench" --export "$out/export" --headline "$configs" \
  --batches 1,16 --repeats "${REPEATS:-2}" --checkpoint "$out/ldm" --out "$out/headline-distilled"
stamp
