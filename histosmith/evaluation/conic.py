"""CoNIC challenge metrics (PQ, mPQ+, multi-class R², AJI, Dice) in numpy (scipy for IoU thresholds below 0.5).

The numbers reproduce the official CoNIC evaluation (``TissueImageAnalytics/CoNIC``:
``compute_stats.py`` and ``metrics/stats_utils.py``) and, for AJI and Dice, the HoVer-Net
reference code (``vqdang/hover_net``: ``metrics/stats_utils.py``, ``get_fast_aji`` and
``get_dice_1``). The implementation is independent; only the rules are shared:

* **Pairing.** Two instances are a pair when their IoU is *strictly* greater than the
  threshold (0.5 by default), so an IoU of exactly 0.5 is not a match. For thresholds
  >= 0.5 such pairs are unique by construction; below 0.5 a maximum-IoU assignment
  (``scipy.optimize.linear_sum_assignment``) chooses them (``get_pq``).
* **PQ terms.** ``dq = tp / (tp + fp/2 + fn/2 + 1e-6)`` and ``sq = sum_iou / (tp + 1e-6)``,
  so a perfect tile scores slightly below 1 and an empty tile (nothing to find, nothing
  found) scores 0 (``get_pq``; ``compute_stats.py``).
* **Binary PQ** is computed per tile on the instance channel and averaged over the tiles,
  empty tiles included (``compute_stats.py``).
* **mPQ+** pools ``[tp, fp, fn, sum_iou]`` for each class over the whole set, computes one PQ
  per class and averages those PQs over the classes. A class absent from both truth and
  prediction therefore scores 0 (``get_multi_pq_info``; ``compute_stats.py``).
* **R²** is ``sklearn.metrics.r2_score`` per class column, then the mean over classes
  (``get_multi_r2``).

Label conventions: an instance map is a 2-D array of non-negative integers (0 is
background). A label tile is ``(H, W, 2)``: channel 0 instance ids, channel 1 class ids
``0..n_classes`` (0 is background).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from histosmith.data.labels import count_nuclei

__all__ = [
    "ConicAccumulator",
    "ConicResult",
    "InstanceMatch",
    "aji",
    "binary_pq",
    "dice",
    "match_instances",
    "multiclass_pq_stats",
    "pq_from_stats",
    "r2_per_class",
    "remap_label",
]

#: Additive term in the PQ denominators, as in the official code.
PQ_EPS = 1.0e-6
#: Additive term in the IoU that AJI uses to choose each ground-truth nucleus's partner.
AJI_EPS = 1.0e-6


# ----------------------------------------------------------------------------- validation
def _is_integer_array(arr: np.ndarray) -> bool:
    return np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_


def _instance_map(arr: Any, name: str) -> np.ndarray:
    """Return ``arr`` as a validated 2-D instance map."""
    a = np.asarray(arr)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D instance map, got shape {a.shape}")
    if not _is_integer_array(a):
        raise ValueError(f"{name} must hold integer instance ids, got dtype {a.dtype}")
    if a.size and np.issubdtype(a.dtype, np.signedinteger) and a.min() < 0:
        raise ValueError(f"{name} has negative instance ids (min {a.min()}); ids must be >= 0")
    return a


def _instance_pair(true_inst: Any, pred_inst: Any) -> tuple[np.ndarray, np.ndarray]:
    t = _instance_map(true_inst, "true_inst")
    p = _instance_map(pred_inst, "pred_inst")
    if t.shape != p.shape:
        raise ValueError(f"shape mismatch: true {t.shape} vs pred {p.shape}")
    return t, p


def _label_tile(arr: Any, name: str, n_classes: int) -> np.ndarray:
    """Return ``arr`` as a validated ``(H, W, 2)`` label tile."""
    a = np.asarray(arr)
    if a.ndim != 3 or a.shape[-1] != 2:
        raise ValueError(f"{name} must have shape (H, W, 2), got {a.shape}")
    if not _is_integer_array(a):
        raise ValueError(f"{name} must hold integers, got dtype {a.dtype}")
    _instance_map(a[..., 0], f"{name}[..., 0]")
    cls = a[..., 1]
    if cls.size and (int(cls.min()) < 0 or int(cls.max()) > n_classes):
        raise ValueError(
            f"{name}[..., 1] has class ids in [{int(cls.min())}, {int(cls.max())}], expected 0..{n_classes}"
        )
    return a


def _label_pair(true_labels: Any, pred_labels: Any, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if int(n_classes) < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    t = _label_tile(true_labels, "true_labels", n_classes)
    p = _label_tile(pred_labels, "pred_labels", n_classes)
    if t.shape != p.shape:
        raise ValueError(f"shape mismatch: true {t.shape} vs pred {p.shape}")
    return t, p


# ----------------------------------------------------------------------------- overlaps
def _dense_labels(inst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat labels 0..n (0 background, order of ids preserved) and the sorted non-zero ids."""
    ids, inverse = np.unique(inst, return_inverse=True)
    inverse = inverse.reshape(-1)
    if ids.size and ids[0] == 0:
        return inverse, ids[1:]
    return inverse + 1, ids


@dataclass(frozen=True, eq=False)
class _Overlap:
    """Sparse contingency table of two instance maps (indices are 0-based, ids sorted)."""

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_area: np.ndarray
    pred_area: np.ndarray
    pair_true: np.ndarray  # index into true_ids, sorted (row-major order)
    pair_pred: np.ndarray  # index into pred_ids
    inter: np.ndarray  # pixel count of each overlapping pair

    @property
    def union(self) -> np.ndarray:
        return self.true_area[self.pair_true] + self.pred_area[self.pair_pred] - self.inter


def _overlap(true_inst: np.ndarray, pred_inst: np.ndarray) -> _Overlap:
    t_lab, t_ids = _dense_labels(true_inst)
    p_lab, p_ids = _dense_labels(pred_inst)
    n_t, n_p = t_ids.size, p_ids.size
    t_area = np.bincount(t_lab, minlength=n_t + 1)[1:].astype(np.int64)
    p_area = np.bincount(p_lab, minlength=n_p + 1)[1:].astype(np.int64)
    both = (t_lab > 0) & (p_lab > 0)
    codes = t_lab[both].astype(np.int64) * (n_p + 1) + p_lab[both]
    codes, inter = np.unique(codes, return_counts=True)
    return _Overlap(
        true_ids=t_ids,
        pred_ids=p_ids,
        true_area=t_area,
        pred_area=p_area,
        pair_true=codes // (n_p + 1) - 1,
        pair_pred=codes % (n_p + 1) - 1,
        inter=inter.astype(np.int64),
    )


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(arr)
    arr.setflags(write=False)
    return arr


# ----------------------------------------------------------------------------- public API
def remap_label(inst: np.ndarray) -> np.ndarray:
    """Renumber the instance ids of ``inst`` to ``1..n`` keeping their order; 0 stays 0.

    The smallest non-zero id becomes 1, the next 2, and so on, like the official
    ``remap_label(by_size=False)``. The result is always a new ``int32`` array (the official
    function hands back its input unchanged when it has no instance).
    """
    a = _instance_map(inst, "inst")
    lab, _ = _dense_labels(a)
    return lab.reshape(a.shape).astype(np.int32)


@dataclass(frozen=True, eq=False)
class InstanceMatch:
    """One-to-one pairing of ground-truth and predicted instances of one map.

    Ids are the *original* ids of the input maps (the official code reports ids after
    ``remap_label``, which preserves their order). Pairs are ordered by ground-truth id.
    """

    paired_true: np.ndarray
    paired_pred: np.ndarray
    paired_iou: np.ndarray
    unpaired_true: np.ndarray
    unpaired_pred: np.ndarray

    @property
    def tp(self) -> int:
        return int(self.paired_true.size)

    @property
    def fp(self) -> int:
        return int(self.unpaired_pred.size)

    @property
    def fn(self) -> int:
        return int(self.unpaired_true.size)

    @property
    def iou_sum(self) -> float:
        return float(self.paired_iou.sum())


def match_instances(true_inst: np.ndarray, pred_inst: np.ndarray, iou_threshold: float = 0.5) -> InstanceMatch:
    """Pair ground-truth and predicted instances as the official ``get_pq`` does.

    A pair needs ``IoU > iou_threshold`` (strict; matches the official rule, so IoU exactly
    0.5 is no match at the default threshold). For ``iou_threshold >= 0.5`` every such pair
    is unique and all of them are kept. Below 0.5 the pairs come from
    ``linear_sum_assignment`` maximising the total IoU, run, as in the official code, on an
    IoU matrix padded with one zero row and column (its size counts the background id),
    so ties resolve the same way; assigned pairs at or below the threshold are discarded.
    """
    if not iou_threshold >= 0.0:
        raise ValueError(f"iou_threshold must be >= 0, got {iou_threshold}")
    t, p = _instance_pair(true_inst, pred_inst)
    ov = _overlap(t, p)
    iou = ov.inter / ov.union  # exact pixel IoU, float64
    if iou_threshold >= 0.5:
        keep = iou > iou_threshold
        sel_t, sel_p, sel_iou = ov.pair_true[keep], ov.pair_pred[keep], iou[keep]
    else:
        mat = np.zeros((ov.true_ids.size + 1, ov.pred_ids.size + 1), dtype=np.float64)
        mat[ov.pair_true, ov.pair_pred] = iou
        from scipy.optimize import linear_sum_assignment  # the [train] extra: only thresholds below 0.5 need it

        rows, cols = linear_sum_assignment(-mat)
        vals = mat[rows, cols]
        keep = vals > iou_threshold
        sel_t, sel_p, sel_iou = rows[keep], cols[keep], vals[keep]
    free_t = np.ones(ov.true_ids.size, dtype=bool)
    free_t[sel_t] = False
    free_p = np.ones(ov.pred_ids.size, dtype=bool)
    free_p[sel_p] = False
    return InstanceMatch(
        paired_true=_frozen(ov.true_ids[sel_t]),
        paired_pred=_frozen(ov.pred_ids[sel_p]),
        paired_iou=_frozen(sel_iou.astype(np.float64)),
        unpaired_true=_frozen(ov.true_ids[free_t]),
        unpaired_pred=_frozen(ov.pred_ids[free_p]),
    )


def _pq_terms(tp: float, fp: float, fn: float, iou_sum: float) -> tuple[float, float, float]:
    dq = tp / ((tp + 0.5 * fp + 0.5 * fn) + PQ_EPS)
    sq = iou_sum / (tp + PQ_EPS)
    return float(dq), float(sq), float(dq * sq)


def binary_pq(true_inst: np.ndarray, pred_inst: np.ndarray, iou_threshold: float = 0.5) -> tuple[float, float, float]:
    """``(dq, sq, pq)`` of one instance map, class-agnostic (official ``get_pq``).

    Matches the official epsilons: a perfect prediction of ``n`` nuclei gives
    ``pq = (n / (n + 1e-6)) ** 2``, and a tile with no nucleus in either map gives 0.
    """
    m = match_instances(true_inst, pred_inst, iou_threshold)
    return _pq_terms(m.tp, m.fp, m.fn, m.iou_sum)


def multiclass_pq_stats(
    true_labels: np.ndarray, pred_labels: np.ndarray, n_classes: int, iou_threshold: float = 0.5
) -> np.ndarray:
    """Per-class ``[tp, fp, fn, sum_iou]`` of one label tile, shape ``(n_classes, 4)``.

    Row ``c - 1`` matches the instance map restricted to the pixels of class ``c`` in truth
    against the same in the prediction (official ``get_multi_pq_info``): an instance whose
    pixels carry several classes takes part in each class with those pixels only, and
    instance pixels of class 0 are ignored.
    """
    t, p = _label_pair(true_labels, pred_labels, n_classes)
    out = np.zeros((int(n_classes), 4), dtype=np.float64)
    for c in range(1, int(n_classes) + 1):
        t_c = np.where(t[..., 1] == c, t[..., 0], 0)
        p_c = np.where(p[..., 1] == c, p[..., 0], 0)
        m = match_instances(t_c, p_c, iou_threshold)
        out[c - 1] = (m.tp, m.fp, m.fn, m.iou_sum)
    return out


def pq_from_stats(stats: np.ndarray) -> np.ndarray:
    """PQ of each row of ``[tp, fp, fn, sum_iou]`` stats (shape ``(K, 4)`` -> ``(K,)``).

    Uses the official ``dq * sq`` with the 1e-6 terms; an all-zero row (class absent from
    truth and prediction) gives 0, as in ``compute_stats.py``.
    """
    s = np.asarray(stats, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != 4:
        raise ValueError(f"stats must have shape (K, 4), got {s.shape}")
    tp, fp, fn, iou_sum = s.T
    dq = tp / ((tp + 0.5 * fp + 0.5 * fn) + PQ_EPS)
    sq = iou_sum / (tp + PQ_EPS)
    return dq * sq


def r2_per_class(true_counts: np.ndarray, pred_counts: np.ndarray) -> np.ndarray:
    """Coefficient of determination of each column, identical to ``sklearn.metrics.r2_score``.

    Follows sklearn's default ``force_finite=True``: a constant true column (zero total sum
    of squares) scores 1.0 when predicted exactly and 0.0 otherwise. With fewer than two
    rows R² is undefined and every class gets ``nan`` (sklearn returns nan too).
    """
    yt = np.asarray(true_counts, dtype=np.float64)
    yp = np.asarray(pred_counts, dtype=np.float64)
    if yt.ndim != 2:
        raise ValueError(f"true_counts must have shape (N, K), got {yt.shape}")
    if yp.shape != yt.shape:
        raise ValueError(f"pred_counts shape {yp.shape} does not match true_counts shape {yt.shape}")
    if not (np.isfinite(yt).all() and np.isfinite(yp).all()):
        raise ValueError("counts must be finite")
    n, k = yt.shape
    if n < 2:
        return np.full(k, np.nan)
    ss_res = np.sum((yt - yp) ** 2, axis=0)
    ss_tot = np.sum((yt - np.mean(yt, axis=0)) ** 2, axis=0)
    out = np.ones(k, dtype=np.float64)
    valid = (ss_res != 0) & (ss_tot != 0)
    out[valid] = 1.0 - ss_res[valid] / ss_tot[valid]
    out[(ss_res != 0) & (ss_tot == 0)] = 0.0
    return out


def aji(true_inst: np.ndarray, pred_inst: np.ndarray) -> float:
    """Aggregated Jaccard Index of one tile, as HoVer-Net's ``get_fast_aji``.

    Each ground-truth nucleus is paired with the prediction of highest
    ``inter / (union + 1e-6)`` (the lowest id wins a tie; a prediction may serve several
    nuclei); nuclei without overlap stay unpaired. AJI = sum of paired intersections /
    (sum of paired unions + areas of unpaired nuclei + areas of predictions no nucleus
    chose). Edge cases, where the reference code divides by zero or raises: no nucleus in
    either map -> ``nan`` (undefined); nuclei but no prediction -> 0.0.
    """
    t, p = _instance_pair(true_inst, pred_inst)
    ov = _overlap(t, p)
    if ov.true_ids.size == 0 and ov.pred_ids.size == 0:
        return math.nan
    union = ov.union
    score = ov.inter / (union + AJI_EPS)
    order = np.lexsort((ov.pair_pred, -score, ov.pair_true))
    first = np.ones(order.size, dtype=bool)
    first[1:] = ov.pair_true[order[1:]] != ov.pair_true[order[:-1]]
    best = order[first]
    used_t = np.zeros(ov.true_ids.size, dtype=bool)
    used_t[ov.pair_true[best]] = True
    used_p = np.zeros(ov.pred_ids.size, dtype=bool)
    used_p[ov.pair_pred[best]] = True
    total_inter = float(ov.inter[best].sum())
    total_union = float(union[best].sum())
    total_union += float(ov.true_area[~used_t].sum()) + float(ov.pred_area[~used_p].sum())
    return total_inter / total_union


def dice(true_inst: np.ndarray, pred_inst: np.ndarray) -> float:
    """Foreground Dice ``2|T & P| / (|T| + |P|)`` of one tile (HoVer-Net ``get_dice_1``).

    Both maps empty -> ``nan`` (undefined; the reference code computes 0/0).
    """
    t, p = _instance_pair(true_inst, pred_inst)
    t_fg, p_fg = t > 0, p > 0
    denom = int(t_fg.sum()) + int(p_fg.sum())
    if denom == 0:
        return math.nan
    return 2.0 * int(np.count_nonzero(t_fg & p_fg)) / denom


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


# ----------------------------------------------------------------------------- accumulation
@dataclass(frozen=True)
class ConicResult:
    """Set-level CoNIC metrics.

    ``pq``: binary PQ averaged over tiles (empty tiles count as 0, as officially);
    ``mpq_plus``: mean over classes of the PQ of the pooled per-class stats;
    ``r2``: mean over classes of the per-class R²;
    ``aji`` / ``dice``: means over the tiles where they are defined (tiles with no nucleus in
    truth nor prediction are skipped; ``nan`` if no tile qualifies);
    ``per_class``: ``{name: {"pq": ..., "r2": ...}}``.
    """

    pq: float
    mpq_plus: float
    r2: float
    aji: float
    dice: float
    per_class: dict[str, dict[str, float]] = field(hash=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain-python copy with keys ``pq, mpq_plus, r2, aji, dice, per_class``."""
        return {
            "pq": float(self.pq),
            "mpq_plus": float(self.mpq_plus),
            "r2": float(self.r2),
            "aji": float(self.aji),
            "dice": float(self.dice),
            "per_class": {
                str(name): {"pq": float(v["pq"]), "r2": float(v["r2"])} for name, v in self.per_class.items()
            },
        }

    def format_table(self) -> str:
        """A plain-text table of the summary and per-class metrics."""
        width = max([len("class")] + [len(n) for n in self.per_class])
        lines = [f"{'metric':<10} {'value':>8}"]
        for key, label in (("pq", "PQ"), ("mpq_plus", "mPQ+"), ("r2", "R2"), ("aji", "AJI"), ("dice", "Dice")):
            lines.append(f"{label:<10} {getattr(self, key):>8.4f}")
        lines.append("")
        lines.append(f"{'class':<{width}} {'PQ':>8} {'R2':>8}")
        for name, v in self.per_class.items():
            lines.append(f"{name:<{width}} {v['pq']:>8.4f} {v['r2']:>8.4f}")
        return "\n".join(lines)


class ConicAccumulator:
    """Streams label tiles and produces the CoNIC metrics of the whole set.

    Memory is one tile plus a few numbers per tile: each :meth:`add` reduces the tile to its
    binary PQ, AJI, Dice, per-class ``[tp, fp, fn, sum_iou]`` (summed over the set, the
    official mPQ+ pooling) and per-class nucleus counts (for R²).
    """

    def __init__(self, class_names: Sequence[str], count_margin: int = 0) -> None:
        names = tuple(str(n) for n in class_names)
        self.count_margin = count_margin
        if not names:
            raise ValueError("class_names must not be empty")
        if len(set(names)) != len(names):
            raise ValueError(f"class_names must be unique, got {list(names)}")
        self._names = names
        self._stats = np.zeros((len(names), 4), dtype=np.float64)
        self._tile_stats: list[np.ndarray] = []
        self._pq: list[float] = []
        self._aji: list[float] = []
        self._dice: list[float] = []
        self._true_counts: list[np.ndarray] = []
        self._pred_counts: list[np.ndarray] = []

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._names

    @property
    def n_classes(self) -> int:
        return len(self._names)

    @property
    def n_tiles(self) -> int:
        return len(self._pq)

    def add(self, true_labels: np.ndarray, pred_labels: np.ndarray) -> None:
        """Account for one ``(H, W, 2)`` ground-truth / prediction tile pair."""
        t, p = _label_pair(true_labels, pred_labels, self.n_classes)
        stats = multiclass_pq_stats(t, p, self.n_classes)
        pq = binary_pq(t[..., 0], p[..., 0])[2]
        aji_v = aji(t[..., 0], p[..., 0])
        dice_v = dice(t[..., 0], p[..., 0])
        true_counts = count_nuclei(t, self.n_classes, self.count_margin).astype(np.float64)
        pred_counts = count_nuclei(p, self.n_classes, self.count_margin).astype(np.float64)
        # Everything is computed before any state changes, so a failing tile leaves no trace.
        self._stats += stats
        self._tile_stats.append(stats)
        self._pq.append(pq)
        self._aji.append(aji_v)
        self._dice.append(dice_v)
        self._true_counts.append(true_counts)
        self._pred_counts.append(pred_counts)

    def _counts(self, given: np.ndarray | None, measured: list[np.ndarray], name: str) -> np.ndarray:
        if given is None:
            return np.asarray(measured, dtype=np.float64).reshape(self.n_tiles, self.n_classes)
        arr = np.asarray(given, dtype=np.float64)
        if arr.shape != (self.n_tiles, self.n_classes):
            raise ValueError(
                f"{name} must have shape (n_tiles, n_classes) = ({self.n_tiles}, {self.n_classes}), got {arr.shape}"
            )
        return arr

    def result(self, true_counts: np.ndarray | None = None, pred_counts: np.ndarray | None = None) -> ConicResult:
        """Metrics over every tile added so far.

        ``true_counts`` / ``pred_counts`` (``(n_tiles, n_classes)``, rows in the order the
        tiles were added) override the nucleus counts used for R²; each one left ``None`` is
        measured from the labels with the one definition of a count, :func:`histosmith.data.labels.count_nuclei`
        (a nucleus counts once, in its majority class; with ``count_margin`` only if it reaches the centre
        region). CoNIC's own ``counts.csv`` counts distinct (id, class) pairs, which is the same number for
        labels with one class per nucleus.
        """
        if self.n_tiles == 0:
            raise ValueError("no tiles were added")
        yt = self._counts(true_counts, self._true_counts, "true_counts")
        yp = self._counts(pred_counts, self._pred_counts, "pred_counts")
        return _conic_result(self._names, self._stats, self._pq, self._aji, self._dice, yt, yp)

    def scores(self) -> TileScores:
        """The per-tile terms behind :meth:`result` (counts measured from the labels), for resampling."""
        if self.n_tiles == 0:
            raise ValueError("no tiles were added")
        return TileScores(self._names, np.stack(self._tile_stats), np.asarray(self._pq), np.asarray(self._aji),
                          np.asarray(self._dice), np.stack(self._true_counts), np.stack(self._pred_counts))


def _conic_result(names: Sequence[str], stats: np.ndarray, pq: Sequence[float], aji_values: Sequence[float],
                  dice_values: Sequence[float], true_counts: np.ndarray, pred_counts: np.ndarray) -> ConicResult:
    """Set-level metrics from pooled per-class stats, per-tile binary PQ / AJI / Dice and count tables."""
    class_pq = pq_from_stats(stats)
    class_r2 = r2_per_class(true_counts, pred_counts)
    return ConicResult(
        pq=float(np.mean(pq)),
        mpq_plus=float(np.mean(class_pq)),
        r2=float(np.mean(class_r2)),
        aji=_nanmean(aji_values),
        dice=_nanmean(dice_values),
        per_class={name: {"pq": float(q), "r2": float(r)}
                   for name, q, r in zip(names, class_pq, class_r2, strict=True)},
    )


@dataclass(frozen=True)
class TileScores:
    """Per-tile CoNIC terms of a set: ``stats`` (N, K, 4) ``[tp, fp, fn, sum_iou]``, binary PQ, AJI and Dice
    (N,), nucleus counts (N, K). :meth:`result` pools any selection of tiles (with repeats: a bootstrap
    resample) exactly as :class:`ConicAccumulator` pools the whole set."""

    class_names: tuple[str, ...]
    stats: np.ndarray
    pq: np.ndarray
    aji: np.ndarray
    dice: np.ndarray
    true_counts: np.ndarray
    pred_counts: np.ndarray

    def __len__(self) -> int:
        return len(self.pq)

    def result(self, index: np.ndarray | None = None) -> ConicResult:
        idx = np.arange(len(self)) if index is None else np.asarray(index)
        return _conic_result(self.class_names, self.stats[idx].sum(axis=0), self.pq[idx], self.aji[idx].tolist(),
                             self.dice[idx].tolist(), self.true_counts[idx], self.pred_counts[idx])
