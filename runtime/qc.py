"""``--qc TOL`` and ``--qc-segmenter RUN --qc-min-pq P``: regenerate a tile that fails its checks.

Count check (``--qc TOL``): a tile passes when, for every class, ``|measured - requested| <= max(1, TOL *
requested)`` — an absolute tolerance of one nucleus or the relative tolerance ``TOL``, whichever is larger.
Pair check (``--qc-segmenter``, a :class:`PairCheck`; :mod:`histosmith.segmentation.consistency`): the
downstream segmenter applied to the image must agree with the generated label (per-tile PQ >= P).

An attempt passes when every check that is on passes. A failing tile is sampled again, up to ``attempts``
times in all; attempt ``a`` of tile ``i`` uses noise that depends only on (seed, i, a)
(:func:`histosmith.runtime.seeds.tile_noise`) and every check looks at one tile alone, so QC keeps batch
independence and byte-identical ``--resume``. The first passing attempt is kept; when none passes, the best
attempt is kept and recorded as not passed: one the segmenter agrees with if there is one, then the smallest
total absolute count error, the earliest on ties. A kept attempt the segmenter does not agree with is
*rejected*: the generation loop leaves it out of the dataset and lists its row in the shard's
``rejected.csv`` (see :class:`histosmith.data.writer.DatasetWriter`) — the count check alone only flags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from histosmith.data.labels import count_nuclei
from histosmith.data.reader import Dataset

# sample(indices, attempt) -> (images (H, W, 3) uint8, labels (H, W, 2)) per tile
Sampler = Callable[[np.ndarray, int], tuple[list[np.ndarray], list[np.ndarray]]]


class PairCheck(Protocol):
    """A check of a generated (image, label) pair that scores each tile on its own."""

    min_score: float  # a tile passes when its score is at least this

    def scores(self, images: list[np.ndarray], labels: list[np.ndarray]) -> np.ndarray:
        """(B,) scores of (H, W, 3) uint8 images and their (H, W, 2) labels; each from its tile alone."""
        ...

    def record(self) -> dict[str, Any]:
        """The check's settings for ``generation.json`` (a resumed run must match them)."""
        ...


def within_tolerance(requested: np.ndarray, measured: np.ndarray, tol: float) -> np.ndarray:
    """(N, K) requested and measured counts -> (N,) bool: every class within max(1, tol * requested)."""
    q, m = np.asarray(requested, float), np.asarray(measured, float)
    return np.all(np.abs(m - q) <= np.maximum(1.0, tol * q), axis=-1)


@dataclass
class QCTiles:
    images: list[np.ndarray]
    labels: list[np.ndarray]
    attempts: np.ndarray | None  # (B,) samples drawn per tile; None without QC
    passed: np.ndarray | None  # (B,) bool: the kept sample passes every check; None without QC
    score: np.ndarray | None = None  # (B,) the pair check's score of the kept sample; None without one
    agrees: np.ndarray | None = None  # (B,) bool: the kept sample passes the pair check; None without one
    first: np.ndarray | None = None  # (B, K) measured counts of attempt 0 (= the sample without QC); None without QC


@dataclass
class _Judged:
    """One attempt's verdicts for a set of tiles."""

    passed: np.ndarray  # (B,) bool
    agrees: np.ndarray  # (B,) bool (all True without a pair check)
    error: np.ndarray  # (B,) total absolute count error
    counts: np.ndarray  # (B, K) measured counts
    score: np.ndarray  # (B,) pair-check score (NaN without one)


def _judge(images: list[np.ndarray], labels: list[np.ndarray], requested: np.ndarray, n_classes: int, margin: int,
           tol: float | None, check: PairCheck | None) -> _Judged:
    counts = np.stack([count_nuclei(np.asarray(x), n_classes, margin) for x in labels])
    error = np.abs(counts - requested).sum(1)
    count_ok = within_tolerance(requested, counts, tol) if tol is not None else np.ones(len(labels), bool)
    if check is None:
        return _Judged(count_ok, np.ones(len(labels), bool), error, counts, np.full(len(labels), np.nan))
    score = np.asarray(check.scores(images, labels), float)
    agrees = score >= check.min_score
    return _Judged(count_ok & agrees, agrees, error, counts, score)


def sample_with_qc(sample: Sampler, indices: np.ndarray, requested: np.ndarray, n_classes: int, margin: int,
                   tol: float | None, attempts: int, check: PairCheck | None = None) -> QCTiles:
    """Sample ``indices`` and resample failing tiles (see the module doc); ``requested`` is (B, K);
    ``tol`` None switches the count check off, ``check`` None the pair check."""
    images, labels = sample(indices, 0)
    kept = _judge(images, labels, requested, n_classes, margin, tol, check)
    first = kept.counts.copy()  # attempt 0: what the tile would hold without QC
    used = np.ones(len(indices), dtype=np.int64)
    for attempt in range(1, attempts):
        pending = np.flatnonzero(~kept.passed)
        if len(pending) == 0:
            break
        new_images, new_labels = sample(indices[pending], attempt)
        new = _judge(new_images, new_labels, requested[pending], n_classes, margin, tol, check)
        for j, t in enumerate(pending):
            used[t] = attempt + 1
            better = (new.agrees[j], -new.error[j]) > (kept.agrees[t], -kept.error[t])
            if new.passed[j] or better:
                images[t], labels[t] = new_images[j], new_labels[j]
                for name in ("passed", "agrees", "error", "score"):
                    getattr(kept, name)[t] = getattr(new, name)[j]
    with_check = check is not None
    return QCTiles(images, labels, used, kept.passed, kept.score if with_check else None,
                   kept.agrees if with_check else None, first)


def acceptance(passed: np.ndarray, attempts: np.ndarray) -> dict[str, Any]:
    """Tiles, tiles passed, acceptance rate (share passed) and mean samples per tile; None rates when empty."""
    n = len(passed)
    return {"tiles": n, "passed": int(np.sum(passed)), "acceptance": float(np.mean(passed)) if n else None,
            "mean_attempts": float(np.mean(attempts)) if n else None}


def qc_result(ds: Dataset) -> dict[str, Any] | None:
    """Acceptance of a QC run, from the rows of every tile on disk (so a resumed run counts the tiles of its
    earlier processes too), rejected tiles included; None for a run without QC."""
    rows = ds.patch_info() + ds.rejected()
    if not rows or "qc_pass" not in rows[0]:
        return None
    result: dict[str, Any] = acceptance(np.array([r["qc_pass"] == "1" for r in rows]),
                                        np.array([int(r["qc_attempts"]) for r in rows]))
    if "qc_pq" in rows[0]:
        rejected = len(rows) - len(ds)
        result |= {"kept": len(rows) - rejected, "rejected": rejected,
                   "mean_pq": float(np.mean([float(r["qc_pq"]) for r in rows]))}
    return result
