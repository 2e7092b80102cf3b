"""The condition vector: counts per class (scaled) followed by a one-hot tissue (docs/formats.md).

``vector = [count_c / scale_c for c in classes] ++ one_hot(tissue)``. ``scale_c`` comes from the
training set and travels in meta.json, checkpoints and the export manifest, so users always speak in
raw counts. Counts above the training range (``count_max``) are refused unless extrapolation is
explicitly allowed: the model saturates there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from histosmith.errors import HistoSmithError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConditionSpec:
    """Names, scales and limits that turn (counts, tissue) into the model's condition vector."""

    class_names: tuple[str, ...]
    tissue_names: tuple[str, ...]
    count_scale: tuple[float, ...]
    count_max: tuple[int, ...]

    def __post_init__(self) -> None:
        k = len(self.class_names)
        if len(self.count_scale) != k or len(self.count_max) != k:
            raise HistoSmithError(f"condition spec: {k} classes but {len(self.count_scale)} scales")
        if not self.tissue_names:
            raise HistoSmithError("condition spec: at least one tissue name is required")
        if any(s <= 0 for s in self.count_scale):
            raise HistoSmithError("condition spec: count scales must be positive")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_tissues(self) -> int:
        return len(self.tissue_names)

    @property
    def dim(self) -> int:
        return self.n_classes + self.n_tissues

    # ---------------------------------------------------------------- vectors

    def vectors(self, counts: np.ndarray, tissues: np.ndarray) -> np.ndarray:
        """(N, K) counts and (N,) tissue indices -> float32 (N, K + T)."""
        counts = np.asarray(counts, dtype=np.float64).reshape(-1, self.n_classes)
        tissues = np.asarray(tissues, dtype=np.int64).reshape(-1)
        if len(counts) != len(tissues):
            raise HistoSmithError(f"{len(counts)} count rows but {len(tissues)} tissues")
        if ((tissues < 0) | (tissues >= self.n_tissues)).any():
            raise HistoSmithError(f"tissue index outside 0..{self.n_tissues - 1}")
        out = np.zeros((len(counts), self.dim), dtype=np.float32)
        out[:, : self.n_classes] = counts / np.asarray(self.count_scale)
        out[np.arange(len(tissues)), self.n_classes + tissues] = 1.0
        return out

    def vector(self, counts: Sequence[int] | np.ndarray, tissue: int) -> np.ndarray:
        """One (K,) count row and a tissue index -> float32 (K + T,)."""
        return self.vectors(np.asarray(counts)[None], np.array([tissue]))[0]

    def counts_from_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """Inverse of the count part of :meth:`vectors` (float, unrounded)."""
        return np.asarray(vectors)[..., : self.n_classes] * np.asarray(self.count_scale)

    # ---------------------------------------------------------------- parsing user input

    def tissue_index(self, name: str | None) -> int:
        """Index of a tissue name; ``None`` is allowed only when there is one tissue."""
        if name is None:
            if self.n_tissues == 1:
                return 0
            raise HistoSmithError(f"choose a tissue with --tissue, one of {list(self.tissue_names)}")
        if name not in self.tissue_names:
            raise HistoSmithError(f"unknown tissue {name!r}; known: {list(self.tissue_names)}")
        return self.tissue_names.index(name)

    def check_range(self, counts: np.ndarray, allow_extrapolation: bool = False) -> list[str]:
        """Refuse (or, when allowed, warn about) counts above the training range; returns the warnings."""
        counts = np.asarray(counts).reshape(-1, self.n_classes)
        over = counts > np.asarray(self.count_max)
        if not over.any():
            return []
        messages = [
            f"{name}: asked for up to {int(counts[:, c].max())}, training range is 0..{self.count_max[c]}"
            for c, name in enumerate(self.class_names)
            if over[:, c].any()
        ]
        if not allow_extrapolation:
            raise HistoSmithError(
                "counts beyond the training range (" + "; ".join(messages) + "); "
                "pass --allow-extrapolation to try anyway (the model saturates there)"
            )
        for m in messages:
            log.warning("extrapolating: %s; the model saturates beyond its training range", m)
        return messages

    # ---------------------------------------------------------------- persistence

    def to_json(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names),
            "tissue_names": list(self.tissue_names),
            "count_scale": list(self.count_scale),
            "count_max": list(self.count_max),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ConditionSpec:
        try:
            return cls(
                tuple(data["class_names"]),
                tuple(data["tissue_names"]),
                tuple(float(s) for s in data["count_scale"]),
                tuple(int(m) for m in data["count_max"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise HistoSmithError(f"condition spec: malformed ({exc})") from None

    @classmethod
    def from_meta(cls, meta: Any) -> ConditionSpec:
        """Build from a :class:`~histosmith.data.format.DatasetMeta`."""
        tissues = tuple(meta.tissue_names) or ("tissue",)
        return cls(tuple(meta.class_names), tissues, tuple(meta.count_scale), tuple(meta.count_max))
