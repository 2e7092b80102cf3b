"""``--qc TOL`` and ``--qc-segmenter RUN --qc-min-pq P``: regenerate a tile that fails its checks.

Count check (``--qc TOL``): a tile passes when, for every class, ``|measured - requested| <= max(1, TOL *
requested)`` — an absolute tolerance of one nucleus or the relative tolerance ``TOL``, whichever is larger.
Pair check (``--qc-segmenter``, a :class:`PairCheck`; :mod:`histosmith.segmentation.consistency`): the
downstream segmenter applied to the image must agree with the generated label (per-tile PQ >= P).
Size check (``--qc-max-area``, :class:`AreaLimits`): no nucleus may be larger than its class's limit —
given in pixels, or the 99th percentile of a real dataset's nuclei of that class (merged blobs are the
generator's typical failure; the real 99th percentile is where ``hs-eval realism`` counts them).

An attempt passes when every check that is on passes. A failing tile is sampled again, up to ``attempts``
times in all; attempt ``a`` of tile ``i`` uses noise that depends only on (seed, i, a)
(:func:`histosmith.runtime.seeds.tile_noise`) and every check looks at one tile alone, so QC keeps batch
independence and byte-identical ``--resume``. The first passing attempt is kept; when none passes, the best
attempt is kept and recorded as not passed: one the segmenter agrees with if there is one, then the fewest
oversized nuclei, then the smallest total absolute count error, the earliest on ties. A kept attempt the
segmenter does not agree with is *rejected*: the generation loop leaves it out of the dataset and lists its
row in the shard's ``rejected.csv`` (see :class:`histosmith.data.writer.DatasetWriter`) — the count and size
checks alone only flag.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from histosmith.data.labels import count_nuclei, nucleus_areas
from histosmith.data.reader import Dataset
from histosmith.errors import HistoSmithError, file_error
from histosmith.runtime.postprocess import float_or_nan

AREA_QUANTILE = 99.0  # a dataset given to --qc-max-area limits each class to its nuclei's 99th percentile

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


@dataclass(frozen=True)
class AreaLimits:
    """``--qc-max-area``: the largest nucleus area (pixels) a passing tile may hold, per class name."""

    limits: tuple[tuple[str, float], ...]
    source: str  # "given", or the dataset and percentile the limits were measured from

    @classmethod
    def parse(cls, text: str) -> AreaLimits:
        """``class=px,...``, or a dataset directory: each class's 99th-percentile nucleus area in its ``train``
        split (every tile when it has no split)."""
        if "=" in text:
            limits = []
            for part in (p.strip() for p in text.split(",") if p.strip()):
                name, _, value = part.partition("=")
                area = float_or_nan(value)
                if not (math.isfinite(area) and area > 0):
                    raise HistoSmithError(f"--qc-max-area {part!r}: expected class=pixels with pixels > 0")
                limits.append((name.strip(), area))
            names = [n for n, _ in limits]
            if len(set(names)) != len(names):
                raise HistoSmithError(f"--qc-max-area {text!r}: a class is given twice")
            return cls(tuple(limits), "given")
        return cls.from_dataset(Path(text))

    @classmethod
    def from_dataset(cls, path: Path, quantile: float = AREA_QUANTILE) -> AreaLimits:
        if not (path / "meta.json").is_file():
            raise file_error(path, "--qc-max-area: neither class=pixels pairs nor a dataset (no meta.json)")
        ds = Dataset.open(path)
        names, n_classes = ds.meta.class_names, ds.meta.n_classes
        has_train = any(r.get("split") == "train" for r in ds.patch_info())
        measured = [nucleus_areas(label, n_classes) for _, _, _, label in ds.tiles("train" if has_train else None)]
        area = np.concatenate([a for a, _ in measured] or [np.zeros(0)])
        cls_of = np.concatenate([c for _, c in measured] or [np.zeros(0, int)])
        missing = [n for k, n in enumerate(names) if not (cls_of == k + 1).any()]
        if missing:
            raise HistoSmithError(f"{path}: no {', '.join(missing)} nuclei to measure a --qc-max-area limit from")
        limits = tuple((n, float(np.percentile(area[cls_of == k + 1], quantile))) for k, n in enumerate(names))
        split = "train split" if has_train else "all tiles"
        return cls(limits, f"{path} ({split}), {quantile:g}th percentile per class")

    def vector(self, class_names: list[str]) -> np.ndarray:
        """(K,) limits in the model's class order (inf for a class without one); unknown names are refused."""
        given = dict(self.limits)
        unknown = sorted(set(given) - set(class_names))
        if unknown:
            raise HistoSmithError(f"--qc-max-area: unknown class {unknown[0]!r}; the model's classes are "
                                  f"{', '.join(class_names)}")
        return np.array([given.get(n, np.inf) for n in class_names], dtype=np.float64)

    def record(self) -> dict[str, Any]:
        return {"qc_max_area": {n: round(a, 3) for n, a in self.limits}, "qc_max_area_source": self.source}


def oversized(labels: np.ndarray, n_classes: int, max_area: np.ndarray) -> int:
    """Nuclei of one (H, W, 2) label tile larger than ``max_area`` (K,) of their class."""
    areas, classes = nucleus_areas(labels, n_classes)
    return int(np.sum(areas > max_area[classes - 1]))


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
    oversized: np.ndarray | None = None  # (B,) nuclei of the kept sample above their area limit; None without one


@dataclass
class _Judged:
    """One attempt's verdicts for a set of tiles."""

    passed: np.ndarray  # (B,) bool
    agrees: np.ndarray  # (B,) bool (all True without a pair check)
    error: np.ndarray  # (B,) total absolute count error
    counts: np.ndarray  # (B, K) measured counts
    score: np.ndarray  # (B,) pair-check score (NaN without one)
    oversized: np.ndarray  # (B,) nuclei above their class's area limit (0 without a size check)


def _judge(images: list[np.ndarray], labels: list[np.ndarray], requested: np.ndarray, n_classes: int, margin: int,
           tol: float | None, check: PairCheck | None, max_area: np.ndarray | None) -> _Judged:
    n = len(labels)
    counts = np.stack([count_nuclei(np.asarray(x), n_classes, margin) for x in labels])
    error = np.abs(counts - requested).sum(1)
    passed = within_tolerance(requested, counts, tol) if tol is not None else np.ones(n, bool)
    big = np.array([oversized(np.asarray(x), n_classes, max_area) for x in labels]) if max_area is not None \
        else np.zeros(n, np.int64)
    passed &= big == 0
    if check is None:
        return _Judged(passed, np.ones(n, bool), error, counts, np.full(n, np.nan), big)
    score = np.asarray(check.scores(images, labels), float)
    agrees = score >= check.min_score
    return _Judged(passed & agrees, agrees, error, counts, score, big)


def sample_with_qc(sample: Sampler, indices: np.ndarray, requested: np.ndarray, n_classes: int, margin: int,
                   tol: float | None, attempts: int, check: PairCheck | None = None,
                   max_area: np.ndarray | None = None) -> QCTiles:
    """Sample ``indices`` and resample failing tiles (see the module doc); ``requested`` is (B, K);
    ``tol`` None switches the count check off, ``check`` None the pair check, ``max_area`` (K,) None the size
    check."""
    images, labels = sample(indices, 0)
    kept = _judge(images, labels, requested, n_classes, margin, tol, check, max_area)
    first = kept.counts.copy()  # attempt 0: what the tile would hold without QC
    used = np.ones(len(indices), dtype=np.int64)
    for attempt in range(1, attempts):
        pending = np.flatnonzero(~kept.passed)
        if len(pending) == 0:
            break
        new_images, new_labels = sample(indices[pending], attempt)
        new = _judge(new_images, new_labels, requested[pending], n_classes, margin, tol, check, max_area)
        for j, t in enumerate(pending):
            used[t] = attempt + 1
            better = (new.agrees[j], -new.oversized[j], -new.error[j]) > (kept.agrees[t], -kept.oversized[t],
                                                                           -kept.error[t])
            if new.passed[j] or better:
                images[t], labels[t] = new_images[j], new_labels[j]
                for name in ("passed", "agrees", "error", "score", "oversized"):
                    getattr(kept, name)[t] = getattr(new, name)[j]
    with_check = check is not None
    return QCTiles(images, labels, used, kept.passed, kept.score if with_check else None,
                   kept.agrees if with_check else None, first, kept.oversized if max_area is not None else None)


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
    if "qc_oversized" in rows[0]:
        big = np.array([int(r["qc_oversized"]) for r in rows])
        result |= {"tiles_with_oversized": int(np.sum(big > 0)), "oversized_nuclei": int(big.sum())}
    if "qc_pq" in rows[0]:
        rejected = len(rows) - len(ds)
        result |= {"kept": len(rows) - rejected, "rejected": rejected,
                   "mean_pq": float(np.mean([float(r["qc_pq"]) for r in rows]))}
    return result
