"""Writing a dataset: atomic shards of a fixed size, resumable, and ``meta.json`` with count statistics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histosmith.data.atomic import atomic_directory, remove_stale_temporaries, write_json_atomic
from histosmith.data.codecs import csv_text
from histosmith.data.labels import count_nuclei
from histosmith.data.layout import (
    COUNTS_FILE,
    IMAGES_FILE,
    LABELS_FILE,
    META_FILE,
    PATCH_INFO_FILE,
    REJECTED_FILE,
    SHARD_PREFIX,
    default_shard_size,
    shard_name,
)
from histosmith.data.meta import DatasetMeta
from histosmith.data.reader import open_shard
from histosmith.errors import HistoSmithError, file_error


def write_shard(
    path: Path,
    images: np.ndarray,
    labels: np.ndarray,
    counts: np.ndarray,
    class_names: Sequence[str],
    info_rows: Sequence[Mapping[str, Any]],
    rejected_rows: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Write one complete shard directory atomically (with ``rejected.csv`` when rows were rejected)."""
    info_cols = ["patch_info"] + sorted({k for r in [*info_rows, *rejected_rows] for k in r} - {"patch_info"})
    with atomic_directory(path) as tmp:
        np.save(tmp / IMAGES_FILE, np.ascontiguousarray(images, dtype=np.uint8), allow_pickle=False)
        np.save(tmp / LABELS_FILE, np.ascontiguousarray(labels, dtype=np.int32), allow_pickle=False)
        (tmp / COUNTS_FILE).write_text(csv_text(class_names, counts.tolist()))
        (tmp / PATCH_INFO_FILE).write_text(csv_text(info_cols, [[r.get(c, "") for c in info_cols] for r in info_rows]))
        if rejected_rows:
            (tmp / REJECTED_FILE).write_text(
                csv_text(info_cols, [[r.get(c, "") for c in info_cols] for r in rejected_rows]))


class DatasetWriter:
    """Streams tiles into fixed-size shards; memory holds at most one shard.

    ``resume=True`` keeps the complete shards already in ``root`` and continues after them; the caller
    asks ``tiles_done`` where to restart. ``close()`` writes the last (short) shard and ``meta.json``
    with the count statistics of everything in the directory.

    A tile slot can also be *rejected* (:meth:`reject`, used by generation's segmenter filter): its row goes
    to the shard's ``rejected.csv`` instead of its pixels to the arrays. Shard sizes count slots (tiles plus
    rejected rows), so resuming restarts at the same slot, and a shard may hold fewer tiles (even none).
    """

    def __init__(self, root: str | Path, meta: DatasetMeta, shard_size: int | None = None, resume: bool = False):
        self.root = Path(root)
        self.meta = meta
        self.shard_size = shard_size or default_shard_size(meta.tile_size)
        self.meta.shard_size = self.shard_size
        # One shard's arrays, allocated at the first tile and filled in place: memory is one shard.
        self._images: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._counts: list[np.ndarray] = []
        self._info: list[Mapping[str, Any]] = []
        self._rejected: list[Mapping[str, Any]] = []
        self._done_slots = 0
        self._done_counts: list[np.ndarray] = []  # (n, K) per shard on disk
        self._done_tissues: list[str] = []
        self._prepare(resume)

    def _prepare(self, resume: bool) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise file_error(self.root, f"cannot create output directory ({exc.strerror})") from None
        remove_stale_temporaries(self.root)
        existing = sorted(p for p in self.root.glob(f"{SHARD_PREFIX}*") if p.is_dir())
        if existing and not resume:
            raise file_error(self.root, "already holds shards; use a new directory or resume")
        sizes = []
        for i, path in enumerate(existing):
            if path.name != shard_name(i):
                raise file_error(path, f"unexpected shard name (expected {shard_name(i)})")
            shard = open_shard(path, self.meta.n_classes)
            sizes.append(shard.n_tiles + len(shard.rejected()))
            counts = shard.counts(self.meta.class_names)
            if counts is None:
                raise file_error(path / COUNTS_FILE, "missing in a shard to resume after")
            self._done_counts.append(counts)
            self._done_tissues.extend(r.get("tissue", "") for r in shard.patch_info())
        if any(n != self.shard_size for n in sizes[:-1]) or any(n > self.shard_size for n in sizes):
            raise file_error(self.root, f"shard sizes {sizes} do not fit a shard size of {self.shard_size}")
        self.next_shard = len(sizes)
        self._done_slots = sum(sizes)
        # A short last shard is written only by close(): the dataset is finished.
        self._finished = bool(sizes) and sizes[-1] < self.shard_size

    @property
    def tiles_done(self) -> int:
        """Tile slots already on disk (complete shards, plus a finished short last shard): the tiles written
        and the rejected ones; the index to restart at."""
        return self._done_slots

    def counts(self) -> np.ndarray:
        """Nuclei per class (N, K) of every tile written so far, in order."""
        parts = self._done_counts + ([np.stack(self._counts)] if self._counts else [])
        return np.concatenate(parts) if parts else np.zeros((0, self.meta.n_classes), np.int64)

    def add(self, image: np.ndarray, labels: np.ndarray, info: Mapping[str, Any]) -> None:
        """Queue one tile; a full shard is written out immediately."""
        if self._finished:
            raise HistoSmithError(f"{self.root}: the dataset is already complete")
        if self._images is None:
            self._images = np.empty((self.shard_size, *image.shape), dtype=np.uint8)
            self._labels = np.empty((self.shard_size, *labels.shape), dtype=np.int32)
        k = len(self._info)
        self._images[k] = image
        self._labels[k] = labels
        self._counts.append(count_nuclei(labels, self.meta.n_classes, self.meta.count_margin))
        self._info.append(info)
        self._slot_filled()

    def reject(self, info: Mapping[str, Any]) -> None:
        """Fill one tile slot with a rejected tile: only its row is kept (``rejected.csv`` of the shard)."""
        if self._finished:
            raise HistoSmithError(f"{self.root}: the dataset is already complete")
        self._rejected.append(info)
        self._slot_filled()

    def _slot_filled(self) -> None:
        if len(self._info) + len(self._rejected) == self.shard_size:
            self._flush()

    def _flush(self) -> None:
        n = len(self._info)
        if n + len(self._rejected) == 0:
            return
        size = self.meta.tile_size
        images = self._images[:n] if self._images is not None else np.zeros((0, size, size, 3), np.uint8)
        labels = self._labels[:n] if self._labels is not None else np.zeros((0, size, size, 2), np.int32)
        counts = np.stack(self._counts) if n else np.zeros((0, self.meta.n_classes), np.int64)
        write_shard(self.root / shard_name(self.next_shard), images, labels, counts, self.meta.class_names,
                    self._info, self._rejected)
        self.next_shard += 1
        self._done_slots += n + len(self._rejected)
        self._done_counts.append(counts)
        self._done_tissues.extend(str(r.get("tissue", "")) for r in self._info)
        self._counts, self._info, self._rejected = [], [], []

    def close(self, count_stats: bool = True) -> DatasetMeta:
        """Write the last shard and ``meta.json``; returns the final metadata."""
        self._flush()
        counts = self.counts()
        if count_stats and len(counts):
            self.meta.count_scale, self.meta.count_max = count_statistics(counts)
            self.meta.tissue_tiles = {name: self._done_tissues.count(name) for name in self.meta.tissue_names}
        self.meta.n_tiles = len(counts)
        write_json_atomic(self.root / META_FILE, self.meta.to_json())
        return self.meta


def count_statistics(counts: np.ndarray, percentile: float = 99.0) -> tuple[list[float], list[int]]:
    """Per-class count scale (the ``percentile``, at least 1) and maximum, from (N, K) counts."""
    if counts.size == 0:
        k = counts.shape[1]
        return [1.0] * k, [0] * k
    scale = np.maximum(np.percentile(counts, percentile, axis=0), 1.0)
    return [float(round(s, 4)) for s in scale], [int(m) for m in counts.max(axis=0)]
