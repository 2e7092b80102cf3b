"""Procedural labelled tiles: nuclei as textured ellipses on a stained background.

Offline and exact: every label is known, and tile ``i`` depends only on ``(seed, i)``. Classes differ
in size, shape and stain the way real ones do (large pale epithelial nuclei, small dark round
lymphocytes, rare multi-lobed neutrophils), and the two tissues differ in background stain and in how
many nuclei of each class they hold, so the set has a real class imbalance to rebalance.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from histosmith.data.sources.common import Source, Tile
from histosmith.errors import HistoSmithError

CLASS_NAMES = ["epithelial", "lymphocyte", "neutrophil"]
TISSUE_NAMES = ["stroma", "epithelium"]


@dataclass(frozen=True)
class NucleusStyle:
    radius: float  # mean semi-axis at 64 px tiles, in pixels
    elongation: float  # mean major / minor axis ratio
    rgb: tuple[int, int, int]  # haematoxylin colour
    lobes: int  # > 1 draws overlapping lobes (neutrophil-like)


STYLES = {
    "epithelial": NucleusStyle(4.2, 1.5, (120, 80, 160), 1),
    "lymphocyte": NucleusStyle(2.6, 1.05, (60, 30, 110), 1),
    "neutrophil": NucleusStyle(1.6, 1.0, (85, 40, 130), 3),
}
# Mean nuclei per 64x64 tile, per tissue, in CLASS_NAMES order.
RATES = {"stroma": (1.5, 4.0, 0.6), "epithelium": (6.0, 1.5, 0.25)}
BACKGROUND = {"stroma": (236, 170, 200), "epithelium": (225, 190, 215)}


def _draw_nucleus(mask: np.ndarray, rng: np.random.Generator, style: NucleusStyle, scale: float) -> None:
    h, w = mask.shape
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    if style.lobes == 1:
        minor = max(1.2, rng.normal(style.radius, 0.15 * style.radius) * scale)
        major = minor * max(1.0, rng.normal(style.elongation, 0.1))
        angle = rng.uniform(0, 180)
        cv2.ellipse(mask, (int(cx * 16), int(cy * 16)), (int(major * 16), int(minor * 16)), angle, 0, 360, 1, -1,
                    cv2.LINE_8, 4)
        return
    angle0 = rng.uniform(0, 2 * np.pi)
    for k in range(style.lobes):
        a = angle0 + 2 * np.pi * k / style.lobes
        r = style.radius * scale
        ly, lx = cy + 1.1 * r * np.sin(a), cx + 1.1 * r * np.cos(a)
        cv2.circle(mask, (int(lx * 16), int(ly * 16)), int(r * 1.15 * 16), 1, -1, cv2.LINE_8, 4)


def synthetic_tile(seed: int, index: int, tile_size: int = 64) -> Tile:
    """Tile ``index`` of the synthetic set with base ``seed``."""
    rng = np.random.default_rng([seed, index])
    tissue = int(rng.integers(len(TISSUE_NAMES)))
    tissue_name = TISSUE_NAMES[tissue]
    scale = tile_size / 64
    area_scale = scale**2
    # Background: eosin with smooth low-frequency variation and fine grain.
    base = np.array(BACKGROUND[tissue_name], dtype=np.float32)
    low = cv2.resize(rng.normal(0, 1, (4, 4)).astype(np.float32), (tile_size, tile_size), cv2.INTER_CUBIC)
    image = base[None, None] * (1 + 0.06 * low[..., None]) + rng.normal(0, 4, (tile_size, tile_size, 3))
    labels = np.zeros((tile_size, tile_size, 2), dtype=np.int32)
    occupied = np.zeros((tile_size, tile_size), dtype=bool)
    next_id = 1
    for c, name in enumerate(CLASS_NAMES):
        style = STYLES[name]
        for _ in range(int(rng.poisson(RATES[tissue_name][c] * area_scale))):
            for _attempt in range(30):
                mask = np.zeros((tile_size, tile_size), dtype=np.uint8)
                _draw_nucleus(mask, rng, style, scale)
                region = mask.astype(bool)
                if region.sum() >= 4 and not (region & occupied).any():
                    break
            else:
                continue
            occupied |= region
            labels[region] = (next_id, c + 1)
            next_id += 1
            colour = np.array(style.rgb, dtype=np.float32) * rng.uniform(0.9, 1.1)
            texture = 1 + 0.08 * rng.normal(0, 1, (int(region.sum()), 1))
            image[region] = colour[None] * texture
    image = cv2.GaussianBlur(image, (3, 3), 0.6)
    image = np.clip(image, 0, 255).astype(np.uint8)
    return Tile(image, labels, {"patch_info": f"synthetic-{seed}-{index:06d}", "tissue": tissue_name,
                                "seed": seed, "index": index})


def synthetic_source(n_tiles: int, tile_size: int = 64, seed: int = 0, val_fraction: float = 0.1) -> Source:
    """The synthetic set as a :class:`Source` (``split`` marks every ``1/val_fraction``-th tile ``val``)."""
    if n_tiles < 1:
        raise HistoSmithError(f"--n-tiles must be >= 1, got {n_tiles}")
    if tile_size < 16:
        raise HistoSmithError(f"--tile-size must be >= 16 for synthetic tiles, got {tile_size}")
    every = max(2, round(1 / val_fraction)) if val_fraction > 0 else 0

    def tiles() -> Iterator[Tile]:
        for i in range(n_tiles):
            tile = synthetic_tile(seed, i, tile_size)
            tile.info["split"] = "val" if every and i % every == every - 1 else "train"
            yield tile

    return Source(
        class_names=list(CLASS_NAMES),
        tissue_names=list(TISSUE_NAMES),
        tile_size=tile_size,
        tiles=tiles(),
        n_tiles_hint=n_tiles,
        source=f"synthetic (procedural, seed {seed})",
        licence="generated; no restrictions",
        notes="Textured ellipses on a stained background; exact labels. For tests and offline demos.",
    )
