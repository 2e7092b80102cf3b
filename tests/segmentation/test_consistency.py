"""--qc-segmenter: per-tile PQ, the filter in a generation run (rejected tiles, batch independence, resume),
what generation.json records, and bad input."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from histosmith.data.atomic import sha256_file
from histosmith.data.reader import Dataset
from histosmith.errors import HistoSmithError
from histosmith.segmentation.consistency import open_segmenter_check, tile_pq
from histosmith.segmentation.evaluate import load_split
from histosmith.segmentation.train import train_segmenter
from histosmith.training.data import TileStore
from histosmith.training.trainer import RunOptions
from tests.conftest import run_cli

MIN_PQ = 0.3  # the tiny segmenter's PQ on the tiny generator's tiles spreads around it: some kept, some rejected


@pytest.fixture(scope="module")
def seg_run(synthetic_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("qcseg") / "seg"
    train_segmenter(synthetic_dir, out, "tiny", RunOptions(seed=0, device="cpu", max_steps=60, show_progress=False))
    return out


def test_tile_pq_of_truth_empty_tiles_and_misses(synthetic_dir):
    names = Dataset.open(synthetic_dir).meta.class_names
    _, labels, _ = load_split(synthetic_dir, None)
    lab = [labels[0], np.zeros_like(labels[0]), labels[0]]
    pred = [labels[0], np.zeros_like(labels[0]), np.zeros_like(labels[0])]
    n = len(np.unique(labels[0][..., 0])) - 1
    assert n > 0
    assert tile_pq(list(names), lab, pred) == pytest.approx([(n / (n + 1e-6)) ** 2, 1.0, 0.0])


def _rows(out, name="patch_info.csv"):
    return [r for p in sorted(out.glob(f"shard-*/{name}")) for r in csv.DictReader(p.open())]


def test_filter_rejects_disagreeing_tiles_batch_independent_and_resumes_byte_identical(tiny_runs, seg_run, tmp_path):
    from histosmith.generator import CheckpointSession, load_generator
    from histosmith.runtime.conditions import from_dataset
    from histosmith.runtime.generate import GenerationPlan, generate

    session = CheckpointSession(load_generator(tiny_runs["ldm"]))
    table = from_dataset(session.info, 6, 0)

    def run(out, batch, resume=False, min_pq=MIN_PQ):
        plan = GenerationPlan(seed=1, steps=2, batch=batch, shard_size=3, qc_attempts=2)
        return generate(session, plan, table, out, resume=resume, show_progress=False,
                        check=open_segmenter_check(seg_run, min_pq))

    result = run(tmp_path / "a", 6)
    kept, rejected = _rows(tmp_path / "a"), _rows(tmp_path / "a", "rejected.csv")
    assert kept and rejected and len(kept) + len(rejected) == 6
    assert all(float(r["qc_pq"]) >= MIN_PQ and r["qc_pass"] == "1" for r in kept)
    assert all(float(r["qc_pq"]) < MIN_PQ and r["qc_pass"] == "0" and r["qc_attempts"] == "2" for r in rejected)
    ds = Dataset.open(tmp_path / "a")
    assert len(ds) == len(kept) == ds.meta.n_tiles and len(result.requested) == len(kept)
    assert len(TileStore.load(tmp_path / "a", None, False)) == len(kept)  # what hs-train seg --extra reads
    record = json.loads((tmp_path / "a" / "generation.json").read_text())
    assert record["qc_segmenter"] == str(seg_run) and record["qc_min_pq"] == MIN_PQ
    assert record["qc_segmenter_sha256"] == sha256_file(seg_run / "checkpoint.pt") and "qc" not in record
    assert record["qc_result"] | {"mean_pq": 0} == {
        "tiles": 6, "passed": len(kept), "acceptance": len(kept) / 6, "kept": len(kept), "rejected": len(rejected),
        "mean_attempts": np.mean([int(r["qc_attempts"]) for r in kept + rejected]), "mean_pq": 0}

    run(tmp_path / "b", 2)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.suffix in (".npy", ".csv"))
    assert any(f.name == "rejected.csv" for f in files)
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    for removed in (["shard-00001"], ["shard-00000", "shard-00001"]):  # one of them may hold no tile
        for shard in removed:
            shutil.rmtree(tmp_path / "b" / shard)
        assert run(tmp_path / "b", 2, resume=True).generated == 3 * len(removed)
        for f in files:
            assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
        assert json.loads((tmp_path / "b" / "generation.json").read_text())["qc_result"] == record["qc_result"]
    shutil.rmtree(tmp_path / "b" / "shard-00001")
    with pytest.raises(HistoSmithError, match="qc_min_pq"):
        run(tmp_path / "b", 2, resume=True, min_pq=0.5)


def test_segmenter_for_other_classes_or_tiles_is_refused(seg_run, tmp_path):
    check = open_segmenter_check(seg_run, 0.5)
    check.require_fit(check.class_names, check.tile_size)
    with pytest.raises(HistoSmithError, match="tiles of 64 px"):
        check.require_fit(check.class_names, 64)
    with pytest.raises(HistoSmithError, match="differ from the segmenter"):
        check.require_fit(["a", "b", "c"], check.tile_size)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(HistoSmithError, match="bad.pt"):
        open_segmenter_check(tmp_path / "bad.pt", 0.5)
    with pytest.raises(HistoSmithError, match="--qc-min-pq"):
        open_segmenter_check(seg_run, 1.5)


def _one_error(res, *words):
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error:") and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert all(w in res.stderr for w in words), res.stderr


def test_hs_sample_with_segmenter_filter_and_bad_input(tiny_runs, seg_run, tmp_path):
    base = ["hs-sample", "--checkpoint", str(tiny_runs["ldm"]), "--n", "4", "--steps", "2", "--from-dataset",
            "--qc-attempts", "2"]
    res = run_cli(*base, "--out", str(tmp_path / "o"), "--qc", "1", "--qc-segmenter", str(seg_run), "--qc-min-pq",
                  str(MIN_PQ))
    assert res.returncode == 0, res.stderr
    assert "left out of the dataset" in res.stdout
    control = json.loads((tmp_path / "o" / "control.json").read_text())
    assert control["qc"]["tiles"] == 4 and control["qc"]["kept"] + control["qc"]["rejected"] == 4
    _one_error(run_cli(*base, "--out", str(tmp_path / "p"), "--qc-min-pq", "0.5"), "--qc-min-pq", "--qc-segmenter")
    _one_error(run_cli(*base, "--out", str(tmp_path / "p"), "--qc-segmenter", str(seg_run), "--qc-min-pq", "1.5"),
               "--qc-min-pq")
    _one_error(run_cli(*base, "--out", str(tmp_path / "p"), "--qc-segmenter", str(tmp_path / "none")), "not found")
    ckpt = torch.load(seg_run / "checkpoint.pt", weights_only=True)
    ckpt["dataset"]["class_names"] = ["a", "b", "c"]
    torch.save(ckpt, tmp_path / "other.pt")
    _one_error(run_cli(*base, "--out", str(tmp_path / "p"), "--qc-segmenter", str(tmp_path / "other.pt")),
               "differ from the segmenter")
    assert not (tmp_path / "p").exists()
    gen = ["hs-generate", "--engine", str(tmp_path / "unet.onnx"), "--out", str(tmp_path / "p")]
    _one_error(run_cli(*gen, "--qc-min-pq", "0.5"), "--qc-min-pq", "--qc-segmenter")
    _one_error(run_cli(*gen, "--qc-segmenter", str(seg_run), "--ray"), "--qc-segmenter", "--ray")


def test_hs_generate_with_segmenter_filter(tiny_export, seg_run, tmp_path):
    res = run_cli("hs-generate", "--engine", str(tiny_export / "unet.onnx"), "--out", str(tmp_path / "o"), "--n", "4",
                  "--steps", "2", "--from-dataset", "--qc-attempts", "2", "--qc-segmenter", str(seg_run),
                  "--qc-min-pq", str(MIN_PQ))
    assert res.returncode == 0, res.stderr
    record = json.loads((tmp_path / "o" / "generation.json").read_text())
    assert record["qc_min_pq"] == MIN_PQ and record["qc_result"]["kept"] + record["qc_result"]["rejected"] == 4
    assert len(_rows(tmp_path / "o")) == record["qc_result"]["kept"] == len(Dataset.open(tmp_path / "o"))
