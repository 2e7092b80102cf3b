"""Reading a dataset directory (sharded HistoSmith layout or a plain CoNIC directory), lazily."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histosmith.data.codecs import load_npy, npy_header, read_counts_csv, read_counts_header, read_csv_rows
from histosmith.data.labels import check_labels
from histosmith.data.layout import (
    COUNTS_FILE,
    IMAGES_FILE,
    LABELS_FILE,
    META_FILE,
    PATCH_INFO_FILE,
    REJECTED_FILE,
    SHARD_PREFIX,
)
from histosmith.data.meta import DatasetMeta
from histosmith.errors import file_error


@dataclass(frozen=True)
class Shard:
    """One CoNIC directory: arrays memory-mapped on demand."""

    path: Path
    n_tiles: int
    tile_shape: tuple[int, int]

    def images(self) -> np.ndarray:
        return load_npy(self.path / IMAGES_FILE)

    def labels(self) -> np.ndarray:
        return load_npy(self.path / LABELS_FILE)

    def counts(self, class_names: Sequence[str]) -> np.ndarray | None:
        path = self.path / COUNTS_FILE
        return read_counts_csv(path, class_names, self.n_tiles) if path.exists() else None

    def patch_info(self) -> list[dict[str, str]]:
        path = self.path / PATCH_INFO_FILE
        if not path.exists():
            return [{"patch_info": f"{self.path.name}-{i:05d}"} for i in range(self.n_tiles)]
        rows = read_csv_rows(path)
        if len(rows) != self.n_tiles:
            raise file_error(path, f"has {len(rows)} rows but the shard has {self.n_tiles} tiles")
        return rows

    def rejected(self) -> list[dict[str, str]]:
        """patch_info rows of the tiles generated for this shard but left out of it by a filter (none for
        other data): the shard's tile slots are its tiles plus these rows."""
        path = self.path / REJECTED_FILE
        return read_csv_rows(path) if path.exists() else []


def open_shard(path: Path, n_classes: int | None) -> Shard:
    img_shape, img_dtype = npy_header(path / IMAGES_FILE)
    lab_shape, lab_dtype = npy_header(path / LABELS_FILE)
    if len(img_shape) != 4 or img_shape[-1] != 3 or img_dtype != np.uint8:
        raise file_error(path / IMAGES_FILE, f"expected uint8 (N, H, W, 3), got {img_dtype} {img_shape}")
    if len(lab_shape) != 4 or lab_shape[-1] != 2 or not np.issubdtype(lab_dtype, np.integer):
        raise file_error(path / LABELS_FILE, f"expected integer (N, H, W, 2), got {lab_dtype} {lab_shape}")
    if lab_shape[:3] != img_shape[:3]:
        raise file_error(
            path / LABELS_FILE, f"shape {lab_shape} does not match images {img_shape} (N, H, W must agree)"
        )
    return Shard(path, int(img_shape[0]), (int(img_shape[1]), int(img_shape[2])))


class Dataset:
    """A dataset directory (sharded HistoSmith layout or a plain CoNIC directory), read lazily."""

    def __init__(self, root: str | Path, meta: DatasetMeta, shards: list[Shard]):
        self.root = Path(root)
        self.meta = meta
        self.shards = shards

    @classmethod
    def open(
        cls, root: str | Path, class_names: Sequence[str] | None = None, meta: DatasetMeta | None = None
    ) -> Dataset:
        """Open and validate headers (not the pixels).

        The metadata comes from ``meta`` if given, else ``meta.json``, else the ``counts.csv`` header (or
        ``class_names``) of a plain CoNIC directory.
        """
        root = Path(root)
        if not root.is_dir():
            raise file_error(root, "not a dataset directory (missing)")
        if (root / IMAGES_FILE).exists():
            shard_dirs = [root]
        else:
            shard_dirs = sorted(p for p in root.glob(f"{SHARD_PREFIX}*") if p.is_dir())
        if not shard_dirs:
            raise file_error(root, f"no {IMAGES_FILE} and no {SHARD_PREFIX}* directories")
        if meta is not None:
            pass
        elif (root / META_FILE).exists():
            meta = DatasetMeta.load(root / META_FILE)
        else:
            names = list(class_names) if class_names else _class_names_from_counts(shard_dirs[0])
            meta = DatasetMeta(class_names=names, tissue_names=[], tile_size=0, count_margin=0)
        shards = [open_shard(p, meta.n_classes) for p in shard_dirs]
        sizes = {s.tile_shape for s in shards}
        if len(sizes) > 1:
            raise file_error(root, f"shards disagree on tile size: {sorted(sizes)}")
        if not meta.tile_size:
            meta.tile_size = shards[0].tile_shape[0]
        meta.n_tiles = sum(s.n_tiles for s in shards)
        return cls(root, meta, shards)

    def __len__(self) -> int:
        return sum(s.n_tiles for s in self.shards)

    def iter_shards(self, check_classes: bool = True) -> Iterator[tuple[Shard, np.ndarray, np.ndarray]]:
        """Yield (shard, images, labels) with arrays memory-mapped; labels are checked per shard."""
        for shard in self.shards:
            images, labels = shard.images(), shard.labels()
            if check_classes:
                problem = check_labels(np.asarray(labels), self.meta.n_classes)
                if problem:
                    raise file_error(shard.path / LABELS_FILE, problem)
            yield shard, images, labels

    def tiles(self, split: str | None = None) -> Iterator[tuple[int, dict[str, str], np.ndarray, np.ndarray]]:
        """Yield (tile index, patch_info row, image, label) of the tiles of ``split`` (every tile when None; a
        tile whose row has no ``split`` belongs to every split)."""
        rows = self.patch_info()
        i = 0
        for _, images, labels in self.iter_shards():
            for image, label in zip(images, labels, strict=True):
                row = rows[i] if i < len(rows) else {}
                if split is None or row.get("split", split) == split:
                    yield i, row, image, label
                i += 1

    def counts(self) -> np.ndarray | None:
        """Counts from every shard's counts.csv as (N, K), or None when any shard lacks one."""
        parts = [s.counts(self.meta.class_names) for s in self.shards]
        if any(p is None for p in parts):
            return None
        return np.concatenate(parts) if parts else np.zeros((0, self.meta.n_classes), np.int64)

    def patch_info(self) -> list[dict[str, str]]:
        rows: list[dict[str, str]] = []
        for s in self.shards:
            rows.extend(s.patch_info())
        return rows

    def rejected(self) -> list[dict[str, str]]:
        """The rows of every shard's ``rejected.csv`` (see :meth:`Shard.rejected`)."""
        return [r for s in self.shards for r in s.rejected()]

    def tissue_indices(self) -> np.ndarray:
        """Tissue index per tile from patch_info's ``tissue`` column (-1 where unknown)."""
        lookup = {name: i for i, name in enumerate(self.meta.tissue_names)}
        return np.array([lookup.get(r.get("tissue", ""), -1) for r in self.patch_info()], dtype=np.int64)


def _class_names_from_counts(shard_dir: Path) -> list[str]:
    path = shard_dir / COUNTS_FILE
    if not path.exists():
        raise file_error(shard_dir, f"no {META_FILE} and no {COUNTS_FILE}: class names unknown")
    return read_counts_header(path)
