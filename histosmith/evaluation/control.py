"""Count control of a generator: a per-class sweep of requested counts and what the tiles really hold.

The trained range is *per tissue*: for tissue ``t`` and class ``c`` the sweep asks for ``c`` at evenly
spaced levels from 0 to the largest count of ``c`` among the training tiles of tissue ``t`` (distinct whole
counts, so a small maximum gives few levels), plus 1.25x and 1.5x of that maximum (the *extrapolation*
region, flagged in every output), with every other class held at its training median for that tissue. A
pair whose per-tissue maximum is 0 (the class never occurs in that tissue's training tiles) is not swept
and is reported as "not in this tissue's trained range". Each level gets ``tiles_per_level`` tiles; tile
``i`` of the sweep uses seed ``(seed, i)``, so the sweep is repeatable. Measured counts use the dataset's
one definition of a count (:func:`histosmith.data.labels.count_nuclei` with the training ``count_margin``).

Statistics per class, pooled over tissues and per tissue (in-range tiles only, unless said otherwise):
Pearson r, least-squares slope and intercept of measured on requested, MAE, Bland-Altman bias (mean of
measured - requested) and 95 % limits of agreement (bias +- 1.96 sd). The *saturation point* is the lowest
level from which the mean measured count grows by less than ``SATURATION_SLOPE`` nuclei per requested
nucleus on every later step of the sweep, extrapolation included (None: the class follows to the end).
The override slopes are fitted within tissue (one intercept per tissue), since tissues differ in range
and in the medians the other classes are held at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from histosmith.errors import HistoSmithError
from histosmith.runtime.conditions import ConditionTable
from histosmith.runtime.info import GeneratorInfo
from histosmith.runtime.qc import acceptance

EXTRAPOLATION = (1.25, 1.5)  # multiples of the training maximum swept beyond the trained range
NOT_IN_RANGE = "not in this tissue's trained range"  # (tissue, class) pairs with a per-tissue maximum of 0
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
    extrapolated: np.ndarray  # (N,) bool: level above the tile's tissue's training maximum of the swept class
    medians: np.ndarray  # (T, K) the counts the other classes are held at, per tissue
    maxima: np.ndarray  # (T, K) training maximum per tissue and class: the per-tissue trained range

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


def tissue_maxima(info: GeneratorInfo) -> np.ndarray:
    """(T, K) largest training count per tissue and class; 0 for a tissue the training set lacks."""
    counts, tissues = info.training_counts, info.training_tissues
    out = np.zeros((info.spec.n_tissues, info.spec.n_classes), dtype=np.int64)
    for t in range(info.spec.n_tissues):
        rows = counts[tissues == t]
        if len(rows):
            out[t] = rows.max(axis=0)
    return out


def class_levels(count_max: int, design: SweepDesign) -> tuple[list[int], list[int]]:
    """(in-range levels, extrapolation levels) for one training maximum; distinct whole counts."""
    inside = sorted({int(round(v)) for v in np.linspace(0, count_max, design.levels)})
    beyond = sorted({int(round(f * count_max)) for f in design.extrapolation} - set(inside))
    return inside, [v for v in beyond if v > count_max]


def build_sweep(info: GeneratorInfo, design: SweepDesign) -> Sweep:
    """All sweep tiles, ordered tissue -> class -> level -> replicate; levels from the per-tissue range."""
    spec = info.spec
    medians = tissue_medians(info)
    maxima = tissue_maxima(info)
    rows, tissues, swept, levels, extra = [], [], [], [], []
    for t in range(spec.n_tissues):
        for c in range(spec.n_classes):
            if maxima[t, c] == 0:
                continue  # never seen in this tissue: no trained range to sweep
            inside, beyond = class_levels(int(maxima[t, c]), design)
            for level in inside + beyond:
                row = medians[t].copy()
                row[c] = level
                for _ in range(design.tiles_per_level):
                    rows.append(row)
                    tissues.append(t)
                    swept.append(c)
                    levels.append(level)
                    extra.append(level > maxima[t, c])
    if not rows:
        raise HistoSmithError("nothing to sweep: no class occurs in the generator's training tiles")
    table = ConditionTable(np.array(rows, dtype=np.int64).reshape(-1, spec.n_classes),
                           np.array(tissues, dtype=np.int64),
                           f"control sweep: {design.levels} levels per tissue's trained range, "
                           f"{design.tiles_per_level} tiles per level")
    return Sweep(table, np.array(swept, np.int64), np.array(levels, np.int64), np.array(extra, bool), medians,
                 maxima)


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


def within_tissue_slope(requested: np.ndarray, measured: np.ndarray, tissues: np.ndarray) -> float | None:
    """Least-squares slope of measured on requested with a separate intercept per tissue (fixed effects).

    Pooling tissues directly would confound the slope: tissues differ both in their trained range (the
    requested levels) and in the medians the other classes are held at."""
    q, m = np.asarray(requested, float), np.asarray(measured, float)
    qc, mc = q.copy(), m.copy()
    for t in np.unique(tissues):
        sel = tissues == t
        qc[sel] -= q[sel].mean()
        mc[sel] -= m[sel].mean()
    denom = float(qc @ qc)
    return float(qc @ mc) / denom if denom > 0 else None


def level_means(level: np.ndarray, measured: np.ndarray, extrapolated: np.ndarray) -> list[dict[str, Any]]:
    """Mean and sd of the measured count per requested level (ascending). ``extrapolated`` is per tile; a level
    is flagged when all its tiles are extrapolated and ``n_extrapolated`` says how many are (pooled tissues can
    mix)."""
    out = []
    for v in np.unique(level):
        sel = level == v
        m = measured[sel].astype(float)
        n_extra = int(extrapolated[sel].sum())
        out.append({"level": int(v), "extrapolated": n_extra == len(m), "n_extrapolated": n_extra, "n": len(m),
                    "mean": float(m.mean()), "sd": float(m.std(ddof=1)) if len(m) > 1 else 0.0})
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


def _class_entry(name: str, c: int, tissue_names: tuple[str, ...], sweep: Sweep,
                 measured: np.ndarray) -> dict[str, Any]:
    """One class's statistics: pooled over the tissues it was swept in, and per tissue."""
    requested, tissues = sweep.conditions.counts, sweep.conditions.tissues
    mine = sweep.swept_class == c
    inside, beyond = mine & ~sweep.extrapolated, mine & sweep.extrapolated
    means = level_means(sweep.level[mine], measured[mine, c], sweep.extrapolated[mine])
    entry: dict[str, Any] = {
        "class": name, "training_max": {t: int(sweep.maxima[i, c]) for i, t in enumerate(tissue_names)},
        "in_range": agreement(requested[inside, c], measured[inside, c]),
        "extrapolation": agreement(requested[beyond, c], measured[beyond, c]) | {"extrapolated": True},
        "levels": means, "saturation_point": saturation_point(means), "per_tissue": {},
    }
    for t, tissue in enumerate(tissue_names):
        if sweep.maxima[t, c] == 0:
            entry["per_tissue"][tissue] = {"training_max": 0, "swept": False, "note": NOT_IN_RANGE}
            continue
        sel = mine & (tissues == t)
        t_means = level_means(sweep.level[sel], measured[sel, c], sweep.extrapolated[sel])
        entry["per_tissue"][tissue] = {
            "training_max": int(sweep.maxima[t, c]), "swept": True,
            "in_range": agreement(requested[sel & inside, c], measured[sel & inside, c]),
            "extrapolation": agreement(requested[sel & beyond, c], measured[sel & beyond, c]),
            "levels": t_means, "saturation_point": saturation_point(t_means)}
    return entry


def analyse(info: GeneratorInfo, sweep: Sweep, measured: np.ndarray) -> dict[str, Any]:
    """Everything ``control.json`` holds: per class (pooled and per tissue), override table, extrapolation."""
    spec = info.spec
    if measured.shape != sweep.conditions.counts.shape:
        raise HistoSmithError(f"measured counts {measured.shape} do not match the sweep "
                              f"{sweep.conditions.counts.shape}")
    requested = sweep.conditions.counts
    classes = [_class_entry(name, c, spec.tissue_names, sweep, measured) for c, name in enumerate(spec.class_names)]
    override_slopes, override_shares = [], []
    for c, name in enumerate(spec.class_names):
        inside = (sweep.swept_class == c) & ~sweep.extrapolated
        # Override: how every measured class moves when class c is asked for (ideal: 1 on the diagonal, 0 off it).
        override_slopes.append([within_tissue_slope(requested[inside, c], measured[inside, j],
                                                    sweep.conditions.tissues[inside]) for j in range(spec.n_classes)])
        top = inside & (sweep.level == sweep.maxima[sweep.conditions.tissues, c])  # at each tissue's maximum
        override_shares.append({
            "class": name, "level": "training maximum of each tissue", "n_tiles": int(top.sum()),
            "requested_shares": shares(requested[top].mean(0)) if top.any() else None,
            "measured_shares": shares(measured[top].mean(0)) if top.any() else None})
    return {
        "class_names": list(spec.class_names), "tissue_names": list(spec.tissue_names),
        "count_max": list(spec.count_max), "count_margin": info.count_margin,
        "trained_range": "per tissue: 0 .. the class's largest count among that tissue's training tiles",
        "training_max_per_tissue": {t: sweep.maxima[i].tolist() for i, t in enumerate(spec.tissue_names)},
        "held_at_median": {t: sweep.medians[i].tolist() for i, t in enumerate(spec.tissue_names)},
        "n_tiles": len(sweep), "n_extrapolated_tiles": int(sweep.extrapolated.sum()),
        "saturation_slope": SATURATION_SLOPE, "classes": classes,
        "override": {"slopes": override_slopes, "at_training_max": override_shares},
    }


def qc_comparison(sweep: Sweep, before: np.ndarray, after: np.ndarray, attempts: np.ndarray, passed: np.ndarray,
                  class_names: tuple[str, ...]) -> dict[str, Any]:
    """Per class r, slope, MAE... before QC (attempt 0 of every tile: the sweep without QC) and after QC (the
    kept tiles), in range and extrapolated; the acceptance rate (share of tiles within tolerance after at
    most K attempts) and mean attempts, overall and per region."""
    requested = sweep.conditions.counts
    classes = []
    for c, name in enumerate(class_names):
        mine = sweep.swept_class == c
        entry: dict[str, Any] = {"class": name}
        for region, sel in (("in_range", mine & ~sweep.extrapolated), ("extrapolation", mine & sweep.extrapolated)):
            entry[region] = {"before": agreement(requested[sel, c], before[sel, c]),
                             "after": agreement(requested[sel, c], after[sel, c]),
                             "qc": acceptance(passed[sel], attempts[sel])}
        classes.append(entry)
    x = sweep.extrapolated
    return {"overall": acceptance(passed, attempts), "in_range": acceptance(passed[~x], attempts[~x]),
            "extrapolation": acceptance(passed[x], attempts[x]), "classes": classes}
