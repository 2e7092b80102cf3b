"""Reading the per-shard files: ``.npy`` headers and arrays, ``counts.csv`` and other CSV tables, with
one-line errors for anything truncated, corrupt or out of range."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histosmith.errors import file_error


def load_npy(path: Path) -> np.ndarray:
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


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise file_error(path, f"unreadable CSV ({exc})") from None


def read_counts_csv(path: Path, class_names: Sequence[str], n_rows: int | None = None) -> np.ndarray:
    """Read ``counts.csv`` into int64 (N, K) in the order of ``class_names``."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
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
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise file_error(path, f"unreadable CSV ({exc})") from None
    if not header:
        raise file_error(path, "empty file (no header)")
    return [h.strip() for h in header]


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
