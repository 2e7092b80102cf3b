"""Rasters that data preparation and training draw with OpenCV (the [train] extra): the per-nucleus distance
map the model learns, and the area-averaging downscale of source images."""

from __future__ import annotations

import cv2
import numpy as np

from histosmith.runtime.morphology import find_objects


def distance_map(inst: np.ndarray) -> np.ndarray:
    """Per-nucleus Euclidean distance to the nucleus border, scaled to 1 at its centre, 0 outside.

    Each nucleus is measured on its own mask, so touching nuclei stay separated by a valley of low
    values — that valley is what the watershed in post-processing splits along. Returns float32 (H, W).
    """
    out = np.zeros(inst.shape, dtype=np.float32)
    for index, box in enumerate(find_objects(inst)):
        if box is None:
            continue
        nucleus_id = index + 1
        crop = inst[box] == nucleus_id
        # Pad by one so that the tile edge acts as a border too (a cut nucleus peaks inside the tile).
        padded = np.pad(crop, 1).astype(np.uint8)
        dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
        peak = dist.max()
        if peak > 0:
            region = out[box]
            region[crop] = dist[crop] / peak
    return out


def downscale_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Area-averaging downscale of a uint8 (H, W, 3) image."""
    if factor == 1:
        return image
    h, w = image.shape[0] // factor, image.shape[1] // factor
    return cv2.resize(image[: h * factor, : w * factor], (w, h), interpolation=cv2.INTER_AREA)
