#!/usr/bin/env bash
# Train your own generator end to end on the embedded example data (`make train-demo`): data, autoencoder,
# U-Net, samples, export, the lean runtime. Writes under runs/ only (`scripts/publish.sh` copies results into
# docs/results). Safe to rerun: finished stages are kept, interrupted training resumes from its checkpoint.
set -euo pipefail
out=${1:-runs/demo}
results=$out/results  # the files a published run copies (scripts/publish.sh)
# Each stage stops at its step budget or after this many minutes (a busy machine: raise it for full budgets).
minutes=${DEMO_MAX_MINUTES:-8}
bin=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin
mkdir -p "$out"
start=$(date +%s)
stamp() { echo "   [$(( $(date +%s) - start ))s]"; }

echo "== 1/6 example data: two real H&E crops from the histolytics wheel, tiled =="
[ -f "$out/data/meta.json" ] || "$bin/hs-data" prepare --source example --out "$out/data"
"$bin/hs-data" info "$out/data" --plot "$out/data_info.png" > "$out/data_info.txt"; stamp

train() {  # stage, run dir, extra args...
  local stage=$1 run=$2; shift 2
  if [ -f "$run/checkpoint.pt" ]; then
    "$bin/hs-train" "$stage" --resume --data "$out/data" --out "$run" --max-minutes "$minutes" "$@"
  else
    "$bin/hs-train" "$stage" --data "$out/data" --config small --out "$run" --max-minutes "$minutes" "$@"
  fi
}

echo "== 2/6 stage 1: VQ autoencoder (small config) =="
train vqvae "$out/vqvae"; stamp
"$bin/hs-eval" vqvae --checkpoint "$out/vqvae" --data "$out/data" --json "$out/vqvae_eval.json"; stamp

echo "== 3/6 stage 2: conditional latent U-Net (small config) =="
train ldm "$out/ldm" --vqvae "$out/vqvae"; stamp

echo "== 4/6 sample 64 tiles across both tissues (torch reference sampler) =="
rm -rf "$out/samples"
"$bin/hs-sample" --checkpoint "$out/ldm" --n 64 --from-dataset --seed 0 --guidance 4 --out "$out/samples"; stamp

echo "== 5/6 export to ONNX (fp32, fp16) + torch.export programs; TensorRT build script =="
"$bin/hs-export" --checkpoint "$out/ldm" --out "$out/export" --force  # replaces an export of an earlier checkpoint
"$bin/hs-export" --out "$out/export" --trt 2>/dev/null || echo "   (no TensorRT here: wrote $out/export/build_engines.sh for the target)"
stamp

echo "== 6/6 the lean runtime: hs-generate on ONNX Runtime, rare classes raised (--balance) =="
rm -rf "$out/generated"
"$bin/hs-generate" --engine "$out/export/unet.onnx" --n 64 --balance --seed 0 --guidance 4 --out "$out/generated"
stamp

mkdir -p "$results"
cp "$out/data_info.txt" "$out/data_info.png" "$out/vqvae_eval.json" "$results/"
cp "$out/samples/control.json" "$results/samples_control.json"
cp "$out/samples/control.png" "$results/samples_control.png"
cp "$out/samples/preview.png" "$results/samples_preview.png"
cp "$out/generated/control.json" "$results/generated_control.json"
cp "$out/generated/preview.png" "$results/generated_preview.png"
echo "   [$(( $(date +%s) - start ))s in all]" > "$results/demo_time.txt"

cat <<MSG

dataset        $out/data            (chart $out/data_info.png)
autoencoder    $out/vqvae           (curves $out/vqvae/loss.png, held-out metrics $out/vqvae_eval.json)
generator      $out/ldm             (curves $out/ldm/loss.png)
samples        $out/samples         (contact sheet $out/samples/preview.png, counts $out/samples/control.png)
export         $out/export          (manifest.json, unet.onnx, decoder.onnx, fp16 and torch.export variants)
generated      $out/generated       (ONNX Runtime; contact sheet preview.png, counts control.png)
results        $results  (scripts/publish.sh $results docs/results/demo commits them)
MSG
