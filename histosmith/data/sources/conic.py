"""CoNIC / Lizard in the challenge layout: images.npy, labels.npy, counts.csv, patch_info.csv.

Tissue = the cohort prefix of ``patch_info`` (``consep_1-0000`` -> ``consep``). Arrays are read
memory-mapped, tile by tile, so a 5,000-tile set never sits in memory.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from histosmith.data.codecs import npy_header, read_counts_csv, read_counts_header
from histosmith.data.labels import conic_margin_for
from histosmith.data.sources.common import Source, Tile, Tiling, cut_tiles
from histosmith.errors import file_error

CONIC_CLASSES = ["neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil", "connective"]


def cohort(patch_name: str) -> str:
    """``crag_12-0003`` -> ``crag``: the cohort prefix before the first underscore or dash."""
    for sep in ("_", "-"):
        patch_name = patch_name.split(sep)[0]
    return patch_name.strip().lower()


def read_patch_names(path: Path, n_rows: int) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # a spreadsheet's byte-order mark is no data
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise file_error(path, f"unreadable CSV ({exc})") from None
    if rows and rows[0][0].strip().lower() in ("patch_info", "patch", "name"):
        rows = rows[1:]
    if len(rows) != n_rows:
        raise file_error(path, f"has {len(rows)} rows, expected {n_rows} (one per tile)")
    return [r[0].strip() for r in rows]


def conic_source(path: Path, tiling: Tiling | None = None) -> Source:
    """Validate a CoNIC directory up front, then stream its tiles."""
    tiling = tiling or Tiling()
    for name in ("images.npy", "labels.npy", "counts.csv", "patch_info.csv"):
        if not (path / name).exists():
            raise file_error(path / name, "not found (a CoNIC directory needs images.npy, labels.npy, "
                                          "counts.csv and patch_info.csv)")
    img_shape, img_dtype = npy_header(path / "images.npy")
    lab_shape, _ = npy_header(path / "labels.npy")
    if len(img_shape) != 4 or img_shape[-1] != 3:
        raise file_error(path / "images.npy", f"expected (N, H, W, 3), got {img_shape}")
    if tuple(lab_shape) != tuple(img_shape[:3]) + (2,):
        raise file_error(path / "labels.npy", f"shape {lab_shape} does not match images {img_shape}")
    n = img_shape[0]
    header = read_counts_header(path / "counts.csv")
    classes = [c for c in header if c.lower() not in ("", "patch_info", "index")]
    read_counts_csv(path / "counts.csv", classes, n)
    names = read_patch_names(path / "patch_info.csv", n)
    tissues = sorted({cohort(p) for p in names})
    size = tiling.output_size(img_shape[1])

    def tiles() -> Iterator[Tile]:
        images = np.load(path / "images.npy", mmap_mode="r")
        labels = np.load(path / "labels.npy", mmap_mode="r")
        for i in range(n):
            info = {"tissue": cohort(names[i]), "source_index": i}
            yield from cut_tiles(np.asarray(images[i]), np.asarray(labels[i]), tiling, f"{path} tile {i} ({names[i]})",
                                 info, len(classes), names[i])

    return Source(
        class_names=classes,
        tissue_names=tissues,
        tile_size=size,
        tiles=tiles(),
        n_tiles_hint=n,
        source=f"CoNIC/Lizard layout from {path}",
        licence="see the source dataset (Lizard: CC BY-NC-SA 4.0)",
        count_margin=conic_margin_for(size),
        microns_per_pixel=0.5 * tiling.downscale,
    )
