#!/usr/bin/env bash
# The reference example model (`make reference`, under an hour on 2 cores): the example data cut every
# 16 px (2,494 overlapping training windows above the same 66-tile held-out band), the `reference` preset
# (the demo's networks, the count condition also as cross-attention tokens, a PatchGAN term on the autoencoder,
# about three times the steps),
# exported, then its guidance choice, count control, QC and realism reports. Safe to rerun: finished stages are kept,
# interrupted training resumes from its checkpoint.
set -euo pipefail
out=${1:-runs/reference}
results=$out/results  # the files the README cites once published (scripts/publish.sh $out/results docs/results/reference)
vq_minutes=${REFERENCE_VQ_MINUTES:-20}
ldm_minutes=${REFERENCE_LDM_MINUTES:-34}
bin=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin
mkdir -p "$out"
start=$(date +%s)
stamp() { echo "   [$(( $(date +%s) - start ))s]"; }

echo "== 1/7 example data, training windows every 16 px =="
[ -f "$out/data/meta.json" ] || "$bin/hs-data" prepare --source example --stride 16 --out "$out/data"
"$bin/hs-data" info "$out/data" --plot "$out/data_info.png" --json "$out/data_info.json" > "$out/data_info.txt"; stamp

train() {  # stage, run dir, minutes, extra args...
  local stage=$1 run=$2 minutes=$3; shift 3
  if [ -f "$run/checkpoint.pt" ]; then
    "$bin/hs-train" "$stage" --resume --data "$out/data" --out "$run" --max-minutes "$minutes" "$@"
  else
    "$bin/hs-train" "$stage" --data "$out/data" --config reference --out "$run" --max-minutes "$minutes" "$@"
  fi
}

echo "== 2/7 stage 1: VQ autoencoder (reference preset) =="
train vqvae "$out/vqvae" "$vq_minutes"; stamp
"$bin/hs-eval" vqvae --checkpoint "$out/vqvae" --data "$out/data" --json "$out/vqvae_eval.json"
# The watershed's marker depth for this autoencoder, per class: the smallest h that re-derives the nuclei of that
# class from the reconstructions as well as the best. Judged on every tile (held-out band and training windows):
# the 66 held-out tiles hold too few touching neoplastic nuclei to tell 0.15 from 0.2
# (docs/results/marker_depth_per_class).
"$bin/hs-eval" vqvae --checkpoint "$out/vqvae" --data "$out/data" --split all --json "$out/vqvae_eval_all.json" \
  > /dev/null
# A nucleus larger than the real 99th percentile of its class is seeded again at depth 0.1 and split where its own
# distance map holds several domes: on generated tiles that takes oversized neoplastic nuclei from 3.3 % to 0.8 %
# at no cost on the real maps (docs/results/split_oversized).
limits=$("$bin/python" -c 'import json, sys; print(",".join(f"{n}>{a:g}" for n, a in json.load(open(sys.argv[1]))["area_p99"].items() if a))' \
  "$out/data_info.json")
marker=${REFERENCE_MARKER_DEPTH:-$("$bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["recommended_marker_depth_spec"])' \
  "$out/vqvae_eval_all.json"),$limits}
echo "   marker depth $marker"; stamp

echo "== 3/7 stage 2: conditional latent U-Net with count tokens (reference preset) =="
train ldm "$out/ldm" "$ldm_minutes" --vqvae "$out/vqvae"; stamp

echo "== 4/7 export (ONNX fp32/fp16, torch.export programs) =="
# --force: an export of an earlier checkpoint (training resumed since) is replaced; the same checkpoint is
# found in the export cache and kept as it is.
"$bin/hs-export" --checkpoint "$out/ldm" --out "$out/export" --force; stamp

echo "== 5/7 guidance scale: the control sweep at 1.5, 3 and 5, the best worst-class r wins =="
rm -rf "$out/guidance"  # a sweep of other settings (marker depth) is not resumed
"$bin/hs-eval" guidance --engine "$out/export/unet.onnx" --scales "${REFERENCE_SCALES:-1.5,3,5}" --levels 4 \
  --tiles-per-level 2 --steps 25 --marker-depth "$marker" --out "$out/guidance"
guidance=${REFERENCE_GUIDANCE:-$("$bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["recommended"])' \
  "$out/guidance/guidance.json")}
echo "   guidance $guidance"; stamp

echo "== 6/7 count control at guidance $guidance: per-class sweep, tissue classifier, QC =="
rm -rf "$out/control"
"$bin/hs-eval" control --engine "$out/export/unet.onnx" --data "$out/data" --levels 6 --tiles-per-level 4 \
  --steps 50 --guidance "$guidance" --qc 0.2 --qc-attempts 4 --marker-depth "$marker" --out "$out/control"; stamp

echo "== 7/7 realism: 500 tiles drawn like the training tiles vs the real tiles; KID on a real-only segmenter =="
[ -f "$out/seg/checkpoint.pt" ] || "$bin/hs-train" seg --data "$out/data" --config small --out "$out/seg"
rm -rf "$out/samples"
"$bin/hs-generate" --engine "$out/export/unet.onnx" --n 500 --from-dataset --seed 0 --guidance "$guidance" \
  --marker-depth "$marker" --out "$out/samples"
rm -rf "$out/realism"
"$bin/hs-eval" realism --real "$out/data" --generated "$out/samples" --segmenter "$out/seg" --out "$out/realism"
stamp

mkdir -p "$results"
cp "$out/data_info.txt" "$out/data_info.json" "$out/data_info.png" "$out/vqvae_eval.json" "$out/vqvae_eval_all.json" "$results/"
for stage in vqvae ldm; do  # curves and per-step wall times of both stages
  cp "$out/$stage/loss.png" "$results/${stage}_loss.png"; cp "$out/$stage/log.csv" "$results/${stage}_log.csv"
done
cp "$out/guidance/guidance.json" "$out/guidance/guidance.md" "$out/guidance/guidance.png" "$results/"
cp "$out/control/control.json" "$out/control/control.md" "$out/control/"*.png "$results/"
cp "$out/realism/realism.json" "$out/realism/realism.png" "$results/"
cp "$out/samples/preview.png" "$results/samples_preview.png"
echo "   [$(( $(date +%s) - start ))s in all for this invocation (finished training stages are resumed, not rerun)]" > "$results/reference_time.txt"
echo "report: $results/control.md, $results/realism.json"
