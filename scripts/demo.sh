#!/usr/bin/env bash
# End to end on the embedded example data (`make demo`). Safe to rerun: finished stages are kept,
# interrupted training resumes from its checkpoint.
set -euo pipefail
out=${1:-runs/demo}
bin=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin
mkdir -p "$out"
start=$(date +%s)
stamp() { echo "   [$(( $(date +%s) - start ))s]"; }

echo "== 1/5 example data: two real H&E crops from the histolytics wheel, tiled =="
[ -f "$out/data/meta.json" ] || "$bin/hs-data" prepare --source example --out "$out/data"
"$bin/hs-data" info "$out/data" --plot "$out/data_info.png" >/dev/null; stamp

train() {  # stage, run dir, extra args...
  local stage=$1 run=$2; shift 2
  if [ -f "$run/checkpoint.pt" ]; then
    "$bin/hs-train" "$stage" --resume --data "$out/data" --out "$run" --max-minutes 8 "$@"
  else
    "$bin/hs-train" "$stage" --data "$out/data" --config small --out "$run" --max-minutes 8 "$@"
  fi
}

echo "== 2/5 stage 1: VQ autoencoder (small config) =="
train vqvae "$out/vqvae"; stamp
"$bin/hs-eval" vqvae --checkpoint "$out/vqvae" --data "$out/data" --json "$out/vqvae_eval.json"; stamp

echo "== 3/5 stage 2: conditional latent U-Net (small config) =="
train ldm "$out/ldm" --vqvae "$out/vqvae"; stamp

echo "== 4/5 sample 64 tiles across both tissues (torch reference sampler) =="
rm -rf "$out/samples"
"$bin/hs-sample" --checkpoint "$out/ldm" --n 64 --from-dataset --seed 0 --out "$out/samples"; stamp

echo "== 5/5 done =="
cat <<MSG
dataset        $out/data            (chart $out/data_info.png)
autoencoder    $out/vqvae           (curves $out/vqvae/loss.png, held-out metrics $out/vqvae_eval.json)
generator      $out/ldm             (curves $out/ldm/loss.png)
samples        $out/samples         (contact sheet $out/samples/preview.png, counts $out/samples/control.png)
MSG
