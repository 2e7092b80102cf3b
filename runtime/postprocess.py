"""From generated maps to labels: watershed on the distance map inside the class foreground.

DESIGN §3: foreground = class argmax != 0; markers = the h-maxima of the distance map (it peaks at 1
in the centre of every nucleus and falls to about 1/radius at its border, so two touching nuclei are
two maxima separated by a deep valley, while the shallow secondary maxima of one irregular nucleus are
merged); watershed on −distance within the foreground; fragments below ``min_area`` dropped; one class per
instance by majority vote. Numpy, scipy and scikit-image, no torch: every backend shares it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import reconstruction
from skimage.segmentation import watershed

from histosmith.data.labels import instance_classes, relabel_sequential

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class PostprocessConfig:
    h: float = 0.4  # a maximum must rise this much above the saddle to its neighbour to seed a nucleus
    min_area: int = 3  # instances smaller than this many pixels are dropped


def reconstruct_by_dilation(seed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Grayscale morphological reconstruction of ``seed`` under ``mask`` (8-connected)."""
    return reconstruction(np.minimum(seed, mask), mask, method="dilation", footprint=_EIGHT)


def h_maxima_markers(distance: np.ndarray, h: float, eps: float = 1e-3) -> tuple[np.ndarray, int]:
    """Label the regional maxima of ``distance`` (zero outside nuclei) whose dynamic is at least ``h``.

    ``rec = R_f(f - h)`` shaves every dome of ``f`` by ``h``; the regional maxima of ``rec`` (pixels
    that ``R_rec(rec - eps)`` cannot reach) are the extended h-maxima: one connected marker per dome,
    however many equal peaks the dome has.
    """
    f = distance.astype(np.float32)
    rec = reconstruct_by_dilation(f - h, f)
    top = rec - reconstruct_by_dilation(rec - eps, rec) >= eps / 2
    return ndimage.label(top & (f > 0), structure=_EIGHT)


def labels_from_maps(distance: np.ndarray, classes: np.ndarray, n_classes: int,
                     cfg: PostprocessConfig = PostprocessConfig()) -> np.ndarray:
    """Distance map (H, W) in [0, 1] and class ids (H, W) -> int32 (H, W, 2) instance + class labels."""
    foreground = classes != 0
    out = np.zeros((*classes.shape, 2), dtype=np.int32)
    if not foreground.any():
        return out
    masked = np.where(foreground, distance, 0).astype(np.float32)
    markers, n_markers = h_maxima_markers(masked, cfg.h)
    # A foreground blob without a core still is a nucleus: it gets its own marker (its whole area).
    blobs, n_blobs = ndimage.label(foreground, structure=_EIGHT)
    has_marker = np.zeros(n_blobs + 1, dtype=bool)
    has_marker[np.unique(blobs[markers > 0])] = True
    orphan = ~has_marker[blobs] & foreground
    if orphan.any():
        extra, _ = ndimage.label(orphan, structure=_EIGHT)
        markers[orphan] = extra[orphan] + n_markers
    # Flood −distance from the markers, restricted to the foreground (scikit-image's priority-flood
    # watershed; scipy's watershed_ift lets a label run downhill into a neighbour's basin).
    inst = watershed(-distance.astype(np.float32), markers, mask=foreground, connectivity=2).astype(np.int32)
    if cfg.min_area > 1:
        areas = np.bincount(inst.ravel())
        inst[(areas < cfg.min_area)[inst] & (inst > 0)] = 0
    inst = relabel_sequential(inst)
    votes = instance_classes(inst, classes, n_classes)
    out[..., 0] = inst
    out[..., 1] = votes[inst]
    return out
