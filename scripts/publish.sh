#!/usr/bin/env bash
# Commit-ready copy of a run's result files: `scripts/publish.sh runs/reference/results docs/results/reference`.
# Runs write under runs/ only (ignored by git), so running `make demo` or `make reference` leaves the checkout
# clean; publishing is this separate, explicit step. Contact sheets larger than 300 KB are stored as JPEG.
set -euo pipefail
src=${1:?usage: scripts/publish.sh RUN_RESULTS_DIR DEST_DIR}
dest=${2:?usage: scripts/publish.sh RUN_RESULTS_DIR DEST_DIR}
[ -d "$src" ] || { echo "error: $src: no such results directory" >&2; exit 2; }
mkdir -p "$dest"
cp -r "$src"/. "$dest"/
bin=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin
"$bin/python" - "$dest" <<'PY'
import sys
from pathlib import Path

from PIL import Image

for png in Path(sys.argv[1]).rglob("*.png"):
    if png.stat().st_size > 300_000:
        image = Image.open(png).convert("RGB")
        image.save(png.with_suffix(".jpg"), quality=85, optimize=True)
        png.unlink()
        print(f"{png} -> {png.with_suffix('.jpg')}")
PY
echo "published $src -> $dest; review with git status, then commit"
