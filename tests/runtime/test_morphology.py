"""The numpy morphology of the lean runtime against scipy / scikit-image, and the flooding order on small cases."""

import numpy as np
import pytest

from histosmith.data.labels import count_nuclei
from histosmith.data.reader import Dataset
from histosmith.runtime import postprocess
from histosmith.runtime.morphology import find_objects, label, reconstruct_by_dilation, watershed
from histosmith.runtime.postprocess import PostprocessConfig, labels_from_maps

reference = pytest.importorskip("histosmith.evaluation.watershed_reference",
                                reason="scipy and scikit-image (the [train] extra) are the reference")
from histosmith.data.rasters import distance_map  # noqa: E402  (OpenCV: the [train] extra too)


def _blurred(rng, shape):
    """A smooth random surface (box-blurred noise)."""
    noise = rng.random((shape[0] + 4, shape[1] + 4))
    return sum(noise[dy:dy + shape[0], dx:dx + shape[1]] for dy in range(5) for dx in range(5)) / 25


@pytest.mark.parametrize("density", [0.2, 0.45, 0.7])
def test_label_and_boxes_equal_scipy(density):
    rng = np.random.default_rng(int(density * 100))
    for _ in range(20):
        mask = rng.random((37, 53)) < density
        got, n = label(mask)
        want, m = reference.label(mask)
        assert n == m and np.array_equal(got, want)
        assert find_objects(got) == reference.ndimage.find_objects(want)


def test_label_of_an_empty_mask():
    got, n = label(np.zeros((5, 6), bool))
    assert n == 0 and not got.any() and find_objects(got) == []


@pytest.mark.parametrize("h", [0.02, 0.1])
def test_reconstruction_equals_scikit_image_bit_for_bit(h):
    rng = np.random.default_rng(3)
    for _ in range(10):
        f = _blurred(rng, (40, 48)).astype(np.float32)
        got = reconstruct_by_dilation(f - np.float32(h), f)
        assert got.dtype == np.float32
        assert np.array_equal(got, reference.reconstruct_by_dilation(f - np.float32(h), f).astype(np.float32))


def test_flood_splits_at_the_valley_and_leaves_unreached_pixels():
    altitude = np.array([[0, 1, 2, 3, 2, 1, 0, 5, 5]], dtype=np.float32)
    markers = np.array([[1, 0, 0, 0, 0, 0, 2, 0, 0]])
    mask = np.array([[1, 1, 1, 1, 1, 1, 1, 0, 1]], bool)  # the last pixel is cut off from every marker
    got = watershed(altitude, markers, mask)
    assert got[0, :3].tolist() == [1, 1, 1] and got[0, 4:7].tolist() == [2, 2, 2]
    assert got[0, 3] in (1, 2) and got[0, 7] == 0 and got[0, 8] == 0


def test_flood_on_a_plateau_goes_to_the_nearer_marker():
    altitude = np.zeros((1, 9), np.float32)
    markers = np.zeros((1, 9), int)
    markers[0, 0], markers[0, 8] = 2, 1
    got = watershed(altitude, markers, np.ones((1, 9), bool))
    assert got[0].tolist() == [2, 2, 2, 2, 1, 1, 1, 1, 1]  # the middle pixel: equal steps, lower id


def test_flood_at_equal_pass_joins_the_neighbour_flooded_first():
    # the middle pixel (altitude 0.5) borders marker 2's basin through 0.1 and marker 1's through 0.3: a priority
    # flood pops the 0.1 pixel first, so marker 2 takes it although id 1 is lower
    altitude = np.array([[0.0, 0.1, 0.5, 0.3, 0.0]], dtype=np.float32)
    markers = np.array([[2, 0, 0, 0, 1]])
    got = watershed(altitude, markers, np.ones_like(markers, bool))
    assert got[0].tolist() == [2, 2, 2, 1, 1]
    assert np.array_equal(got, reference.flood(altitude, markers, np.ones_like(markers, bool)))


def test_labels_from_maps_match_scikit_image_on_ground_truth_maps(synthetic_dir):
    """The numpy post-processing gives every tile the same nuclei as the scikit-image one and differs in a few
    tied border pixels at most (benchmarks/bench_postprocess.py measures it on real tiles)."""
    labels = [np.asarray(lab, np.int32) for _, _, labs in Dataset.open(synthetic_dir).iter_shards() for lab in labs]
    configs = (PostprocessConfig(), PostprocessConfig(h=0.1, split_area=(60.0, 0.0, 0.0), split_h=0.05))
    differing, pixels = 0, 0
    for post in configs:
        for lab in labels:
            maps = distance_map(lab[..., 0]), lab[..., 1], 3, post
            got = labels_from_maps(*maps)
            with reference.scikit_image_morphology():
                want = labels_from_maps(*maps)
            assert np.array_equal(count_nuclei(got, 3), count_nuclei(want, 3))
            differing += int((got != want).any(-1).sum())
            pixels += got[..., 0].size
    assert differing <= 1e-3 * pixels, differing
    assert postprocess.watershed is watershed and postprocess.label is label  # the swap was undone
