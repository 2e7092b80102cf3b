"""The tissue classifier of hs-eval control: accuracy arithmetic, learning, determinism, cache, refusals."""

import numpy as np
import pytest
import torch

from histosmith.errors import HistoSmithError
from histosmith.evaluation.tissue import (
    TissueRecipe,
    accuracy,
    check_dataset,
    count_matched_accuracy,
    load_or_train,
    matched_summary,
    predict,
    train_classifier,
)


def test_accuracy_on_known_numbers():
    true = np.array([0, 0, 0, 1, 1])
    pred = np.array([0, 0, 1, 1, 1])
    a = accuracy(true, pred, ["x", "y", "z"])
    assert a["accuracy"] == pytest.approx(0.8) and a["n"] == 5
    assert a["per_tissue"] == {"x": pytest.approx(2 / 3), "y": 1.0, "z": None}
    assert a["confusion"] == [[2, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert a["n_per_tissue"] == {"x": 3, "y": 2, "z": 0}


def test_count_matched_reference_on_known_numbers():
    # Real tiles: tissue 0 holds 0..5 nuclei of class 0; the classifier gets it right below 3 only.
    real_counts = np.array([[n, 0] for n in range(6)] + [[0, 4]])
    real_tissues = np.array([0] * 6 + [1])
    correct = np.array([1, 1, 1, 0, 0, 0, 1], bool)
    requests = np.array([[0, 0], [5, 0], [4, 0], [5, 0]])
    tissues = np.array([0, 0, 0, 1])
    got = count_matched_accuracy(real_counts, real_tissues, correct, requests, tissues, k=2)
    # [0,0] -> tiles 0,1 (both right); [5,0] -> 5,4 (both wrong); [4,0] -> 4 then 3 and 5 tie: the earlier tile 3;
    # tissue 1 has one real tile, which is right.
    assert got.tolist() == [1.0, 0.0, 0.0, 1.0]
    summary = matched_summary(got, tissues, ["a", "b", "c"])
    assert summary == {"accuracy": 0.5, "per_tissue": {"a": pytest.approx(1 / 3), "b": 1.0, "c": None}}
    # A tissue without real tiles has no reference.
    orphan = count_matched_accuracy(real_counts, real_tissues, correct, requests[:1], np.array([2]))
    assert np.isnan(orphan[0]) and matched_summary(orphan, np.array([2]), ["a", "b", "c"])["per_tissue"]["c"] is None


def _two_tissues(n, seed):
    """Tissue 0 pinkish, tissue 1 purplish, with noise and a dark blob or two (16 px tiles)."""
    rng = np.random.default_rng(seed)
    tissues = rng.integers(0, 2, n)
    base = np.where(tissues[:, None] == 0, [[230, 160, 190]], [[150, 110, 200]])
    images = base[:, None, None, :] + rng.normal(0, 20, (n, 16, 16, 3))
    return np.clip(images, 0, 255).astype(np.uint8), tissues


def test_classifier_learns_and_is_deterministic():
    images, tissues = _two_tissues(64, 0)
    recipe = TissueRecipe(steps=40, batch=16, width=8)
    a = train_classifier(images, tissues, 2, recipe)
    b = train_classifier(images, tissues, 2, recipe)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    test_images, test_tissues = _two_tissues(32, 1)
    assert accuracy(test_tissues, predict(a, test_images), ["p", "q"])["accuracy"] == 1.0


def test_load_or_train_caches_by_content(synthetic_dir, tmp_path):
    recipe = TissueRecipe(steps=20, batch=8, width=8)
    names = ["stroma", "epithelium"]
    first = load_or_train(synthetic_dir, names, tmp_path / "cache", recipe)
    assert not first.cached and first.val["n"] == 4  # every 10th of the 48 tiles is val
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1 and first.key[:16] in files[0].name
    again = load_or_train(synthetic_dir, names, tmp_path / "cache", recipe)
    assert again.cached and again.key == first.key and again.val == first.val
    images = np.zeros((3, 32, 32, 3), np.uint8)
    assert np.array_equal(predict(again.net, images), predict(first.net, images))
    other = load_or_train(synthetic_dir, names, tmp_path / "cache", TissueRecipe(steps=21, batch=8, width=8))
    assert not other.cached and other.key != first.key  # another recipe: another key


def test_check_dataset_refuses_other_data_or_no_val(synthetic_dir, tmp_path):
    from histosmith.data.prepare import prepare

    names = (["epithelial", "lymphocyte", "neutrophil"], ["stroma", "epithelium"])
    check_dataset(synthetic_dir, *names, 32)
    with pytest.raises(HistoSmithError, match="tile size 32 differ from the generator's 64"):
        check_dataset(synthetic_dir, *names, 64)
    with pytest.raises(HistoSmithError, match="tissue names"):
        check_dataset(synthetic_dir, names[0], ["stroma", "nest"], 32)
    few = tmp_path / "few"
    prepare("synthetic", None, few, tile_size=32, n_tiles=4, seed=1, show_progress=False)  # no 10th tile: no val
    with pytest.raises(HistoSmithError, match="no 'val' tiles"):
        check_dataset(few, *names, 32)
