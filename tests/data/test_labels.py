import numpy as np

from histosmith.data.labels import (
    count_nuclei,
    downscale_labels,
    instance_classes,
    one_hot,
    relabel_sequential,
    touching_instances,
)
from histosmith.data.rasters import distance_map


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_relabel_sequential_keeps_order_and_background():
    inst = np.array([[0, 7, 7], [3, 0, 9]])
    assert relabel_sequential(inst).tolist() == [[0, 2, 2], [1, 0, 3]]


def test_distance_map_peaks_at_one_inside_and_zero_outside():
    inst = np.zeros((32, 32), np.int32)
    inst[_disc(inst.shape, 10, 10, 5)] = 1
    inst[_disc(inst.shape, 10, 19, 4) & (inst == 0)] = 2  # touching neighbour
    dist = distance_map(inst)
    assert dist[inst == 0].max() == 0
    for i in (1, 2):
        assert np.isclose(dist[inst == i].max(), 1.0)
        assert dist[inst == i].min() > 0
    assert dist[10, 10] == 1.0
    # The border between touching nuclei is a valley: low on both sides.
    boundary = (inst == 1) & np.roll(inst == 2, -1, axis=1)
    assert dist[boundary].max() < 0.35


def test_counts_whole_tile_and_conic_margin():
    labels = np.zeros((256, 256, 2), np.int32)
    labels[100:110, 100:110] = (1, 2)  # central
    labels[0:10, 0:10] = (2, 1)  # entirely in the margin
    labels[10:20, 100:120] = (3, 3)  # reaches into the central 224 (row 16..19)
    assert count_nuclei(labels, 3).tolist() == [1, 1, 1]
    assert count_nuclei(labels, 3, margin=16).tolist() == [0, 1, 1]


def test_instance_class_majority_vote():
    inst = np.array([[1, 1, 1, 2]])
    cls = np.array([[2, 2, 1, 3]])
    assert instance_classes(inst, cls, 3).tolist() == [0, 2, 3]


def test_one_hot_round_trip():
    cls = np.array([[0, 1], [2, 1]])
    oh = one_hot(cls, 2)
    assert oh.shape == (3, 2, 2)
    assert (oh.argmax(0) == cls).all()
    assert (oh.sum(0) == 1).all()


def test_downscale_labels_renumbers():
    labels = np.zeros((8, 8, 2), np.int32)
    labels[0:4, 0:4] = (5, 1)
    labels[4:8, 4:8] = (9, 2)
    small = downscale_labels(labels, 2)
    assert small.shape == (4, 4, 2)
    assert sorted(np.unique(small[..., 0])) == [0, 1, 2]


def test_touching_instances_counts_edges_and_corners_but_not_a_gap():
    inst = np.zeros((10, 10), np.int32)
    inst[1:3, 1:3] = 1
    inst[1:3, 3:5] = 2  # shares an edge with 1
    inst[3:5, 5:7] = 3  # meets 2 at a corner only
    inst[7:9, 1:3] = 4  # background on every side
    inst[7:9, 4:6] = 5  # one background column away from 4: alone
    assert touching_instances(inst).tolist() == [False, True, True, True, False, False]
    assert touching_instances(np.zeros((4, 4), np.int32)).tolist() == [False]
