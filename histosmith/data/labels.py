"""Label rasters: instance renumbering, distance maps, class one-hot, nucleus counts.

Conventions (docs/formats.md): a label tile is (H, W, 2) int32; channel 0 = instance ids (0 = background,
1..n), channel 1 = class ids (0 = background, 1..K). Numpy alone: the lean runtime uses it too (the rasters
that data preparation draws with OpenCV are in histosmith/data/rasters.py).
"""

from __future__ import annotations

import numpy as np

CONIC_MARGIN = 16  # CoNIC counts a nucleus if any pixel lies in the central 224x224 of a 256 tile.


def conic_margin_for(tile_size: int) -> int:
    """The CoNIC counting margin applies to 256 px tiles; other sizes count the whole tile."""
    return CONIC_MARGIN if tile_size == 256 else 0


def relabel_sequential(inst: np.ndarray) -> np.ndarray:
    """Renumber instance ids to 1..n in order of first id value, background stays 0."""
    ids = np.unique(inst)
    ids = ids[ids != 0]
    lut = np.zeros(int(inst.max(initial=0)) + 1, dtype=np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[inst]


def instance_classes(inst: np.ndarray, cls: np.ndarray, n_classes: int) -> np.ndarray:
    """Class of every instance id by majority vote of its pixels; index 0 is background.

    Returns an int32 array of length ``inst.max() + 1``; ids that do not occur (and a nucleus whose
    pixels are all class 0) get class 0.
    """
    n_ids = int(inst.max(initial=0)) + 1
    k1 = n_classes + 1
    votes = np.bincount((inst.astype(np.int64) * k1 + cls).ravel(), minlength=n_ids * k1)
    votes = votes[: n_ids * k1].reshape(n_ids, k1)  # (n_ids, K+1)
    votes[:, 0] = 0  # a nucleus is never voted into the background class
    out = votes.argmax(axis=1).astype(np.int32)
    out[votes.max(axis=1) == 0] = 0
    out[0] = 0
    return out


def nucleus_areas(labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Area (pixels) and class (majority vote) of every nucleus of one (H, W, 2) label tile -> two (M,) arrays;
    nuclei voted into no class are left out. The area is the pixel count, as ``regionprops`` reports it."""
    inst = np.asarray(labels[..., 0])
    classes = instance_classes(inst, np.asarray(labels[..., 1]), n_classes)
    areas = np.bincount(inst.ravel().astype(np.int64), minlength=len(classes))[: len(classes)]
    keep = (areas > 0) & (classes > 0)
    keep[0] = False
    return areas[keep].astype(np.int64), classes[keep].astype(np.int64)


def touching_instances(inst: np.ndarray) -> np.ndarray:
    """Boolean (inst.max() + 1,): which instance ids share an 8-neighbourhood edge or corner with another
    instance (two nuclei drawn against each other with no background between them); index 0 is False."""
    inst = np.asarray(inst)
    out = np.zeros(int(inst.max(initial=0)) + 1, dtype=bool)
    for a, b in ((inst[:, :-1], inst[:, 1:]), (inst[:-1], inst[1:]),
                 (inst[:-1, :-1], inst[1:, 1:]), (inst[:-1, 1:], inst[1:, :-1])):
        meet = (a > 0) & (b > 0) & (a != b)
        out[a[meet]] = True
        out[b[meet]] = True
    return out


def count_nuclei(labels: np.ndarray, n_classes: int, margin: int = 0) -> np.ndarray:
    """Nuclei per class in one (H, W, 2) label tile -> int64 (K,).

    ``margin`` > 0 applies the CoNIC rule: a nucleus counts when any of its pixels lies inside the tile
    shrunk by ``margin`` pixels on every side (``CONIC_MARGIN`` for 256 px tiles).
    """
    inst, cls = labels[..., 0], labels[..., 1]
    classes = instance_classes(inst, cls, n_classes)
    present = np.zeros(len(classes), dtype=bool)
    core = inst[margin : inst.shape[0] - margin, margin : inst.shape[1] - margin] if margin else inst
    present[np.unique(core)] = True
    present[0] = False
    return np.bincount(classes[present], minlength=n_classes + 1)[1:].astype(np.int64)


def one_hot(cls: np.ndarray, n_classes: int) -> np.ndarray:
    """Class map (H, W) -> float32 one-hot (K+1, H, W), channel 0 = background."""
    return (np.arange(n_classes + 1, dtype=cls.dtype)[:, None, None] == cls[None]).astype(np.float32)


def check_labels(labels: np.ndarray, n_classes: int) -> str | None:
    """Return a description of what is wrong with a label array (N, H, W, 2) or (H, W, 2), else None."""
    if labels.ndim not in (3, 4) or labels.shape[-1] != 2:
        return f"labels must have shape (N, H, W, 2), got {labels.shape}"
    if not np.issubdtype(labels.dtype, np.integer):
        return f"labels must be integers, got {labels.dtype}"
    inst, cls = labels[..., 0], labels[..., 1]
    if inst.size and inst.min() < 0:
        return "instance ids must be >= 0"
    if cls.size and (cls.min() < 0 or cls.max() > n_classes):
        return f"class ids must lie in 0..{n_classes}, found {int(cls.min())}..{int(cls.max())}"
    return None


def downscale_labels(labels: np.ndarray, factor: int, min_area: int = 1) -> np.ndarray:
    """Nearest-neighbour downscale of one (H, W, 2) label tile; renumbers and drops tiny fragments."""
    if factor == 1:
        return labels.astype(np.int32)
    small = labels[factor // 2 :: factor, factor // 2 :: factor].astype(np.int32)
    inst = small[..., 0]
    if min_area > 1 and inst.any():
        areas = np.bincount(inst.ravel())
        small[np.isin(inst, np.flatnonzero(areas < min_area)) & (inst > 0)] = 0
    small[..., 0] = relabel_sequential(small[..., 0])
    return small
