"""KID on segmenter features: the unbiased estimator against a direct sum, near 0 for one distribution, larger
for a shifted one, the real-halves floor, and hs-eval realism --segmenter (output and bad input)."""

import json

import numpy as np
import pytest

from histosmith.data.reader import Dataset
from histosmith.errors import HistoSmithError
from histosmith.evaluation.kid import kid_with_floor, load_feature_model, mmd2_unbiased, segmenter_kid
from histosmith.segmentation.evaluate import load_split
from histosmith.segmentation.train import train_segmenter
from histosmith.training.trainer import RunOptions
from tests.conftest import run_cli, write_conic_dir


def test_unbiased_mmd_matches_the_direct_sum():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(1.0, 1.0, size=(4, 3))

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(a, b) for a in x for b in y) / 20
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    with pytest.raises(ValueError):
        mmd2_unbiased(x[:1], y)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    same, floor = kid_with_floor(a, b)
    shifted, floor_again = kid_with_floor(a, b + 0.5)
    assert same.subset_size == 100 and same.n_subsets == 100 and floor == floor_again
    for e in (same, floor):  # one distribution: the unbiased estimate is 0 within its spread
        assert abs(e.mean) < 3 * e.sd / np.sqrt(e.n_subsets) and e.sd > 0
    assert shifted.mean > 50 * abs(same.mean) and shifted.mean > 5 * shifted.sd
    assert kid_with_floor(a[:9], b)[0].subset_size == 4  # at most half the real set: the floor's are disjoint
    with pytest.raises(HistoSmithError, match="at least 4 real"):
        kid_with_floor(a[:3], b)


@pytest.fixture(scope="module")
def seg_run(synthetic_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("kidseg") / "seg"
    train_segmenter(synthetic_dir, out, "tiny", RunOptions(seed=0, device="cpu", max_steps=10, show_progress=False))
    return out


def _copy(synthetic_dir, path, transform=lambda im: im, tile=False, classes=None):
    images, labels, names = load_split(synthetic_dir, None)
    if tile:
        images, labels = np.tile(images, (1, 2, 2, 1)), np.tile(labels, (1, 2, 2, 1))
    write_conic_dir(path, transform(images), labels, classes or list(Dataset.open(synthetic_dir).meta.class_names),
                    names)
    return path


def test_identical_sets_score_near_zero_and_a_shifted_set_clearly_more(seg_run, synthetic_dir, tmp_path):
    real = Dataset.open(synthetic_dir)
    shifted = Dataset.open(_copy(synthetic_dir, tmp_path / "shift", lambda im: (im * 0.6).astype(np.uint8)))
    features = load_feature_model(seg_run, [real, shifted])
    index = np.arange(len(real))
    same = segmenter_kid(features, real, real, index, index)
    moved = segmenter_kid(features, real, shifted, index, index)
    assert same["n_tiles"] == {"real": 48, "generated": 48} and same["generated"]["subset_size"] == 24
    assert moved["generated"]["mean"] > 20 * abs(same["generated"]["mean"])
    assert moved["generated"]["mean"] > 20 * abs(moved["real_halves"]["mean"])
    assert same["real_halves"] == moved["real_halves"]  # the floor depends on the real tiles only
    with pytest.raises(HistoSmithError, match="at least 4 real"):
        segmenter_kid(features, real, real, index[:3], index)


def test_realism_command_with_segmenter(seg_run, synthetic_dir, tmp_path):
    res = run_cli("hs-eval", "realism", "--real", str(synthetic_dir), "--generated", str(synthetic_dir),
                  "--segmenter", str(seg_run), "--out", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr
    block = json.loads((tmp_path / "o" / "realism.json").read_text())["kid"]
    assert block["segmenter"] == str(seg_run) and len(block["segmenter_sha256"]) == 64
    assert set(block["generated"]) == {"mean", "sd", "subset_size", "n_subsets"} and "floor" in res.stdout
    assert (tmp_path / "o" / "realism.png").read_bytes()[:4] == b"\x89PNG"
    big = _copy(synthetic_dir, tmp_path / "big", tile=True)  # 64 px tiles: not the segmenter's 32
    other = _copy(synthetic_dir, tmp_path / "other", classes=["a", "b", "c"])
    for generated, words in ((big, "tiles of 64 px"), (other, "differ from the segmenter")):
        res = run_cli("hs-eval", "realism", "--real", str(synthetic_dir), "--generated", str(generated),
                      "--segmenter", str(seg_run), "--out", str(tmp_path / "p"))
        assert res.returncode == 2 and res.stderr.startswith("error:") and words in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "p").exists()
