import csv

import numpy as np
import pytest
import torch

from histosmith.data.labels import count_nuclei
from histosmith.data.reader import Dataset
from histosmith.errors import HistoSmithError
from histosmith.generator import load_generator
from histosmith.training.checkpoint import load_checkpoint
from histosmith.training.ldm import train_ldm
from histosmith.training.trainer import RunOptions
from histosmith.training.vqvae import load_vqvae, train_vqvae
from tests.conftest import run_cli


def _losses(run, key="loss"):
    with open(run / "log.csv", newline="") as f:
        return [(int(float(r["step"])), float(r[key])) for r in csv.DictReader(f)]


def test_tiny_vqvae_loss_falls(tiny_runs):
    losses = [v for _, v in _losses(tiny_runs["vq"])]
    assert losses[-1] < 0.8 * losses[0]
    assert (tiny_runs["vq"] / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_tiny_ldm_loss_falls(tiny_runs):
    losses = [v for _, v in _losses(tiny_runs["ldm"])]
    assert losses[-1] < 0.8 * losses[0]


def test_checkpoint_round_trip(tiny_runs):
    model, ckpt = load_vqvae(tiny_runs["vq"])
    assert ckpt["step"] == 30 and ckpt["model_config"]["base_channels"] == 8
    again = load_checkpoint(tiny_runs["vq"], "vqvae")
    for k, v in model.state_dict().items():
        assert torch.equal(v, again["model"][k])
    gen = load_generator(tiny_runs["ldm"])
    assert gen.info.spec.class_names == ("epithelial", "lymphocyte", "neutrophil")
    assert gen.info.training_counts.shape[1] == 3 and gen.step == 30


@pytest.mark.parametrize("stage", ["vqvae", "ldm"])
def test_interrupted_then_resumed_equals_uninterrupted(stage, tiny_runs, synthetic_dir, tmp_path):
    opts = RunOptions(seed=3, device="cpu", max_steps=20, show_progress=False)

    def train(out, **kw):
        o = RunOptions(**{**opts.__dict__, **kw})
        if stage == "vqvae":
            return train_vqvae(synthetic_dir, out, "tiny", o)
        return train_ldm(synthetic_dir, tiny_runs["vq"], out, "tiny", o)

    train(tmp_path / "a")
    first = train(tmp_path / "b", stop_at_step=8)  # "crash" between checkpoints
    assert first.step == 8
    train(tmp_path / "b", resume=True)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    a = load_checkpoint(tmp_path / "a")
    b = load_checkpoint(tmp_path / "b")
    assert a["step"] == b["step"] == 20
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_run_directory_rules(tiny_runs, synthetic_dir, tmp_path):
    with pytest.raises(HistoSmithError, match="pass --resume"):
        train_vqvae(synthetic_dir, tiny_runs["vq"], "tiny", RunOptions(max_steps=1, show_progress=False))
    with pytest.raises(HistoSmithError, match="nothing to resume"):
        train_vqvae(synthetic_dir, tmp_path / "new", "tiny", RunOptions(resume=True, show_progress=False))


def _one_error_line(result):
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and "step/s" not in ln and "|" not in ln]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


def test_cli_missing_and_corrupt_checkpoints(tiny_runs, tmp_path):
    data = str(tiny_runs["data"])
    line = _one_error_line(run_cli("hs-train", "ldm", "--data", data, "--vqvae", str(tmp_path / "nope"),
                                   "--config", "tiny", "--out", str(tmp_path / "o")))
    assert "not found" in line
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"definitely not a checkpoint" * 100)
    line = _one_error_line(run_cli("hs-train", "ldm", "--data", data, "--vqvae", str(bad), "--config", "tiny",
                                   "--out", str(tmp_path / "o")))
    assert "not a PyTorch checkpoint" in line
    line = _one_error_line(run_cli("hs-sample", "--checkpoint", str(tiny_runs["vq"]), "--n", "2",
                                   "--out", str(tmp_path / "s")))
    assert "a vqvae checkpoint, expected ldm" in line


def test_cli_checkpoint_of_another_config(tiny_runs, tmp_path):
    ckpt = load_checkpoint(tiny_runs["vq"])
    ckpt["model_config"]["base_channels"] = 16  # claims an architecture its weights do not have
    torch.save(ckpt, tmp_path / "other.pt")
    line = _one_error_line(run_cli("hs-eval", "vqvae", "--checkpoint", str(tmp_path / "other.pt"),
                                   "--data", str(tiny_runs["data"])))
    assert "weights do not match the model config" in line


def test_cli_dataset_with_other_classes(tiny_runs, tmp_path):
    from histosmith.data.meta import DatasetMeta

    other = tmp_path / "other"
    import shutil

    shutil.copytree(tiny_runs["data"], other)
    meta = DatasetMeta.load(other / "meta.json")
    meta.class_names = ["a", "b", "c"]
    (other / "meta.json").write_text(__import__("json").dumps(meta.to_json()))
    for shard in other.glob("shard-*"):
        text = (shard / "counts.csv").read_text().splitlines()
        (shard / "counts.csv").write_text("\n".join(["a,b,c", *text[1:]]) + "\n")
    line = _one_error_line(run_cli("hs-train", "ldm", "--data", str(other), "--vqvae", str(tiny_runs["vq"]),
                                   "--config", "tiny", "--out", str(tmp_path / "o")))
    assert "differ from the checkpoint" in line


def test_vqvae_evaluation_report(tiny_runs):
    from histosmith.evaluation.vqvae import evaluate_vqvae

    report = evaluate_vqvae(tiny_runs["vq"], tiny_runs["data"])
    assert report.n_tiles > 0 and np.isfinite(report.psnr) and 0 <= report.miou <= 1
    assert 1 <= report.perplexity <= report.codebook_size and report.codes_used >= 1
    assert set(report.median_area_ratio) == {"epithelial", "lymphocyte", "neutrophil"}
    from histosmith.evaluation.vqvae import MARKER_DEPTHS

    # the marker-depth sweep runs on the same reconstructions: its row at the report's h is the report's PQ
    assert [e["h"] for e in report.marker_depths] == list(MARKER_DEPTHS)
    at_default = next(e for e in report.marker_depths if e["h"] == 0.4)
    assert at_default["pq"] == report.pq and at_default["mpq_plus"] == report.mpq_plus
    assert report.recommended_marker_depth in MARKER_DEPTHS
    assert "recommended marker depth" in report.format_table()
    names = ["epithelial", "lymphocyte", "neutrophil"]
    assert all(set(e["class_pq"]) == set(names) for e in report.marker_depths)
    assert set(report.recommended_class_marker_depths) <= set(names)
    assert all(h in MARKER_DEPTHS for h in report.recommended_class_marker_depths.values())
    truth = [lab for _, _, _, lab in Dataset.open(tiny_runs["data"]).tiles("val")]
    assert report.class_nuclei == {n: sum(int(count_nuclei(lab, 3)[k]) for lab in truth)  # with no margin
                                   for k, n in enumerate(names)}
    # the text hs-generate takes, and the round trip with it (every class at its own depth)
    from histosmith.runtime.postprocess import MarkerDepth

    spec = MarkerDepth.parse(report.recommended_marker_depth_spec)
    assert spec.default == report.recommended_marker_depth
    assert dict(spec.per_class) == {n: h for n, h in report.recommended_class_marker_depths.items()
                                    if h != spec.default}
    assert 0 <= report.class_marker_depths_result["pq"] <= 1 and "per-class marker depth" in report.format_table()
    if not spec.per_class:  # the same setting as the sweep's row at that depth
        row = next(e for e in report.marker_depths if e["h"] == spec.default)
        assert report.class_marker_depths_result["pq"] == row["pq"]


def test_marker_depth_recommendation():
    from histosmith.evaluation.vqvae import recommend_marker_depth

    rows = [{"h": 0.1, "pq": 0.86, "mpq_plus": 0.90}, {"h": 0.2, "pq": 0.910, "mpq_plus": 0.936},
            {"h": 0.25, "pq": 0.915, "mpq_plus": 0.936}, {"h": 0.3, "pq": 0.917, "mpq_plus": 0.935},
            {"h": 0.4, "pq": 0.913, "mpq_plus": 0.930}]
    # 0.2 is 0.007 below the best PQ, 0.4 0.006 below the best mPQ+: 0.25 and 0.3 tie, the smaller wins
    assert recommend_marker_depth(rows) == 0.25
    assert recommend_marker_depth(rows, tolerance=0.01) == 0.2
    assert recommend_marker_depth(rows, tolerance=0.0) == 0.3  # no value is best in both: the best PQ
    with pytest.raises(ValueError):
        recommend_marker_depth([])


def test_class_marker_depth_recommendation():
    from histosmith.evaluation.vqvae import recommend_class_marker_depths

    rows = [{"h": h, "class_pq": {"a": a, "b": b, "c": np.nan}}
            for h, a, b in ((0.1, 0.800, 0.70), (0.2, 0.803, 0.74), (0.3, 0.802, 0.75), (0.4, 0.790, 0.76))]
    # a is flat from 0.1 (0.003 below its best), b is best at 0.4 and 0.3 is 0.01 below; c never occurs
    assert recommend_class_marker_depths(rows) == {"a": 0.1, "b": 0.4}
    assert recommend_class_marker_depths(rows, tolerance=0.015) == {"a": 0.1, "b": 0.3}
    with pytest.raises(ValueError):
        recommend_class_marker_depths([])


@pytest.mark.parametrize("value", ["0,0.4", "0.4,0.4", "a", "1.5"])
def test_vqvae_cli_rejects_bad_marker_depths(tiny_runs, value):
    line = _one_error_line(run_cli("hs-eval", "vqvae", "--checkpoint", str(tiny_runs["vq"]), "--data",
                                   str(tiny_runs["data"]), "--marker-depths", value))
    assert "--marker-depths" in line


def test_round_trip_area_ratio_is_per_class():
    from histosmith.evaluation.vqvae import _median_area_ratio

    areas = {"true": [np.array([10, 20, 30]), np.array([40])], "rederived": [np.array([12, 18, 60])]}
    classes = {"true": [np.array([1, 1, 2]), np.array([2])], "rederived": [np.array([1, 1, 2])]}
    ratio = _median_area_ratio(["a", "b", "c"], areas, classes)
    assert ratio == {"a": pytest.approx(15 / 15), "b": pytest.approx(60 / 35), "c": None}


def test_hs_sample_writes_a_dataset_with_reports(tiny_runs, tmp_path):
    out = tmp_path / "samples"
    r = run_cli("hs-sample", "--checkpoint", str(tiny_runs["ldm"]), "--n", "5", "--steps", "3", "--batch", "2",
                "--balance", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    from histosmith.data.reader import Dataset

    ds = Dataset.open(out)
    assert len(ds) == 5 and ds.meta.class_names == ["epithelial", "lymphocyte", "neutrophil"]
    assert ds.counts().shape == (5, 3)
    assert all((out / f).exists() for f in ("preview.png", "control.png", "control.json", "generation.json"))


def test_patchgan_switches_on_after_warm_up(synthetic_dir, tmp_path, monkeypatch):
    import dataclasses

    from histosmith import config

    tiny = config.preset("tiny")
    with_gan = dataclasses.replace(tiny, vq_train=dataclasses.replace(tiny.vq_train, gan_start=2, log_every=1))
    monkeypatch.setitem(config._PRESETS, "tiny", with_gan)
    train_vqvae(synthetic_dir, tmp_path / "gan", "tiny", RunOptions(max_steps=4, show_progress=False))
    rows = list(csv.DictReader(open(tmp_path / "gan" / "log.csv", newline="")))
    assert [r.get("d_loss", "") == "" for r in rows] == [True, True, False, False]
    ckpt = load_checkpoint(tmp_path / "gan")
    assert ckpt["discriminator"] is not None and ckpt["discriminator_optimizer"] is not None
    train_vqvae(synthetic_dir, tmp_path / "gan", "tiny", RunOptions(max_steps=6, resume=True, show_progress=False))
    assert load_checkpoint(tmp_path / "gan")["step"] == 6


def _tiny_with_map_term(monkeypatch, **changes):
    import dataclasses

    from histosmith import config

    tiny = config.preset("tiny")
    ldm_train = dataclasses.replace(tiny.ldm_train, map_weight=1.0, map_max_t=1000, log_every=1, **changes)
    monkeypatch.setitem(config._PRESETS, "tiny", dataclasses.replace(tiny, ldm_train=ldm_train))


def test_map_term_trains_the_unet_only_and_resumes_exactly(tiny_runs, synthetic_dir, tmp_path, monkeypatch):
    _tiny_with_map_term(monkeypatch, map_start=2)
    opts = RunOptions(seed=1, device="cpu", max_steps=6, show_progress=False)
    train_ldm(synthetic_dir, tiny_runs["vq"], tmp_path / "a", "tiny", opts)
    rows = list(csv.DictReader(open(tmp_path / "a" / "log.csv", newline="")))
    assert [r.get("map", "") == "" for r in rows] == [True, True, False, False, False, False]  # on from step 2
    assert all(float(r["map"]) > 0 for r in rows[2:])
    ckpt = load_checkpoint(tmp_path / "a")
    assert ckpt["train_config"]["map_weight"] == 1.0
    frozen, _ = load_vqvae(tiny_runs["vq"])  # the embedded autoencoder is the stage-1 one, untouched
    for k, v in frozen.state_dict().items():
        assert torch.equal(v, ckpt["vqvae"]["model"][k]), k
    train_ldm(synthetic_dir, tiny_runs["vq"], tmp_path / "b", "tiny",
              RunOptions(**{**opts.__dict__, "stop_at_step": 3}))
    train_ldm(synthetic_dir, tiny_runs["vq"], tmp_path / "b", "tiny", RunOptions(**{**opts.__dict__, "resume": True}))
    again = list(csv.DictReader(open(tmp_path / "b" / "log.csv", newline="")))
    assert [(r["step"], r["loss"], r["map"]) for r in again] == [(r["step"], r["loss"], r["map"]) for r in rows]


@pytest.mark.parametrize("mode", ["autoencoder", "ce", "tversky", "none"])
def test_map_term_scores_the_decoded_latent_against_its_own_flip(mode, tiny_runs, synthetic_dir, tmp_path,
                                                                 monkeypatch):
    """With a perfect noise prediction the term is the autoencoder's own round-trip error on that tile, under
    the latent's flip: checked against labels flipped here, not by the training code."""
    import torch.nn.functional as F

    from histosmith.training.data import dihedral
    from histosmith.training.ldm import LDMStage
    from histosmith.training.losses import tversky_loss

    _tiny_with_map_term(monkeypatch, map_classes=mode)
    opts = RunOptions(seed=0, device="cpu", precision="fp32", max_steps=1, show_progress=False)
    captured = {}
    original = LDMStage.__init__

    def keep(self, ctx, *args, **kw):
        original(self, ctx, *args, **kw)
        captured["stage"] = self

    monkeypatch.setattr(LDMStage, "__init__", keep)
    train_ldm(synthetic_dir, tiny_runs["vq"], tmp_path / "run", "tiny", opts)
    stage = captured["stage"]
    tile, flip = 2, 5
    index = torch.tensor([tile * 8 + flip])
    t = torch.tensor([0])
    noise = torch.randn((1, *stage.latents.shape[1:]), generator=torch.Generator().manual_seed(0))
    a = stage.a_bar[t][:, None, None, None]
    x_t = a.sqrt() * stage.latents[index] + (1 - a).sqrt() * noise
    got = stage.map_loss(x_t, noise, t, index)
    with torch.no_grad():
        out = stage.vq.decode(stage.latents[index] / stage.latent_scale, quantize=True)

    def error(k):
        dist = torch.from_numpy(dihedral(stage.store.distances[tile].astype(np.float32), k).copy())
        classes = torch.from_numpy(dihedral(stage.store.classes[tile].astype(np.int64), k).copy())
        vq = load_checkpoint(tiny_runs["vq"])["train_config"]
        l1 = (out.distance[0, 0] - dist).abs().mean()
        ce = F.cross_entropy(out.logits, classes[None])
        tv = tversky_loss(out.logits, classes[None], vq["tversky_alpha"], vq["tversky_beta"])
        return float({"autoencoder": vq["distance_weight"] * l1 + vq["ce_weight"] * ce + vq["tversky_weight"] * tv,
                      "ce": l1 + ce, "tversky": l1 + tv, "none": l1}[mode])

    assert float(got) == pytest.approx(error(flip), rel=1e-3, abs=1e-4)
    assert float(got) != pytest.approx(error(0), rel=1e-3, abs=1e-4)  # the check tells flips apart
