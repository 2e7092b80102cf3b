"""The downstream segmenter: training, resume, scoring with the CoNIC code, post-processing of its outputs."""

import csv

import numpy as np
import pytest
import torch

from histosmith.data.format import Dataset
from histosmith.data.rasters import distance_map
from histosmith.runtime.postprocess import labels_from_maps
from histosmith.segmentation.config import seg_config
from histosmith.segmentation.evaluate import evaluate_segmenter, load_split, score_labels
from histosmith.segmentation.model import Segmenter, count_parameters
from histosmith.segmentation.predict import class_map
from histosmith.segmentation.train import load_segmenter, train_segmenter
from histosmith.training.checkpoint import load_checkpoint
from histosmith.training.trainer import RunOptions
from tests.conftest import run_cli


def _losses(run):
    with open(run / "log.csv", newline="") as f:
        return [(int(float(r["step"])), float(r["loss"])) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def tiny_seg(synthetic_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "run"
    train_segmenter(synthetic_dir, out, "tiny", RunOptions(seed=0, device="cpu", max_steps=40, show_progress=False))
    return out


def test_small_segmenter_size_and_shapes():
    model = Segmenter(seg_config("small", 3, 64))
    assert 1_000_000 <= count_parameters(model) <= 3_000_000
    out = model(torch.zeros(2, 3, 64, 64))
    assert out.foreground.shape == (2, 1, 64, 64) and out.distance.shape == (2, 1, 64, 64)
    assert out.logits.shape == (2, 4, 64, 64)


def test_tiny_segmenter_loss_falls_and_checkpoint_describes_the_run(tiny_seg, synthetic_dir):
    losses = [v for _, v in _losses(tiny_seg)]
    assert losses[-1] < 0.85 * losses[0]
    assert (tiny_seg / "loss.png").read_bytes()[:4] == b"\x89PNG"
    ckpt = load_checkpoint(tiny_seg, "seg")
    assert ckpt["step"] == 40 and ckpt["model_config"]["base_channels"] == 8
    assert ckpt["train_config"]["max_steps"] == 40 and ckpt["data"]["data"] == str(synthetic_dir)
    n_train = sum(r.get("split") == "train" for r in Dataset.open(synthetic_dir).patch_info())
    assert ckpt["training_data"][0]["split"] == "train" and ckpt["training_data"][0]["n_tiles"] == n_train


def test_interrupted_then_resumed_equals_uninterrupted(synthetic_dir, tmp_path):
    opts = dict(seed=3, device="cpu", max_steps=12, show_progress=False)
    train_segmenter(synthetic_dir, tmp_path / "a", "tiny", RunOptions(**opts))
    assert train_segmenter(synthetic_dir, tmp_path / "b", "tiny", RunOptions(**opts, stop_at_step=7)).step == 7
    train_segmenter(synthetic_dir, tmp_path / "b", "tiny", RunOptions(**opts, resume=True))
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_ground_truth_as_prediction_scores_pq_one(synthetic_dir):
    names = Dataset.open(synthetic_dir).meta.class_names
    _, labels, _ = load_split(synthetic_dir, None)
    result = score_labels(names, labels, list(labels)).result()
    nonempty = np.mean([lab[..., 0].max() > 0 for lab in labels])  # CoNIC: a tile without nuclei scores PQ 0
    assert result.pq == pytest.approx(nonempty, abs=1e-4) and result.mpq_plus == pytest.approx(1.0, abs=1e-4)
    assert all(v["pq"] == pytest.approx(1.0, abs=1e-4) for v in result.per_class.values())
    # Resampling tiles pools the same terms: the identity resample reproduces the whole-set result.
    scores = score_labels(names, labels, list(labels))
    assert scores.result(np.arange(len(labels))).to_dict() == scores.result().to_dict()


def test_perfect_head_outputs_give_the_labels_back(synthetic_dir):
    """The segmenter's maps -> labels path (foreground, class argmax, the generator's watershed)."""
    names = Dataset.open(synthetic_dir).meta.class_names
    _, labels, _ = load_split(synthetic_dir, None)
    pred = []
    for lab in labels:
        fg = np.where(lab[..., 0] > 0, 5.0, -5.0)[None]
        logits = (np.arange(len(names) + 1)[:, None, None] == lab[..., 1][None]).astype(np.float32)
        pred.append(labels_from_maps(distance_map(lab[..., 0]), class_map(fg, logits), len(names)))
    perfect = score_labels(names, labels, list(labels)).result()
    result = score_labels(names, labels, pred).result()
    assert result.pq > 0.95 * perfect.pq and result.mpq_plus > 0.9


def test_hs_eval_seg_cli_writes_the_conic_metrics(tiny_seg, synthetic_dir, tmp_path):
    r = run_cli("hs-eval", "seg", "--checkpoint", str(tiny_seg), "--data", str(synthetic_dir), "--json",
                str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    data = json.loads((tmp_path / "m.json").read_text())
    assert set(data) >= {"pq", "mpq_plus", "r2", "aji", "per_class"}
    expected = evaluate_segmenter(tiny_seg, synthetic_dir, "val").result().to_dict()
    for key in ("pq", "mpq_plus", "r2"):
        assert data[key] == pytest.approx(expected[key])
    assert data["per_class"] == expected["per_class"]
    model, _ = load_segmenter(tiny_seg)
    assert not model.training


def test_hs_train_seg_cli_with_extra_data(synthetic_dir, tmp_path):
    r = run_cli("hs-train", "seg", "--data", str(synthetic_dir), "--extra", str(synthetic_dir), "--extra-ratio", "0.5",
                "--config", "tiny", "--max-steps", "3", "--out", str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = load_checkpoint(tmp_path / "r", "seg")
    assert ckpt["data"]["extra_ratio"] == 0.5 and ckpt["step"] == 3
    r = run_cli("hs-train", "seg", "--data", str(synthetic_dir), "--extra-ratio", "0.5", "--out", str(tmp_path / "s"))
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: --extra-ratio")
    for args, expected in ((("--extra-until", "0.5"), "needs --extra"),
                           (("--extra", str(synthetic_dir), "--extra-until", "1.5"), "(0, 1]")):
        r = run_cli("hs-train", "seg", "--data", str(synthetic_dir), *args, "--out", str(tmp_path / "t"))
        assert r.returncode == 2 and expected in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]
        assert not (tmp_path / "t").exists()


def test_extra_until_draws_real_tiles_only_after_the_cutoff(synthetic_dir, tmp_path, monkeypatch):
    from histosmith.segmentation.data import TrainingTiles
    from histosmith.training.data import TileStore

    real, extra = TileStore.load(synthetic_dir, "train", False), TileStore.load(synthetic_dir, "val", False)
    extra.images[:] = 255  # marks every extra tile: white, which no real tile is
    white = extra.inputs(np.array([0]), np.array([0])).numpy()[0, :3]
    tiles = TrainingTiles(real, extra, 0.9)
    mixed, real_only = (tiles.batch(np.random.default_rng(1), 64, only) for only in (False, True))
    n_white = [sum(np.array_equal(x[:3], white) for x in batch) for batch in (mixed, real_only)]
    assert n_white[0] > 40 and n_white[1] == 0, n_white

    seen = []
    batch = TrainingTiles.batch
    monkeypatch.setattr(TrainingTiles, "batch", lambda self, rng, size, real_only=False:
                        seen.append(real_only) or batch(self, rng, size, real_only))
    opts = RunOptions(seed=0, device="cpu", max_steps=8, show_progress=False)
    train_segmenter(synthetic_dir, tmp_path / "r", "tiny", opts, extra=[synthetic_dir], extra_until=0.5)
    assert seen == [False] * 4 + [True] * 4
    assert load_checkpoint(tmp_path / "r", "seg")["data"]["extra_until"] == 0.5


def test_dihedral_is_undone():
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    from histosmith.segmentation.predict import undo_dihedral
    from histosmith.training.data import dihedral

    for k in range(8):
        assert np.array_equal(undo_dihedral(dihedral(x, k), k), x), k
