"""Paired comparisons of segmenter arms with a two-level bootstrap (seeds and held-out tiles).

Every arm is trained once per seed and scored on the same held-out tiles, so arm A and the real-only
reference pair up by seed and by tile. One bootstrap replicate draws seeds with replacement (the
training randomness) and tiles with replacement (which held-out tiles happened to be there), pools the
CoNIC terms of the drawn tiles exactly as ``hs-eval conic`` does, and averages over the drawn seeds; the
paired difference of a replicate uses the same draw for both arms. Intervals are the 2.5 and 97.5
percentiles over replicates; point values use all seeds and tiles.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from histosmith.evaluation.conic import ConicResult, TileScores

SUMMARY_METRICS = ("pq", "mpq_plus", "r2", "aji")


def flat_metrics(result: ConicResult) -> dict[str, float]:
    """``pq, mpq_plus, r2, aji`` and ``pq:<class>``, ``r2:<class>`` of one result."""
    out = {k: float(getattr(result, k)) for k in SUMMARY_METRICS}
    for name, v in result.per_class.items():
        out[f"pq:{name}"] = float(v["pq"])
        out[f"r2:{name}"] = float(v["r2"])
    return out


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _mean_over(values: list[dict[str, float]], keys: list[str]) -> np.ndarray:
    return np.array([[v[k] for k in keys] for v in values]).mean(axis=0)


Intervals = dict[Hashable, dict[str, Interval]]


def bootstrap(scores: dict[Hashable, list[TileScores]], pairs: dict[Hashable, Hashable], n_boot: int = 1000,
              seed: int = 0) -> tuple[list[str], Intervals, Intervals]:
    """Per-group means and paired differences with 95% intervals.

    ``scores[g]`` lists the per-seed tile scores of group ``g`` (same seeds, same held-out tiles, same order
    in every group); ``pairs[g] = r`` asks for the difference ``g - r``. Returns the metric names, the
    intervals of every group's mean and those of every requested difference.
    """
    groups = list(scores)
    n_seeds = {len(v) for v in scores.values()}
    n_tiles = {len(s) for v in scores.values() for s in v}
    if len(n_seeds) != 1 or len(n_tiles) != 1:
        raise ValueError("every group needs the same seeds and the same held-out tiles")
    s_count, t_count = n_seeds.pop(), n_tiles.pop()
    point = {g: [flat_metrics(s.result()) for s in scores[g]] for g in groups}
    keys = list(point[groups[0]][0])
    means = {g: _mean_over(point[g], keys) for g in groups}
    rng = np.random.default_rng(seed)
    reps = {g: np.empty((n_boot, len(keys))) for g in groups}
    for b in range(n_boot):
        seeds = rng.integers(0, s_count, s_count)
        tiles = rng.integers(0, t_count, t_count)
        for g in groups:
            cache: dict[int, dict[str, float]] = {}
            for s in np.unique(seeds):
                cache[int(s)] = flat_metrics(scores[g][s].result(tiles))
            reps[g][b] = _mean_over([cache[int(s)] for s in seeds], keys)

    def interval(value: np.ndarray, samples: np.ndarray) -> dict[str, Interval]:
        low, high = np.nanpercentile(samples, [2.5, 97.5], axis=0)
        return {k: Interval(float(v), float(lo), float(hi))
                for k, v, lo, hi in zip(keys, value, low, high, strict=True)}

    group_iv = {g: interval(means[g], reps[g]) for g in groups}
    diff_iv = {g: interval(means[g] - means[r], reps[g] - reps[r]) for g, r in pairs.items()}
    return keys, group_iv, diff_iv
