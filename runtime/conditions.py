"""Where per-tile conditions come from (DESIGN §4): explicit counts, a CSV, the training distribution,
or a rebalanced version of it. Every source is a pure function of (seed, tile index)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histosmith.errors import HistoSmithError, file_error
from histosmith.runtime.info import GeneratorInfo
from histosmith.runtime.seeds import STREAM_CONDITION, tile_rng


@dataclass(frozen=True)
class ConditionTable:
    """Requested counts (N, K) int64 and tissue indices (N,) int64 for tiles 0..N-1."""

    counts: np.ndarray
    tissues: np.ndarray

    def __len__(self) -> int:
        return len(self.counts)


def explicit(info: GeneratorInfo, counts: np.ndarray, tissue: int, n: int) -> ConditionTable:
    """The same counts and tissue for every tile."""
    return ConditionTable(np.repeat(np.asarray(counts, np.int64)[None], n, axis=0), np.full(n, tissue, np.int64))


def from_csv(info: GeneratorInfo, path: Path, n: int | None) -> ConditionTable:
    """Rows of ``<class>...,tissue``; missing class columns mean 0; rows repeat cyclically up to ``n``."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise file_error(path, "not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise file_error(path, f"unreadable CSV ({exc})") from None
    if not rows:
        raise file_error(path, "no rows")
    spec = info.spec
    header = list(rows[0])
    unknown = [h for h in header if h not in spec.class_names and h != "tissue"]
    if unknown:
        raise file_error(path, f"unknown columns {unknown}; expected class names {list(spec.class_names)} and 'tissue'")
    if not any(h in spec.class_names for h in header):
        raise file_error(path, f"no class columns; expected some of {list(spec.class_names)}")
    counts = np.zeros((len(rows), spec.n_classes), dtype=np.int64)
    tissues = np.zeros(len(rows), dtype=np.int64)
    for r, row in enumerate(rows):
        for c, name in enumerate(spec.class_names):
            value = (row.get(name) or "0").strip()
            try:
                counts[r, c] = int(value)
            except ValueError:
                raise file_error(path, f"row {r + 2}: {name}={value!r} is not a whole number") from None
            if counts[r, c] < 0:
                raise file_error(path, f"row {r + 2}: {name}={value} is negative")
        try:
            tissues[r] = spec.tissue_index(row.get("tissue") or None)
        except HistoSmithError as exc:
            raise file_error(path, f"row {r + 2}: {exc}") from None
    n = n or len(rows)
    reps = -(-n // len(rows))
    return ConditionTable(np.tile(counts, (reps, 1))[:n], np.tile(tissues, reps)[:n])


def from_dataset(info: GeneratorInfo, n: int, seed: int) -> ConditionTable:
    """Each tile draws one training tile's (counts, tissue) uniformly at random."""
    total = len(info.training_counts)
    if total == 0:
        raise HistoSmithError("the generator carries no training conditions to draw from")
    pick = np.array([tile_rng(seed, i, STREAM_CONDITION).integers(total) for i in range(n)], dtype=np.int64)
    return ConditionTable(info.training_counts[pick], info.training_tissues[pick])


def balanced(info: GeneratorInfo, n: int, seed: int) -> ConditionTable:
    """Training draws with rare classes raised toward the top of their trained range.

    A class is rare when its share of all training nuclei is below 1/K. For such a class the drawn count
    becomes ``max(drawn, u)`` with ``u`` uniform between the class's 75th percentile and its maximum, so
    rare cells become common while every request stays inside the range the model was trained on.
    """
    counts, tissues = info.training_counts, info.training_tissues
    if len(counts) == 0:
        raise HistoSmithError("the generator carries no training conditions to draw from")
    k = counts.shape[1]
    share = counts.sum(0) / max(counts.sum(), 1)
    rare = share < 1.0 / k
    low = np.ceil(np.percentile(counts, 75, axis=0)).astype(np.int64)
    high = counts.max(0)
    out_counts = np.empty((n, k), dtype=np.int64)
    out_tissues = np.empty(n, dtype=np.int64)
    for i in range(n):
        rng = tile_rng(seed, i, STREAM_CONDITION)
        j = rng.integers(len(counts))
        row = counts[j].copy()
        raised = rng.integers(low, np.maximum(high, low) + 1)
        row[rare] = np.maximum(row[rare], raised[rare])
        out_counts[i], out_tissues[i] = row, tissues[j]
    return ConditionTable(out_counts, out_tissues)
