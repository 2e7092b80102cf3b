"""What every source yields, and the tiling shared by all of them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from histosmith.data.labels import downscale_image, downscale_labels, relabel_sequential
from histosmith.errors import HistoSmithError


@dataclass
class Tile:
    """One labelled tile: uint8 (H, W, 3) RGB, int32 (H, W, 2) labels, and patch_info columns."""

    image: np.ndarray
    labels: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Source:
    """A source ready to be written: names, provenance and a lazy stream of tiles."""

    class_names: list[str]
    tissue_names: list[str]
    tile_size: int
    tiles: Iterator[Tile]
    n_tiles_hint: int | None = None
    source: str = ""
    licence: str = ""
    notes: str = ""
    microns_per_pixel: float | None = None
    count_margin: int = 0


@dataclass(frozen=True)
class Tiling:
    """How source images become tiles: downscale first, then cut ``tile_size`` windows every ``stride``."""

    tile_size: int | None = None  # None: keep the source's own tile size
    stride: int | None = None  # None: equal to tile_size (no overlap)
    downscale: int = 1

    def __post_init__(self) -> None:
        if self.downscale < 1:
            raise HistoSmithError(f"--downscale must be >= 1, got {self.downscale}")
        if self.tile_size is not None and self.tile_size < 8:
            raise HistoSmithError(f"--tile-size must be >= 8, got {self.tile_size}")
        if self.stride is not None and self.stride < 1:
            raise HistoSmithError(f"--stride must be >= 1, got {self.stride}")

    def output_size(self, source_size: int) -> int:
        return self.tile_size or source_size // self.downscale


def cut_tiles(
    image: np.ndarray, labels: np.ndarray, tiling: Tiling, name: str, info: dict[str, Any]
) -> Iterator[Tile]:
    """Downscale one labelled image and cut it into tiles; instance ids renumbered per tile."""
    image = downscale_image(image, tiling.downscale)
    labels = downscale_labels(labels, tiling.downscale)
    h, w = image.shape[:2]
    size = tiling.tile_size or min(h, w)
    stride = tiling.stride or size
    if h < size or w < size:
        raise HistoSmithError(f"{name}: image of {h}x{w} px (after downscale) is smaller than the {size} px tile")
    for y in range(0, h - size + 1, stride):
        for x in range(0, w - size + 1, stride):
            lab = labels[y : y + size, x : x + size].copy()
            lab[..., 0] = relabel_sequential(lab[..., 0])
            lab[lab[..., 0] == 0, 1] = 0
            tile_info = dict(info, patch_info=f"{name}-y{y:04d}-x{x:04d}", x=x, y=y)
            yield Tile(np.ascontiguousarray(image[y : y + size, x : x + size]), lab, tile_info)
