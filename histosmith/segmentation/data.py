"""Training tiles of the segmenter: a real set, optional extra (synthetic) sets, and how batches mix them.

Real tiles come from the ``train`` split of their dataset (the held-out ``val`` split is never read
here); an extra dataset contributes all its tiles (generated sets have no split). Without an extra
ratio the union is sampled uniformly (the usual "train on real + synthetic"); with one, that share of
every batch comes from the extra tiles. With an ``extra_until`` fraction the extra tiles are drawn only
in that first share of the optimiser steps and the rest trains on real tiles alone (pre-training on
the mixture, fine-tuning on real data: the synthetic domain is left behind before the end).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from histosmith.data.format import Dataset
from histosmith.errors import HistoSmithError
from histosmith.training.data import TileStore


def take(store: TileStore, index: np.ndarray) -> TileStore:
    """The tiles ``index`` of a store (a new store; arrays copied)."""
    arrays = {f.name: getattr(store, f.name)[index] for f in fields(store) if f.name != "n_classes"}
    return TileStore(**arrays, n_classes=store.n_classes)


def concat(stores: list[TileStore]) -> TileStore:
    arrays = {f.name: np.concatenate([getattr(s, f.name) for s in stores]) for f in fields(TileStore)
              if f.name != "n_classes"}
    return TileStore(**arrays, n_classes=stores[0].n_classes)


def real_subset(n: int, fraction: float, seed: int) -> np.ndarray:
    """The first ``round(fraction * n)`` (at least 1) tiles of a seeded permutation, in index order.

    Nested: for one seed, the tiles of a smaller fraction are among those of a larger one.
    """
    if not 0 < fraction <= 1:
        raise HistoSmithError(f"real fraction must lie in (0, 1], got {fraction}")
    order = np.random.default_rng([seed, 7919]).permutation(n)
    return np.sort(order[: max(1, round(fraction * n))])


def check_compatible(reference: Path, others: list[Path]) -> None:
    """Refuse datasets whose class names or tile size differ from ``reference``'s (one line each)."""
    ref = Dataset.open(reference).meta
    for path in others:
        meta = Dataset.open(path).meta
        if meta.class_names != ref.class_names:
            raise HistoSmithError(f"{path}: classes {meta.class_names} differ from {reference}'s {ref.class_names}")
        if meta.tile_size != ref.tile_size:
            raise HistoSmithError(f"{path}: tiles of {meta.tile_size} px, {reference} has {ref.tile_size} px")
        if meta.n_tiles == 0 or len(Dataset.open(path)) == 0:
            raise HistoSmithError(f"{path}: holds no tiles")


@dataclass
class TrainingTiles:
    """The tiles one segmenter run trains on and how its batches are drawn."""

    real: TileStore | None
    extra: TileStore | None
    extra_ratio: float | None  # None: uniform over the union

    def __post_init__(self) -> None:
        if self.real is None and self.extra is None:
            raise HistoSmithError("no training tiles")
        if self.extra_ratio is not None and not 0 <= self.extra_ratio <= 1:
            raise HistoSmithError(f"--extra-ratio must lie in [0, 1], got {self.extra_ratio}")

    @property
    def n_real(self) -> int:
        return 0 if self.real is None else len(self.real)

    @property
    def n_extra(self) -> int:
        return 0 if self.extra is None else len(self.extra)

    def batch(self, rng: np.random.Generator, size: int, real_only: bool = False) -> np.ndarray:
        """Model inputs (B, 3+1+K+1, H, W) of a batch with random dihedral flips (see ``TileStore.inputs``).

        ``real_only``: draw from the real tiles alone (the fine-tuning phase of ``extra_until``).
        """
        if real_only and self.real is None:
            raise HistoSmithError("real-only batches need real tiles")
        if real_only or self.real is None or self.extra is None:
            store = self.real if self.real is not None else self.extra
            return store.inputs(rng.integers(0, len(store), size), rng.integers(0, 8, size)).numpy()
        if self.extra_ratio is None:
            pick = rng.integers(0, self.n_real + self.n_extra, size)
            from_extra = pick >= self.n_real
        else:
            from_extra = rng.random(size) < self.extra_ratio
            pick = np.where(from_extra, rng.integers(0, self.n_extra, size), rng.integers(0, self.n_real, size))
        flips = rng.integers(0, 8, size)
        out = np.empty((size, 4 + self.real.n_classes + 1, *self.real.images.shape[1:3]), np.float32)
        for which, store, offset in ((False, self.real, 0), (True, self.extra, self.n_real)):
            sel = from_extra == which
            if sel.any():
                index = pick[sel] - (offset if self.extra_ratio is None else 0)
                out[sel] = store.inputs(index, flips[sel]).numpy()
        return out


def load_training_tiles(data: Path, extra: list[Path], extra_ratio: float | None, real_fraction: float, seed: int,
                        show_progress: bool) -> TrainingTiles:
    """The ``train`` split of ``data`` (a seeded ``real_fraction`` of it) and every tile of the ``extra`` sets."""
    check_compatible(data, extra)
    real = TileStore.load(data, "train", show_progress)
    if real_fraction < 1:
        real = take(real, real_subset(len(real), real_fraction, seed))
    extras = [TileStore.load(p, None, show_progress) for p in extra]
    return TrainingTiles(real, concat(extras) if extras else None, extra_ratio)
