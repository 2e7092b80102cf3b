"""``hs-data plan``: per-tile conditions for synthetic tiles so that real + synthetic reach target class shares.

Arithmetic. Real nuclei per class ``R_c`` (total ``R``), target shares ``s_c`` (summing to 1). Real plus
synthetic must hold ``s_c * T`` nuclei of class ``c`` for a total ``T``, so the synthetic tiles carry
``S_c = s_c * T - R_c``. Two limits bound ``T``:

* ``S_c >= 0`` (real nuclei cannot be removed): ``T >= R_c / s_c`` for every class, and a class with real
  nuclei cannot get share 0;
* every synthetic tile stays inside the trained range (at most ``max_c`` of class ``c``, the dataset's
  ``count_max``): ``S_c <= N * max_c``, i.e. ``T <= (N * max_c + R_c) / s_c``.

Within these limits ``T`` is chosen so that the synthetic tiles hold as many nuclei per tile as the real
tiles do on average; no such ``T`` means the target is infeasible with ``N`` tiles (the message says how
many would do). Each synthetic tile starts from a real tile drawn with the seed (so tissues and the mix of
classes follow the data), and each class column is rescaled to its total ``S_c`` with whole counts, never
above ``max_c``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from histosmith.errors import HistoSmithError


@dataclass(frozen=True)
class RealCounts:
    """Per-tile counts (N, K) and tissue names of the real tiles, with the class names and trained range."""

    counts: np.ndarray
    tissues: list[str]
    class_names: list[str]
    count_max: list[int]


@dataclass(frozen=True)
class BalancePlan:
    counts: np.ndarray  # (N, K) synthetic requests
    tissues: list[str]
    class_names: list[str]
    shares_before: list[float]
    shares_after: list[float]
    target: list[float]
    synthetic_totals: list[int]

    def format_table(self) -> str:
        lines = [f"{'class':<16}{'real':>8}{'target':>8}{'real+syn':>10}{'synthetic nuclei':>18}"]
        for row in zip(self.class_names, self.shares_before, self.target, self.shares_after, self.synthetic_totals,
                       strict=True):
            name, before, target, after, total = row
            lines.append(f"{name:<16}{before:>8.3f}{target:>8.3f}{after:>10.3f}{total:>18d}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"class_names": self.class_names, "n_synthetic": len(self.counts), "target": self.target,
                "shares_before": self.shares_before, "shares_after": self.shares_after,
                "synthetic_totals": self.synthetic_totals}


def parse_target_shares(text: str, class_names: list[str]) -> list[float]:
    """``a=0.3,b=0.2`` -> a share per class; unnamed classes share what is left in proportion 1:1.

    Refuses unknown classes, repeated classes, shares outside 0..1 and totals above 1.
    """
    given: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = (x.strip() for x in part.partition("="))
        if not sep or not name:
            raise HistoSmithError(f"--target-share: expected class=share, got {part!r}")
        if name not in class_names:
            raise HistoSmithError(f"--target-share: unknown class {name!r}; known: {class_names}")
        if name in given:
            raise HistoSmithError(f"--target-share: class {name!r} given twice")
        try:
            share = float(value)
        except ValueError:
            raise HistoSmithError(f"--target-share: {name}={value!r} is not a number") from None
        if not (math.isfinite(share) and 0.0 <= share <= 1.0):
            raise HistoSmithError(f"--target-share: {name}={value} must lie in 0..1")
        given[name] = share
    if not given:
        raise HistoSmithError("--target-share: no class shares given")
    total = sum(given.values())
    if total > 1.0 + 1e-9:
        raise HistoSmithError(f"--target-share: shares add up to {total:.3g}, above 1")
    rest = [n for n in class_names if n not in given]
    if not rest and abs(total - 1.0) > 1e-6:
        raise HistoSmithError(f"--target-share: every class is given but the shares add up to {total:.3g}, not 1")
    left = (1.0 - total) / len(rest) if rest else 0.0
    return [given.get(n, left) for n in class_names]


def allocate(total: int, weights: np.ndarray, cap: int) -> np.ndarray:
    """``total`` whole units over tiles, in proportion to ``weights``, at most ``cap`` per tile.

    Largest-remainder rounding; what a full tile cannot take goes to the others, first to those with
    weight, then to any with room. Requires ``total <= len(weights) * cap``.
    """
    n = len(weights)
    out = np.zeros(n, dtype=np.int64)
    remaining = int(total)
    for w in (np.asarray(weights, float), np.ones(n)):
        while remaining > 0:
            room = cap - out
            active = (room > 0) & (w > 0)
            if not active.any():
                break
            share = np.where(active, w, 0.0)
            ideal = remaining * share / share.sum()
            take = np.minimum(np.floor(ideal).astype(np.int64), room)
            left = remaining - int(take.sum())
            order = np.argsort(-(ideal - np.floor(ideal)), kind="stable")
            for i in order:  # hand out the rest one by one, largest remainder first
                if left == 0:
                    break
                if active[i] and take[i] < room[i]:
                    take[i] += 1
                    left -= 1
            if take.sum() == 0:
                break
            out += take
            remaining -= int(take.sum())
    if remaining:
        raise HistoSmithError(f"cannot place {total} nuclei on {n} tiles of at most {cap}")
    return out


def plan_balance(real: RealCounts, target: list[float], n_synthetic: int, seed: int = 0) -> BalancePlan:
    """Synthetic per-tile conditions that bring real + synthetic to ``target`` shares (see the module doc)."""
    if n_synthetic < 1:
        raise HistoSmithError(f"--n-synthetic {n_synthetic}: at least 1")
    counts = np.asarray(real.counts, np.int64)
    if len(counts) == 0:
        raise HistoSmithError("the real dataset has no tiles")
    r = counts.sum(0).astype(float)  # R_c
    s = np.asarray(target, float)
    cap = np.asarray(real.count_max, np.int64)
    names = real.class_names
    for c, name in enumerate(names):
        if s[c] == 0 and r[c] > 0:
            raise HistoSmithError(f"infeasible: {name} has {int(r[c])} real nuclei, so its share cannot be 0")
        if s[c] > 0 and cap[c] == 0:
            raise HistoSmithError(f"infeasible: {name} never occurs in the data (trained range 0..0), so no "
                                  f"synthetic tile may ask for it")
    pos = s > 0
    t_low = float(np.max(r[pos] / s[pos]))
    t_high = float(np.min((n_synthetic * cap[pos] + r[pos]) / s[pos]))
    if t_low > t_high + 1e-9:
        need = int(np.max(np.ceil((s[pos] * t_low - r[pos]) / cap[pos])))
        worst = names[int(np.flatnonzero(pos)[np.argmax((s[pos] * t_low - r[pos]) / cap[pos])])]
        raise HistoSmithError(f"infeasible: these shares need at least {need} synthetic tiles within the trained "
                              f"range ({worst}: at most {int(cap[names.index(worst)])} per tile); "
                              f"--n-synthetic is {n_synthetic}")
    per_tile = counts.sum(1).mean()
    t = min(max(r.sum() + n_synthetic * per_tile, t_low), t_high)
    totals = np.clip(np.floor(s * t - r + 0.5), 0, n_synthetic * cap).astype(np.int64)
    rng = np.random.default_rng(seed)
    pick = rng.integers(len(counts), size=n_synthetic)
    templates = counts[pick]
    out = np.stack([allocate(int(totals[c]), templates[:, c], int(cap[c])) for c in range(len(names))], axis=1)
    after = r + out.sum(0)
    return BalancePlan(out, [real.tissues[i] for i in pick], list(names), list(r / max(r.sum(), 1)),
                       list(after / max(after.sum(), 1)), list(s), [int(v) for v in out.sum(0)])


def equal_shares(class_names: list[str]) -> list[float]:
    return [1.0 / len(class_names)] * len(class_names)


def write_conditions_csv(plan: BalancePlan) -> str:
    """The CSV ``hs-generate --conditions`` reads: one column per class and ``tissue``, one row per tile."""
    lines = [",".join([*plan.class_names, "tissue"])]
    lines += [",".join([*(str(int(v)) for v in row), tissue]) for row, tissue in zip(plan.counts, plan.tissues,
                                                                                        strict=True)]
    return "\n".join(lines) + "\n"


def plot_shares(plan: BalancePlan, path: Any) -> None:
    """Bars of the class shares: real, target, real + synthetic."""
    from histosmith.data.plots import plt, save_figure

    k = len(plan.class_names)
    x = np.arange(k)
    fig, ax = plt.subplots(figsize=(1.6 * k + 2.5, 3.4))
    for offset, values, label, colour in ((-0.27, plan.shares_before, "real", "#7b4f9d"),
                                          (0.0, plan.target, "target", "#bbbbbb"),
                                          (0.27, plan.shares_after, "real + synthetic", "#1b9e77")):
        ax.bar(x + offset, values, width=0.26, label=label, color=colour)
    ax.set_xticks(x, plan.class_names)
    ax.set_ylabel("share of nuclei")
    ax.set_title(f"class shares before and after {len(plan.counts)} synthetic tiles", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path)
