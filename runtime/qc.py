"""``--qc TOL``: regenerate a tile whose measured counts miss its request.

A tile passes when, for every class, ``|measured - requested| <= max(1, TOL * requested)`` — an absolute
tolerance of one nucleus or the relative tolerance ``TOL``, whichever is larger. A failing tile is sampled
again, up to ``attempts`` times in all; attempt ``a`` of tile ``i`` uses noise that depends only on
(seed, i, a) (:func:`histosmith.runtime.seeds.tile_noise`), so QC keeps batch independence and
byte-identical ``--resume``. The first passing attempt is kept; when none passes, the attempt with the
smallest total absolute count error (the earliest on ties) is kept and recorded as not passed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from histosmith.data.labels import count_nuclei
from histosmith.data.reader import Dataset

# sample(indices, attempt) -> (images (H, W, 3) uint8, labels (H, W, 2)) per tile
Sampler = Callable[[np.ndarray, int], tuple[list[np.ndarray], list[np.ndarray]]]


def within_tolerance(requested: np.ndarray, measured: np.ndarray, tol: float) -> np.ndarray:
    """(N, K) requested and measured counts -> (N,) bool: every class within max(1, tol * requested)."""
    q, m = np.asarray(requested, float), np.asarray(measured, float)
    return np.all(np.abs(m - q) <= np.maximum(1.0, tol * q), axis=-1)


@dataclass
class QCTiles:
    images: list[np.ndarray]
    labels: list[np.ndarray]
    attempts: np.ndarray | None  # (B,) samples drawn per tile; None without QC
    passed: np.ndarray | None  # (B,) bool: the kept sample is within tolerance; None without QC


def sample_with_qc(sample: Sampler, indices: np.ndarray, requested: np.ndarray, n_classes: int, margin: int,
                   tol: float, attempts: int) -> QCTiles:
    """Sample ``indices`` and resample failing tiles (see the module doc); ``requested`` is (B, K)."""
    images, labels = sample(indices, 0)

    def measure(lab: list[np.ndarray]) -> np.ndarray:
        return np.stack([count_nuclei(np.asarray(x), n_classes, margin) for x in lab])

    counts = measure(labels)
    passed = within_tolerance(requested, counts, tol)
    error = np.abs(counts - requested).sum(1)
    used = np.ones(len(indices), dtype=np.int64)
    for attempt in range(1, attempts):
        pending = np.flatnonzero(~passed)
        if len(pending) == 0:
            break
        new_images, new_labels = sample(indices[pending], attempt)
        new_counts = measure(new_labels)
        ok = within_tolerance(requested[pending], new_counts, tol)
        new_error = np.abs(new_counts - requested[pending]).sum(1)
        for j, t in enumerate(pending):
            used[t] = attempt + 1
            if ok[j] or new_error[j] < error[t]:
                images[t], labels[t], error[t], passed[t] = new_images[j], new_labels[j], new_error[j], ok[j]
    return QCTiles(images, labels, used, passed)


def qc_result(ds: Dataset) -> dict[str, float | int] | None:
    """Acceptance of a QC run, from the patch_info rows of every tile on disk (so a resumed run counts the
    tiles of its earlier processes too); None for a run without QC."""
    rows = ds.patch_info()
    if not rows or "qc_pass" not in rows[0]:
        return None
    passed = sum(int(r["qc_pass"]) for r in rows)
    return {"tiles": len(rows), "passed": passed, "acceptance": passed / len(rows),
            "mean_attempts": float(np.mean([int(r["qc_attempts"]) for r in rows]))}
