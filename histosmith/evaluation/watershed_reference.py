"""scikit-image's and scipy's morphology in place of the runtime's numpy one, to check it against them.

The runtime's post-processing (runtime/postprocess.py) draws labels with runtime/morphology.py so that the lean
install needs neither library; :func:`scikit_image_morphology` swaps the four operations back for the versions
the project used before, so that one call of ``labels_from_maps`` can be compared with the other
(benchmarks/bench_postprocess.py, tests/runtime/test_morphology.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from scipy import ndimage
from skimage.morphology import reconstruction
from skimage.segmentation import watershed

from histosmith.runtime import postprocess

_EIGHT = np.ones((3, 3), dtype=bool)


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    return ndimage.label(mask, structure=_EIGHT)


def reconstruct_by_dilation(seed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return reconstruction(np.minimum(seed, mask), mask, method="dilation", footprint=_EIGHT)


def flood(altitude: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """scikit-image's priority-flood watershed, 8-connected."""
    return watershed(altitude, markers, mask=mask, connectivity=2).astype(np.int32)


@contextmanager
def scikit_image_morphology() -> Iterator[None]:
    """Within the block, ``postprocess.labels_from_maps`` labels with scipy and scikit-image."""
    names = {"label": label, "reconstruct_by_dilation": reconstruct_by_dilation, "watershed": flood,
             "find_objects": ndimage.find_objects}
    saved = {name: getattr(postprocess, name) for name in names}
    try:
        for name, function in names.items():
            setattr(postprocess, name, function)
        yield
    finally:
        for name, function in saved.items():
            setattr(postprocess, name, function)
