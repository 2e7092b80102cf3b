#!/usr/bin/env bash
# End to end on the embedded example data (`make demo`). Safe to rerun: finished stages are kept.
set -euo pipefail
out=${1:-runs/demo}
bin=$(dirname "$0")/../.venv/bin
mkdir -p "$out"

echo "== 1/1 example data: two real H&E tiles from the histolytics wheel, tiled =="
if [ ! -f "$out/data/meta.json" ]; then
  "$bin/hs-data" prepare --source example --out "$out/data"
fi
"$bin/hs-data" info "$out/data" --plot "$out/data_info.png"

echo
echo "dataset: $out/data    chart: $out/data_info.png"
