"""PanNuke folds: images.npy, masks.npy (6 channels), types.npy (tissue per tile).

``masks`` channels 0..4 are per-class instance maps (neoplastic, inflammatory, connective, dead,
epithelial) whose ids repeat across channels; channel 5 is background. Ids are made unique per tile.
PanNuke stores images and masks as float64, so arrays are read memory-mapped and converted per tile.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from histosmith.data.codecs import npy_header
from histosmith.data.labels import relabel_sequential
from histosmith.data.sources.common import Source, Tile, Tiling, cut_tiles
from histosmith.errors import file_error

PANNUKE_CLASSES = ["neoplastic", "inflammatory", "connective", "dead", "epithelial"]


def _find(root: Path, name: str) -> Path:
    if (root / name).exists():
        return root / name
    found = sorted(root.rglob(name))
    if len(found) != 1:
        what = "not found" if not found else f"found {len(found)} copies ({', '.join(map(str, found[:3]))})"
        raise file_error(root / name, f"{what}; point --path at one PanNuke fold")
    return found[0]


def merge_pannuke_masks(mask: np.ndarray) -> np.ndarray:
    """(H, W, 6) PanNuke mask -> (H, W, 2) int32 instance + class labels with unique ids."""
    labels = np.zeros((*mask.shape[:2], 2), dtype=np.int32)
    offset = 0
    for c in range(len(PANNUKE_CLASSES)):
        channel = mask[..., c].astype(np.int64)
        region = channel > 0
        if not region.any():
            continue
        ids = relabel_sequential(channel)
        labels[region, 0] = ids[region] + offset
        labels[region, 1] = c + 1
        offset += int(ids.max())
    labels[..., 0] = relabel_sequential(labels[..., 0])
    return labels


def pannuke_source(path: Path, tiling: Tiling | None = None) -> Source:
    tiling = tiling or Tiling()
    images_path, masks_path, types_path = (_find(path, n) for n in ("images.npy", "masks.npy", "types.npy"))
    img_shape, _ = npy_header(images_path)
    mask_shape, _ = npy_header(masks_path)
    if len(img_shape) != 4 or img_shape[-1] != 3:
        raise file_error(images_path, f"expected (N, H, W, 3), got {img_shape}")
    if tuple(mask_shape) != tuple(img_shape[:3]) + (6,):
        raise file_error(masks_path, f"shape {mask_shape} does not match images {img_shape} with 6 channels")
    try:
        types = np.load(types_path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise file_error(types_path, f"corrupt or truncated .npy ({exc})") from None
    if types.shape != (img_shape[0],):
        raise file_error(types_path, f"expected {img_shape[0]} tissue names, got shape {types.shape}")
    tissue_of = [str(t).strip().lower().replace(" ", "_") for t in types]
    n = img_shape[0]

    def tiles() -> Iterator[Tile]:
        images = np.load(images_path, mmap_mode="r")
        masks = np.load(masks_path, mmap_mode="r")
        for i in range(n):
            labels = merge_pannuke_masks(np.asarray(masks[i]))
            info = {"tissue": tissue_of[i], "source_index": i}
            yield from cut_tiles(np.asarray(images[i]), labels, tiling, f"pannuke-{i:05d}", info,
                                 len(PANNUKE_CLASSES))

    return Source(
        class_names=list(PANNUKE_CLASSES),
        tissue_names=sorted(set(tissue_of)),
        tile_size=tiling.output_size(img_shape[1]),
        tiles=tiles(),
        n_tiles_hint=n,
        source=f"PanNuke fold from {path}",
        licence="see the source dataset (PanNuke: CC BY-NC-SA 4.0)",
        microns_per_pixel=0.25 * tiling.downscale,
    )
