import numpy as np
import pytest

from histosmith.data.rasters import distance_map
from histosmith.data.reader import Dataset
from histosmith.errors import HistoSmithError
from histosmith.evaluation.conic import ConicAccumulator
from histosmith.runtime.postprocess import MarkerDepth, PostprocessConfig, labels_from_maps, marker_depth_label


def _recover(labels_list, n_classes, names):
    acc = ConicAccumulator(names)
    for lab in labels_list:
        lab = np.asarray(lab).astype(np.int32)
        acc.add(lab, labels_from_maps(distance_map(lab[..., 0]), lab[..., 1], n_classes))
    return acc.result()


def test_ground_truth_maps_recover_instances_synthetic(synthetic_dir):
    ds = Dataset.open(synthetic_dir)
    labels = [lab for _, _, labs in ds.iter_shards() for lab in labs]
    result = _recover(labels, 3, ds.meta.class_names)
    nonempty = [lab for lab in labels if lab[..., 0].max() > 0]
    assert result.mpq_plus >= 0.95
    assert _recover(nonempty, 3, ds.meta.class_names).pq >= 0.95


def test_ground_truth_maps_recover_instances_real(real_conic_npz):
    z = np.load(real_conic_npz)
    result = _recover(list(z["labels"]), 5, [f"c{i}" for i in range(1, 6)])
    assert result.pq >= 0.95


def test_touching_nuclei_are_split_and_classes_voted():
    yy, xx = np.mgrid[:32, :32]
    inst = np.zeros((32, 32), np.int32)
    inst[(yy - 16) ** 2 + (xx - 10) ** 2 <= 25] = 1
    inst[((yy - 16) ** 2 + (xx - 19) ** 2 <= 25) & (inst == 0)] = 2
    classes = np.where(inst == 1, 2, np.where(inst == 2, 1, 0))
    classes[16, 8] = 1  # one stray pixel of another class inside nucleus 1
    out = labels_from_maps(distance_map(inst), classes, 2)
    assert out[..., 0].max() == 2
    assert {int(out[16, 10, 1]), int(out[16, 19, 1])} == {2, 1}
    assert out[16, 8, 1] == out[16, 10, 1]  # majority vote wins


def test_blob_without_a_peak_still_counts_and_small_fragments_drop():
    dist = np.zeros((16, 16), np.float32)
    classes = np.zeros((16, 16), np.int64)
    classes[2:6, 2:6] = 1  # foreground with a flat (zero) distance map: no marker from the maxima
    classes[10, 10] = 1  # one-pixel fragment
    out = labels_from_maps(dist, classes, 1, PostprocessConfig(min_area=3))
    assert out[..., 0].max() == 1 and (out[2:6, 2:6, 0] == 1).all() and out[10, 10, 0] == 0


def test_empty_maps_give_empty_labels():
    out = labels_from_maps(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.int64), 3)
    assert out.shape == (8, 8, 2) and not out.any()


@pytest.mark.parametrize("h", [0.2, 0.6])
def test_h_controls_merging_of_shallow_maxima(h):
    # One elongated nucleus whose distance map has two peaks separated by a shallow saddle (0.75).
    dist = np.zeros((5, 13), np.float32)
    dist[2, 1:12] = [0.3, 0.6, 1.0, 0.9, 0.8, 0.75, 0.8, 0.9, 1.0, 0.6, 0.3]
    classes = (dist > 0).astype(np.int64)
    out = labels_from_maps(dist, classes, 1, PostprocessConfig(h=h, min_area=1))
    assert out[..., 0].max() == (2 if h < 0.25 else 1)


def _two_shallow_nuclei():
    """Two elongated nuclei (classes 1 and 2) whose distance maps have two peaks over a saddle 0.25 deep."""
    dist = np.zeros((9, 13), np.float32)
    profile = [0.3, 0.6, 1.0, 0.9, 0.8, 0.75, 0.8, 0.9, 1.0, 0.6, 0.3]
    dist[2, 1:12] = dist[6, 1:12] = profile
    classes = np.zeros(dist.shape, np.int64)
    classes[2, 1:12], classes[6, 1:12] = 1, 2
    return dist, classes


def test_marker_depth_per_class_splits_one_class_and_keeps_the_other():
    dist, classes = _two_shallow_nuclei()
    for class_h, expect in (((0.2, 0.6), {1: 2, 2: 1}), ((0.6, 0.2), {1: 1, 2: 2}), ((), {1: 1, 2: 1})):
        out = labels_from_maps(dist, classes, 2, PostprocessConfig(h=0.6, min_area=1, class_h=class_h))
        for c, n in expect.items():
            assert len(np.unique(out[..., 0][out[..., 1] == c])) == n, (class_h, c)
    with pytest.raises(ValueError, match="2 classes"):
        labels_from_maps(dist, classes, 2, PostprocessConfig(class_h=(0.2,)))


def test_marker_depth_text():
    assert MarkerDepth.parse("0.25") == MarkerDepth(0.25)
    md = MarkerDepth.parse(" 0.25 , neoplastic = 0.1 ")
    assert md == MarkerDepth(0.25, (("neoplastic", 0.1),)) and str(md) == "0.25,neoplastic=0.1"
    assert MarkerDepth.parse(str(md)) == md
    assert MarkerDepth.parse("b=0.2").default == PostprocessConfig.h  # an unnamed class keeps the default
    cfg = md.config(["connective", "neoplastic"])
    assert cfg == PostprocessConfig(h=0.25, class_h=(0.25, 0.1))
    assert MarkerDepth(0.3).config(["a", "b"]) == PostprocessConfig(h=0.3)  # uniform: no per-class table
    assert cfg.record()["class_h"] == [0.25, 0.1] and "class_h" not in PostprocessConfig().record()
    assert marker_depth_label(cfg, ["connective", "neoplastic"]) == "0.25,neoplastic=0.1"
    assert marker_depth_label(PostprocessConfig(h=0.3), ["a"]) == 0.3
    with pytest.raises(HistoSmithError, match="unknown class 'x'; the model's classes are a, b"):
        MarkerDepth.parse("0.2,x=0.1").config(["a", "b"])


@pytest.mark.parametrize("text", ["", ",", "0", "1.5", "nan", "a=b", "0.2,0.3", "x=0.1,x=0.2", "=0.1", "x=0"])
def test_marker_depth_text_refused(text):
    with pytest.raises(HistoSmithError, match="--marker-depth"):
        MarkerDepth.parse(text)


def test_oversized_nuclei_split_where_their_own_map_has_two_domes():
    dist, classes = _two_shallow_nuclei()  # each nucleus: 11 pixels, two peaks over a saddle 0.25 deep
    dome = np.zeros((5, 13), np.float32)  # a third one, class 1, 11 pixels with a single peak
    dome[2, 1:12] = [0.3, 0.5, 0.6, 0.7, 0.8, 1.0, 0.8, 0.7, 0.6, 0.5, 0.3]
    dist, classes = np.vstack([dist, dome]), np.vstack([classes, (dome > 0).astype(np.int64)])

    def pieces(**split):
        out = labels_from_maps(dist, classes, 2, PostprocessConfig(h=0.6, min_area=1, **split))
        assert (out[..., 0] > 0).sum() == (classes > 0).sum()  # a split loses no pixel
        return [len(np.unique(out[rows, :, 0][out[rows, :, 0] > 0])) for rows in (slice(0, 5), slice(5, 9),
                                                                                  slice(9, 14))]

    assert pieces() == [1, 1, 1]  # h 0.6 merges the two domes of each two-peaked nucleus
    assert pieces(split_area=(10, 0), split_h=0.1) == [2, 1, 1]  # class 1 above 10 px: split; class 2 no limit
    assert pieces(split_area=(10, 10), split_h=0.1) == [2, 2, 1]  # the single dome stays whole however large
    assert pieces(split_area=(11, 11), split_h=0.1) == [1, 1, 1]  # not larger than the limit: kept
    assert pieces(split_area=(10, 10), split_h=0.3) == [1, 1, 1]  # the saddle is shallower than the split depth
    with pytest.raises(ValueError, match="2 classes"):
        labels_from_maps(dist, classes, 2, PostprocessConfig(split_area=(10,)))


def test_marker_depth_text_with_area_limits():
    md = MarkerDepth.parse("0.25, neoplastic=0.2, neoplastic > 360, connective>191.5, split=0.05")
    assert md == MarkerDepth(0.25, (("neoplastic", 0.2),), (("neoplastic", 360.0), ("connective", 191.5)), 0.05)
    assert str(md) == "0.25,neoplastic=0.2,neoplastic>360,connective>191.5,split=0.05"
    assert MarkerDepth.parse(str(md)) == md
    names = ["neoplastic", "inflammatory", "connective"]
    cfg = md.config(names)
    assert cfg.split_area == (360.0, 0.0, 191.5) and cfg.split_h == 0.05
    assert cfg.record()["split_area"] == [360.0, 0.0, 191.5] and "split_area" not in PostprocessConfig().record()
    assert marker_depth_label(cfg, names) == str(md) and MarkerDepth.of(cfg, names) == md
    assert MarkerDepth.parse("0.25,connective>100").config(names).split_h == 0.1  # the default split depth
    assert marker_depth_label(MarkerDepth.parse("0.3,connective>100").config(names), names) == \
        "0.3,connective>100,split=0.1"
    with pytest.raises(HistoSmithError, match="unknown class 'x'"):
        MarkerDepth.parse("0.2,x>10").config(names)


@pytest.mark.parametrize("text", ["0.2,split=0.1", "0.2,x>0", "0.2,x>nan", "0.2,x>inf", "0.2,>5", "0.2,x>5,x>6",
                                  "0.2,x>5,split=0.1,split=0.05", "0.2,x>5,split=0"])
def test_marker_depth_area_limits_refused(text):
    with pytest.raises(HistoSmithError, match="--marker-depth"):
        MarkerDepth.parse(text)
