"""The on-disk dataset: the CoNIC layout in shards, plus ``meta.json`` (DESIGN §2).

```
DIR/meta.json
DIR/shard-00000/images.npy      uint8 (n, H, W, 3) RGB
DIR/shard-00000/labels.npy      int32 (n, H, W, 2): instance ids, class ids
DIR/shard-00000/counts.csv      one column per class name, one row per tile
DIR/shard-00000/patch_info.csv  `patch_info` (tile name), `tissue`, then source-specific columns
```

Every shard is itself a CoNIC directory, so other tools read it as is. A plain CoNIC directory (the four
files at the top level, no shards) is read as a single shard. Shards are written atomically and hold a
fixed number of tiles, so a writer can resume after the last complete shard.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from histosmith.data.atomic import atomic_directory, read_json_object, remove_stale_temporaries, write_json_atomic
from histosmith.data.labels import check_labels, count_nuclei
from histosmith.errors import HistoSmithError, file_error

FORMAT_VERSION = 1
META_FILE = "meta.json"
IMAGES_FILE = "images.npy"
LABELS_FILE = "labels.npy"
COUNTS_FILE = "counts.csv"
PATCH_INFO_FILE = "patch_info.csv"
SHARD_PREFIX = "shard-"
SHARD_BYTES = 128 * 2**20  # target shard size; a shard is the unit held in memory


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}{index:05d}"


def default_shard_size(tile_size: int) -> int:
    """Tiles per shard so that one shard holds about ``SHARD_BYTES`` of images and labels."""
    tile_bytes = tile_size * tile_size * (3 + 2 * 4)
    return max(1, SHARD_BYTES // tile_bytes)


@dataclass
class DatasetMeta:
    """Everything about a dataset that is not per tile (stored as ``meta.json``)."""

    class_names: list[str]
    tissue_names: list[str]
    tile_size: int
    count_margin: int = 0  # 0: whole tile; 16: the CoNIC central-224 rule
    microns_per_pixel: float | None = None
    count_scale: list[float] = field(default_factory=list)  # per class, e.g. the 99th percentile
    count_max: list[int] = field(default_factory=list)  # per class, the largest count seen (training range)
    source: str = ""
    licence: str = ""
    notes: str = ""
    n_tiles: int = 0
    shard_size: int = 0
    tissue_tiles: dict[str, int] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: str | Path = META_FILE) -> DatasetMeta:
        known = {f.name for f in fields(cls)}
        missing = [k for k in ("class_names", "tissue_names", "tile_size") if k not in data]
        if missing:
            raise file_error(path, f"missing keys {missing}")
        version = data.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or isinstance(version, bool):
            raise file_error(path, f"format_version: expected a whole number, got {version!r}")
        if version > FORMAT_VERSION:
            raise file_error(path, f"format version {version} is newer than this HistoSmith")
        meta = cls(**{k: v for k, v in data.items() if k in known})
        problem = meta.problem()
        if problem:
            raise file_error(path, problem)
        return meta

    def problem(self) -> str | None:
        """What is wrong with the field types and values (a hand-edited meta.json), else None."""

        def names(value: Any) -> bool:
            return isinstance(value, list) and all(isinstance(v, str) and v for v in value)

        def whole(value: Any, low: int = 0) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= low

        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        if not names(self.class_names) or not self.class_names:
            return "class_names: expected a list of names"
        if len(set(self.class_names)) != len(self.class_names):
            return "class_names: repeated names"
        if not names(self.tissue_names):
            return "tissue_names: expected a list of names"
        for key in ("tile_size", "count_margin", "n_tiles", "shard_size"):
            if not whole(getattr(self, key)):
                return f"{key}: expected a whole number >= 0, got {getattr(self, key)!r}"
        if self.microns_per_pixel is not None and not (number(self.microns_per_pixel) and self.microns_per_pixel > 0):
            return f"microns_per_pixel: expected a positive number, got {self.microns_per_pixel!r}"
        k = len(self.class_names)
        if self.count_scale and not (isinstance(self.count_scale, list) and len(self.count_scale) == k
                                     and all(number(v) and v > 0 for v in self.count_scale)):
            return f"count_scale: expected {k} positive numbers, got {self.count_scale!r}"
        if self.count_max and not (isinstance(self.count_max, list) and len(self.count_max) == k
                                   and all(whole(v) for v in self.count_max)):
            return f"count_max: expected {k} whole numbers, got {self.count_max!r}"
        if not isinstance(self.tissue_tiles, dict) or not isinstance(self.extra, dict):
            return "tissue_tiles and extra: expected objects"
        for key in ("source", "licence", "notes"):
            if not isinstance(getattr(self, key), str):
                return f"{key}: expected text"
        return None

    @classmethod
    def load(cls, path: str | Path) -> DatasetMeta:
        return cls.from_json(read_json_object(path), path)


# --------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Shard:
    """One CoNIC directory: arrays memory-mapped on demand."""

    path: Path
    n_tiles: int
    tile_shape: tuple[int, int]

    def images(self) -> np.ndarray:
        return _load_npy(self.path / IMAGES_FILE)

    def labels(self) -> np.ndarray:
        return _load_npy(self.path / LABELS_FILE)

    def counts(self, class_names: Sequence[str]) -> np.ndarray | None:
        path = self.path / COUNTS_FILE
        return read_counts_csv(path, class_names, self.n_tiles) if path.exists() else None

    def patch_info(self) -> list[dict[str, str]]:
        path = self.path / PATCH_INFO_FILE
        if not path.exists():
            return [{"patch_info": f"{self.path.name}-{i:05d}"} for i in range(self.n_tiles)]
        rows = _read_csv_rows(path)
        if len(rows) != self.n_tiles:
            raise file_error(path, f"has {len(rows)} rows but the shard has {self.n_tiles} tiles")
        return rows


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise file_error(path, "not found") from None
    except (ValueError, OSError, EOFError) as exc:
        raise file_error(path, f"corrupt or truncated .npy ({exc})") from None


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy header, checking that the file holds all the data it declares."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(f)
            data_start = f.tell()
    except FileNotFoundError:
        raise file_error(path, "not found") from None
    except (ValueError, OSError, EOFError) as exc:
        raise file_error(path, f"corrupt .npy header ({exc})") from None
    if dtype.hasobject:
        raise file_error(path, f"holds Python objects (dtype {dtype}); expected a numeric array")
    expected = data_start + math.prod(shape) * dtype.itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise file_error(path, f"truncated .npy: {actual} bytes, header declares {expected}")
    return shape, dtype


def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise file_error(path, f"unreadable CSV ({exc})") from None


def read_counts_csv(path: Path, class_names: Sequence[str], n_rows: int | None = None) -> np.ndarray:
    """Read ``counts.csv`` into int64 (N, K) in the order of ``class_names``."""
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise file_error(path, f"unreadable CSV ({exc})") from None
    if header is None:
        raise file_error(path, "empty file (no header)")
    header = [h.strip() for h in header]
    missing = [c for c in class_names if c not in header]
    if missing:
        raise file_error(path, f"missing columns {missing} (has {header})")
    if n_rows is not None and len(rows) != n_rows:
        raise file_error(path, f"has {len(rows)} rows, expected {n_rows} (one per tile)")
    cols = [header.index(c) for c in class_names]
    out = np.zeros((len(rows), len(cols)), dtype=np.int64)
    for r, row in enumerate(rows):
        if len(row) != len(header):
            raise file_error(path, f"row {r + 2} has {len(row)} fields, the header {len(header)}")
        for j, c in enumerate(cols):
            out[r, j] = _count_value(row[c], path, f"row {r + 2}, column {header[c]!r}")
    return out


MAX_TILE_COUNT = 1_000_000  # no tile holds more nuclei; larger values are corrupt files


def _count_value(text: str, path: Path, where: str) -> int:
    """A whole, non-negative count (``3`` or ``3.0``); refuses 1.5, inf, nan and absurd sizes."""
    try:
        value = float(text)
    except ValueError:
        raise file_error(path, f"{where}: {text.strip()!r} is not a number") from None
    if not math.isfinite(value) or value != int(value) or not 0 <= value <= MAX_TILE_COUNT:
        raise file_error(path, f"{where}: {text.strip()!r} is not a nucleus count (a whole number in "
                               f"0..{MAX_TILE_COUNT})")
    return int(value)


def read_counts_header(path: Path) -> list[str]:
    try:
        with open(path, newline="") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise file_error(path, f"unreadable CSV ({exc})") from None
    if not header:
        raise file_error(path, "empty file (no header)")
    return [h.strip() for h in header]


def _open_shard(path: Path, n_classes: int | None) -> Shard:
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
        shards = [_open_shard(p, meta.n_classes) for p in shard_dirs]
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

    def tissue_indices(self) -> np.ndarray:
        """Tissue index per tile from patch_info's ``tissue`` column (-1 where unknown)."""
        lookup = {name: i for i, name in enumerate(self.meta.tissue_names)}
        return np.array([lookup.get(r.get("tissue", ""), -1) for r in self.patch_info()], dtype=np.int64)


def _class_names_from_counts(shard_dir: Path) -> list[str]:
    path = shard_dir / COUNTS_FILE
    if not path.exists():
        raise file_error(shard_dir, f"no {META_FILE} and no {COUNTS_FILE}: class names unknown")
    return read_counts_header(path)


# --------------------------------------------------------------------------------------------- writing


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_shard(
    path: Path,
    images: np.ndarray,
    labels: np.ndarray,
    counts: np.ndarray,
    class_names: Sequence[str],
    info_rows: Sequence[Mapping[str, Any]],
) -> None:
    """Write one complete shard directory atomically."""
    info_cols = ["patch_info"] + sorted({k for r in info_rows for k in r} - {"patch_info"})
    with atomic_directory(path) as tmp:
        np.save(tmp / IMAGES_FILE, np.ascontiguousarray(images, dtype=np.uint8), allow_pickle=False)
        np.save(tmp / LABELS_FILE, np.ascontiguousarray(labels, dtype=np.int32), allow_pickle=False)
        (tmp / COUNTS_FILE).write_text(_csv_text(class_names, counts.tolist()))
        (tmp / PATCH_INFO_FILE).write_text(_csv_text(info_cols, [[r.get(c, "") for c in info_cols] for r in info_rows]))


class DatasetWriter:
    """Streams tiles into fixed-size shards; memory holds at most one shard.

    ``resume=True`` keeps the complete shards already in ``root`` and continues after them; the caller
    asks ``tiles_done`` where to restart. ``close()`` writes the last (short) shard and ``meta.json``
    with the count statistics of everything in the directory.
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
            shard = _open_shard(path, self.meta.n_classes)
            sizes.append(shard.n_tiles)
            counts = shard.counts(self.meta.class_names)
            if counts is None:
                raise file_error(path / COUNTS_FILE, "missing in a shard to resume after")
            self._done_counts.append(counts)
            self._done_tissues.extend(r.get("tissue", "") for r in shard.patch_info())
        if any(n != self.shard_size for n in sizes[:-1]) or any(n > self.shard_size for n in sizes):
            raise file_error(self.root, f"shard sizes {sizes} do not fit a shard size of {self.shard_size}")
        self.next_shard = len(sizes)
        # A short last shard is written only by close(): the dataset is finished.
        self._finished = bool(sizes) and sizes[-1] < self.shard_size

    @property
    def tiles_done(self) -> int:
        """Tiles already on disk (complete shards, plus a finished short last shard)."""
        return sum(len(c) for c in self._done_counts)

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
        if len(self._info) == self.shard_size:
            self._flush()

    def _flush(self) -> None:
        n = len(self._info)
        if n == 0:
            return
        counts = np.stack(self._counts)
        write_shard(self.root / shard_name(self.next_shard), self._images[:n], self._labels[:n], counts,
                    self.meta.class_names, self._info)
        self.next_shard += 1
        self._done_counts.append(counts)
        self._done_tissues.extend(str(r.get("tissue", "")) for r in self._info)
        self._counts, self._info = [], []

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

