"""Where per-tile conditions come from (docs/runtime.md): explicit counts, a CSV, the training distribution,
or a rebalanced version of it. Every source is a pure function of (seed, tile index)."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from histosmith.errors import HistoSmithError, file_error
from histosmith.runtime.info import GeneratorInfo
from histosmith.runtime.seeds import STREAM_CONDITION, tile_rng

SourceKind = Literal["counts", "csv", "from-dataset", "balance"]
DEFAULT_N = 64


@dataclass(frozen=True, eq=False)
class ConditionTable:
    """Requested counts (N, K) int64 and tissue indices (N,) int64 for tiles 0..N-1, and how they were chosen."""

    counts: np.ndarray
    tissues: np.ndarray
    label: str = ""

    def __len__(self) -> int:
        return len(self.counts)

    def digest(self) -> str:
        return hashlib.sha256(self.counts.tobytes() + self.tissues.tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class ConditionRequest:
    """What the user asked for, parsed once from the command line (before any model is loaded)."""

    kind: SourceKind
    n: int | None = None  # None: DEFAULT_N, or the rows of the CSV
    counts: tuple[tuple[str, int], ...] = ()  # kind "counts": (class name, count) pairs
    tissue: str | None = None
    csv: Path | None = None
    allow_extrapolation: bool = False

    @classmethod
    def from_options(cls, n: int | None, counts: str | None, tissue: str | None, csv_path: Path | None,
                     from_dataset: bool, balance: bool, allow_extrapolation: bool = False) -> ConditionRequest:
        """Exactly one source: --counts [--tissue], --conditions CSV, --from-dataset (default) or --balance."""
        chosen = [name for name, on in (("counts", counts is not None), ("conditions", csv_path is not None),
                                        ("from-dataset", from_dataset), ("balance", balance)) if on]
        if len(chosen) > 1:
            raise HistoSmithError(f"choose one condition source, got --{' and --'.join(chosen)}")
        if tissue is not None and counts is None:
            raise HistoSmithError("--tissue goes with --counts")
        if csv_path is not None:
            if not csv_path.is_file():
                raise file_error(csv_path, "not found" if not csv_path.exists() else "not a file")
            return cls("csv", n, csv=csv_path, allow_extrapolation=allow_extrapolation)
        if counts is not None:
            return cls("counts", n, parse_counts(counts), tissue, allow_extrapolation=allow_extrapolation)
        return cls("balance" if balance else "from-dataset", n, allow_extrapolation=allow_extrapolation)

    def resolve(self, info: GeneratorInfo, seed: int) -> ConditionTable:
        """The per-tile table for this generator (names checked against its classes and tissues)."""
        spec = info.spec
        if self.kind == "counts":
            row = np.zeros(spec.n_classes, dtype=np.int64)
            for name, value in self.counts:
                if name not in spec.class_names:
                    raise HistoSmithError(f"--counts: unknown class {name!r}; known: {list(spec.class_names)}")
                row[spec.class_names.index(name)] = value
            text = ",".join(f"{k}={v}" for k, v in self.counts)
            table = explicit(info, row, spec.tissue_index(self.tissue), self.n or DEFAULT_N,
                             f"counts {text} tissue {self.tissue}")
        elif self.kind == "csv":
            assert self.csv is not None
            table = from_csv(info, self.csv, self.n)
        elif self.kind == "balance":
            table = balanced(info, self.n or DEFAULT_N, seed)
        else:
            table = from_dataset(info, self.n or DEFAULT_N, seed)
        spec.check_range(table.counts, self.allow_extrapolation)
        return table


def parse_counts(text: str) -> tuple[tuple[str, int], ...]:
    """``name=int,name=int`` -> ((name, count), ...); whole, non-negative, 64-bit counts only."""
    pairs: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = (x.strip() for x in part.partition("="))
        if not sep or not name:
            raise HistoSmithError(f"--counts: expected name=count, got {part!r}")
        if name in pairs:
            raise HistoSmithError(f"--counts: class {name!r} given twice")
        pairs[name] = parse_count(value, f"--counts: {name}")
    if not pairs:
        raise HistoSmithError("--counts: no class counts given")
    return tuple(pairs.items())


def parse_count(text: str, what: str) -> int:
    """A nucleus count written by a user: a whole number in 0..MAX_COUNT."""
    try:
        number = int(text.strip())
    except ValueError:
        raise HistoSmithError(f"{what}={text.strip()!r} is not a whole number") from None
    if number < 0:
        raise HistoSmithError(f"{what}={number} is negative")
    if number > MAX_COUNT:
        raise HistoSmithError(f"{what}={number} is beyond any tile ({MAX_COUNT} at most)")
    return number


MAX_COUNT = 1_000_000  # far above any tile; keeps counts inside int64 and float32 arithmetic


def explicit(info: GeneratorInfo, counts: np.ndarray, tissue: int, n: int, label: str = "explicit") -> ConditionTable:
    """The same counts and tissue for every tile."""
    return ConditionTable(np.repeat(np.asarray(counts, np.int64)[None], n, axis=0), np.full(n, tissue, np.int64),
                          label)


def from_csv(info: GeneratorInfo, path: Path, n: int | None) -> ConditionTable:
    """Rows of ``<class>...,tissue``; missing class columns mean 0; rows repeat cyclically up to ``n``."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = [h.strip() for h in reader.fieldnames or []]
    except FileNotFoundError:
        raise file_error(path, "not found") from None
    except UnicodeDecodeError:
        raise file_error(path, "not UTF-8 text") from None
    except (OSError, csv.Error) as exc:
        raise file_error(path, f"unreadable CSV ({exc})") from None
    if not rows:
        raise file_error(path, "no rows")
    spec = info.spec
    if len(set(header)) != len(header):
        raise file_error(path, f"repeated columns in the header {header}")
    unknown = [h for h in header if h not in spec.class_names and h != "tissue"]
    if unknown:
        raise file_error(path, f"unknown columns {unknown} (the header reads {header!r}); expected class names "
                               f"{list(spec.class_names)} and 'tissue'")
    if not any(h in spec.class_names for h in header):
        raise file_error(path, f"no class columns; expected some of {list(spec.class_names)}")
    counts = np.zeros((len(rows), spec.n_classes), dtype=np.int64)
    tissues = np.zeros(len(rows), dtype=np.int64)
    for r, row in enumerate(rows):
        row = {(k.strip() if isinstance(k, str) else k): v for k, v in row.items()}
        if None in row:
            raise file_error(path, f"row {r + 2}: more fields than the header's {len(header)} columns")
        for c, name in enumerate(spec.class_names):
            try:
                counts[r, c] = parse_count(row.get(name) or "0", name)
            except HistoSmithError as exc:
                raise file_error(path, f"row {r + 2}: {exc}") from None
        try:
            tissues[r] = spec.tissue_index(row.get("tissue") or None)
        except HistoSmithError as exc:
            raise file_error(path, f"row {r + 2}: {exc}") from None
    n = n or len(rows)
    reps = -(-n // len(rows))
    return ConditionTable(np.tile(counts, (reps, 1))[:n], np.tile(tissues, reps)[:n], f"conditions {path}")


def from_dataset(info: GeneratorInfo, n: int, seed: int) -> ConditionTable:
    """Each tile draws one training tile's (counts, tissue) uniformly at random."""
    total = len(info.training_counts)
    if total == 0:
        raise HistoSmithError("the generator carries no training conditions to draw from")
    pick = np.array([tile_rng(seed, i, STREAM_CONDITION).integers(total) for i in range(n)], dtype=np.int64)
    return ConditionTable(info.training_counts[pick], info.training_tissues[pick], "from-dataset")


def balanced(info: GeneratorInfo, n: int, seed: int) -> ConditionTable:
    """Training draws with rare classes raised toward the top of their trained range *in the drawn tile's
    tissue*.

    A class is rare when its share of all training nuclei is below 1/K. For such a class the drawn count
    becomes ``max(drawn, u)`` with ``u`` uniform between the class's 75th percentile and its maximum among
    the training tiles of that tissue, so rare cells become common while every request stays inside the
    range the model was trained on for that tissue (a class a tissue never holds is not raised there:
    stroma with tumour-nest counts of tumour cells is outside anything the model saw).
    """
    counts, tissues = info.training_counts, info.training_tissues
    if len(counts) == 0:
        raise HistoSmithError("the generator carries no training conditions to draw from")
    k = counts.shape[1]
    share = counts.sum(0) / max(counts.sum(), 1)
    rare = share < 1.0 / k
    low = np.zeros((info.spec.n_tissues, k), dtype=np.int64)
    high = np.zeros((info.spec.n_tissues, k), dtype=np.int64)
    for t in np.unique(tissues):
        mine = counts[tissues == t]
        low[t] = np.ceil(np.percentile(mine, 75, axis=0)).astype(np.int64)
        high[t] = mine.max(0)
    out_counts = np.empty((n, k), dtype=np.int64)
    out_tissues = np.empty(n, dtype=np.int64)
    for i in range(n):
        rng = tile_rng(seed, i, STREAM_CONDITION)
        j = rng.integers(len(counts))
        t = tissues[j]
        row = counts[j].copy()
        raised = rng.integers(low[t], np.maximum(high[t], low[t]) + 1)
        row[rare] = np.maximum(row[rare], raised[rare])
        out_counts[i], out_tissues[i] = row, t
    return ConditionTable(out_counts, out_tissues, "balance")
