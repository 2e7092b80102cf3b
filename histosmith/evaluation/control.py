"""Count control of a generator: a per-class sweep of requested counts and what the tiles really hold.

For every tissue and every class ``c`` the sweep asks for ``c`` at evenly spaced levels from 0 to the
class's training maximum, plus 1.25x and 1.5x of that maximum (the *extrapolation* region, flagged in
every output), with every other class held at its training median for that tissue. Each level gets
``tiles_per_level`` tiles; tile ``i`` of the sweep uses seed ``(seed, i)``, so the sweep is repeatable.
Measured counts use the dataset's one definition of a count (:func:`histosmith.data.labels.count_nuclei`
with the training set's ``count_margin``).

Statistics (in-range tiles only, unless said otherwise): Pearson r, least-squares slope and intercept of
measured on requested, MAE, Bland-Altman bias (mean of measured - requested) and 95 % limits of agreement
(bias +- 1.96 sd). The *saturation point* is the lowest level from which the mean measured count grows by
less than ``SATURATION_SLOPE`` nuclei per requested nucleus on every later step of the sweep, extrapolation
included (None: the class follows to the end of the sweep).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from histosmith.errors import HistoSmithError
from histosmith.runtime.conditions import ConditionTable
from histosmith.runtime.info import GeneratorInfo

EXTRAPOLATION = (1.25, 1.5)  # multiples of the training maximum swept beyond the trained range
SATURATION_SLOPE = 0.5  # below this many measured nuclei per requested nucleus the count has stopped following


@dataclass(frozen=True)
class SweepDesign:
    """How many levels (0..training max, evenly spaced) and tiles per level; the extrapolation multiples."""

    levels: int = 5
    tiles_per_level: int = 4
    extrapolation: tuple[float, ...] = EXTRAPOLATION

    def __post_init__(self) -> None:
        if self.levels < 2:
            raise HistoSmithError(f"--levels {self.levels}: at least 2 (0 and the training maximum)")
        if self.tiles_per_level < 1:
            raise HistoSmithError(f"--tiles-per-level {self.tiles_per_level}: at least 1")
        if any(f <= 1.0 for f in self.extrapolation):
            raise HistoSmithError("extrapolation multiples must be above 1")


@dataclass(frozen=True)
class Sweep:
    """The sweep's conditions and, per tile, which class was swept at which level."""

    conditions: ConditionTable
    swept_class: np.ndarray  # (N,) class index
    level: np.ndarray  # (N,) requested count of the swept class
    extrapolated: np.ndarray  # (N,) bool: level above the training maximum
    medians: np.ndarray  # (T, K) the counts the other classes are held at, per tissue

    def __len__(self) -> int:
        return len(self.level)


def tissue_medians(info: GeneratorInfo) -> np.ndarray:
    """(T, K) median training count per tissue and class (rounded half up); the overall median for a tissue
    the training set lacks."""
    counts, tissues = info.training_counts, info.training_tissues
    if len(counts) == 0:
        raise HistoSmithError("the generator carries no training conditions: no medians to hold classes at")
    overall = np.floor(np.median(counts, axis=0) + 0.5)
    out = np.empty((info.spec.n_tissues, info.spec.n_classes), dtype=np.int64)
    for t in range(info.spec.n_tissues):
        rows = counts[tissues == t]
        out[t] = np.floor(np.median(rows, axis=0) + 0.5) if len(rows) else overall
    return out


def class_levels(count_max: int, design: SweepDesign) -> tuple[list[int], list[int]]:
    """(in-range levels, extrapolation levels) of one class; distinct whole counts."""
    inside = sorted({int(round(v)) for v in np.linspace(0, count_max, design.levels)})
    beyond = sorted({int(round(f * count_max)) for f in design.extrapolation} - set(inside))
    return inside, [v for v in beyond if v > count_max]


def build_sweep(info: GeneratorInfo, design: SweepDesign) -> Sweep:
    """All sweep tiles, ordered tissue -> class -> level -> replicate."""
    spec = info.spec
    medians = tissue_medians(info)
    rows, tissues, swept, levels, extra = [], [], [], [], []
    for t in range(spec.n_tissues):
        for c in range(spec.n_classes):
            inside, beyond = class_levels(spec.count_max[c], design)
            for level in inside + beyond:
                row = medians[t].copy()
                row[c] = level
                for _ in range(design.tiles_per_level):
                    rows.append(row)
                    tissues.append(t)
                    swept.append(c)
                    levels.append(level)
                    extra.append(level > spec.count_max[c])
    table = ConditionTable(np.array(rows, dtype=np.int64), np.array(tissues, dtype=np.int64),
                           f"control sweep: {design.levels} levels, {design.tiles_per_level} tiles per level")
    return Sweep(table, np.array(swept, np.int64), np.array(levels, np.int64), np.array(extra, bool), medians)


# ---------------------------------------------------------------- statistics


def agreement(requested: np.ndarray, measured: np.ndarray) -> dict[str, float | int | None]:
    """r, slope, intercept, MAE and Bland-Altman bias / limits of measured against requested counts."""
    q, m = np.asarray(requested, float), np.asarray(measured, float)
    out: dict[str, float | int | None] = {"n": len(q)}
    if len(q) == 0:
        return out | {k: None for k in ("r", "slope", "intercept", "mae", "bias", "loa_low", "loa_high")}
    varies = q.std() > 0
    out["r"] = float(np.corrcoef(q, m)[0, 1]) if varies and m.std() > 0 else None
    slope, intercept = (float(v) for v in np.polyfit(q, m, 1)) if varies else (None, None)
    out["slope"], out["intercept"] = slope, intercept
    diff = m - q
    bias, sd = float(diff.mean()), float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
    out |= {"mae": float(np.abs(diff).mean()), "bias": bias, "loa_low": bias - 1.96 * sd,
            "loa_high": bias + 1.96 * sd}
    return out


def level_means(level: np.ndarray, measured: np.ndarray, count_max: int) -> list[dict[str, Any]]:
    """Mean and sd of the measured count per requested level (ascending), flagged when extrapolated."""
    out = []
    for v in np.unique(level):
        m = measured[level == v].astype(float)
        out.append({"level": int(v), "extrapolated": bool(v > count_max), "n": len(m), "mean": float(m.mean()),
                    "sd": float(m.std(ddof=1)) if len(m) > 1 else 0.0})
    return out


def saturation_point(means: list[dict[str, Any]], threshold: float = SATURATION_SLOPE) -> int | None:
    """Lowest level from which every later step of the mean curve rises by < ``threshold`` per level unit."""
    if len(means) < 2:
        return None
    levels = np.array([p["level"] for p in means], float)
    values = np.array([p["mean"] for p in means], float)
    rises = np.diff(values) / np.diff(levels)  # local slope of each step
    following = rises >= threshold
    if following[-1]:
        return None  # still following at the last step
    last_follow = np.flatnonzero(following)
    start = int(last_follow[-1]) + 1 if len(last_follow) else 0
    return int(levels[start])


def shares(counts: np.ndarray) -> list[float]:
    total = float(np.sum(counts))
    return [float(v) / total if total > 0 else 0.0 for v in counts]


def analyse(info: GeneratorInfo, sweep: Sweep, measured: np.ndarray) -> dict[str, Any]:
    """Everything ``control.json`` holds: per class (pooled and per tissue), override table, extrapolation."""
    spec = info.spec
    if measured.shape != sweep.conditions.counts.shape:
        raise HistoSmithError(f"measured counts {measured.shape} do not match the sweep "
                              f"{sweep.conditions.counts.shape}")
    requested = sweep.conditions.counts
    tissues = sweep.conditions.tissues
    classes: list[dict[str, Any]] = []
    override_slopes, override_shares = [], []
    for c, name in enumerate(spec.class_names):
        mine = sweep.swept_class == c
        inside = mine & ~sweep.extrapolated
        beyond = mine & sweep.extrapolated
        means = level_means(sweep.level[mine], measured[mine, c], spec.count_max[c])
        entry: dict[str, Any] = {
            "class": name, "training_max": spec.count_max[c],
            "in_range": agreement(requested[inside, c], measured[inside, c]),
            "extrapolation": agreement(requested[beyond, c], measured[beyond, c]) | {"extrapolated": True},
            "levels": means, "saturation_point": saturation_point(means),
            "per_tissue": {},
        }
        for t, tissue in enumerate(spec.tissue_names):
            sel = tissues == t
            t_means = level_means(sweep.level[mine & sel], measured[mine & sel, c], spec.count_max[c])
            entry["per_tissue"][tissue] = {
                "in_range": agreement(requested[inside & sel, c], measured[inside & sel, c]),
                "levels": t_means, "saturation_point": saturation_point(t_means)}
        classes.append(entry)
        # Override: how every measured class moves when class c is asked for (ideal: 1 on the diagonal, 0 off it).
        row = []
        for j in range(spec.n_classes):
            fit = agreement(requested[inside, c], measured[inside, j])
            row.append(fit["slope"])
        override_slopes.append(row)
        top = inside & (sweep.level == spec.count_max[c])
        override_shares.append({
            "class": name, "level": spec.count_max[c], "n_tiles": int(top.sum()),
            "requested_shares": shares(requested[top].mean(0)) if top.any() else None,
            "measured_shares": shares(measured[top].mean(0)) if top.any() else None})
    return {
        "class_names": list(spec.class_names), "tissue_names": list(spec.tissue_names),
        "count_max": list(spec.count_max), "count_margin": info.count_margin,
        "held_at_median": {t: sweep.medians[i].tolist() for i, t in enumerate(spec.tissue_names)},
        "n_tiles": len(sweep), "n_extrapolated_tiles": int(sweep.extrapolated.sum()),
        "saturation_slope": SATURATION_SLOPE, "classes": classes,
        "override": {"slopes": override_slopes, "at_training_max": override_shares},
    }
