"""What every source yields, and the tiling shared by all of them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from histosmith.data.labels import (
    check_labels,
    downscale_labels,
    instance_classes,
    relabel_sequential,
)
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


def as_uint8_image(image: np.ndarray, where: str) -> np.ndarray:
    """An (H, W, 3) RGB image as uint8; other dtypes only when every value is a whole number in 0..255."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise HistoSmithError(f"{where}: expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    if image.dtype.kind not in "uif":
        raise HistoSmithError(f"{where}: image values of type {image.dtype}; expected uint8 RGB")
    if image.size and (not np.isfinite(image).all() or image.min() < 0 or image.max() > 255
                       or (image.dtype.kind == "f" and not (image == np.round(image)).all())):
        raise HistoSmithError(f"{where}: {image.dtype} image with values outside the whole numbers 0..255 "
                              f"({float(np.nanmin(image)):g}..{float(np.nanmax(image)):g}); convert it to uint8 "
                              "RGB first (refusing to clip or round)")
    return image.astype(np.uint8)


def as_label_array(labels: np.ndarray, where: str) -> np.ndarray:
    """Label maps as int32; float maps only when every value is a whole number (1.5 is refused)."""
    labels = np.asarray(labels)
    if labels.dtype.kind in "iub":
        if labels.size and labels.max() > np.iinfo(np.int32).max:
            raise HistoSmithError(f"{where}: label ids beyond int32")
        return labels.astype(np.int32)
    if labels.dtype.kind != "f":
        raise HistoSmithError(f"{where}: label values of type {labels.dtype}; expected integers")
    if labels.size and (not np.isfinite(labels).all() or not (labels == np.round(labels)).all()
                        or np.abs(labels).max() > np.iinfo(np.int32).max):
        bad = labels[~np.isfinite(labels) | (labels != np.round(labels))]
        example = f" (e.g. {float(bad.flat[0]):g})" if bad.size else ""
        raise HistoSmithError(f"{where}: label values that are not whole ids{example}; labels are integers")
    return labels.astype(np.int32)


def check_every_nucleus_has_a_class(labels: np.ndarray, n_classes: int, where: str) -> None:
    """Refuse a nucleus whose pixels are all class 0: counting it as background would lose it silently."""
    inst = labels[..., 0]
    classes = instance_classes(inst, labels[..., 1], n_classes)
    present = np.zeros(len(classes), dtype=bool)
    present[np.unique(inst)] = True
    present[0] = False
    orphans = np.flatnonzero(present & (classes == 0))
    if len(orphans):
        raise HistoSmithError(f"{where}: {len(orphans)} nuclei have no class (class 0 under every pixel, e.g. "
                              f"instance {int(orphans[0])}); give them a class or remove them")


def cut_tiles(
    image: np.ndarray, labels: np.ndarray, tiling: Tiling, where: str, info: dict[str, Any], n_classes: int,
    name: str | None = None,
) -> Iterator[Tile]:
    """Check one labelled image (``where`` names it in errors), downscale it and cut it into tiles named
    after ``name`` (default ``where``); instance ids are renumbered per tile."""
    name = name or where
    image = as_uint8_image(image, where)
    labels = as_label_array(labels, where)
    problem = check_labels(labels, n_classes)
    if problem:
        raise HistoSmithError(f"{where}: {problem}")
    check_every_nucleus_has_a_class(labels, n_classes, where)
    from histosmith.data.rasters import downscale_image  # OpenCV: the [train] extra (hs-data info needs none)

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
