"""Hand-computed checks of the CoNIC metrics (official CoNIC / HoVer-Net semantics)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from histosmith.evaluation.conic import (
    ConicAccumulator,
    ConicResult,
    aji,
    binary_pq,
    dice,
    match_instances,
    multiclass_pq_stats,
    pq_from_stats,
    r2_per_class,
    remap_label,
)

EPS = 1.0e-6


def _pq(tp: float, fp: float, fn: float, iou_sum: float) -> float:
    """The official PQ formula, written out independently of the module."""
    return tp / ((tp + 0.5 * fp + 0.5 * fn) + EPS) * (iou_sum / (tp + EPS))


def _tile(shape: tuple[int, int], boxes: list[tuple[int, int, int, int, int, int]]) -> np.ndarray:
    """(H, W, 2) label tile from boxes ``(instance_id, class_id, r0, r1, c0, c1)``."""
    out = np.zeros((*shape, 2), dtype=np.int32)
    for inst, cls, r0, r1, c0, c1 in boxes:
        out[r0:r1, c0:c1, 0] = inst
        out[r0:r1, c0:c1, 1] = cls
    return out


def _random_tile(rng: np.random.Generator, n: int, n_classes: int, size: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((size, size, 2), dtype=np.int32)
    for inst in range(1, n + 1):
        cy, cx = rng.integers(0, size, size=2)
        ry, rx = rng.integers(2, 8, size=2)
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        out[m, 0] = inst
        out[m, 1] = rng.integers(1, n_classes + 1)
    return out


def _perturb(rng: np.random.Generator, tile: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.roll(tile, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1)).copy()
    out[rng.random(out.shape[:2]) < 0.2] = 0
    flip = rng.random(out.shape[:2]) < 0.1
    out[flip & (out[..., 0] > 0), 1] = rng.integers(1, n_classes + 1)
    return out


def _permute_ids(rng: np.random.Generator, inst: np.ndarray) -> np.ndarray:
    ids = np.unique(inst)
    ids = ids[ids != 0]
    new = rng.choice(np.arange(1, 100_000), size=ids.size, replace=False)
    out = np.zeros_like(inst)
    for old, nid in zip(ids, new, strict=True):
        out[inst == old] = nid
    return out


# ----------------------------------------------------------------------------- remap_label
def test_remap_label_keeps_order_and_makes_ids_contiguous() -> None:
    inst = np.array([[0, 9, 9], [5, 0, 2], [2, 2, 0]])
    out = remap_label(inst)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[0, 3, 3], [2, 0, 1], [1, 1, 0]])
    np.testing.assert_array_equal(remap_label(np.zeros((2, 3), np.int64)), np.zeros((2, 3)))
    np.testing.assert_array_equal(remap_label(np.full((2, 2), 7)), np.ones((2, 2)))


# ----------------------------------------------------------------------------- single tiles
def test_perfect_prediction_pq_is_just_below_one() -> None:
    true = _tile((20, 20), [(4, 1, 0, 4, 0, 4), (8, 2, 6, 10, 6, 12), (11, 1, 12, 18, 0, 5)])
    pred = true.copy()
    pred[..., 0] = np.where(pred[..., 0] > 0, pred[..., 0] + 100, 0)  # other ids, same nuclei
    dq, sq, pq = binary_pq(true[..., 0], pred[..., 0])
    assert dq == 3 / (3 + EPS)
    assert sq == 3.0 / (3 + EPS)
    assert pq == (3 / (3 + EPS)) * (3.0 / (3 + EPS))
    assert pq < 1.0

    acc = ConicAccumulator(["a", "b"])
    acc.add(true, pred)
    acc.add(true, pred)
    res = acc.result()
    assert res.pq == pq
    assert res.per_class["a"]["pq"] == _pq(4, 0, 0, 4.0)
    assert res.per_class["b"]["pq"] == _pq(2, 0, 0, 2.0)
    assert res.mpq_plus == pytest.approx((_pq(4, 0, 0, 4.0) + _pq(2, 0, 0, 2.0)) / 2, abs=1e-15)
    assert res.r2 == 1.0  # exact counts: zero residual (here also a constant column) -> 1.0
    assert res.aji == 1.0 and res.dice == 1.0


def test_both_empty_tile() -> None:
    empty = np.zeros((8, 8, 2), dtype=np.int32)
    assert binary_pq(empty[..., 0], empty[..., 0]) == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(multiclass_pq_stats(empty, empty, 3), np.zeros((3, 4)))
    assert math.isnan(aji(empty[..., 0], empty[..., 0]))
    assert math.isnan(dice(empty[..., 0], empty[..., 0]))


def test_true_empty_prediction_not_and_vice_versa() -> None:
    empty = np.zeros((8, 8, 2), dtype=np.int32)
    some = _tile((8, 8), [(3, 1, 0, 2, 0, 2), (5, 2, 4, 7, 4, 7)])
    assert binary_pq(empty[..., 0], some[..., 0]) == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(multiclass_pq_stats(empty, some, 2), [[0, 1, 0, 0], [0, 1, 0, 0]])
    np.testing.assert_array_equal(multiclass_pq_stats(some, empty, 2), [[0, 0, 1, 0], [0, 0, 1, 0]])
    assert aji(empty[..., 0], some[..., 0]) == 0.0
    assert aji(some[..., 0], empty[..., 0]) == 0.0  # the reference code raises here
    assert dice(empty[..., 0], some[..., 0]) == 0.0


def test_iou_exactly_half_is_not_a_match() -> None:
    true = np.zeros((4, 10), dtype=np.int32)
    pred = np.zeros((4, 10), dtype=np.int32)
    true[0:2, 0:6] = 1  # 12 px
    pred[0:2, 2:8] = 1  # 12 px, overlap 8, union 16 -> IoU 0.5 exactly
    m = match_instances(true, pred)
    assert (m.tp, m.fp, m.fn) == (0, 1, 1)
    assert binary_pq(true, pred) == (0.0, 0.0, 0.0)
    m_low = match_instances(true, pred, iou_threshold=0.49)  # assignment path
    assert m_low.tp == 1 and m_low.paired_iou.tolist() == [0.5]
    pred[0:2, 1:2] = 1  # 14 px, overlap 10, union 16 -> IoU 0.625
    assert match_instances(true, pred).tp == 1


def test_nucleus_split_in_two() -> None:
    true = np.zeros((6, 10), dtype=np.int32)
    true[1:5, 1:9] = 7  # 32 px
    pred = np.zeros_like(true)
    pred[1:5, 1:7] = 3  # 24 px, IoU 0.75
    pred[1:5, 7:9] = 4  # 8 px, IoU 0.25
    m = match_instances(true, pred)
    assert m.paired_true.tolist() == [7] and m.paired_pred.tolist() == [3]
    assert m.unpaired_pred.tolist() == [4] and m.unpaired_true.size == 0
    dq, sq, pq = binary_pq(true, pred)
    assert dq == 1 / (1.5 + EPS)
    assert sq == 0.75 / (1 + EPS)
    assert pq == pytest.approx(_pq(1, 1, 0, 0.75), abs=1e-15)
    assert aji(true, pred) == 24 / (32 + 8)  # unchosen fragment joins the union
    assert dice(true, pred) == 1.0  # foreground is identical

    halves = np.zeros_like(true)
    halves[1:5, 1:5] = 1
    halves[1:5, 5:9] = 2  # two IoU-0.5 halves: neither matches
    assert (match_instances(true, halves).tp, match_instances(true, halves).fp) == (0, 2)


def test_assignment_path_prefers_higher_iou() -> None:
    true = np.zeros((4, 12), dtype=np.int32)
    true[0:4, 0:10] = 1  # 40 px
    pred = np.zeros_like(true)
    pred[0:4, 0:3] = 20  # IoU 12/40
    pred[0:4, 3:7] = 10  # IoU 16/40
    m = match_instances(true, pred, iou_threshold=0.1)
    assert m.paired_pred.tolist() == [10] and m.paired_iou.tolist() == [0.4]
    assert m.unpaired_pred.tolist() == [20]
    with pytest.raises(ValueError, match="iou_threshold"):
        match_instances(true, pred, iou_threshold=-0.1)


def test_instance_pixels_of_other_class_are_matched_per_class() -> None:
    true = _tile((6, 8), [(1, 1, 0, 4, 0, 8)])  # 32 px class 1
    pred = true.copy()
    pred[0:4, 6:8, 1] = 2  # 8 px of the same instance predicted as class 2
    stats = multiclass_pq_stats(true, pred, 2)
    np.testing.assert_array_equal(stats[:, :3], [[1, 0, 0], [0, 1, 0]])
    assert stats[0, 3] == 0.75


# ----------------------------------------------------------------------------- set level
def test_class_absent_from_truth_scores_zero() -> None:
    true = _tile((10, 10), [(1, 1, 0, 4, 0, 4)])
    pred_no_c2 = true.copy()
    pred_fp_c2 = _tile((10, 10), [(1, 1, 0, 4, 0, 4), (2, 2, 6, 9, 6, 9)])
    for pred in (pred_no_c2, pred_fp_c2):
        acc = ConicAccumulator(["one", "two"])
        acc.add(true, pred)
        res = acc.result()
        assert res.per_class["two"]["pq"] == 0.0
        assert res.mpq_plus == _pq(1, 0, 0, 1.0) / 2
    np.testing.assert_array_equal(pq_from_stats(np.zeros((2, 4))), [0.0, 0.0])


def test_mpq_pools_over_the_set_and_pq_averages_tiles() -> None:
    hit = _tile((8, 8), [(1, 1, 0, 4, 0, 4)])
    miss_true = _tile((8, 8), [(1, 1, 2, 6, 2, 6)])
    miss_pred = np.zeros_like(miss_true)
    acc = ConicAccumulator(["c"])
    acc.add(hit, hit)
    acc.add(miss_true, miss_pred)
    res = acc.result()
    pooled = _pq(1, 0, 1, 1.0)  # tp=1, fn=1 over the set: ~2/3
    per_tile = (_pq(1, 0, 0, 1.0) + 0.0) / 2  # ~1/2
    assert res.mpq_plus == pytest.approx(pooled, abs=1e-15)
    assert res.mpq_plus > per_tile + 0.1
    assert res.pq == pytest.approx(per_tile, abs=1e-15)  # binary PQ is a per-tile mean
    assert res.aji == 0.5 and res.dice == 0.5


def test_aji_and_dice_skip_tiles_empty_in_both() -> None:
    tile = _tile((8, 8), [(1, 1, 0, 4, 0, 4)])
    empty = np.zeros_like(tile)
    acc = ConicAccumulator(["c"])
    acc.add(tile, tile)
    acc.add(empty, empty)
    res = acc.result()
    assert res.aji == 1.0 and res.dice == 1.0
    assert res.pq == pytest.approx(_pq(1, 0, 0, 1.0) / 2, abs=1e-15)  # empty tile counts as 0 in PQ


def test_measured_counts_and_given_counts() -> None:
    t1 = _tile((10, 10), [(1, 1, 0, 3, 0, 3), (2, 1, 4, 6, 4, 6), (3, 2, 7, 9, 0, 2)])
    t2 = _tile((10, 10), [(5, 2, 0, 3, 0, 3)])
    t3 = _tile((10, 10), [(1, 1, 0, 3, 0, 3)])
    t3[0, 0, 1] = 2  # a nucleus with pixels of both classes counts once, in its majority class
    expected = np.array([[2, 1], [0, 1], [1, 0]], dtype=float)
    acc = ConicAccumulator(["a", "b"])
    for t in (t1, t2, t3):
        acc.add(t, np.zeros_like(t))
    assert acc.result(pred_counts=expected).r2 == 1.0
    res = acc.result()  # predictions empty: counts all zero
    np.testing.assert_allclose(
        [res.per_class["a"]["r2"], res.per_class["b"]["r2"]], r2_per_class(expected, np.zeros_like(expected))
    )
    res = acc.result(true_counts=expected, pred_counts=expected + [[1, 0], [0, 0], [0, 0]])
    assert res.per_class["b"]["r2"] == 1.0
    assert res.per_class["a"]["r2"] == 0.5  # column a: ss_tot = 2, ss_res = 1


def test_result_serialises() -> None:
    tile = _tile((8, 8), [(1, 1, 0, 4, 0, 4)])
    acc = ConicAccumulator(["epithelial", "lymphocyte"])
    acc.add(tile, tile)
    acc.add(tile, np.zeros_like(tile))
    res = acc.result()
    assert isinstance(res, ConicResult)
    d = res.to_dict()
    assert list(d) == ["pq", "mpq_plus", "r2", "aji", "dice", "per_class"]
    assert set(d["per_class"]) == {"epithelial", "lymphocyte"}
    assert all(type(v) is float for k, v in d.items() if k != "per_class")
    json.loads(json.dumps(d))
    table = res.format_table()
    assert "mPQ+" in table and "lymphocyte" in table


# ----------------------------------------------------------------------------- R²
def test_r2_constant_columns_and_small_sets() -> None:
    yt = np.array([[1, 3, 2], [2, 3, 2], [3, 3, 2]], dtype=float)
    yp = np.array([[1, 3, 2], [2, 4, 2], [4, 3, 2]], dtype=float)
    np.testing.assert_allclose(r2_per_class(yt, yp), [0.5, 0.0, 1.0])
    assert np.isnan(r2_per_class(yt[:1], yp[:1])).all()


def test_r2_matches_sklearn() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for n in (2, 3, 17, 60):
        yt = rng.integers(0, 8, size=(n, 6)).astype(float)
        yp = yt + rng.integers(-3, 4, size=(n, 6))
        yt[:, 0] = 4  # constant, mispredicted
        yt[:, 1] = 2
        yp[:, 1] = 2  # constant, exact
        yp[:, 2] = yt[:, 2]  # exact, not constant
        mine = r2_per_class(yt, yp)
        np.testing.assert_allclose(mine, sk.r2_score(yt, yp, multioutput="raw_values"), rtol=0, atol=1e-12)
        for k in range(6):
            assert mine[k] == pytest.approx(sk.r2_score(yt[:, k].tolist(), yp[:, k].tolist()), abs=1e-12)


# ----------------------------------------------------------------------------- properties
@pytest.mark.parametrize("seed", range(6))
def test_stats_invariant_to_instance_id_permutation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    true = _random_tile(rng, int(rng.integers(0, 20)), 4)
    pred = _perturb(rng, true, 4) if seed % 3 else _random_tile(rng, int(rng.integers(0, 20)), 4)
    base = multiclass_pq_stats(true, pred, 4)
    base_pq = binary_pq(true[..., 0], pred[..., 0])
    for _ in range(3):
        t2, p2 = true.copy(), pred.copy()
        t2[..., 0] = _permute_ids(rng, true[..., 0])
        p2[..., 0] = _permute_ids(rng, pred[..., 0])
        other = multiclass_pq_stats(t2, p2, 4)
        np.testing.assert_array_equal(other[:, :3], base[:, :3])
        np.testing.assert_allclose(other[:, 3], base[:, 3], rtol=0, atol=1e-12)
        assert binary_pq(t2[..., 0], p2[..., 0]) == pytest.approx(base_pq, abs=1e-12)
        np.testing.assert_equal(dice(t2[..., 0], p2[..., 0]), dice(true[..., 0], pred[..., 0]))


# ----------------------------------------------------------------------------- validation
def test_validation_errors() -> None:
    good = _tile((6, 6), [(1, 1, 0, 3, 0, 3)])
    with pytest.raises(ValueError, match="shape mismatch"):
        multiclass_pq_stats(good, good[:5], 2)
    with pytest.raises(ValueError, match="shape mismatch"):
        binary_pq(good[..., 0], good[:5, :, 0])
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        multiclass_pq_stats(good[..., 0], good[..., 0], 2)
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        multiclass_pq_stats(np.zeros((6, 6, 3), int), np.zeros((6, 6, 3), int), 2)
    bad_cls = good.copy()
    bad_cls[0, 0, 1] = 3
    with pytest.raises(ValueError, match="class ids"):
        multiclass_pq_stats(good, bad_cls, 2)
    bad_cls[0, 0, 1] = -1
    with pytest.raises(ValueError, match="class ids"):
        multiclass_pq_stats(bad_cls, good, 2)
    bad_inst = good.copy()
    bad_inst[0, 0, 0] = -4
    with pytest.raises(ValueError, match="negative instance"):
        multiclass_pq_stats(good, bad_inst, 2)
    with pytest.raises(ValueError, match="negative instance"):
        remap_label(bad_inst[..., 0])
    with pytest.raises(ValueError, match="2-D"):
        aji(good, good)
    with pytest.raises(ValueError, match="integer"):
        dice(good[..., 0].astype(float), good[..., 0])
    with pytest.raises(ValueError, match=r"\(K, 4\)"):
        pq_from_stats(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="shape"):
        r2_per_class(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="shape"):
        r2_per_class(np.zeros(4), np.zeros(4))

    with pytest.raises(ValueError, match="empty"):
        ConicAccumulator([])
    with pytest.raises(ValueError, match="unique"):
        ConicAccumulator(["a", "a"])
    acc = ConicAccumulator(["a", "b"])
    with pytest.raises(ValueError, match="no tiles"):
        acc.result()
    with pytest.raises(ValueError, match="class ids"):
        acc.add(good, bad_cls)
    assert acc.n_tiles == 0  # a rejected tile leaves no trace
    acc.add(good, good)
    with pytest.raises(ValueError, match="true_counts"):
        acc.result(true_counts=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="pred_counts"):
        acc.result(pred_counts=np.zeros((1, 3)))
