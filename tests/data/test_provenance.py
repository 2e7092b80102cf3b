"""Provenance: the generator's training tiles travel checkpoint -> manifest -> generated dataset; leakage refused."""

import json

import numpy as np
import pytest

from histosmith.data.provenance import check_no_leakage, dataset_digests, dataset_provenance, tile_digest
from histosmith.data.reader import Dataset
from histosmith.errors import HistoSmithError
from histosmith.runtime.manifest import Manifest
from tests.conftest import run_cli


def test_tile_digest_is_content_based():
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[3, 4, 1] = 1
    assert tile_digest(a) == tile_digest(a.copy()) and tile_digest(a) != tile_digest(b)
    assert tile_digest(a) != tile_digest(np.zeros((4, 16, 3), np.uint8))  # same bytes, other shape


@pytest.fixture(scope="module")
def generated(tiny_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "g"
    r = run_cli("hs-generate", "--engine", str(tiny_export / "unet.onnx"), "--out", str(out), "--n", "3",
                "--steps", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_records_travel_from_training_to_the_generated_dataset(tiny_export, synthetic_dir, generated):
    train = dataset_digests(synthetic_dir, "train")
    records = list(Manifest.load(tiny_export).provenance)
    assert [r["stage"] for r in records] == ["vqvae", "ldm"]
    for r in records:
        assert r["split"] == "train" and r["n_tiles"] == len(train) and set(r["tile_digests"]) == set(train)
        assert r["dataset"] == str(synthetic_dir.resolve())
    plan = json.loads((generated / "generation.json").read_text())
    assert plan["provenance"] == records
    assert dataset_provenance(generated) == records
    assert Dataset.open(generated).meta.extra["provenance"] == records


def test_leakage_is_refused_and_held_out_tiles_pass(synthetic_dir, generated):
    check_no_leakage(generated, synthetic_dir, "val")  # the held-out split never trained the generator
    with pytest.raises(HistoSmithError, match="trained on .* of the .* evaluation tiles"):
        check_no_leakage(generated, synthetic_dir, "train")
    with pytest.raises(HistoSmithError, match="evaluation tiles"):
        check_no_leakage(generated, synthetic_dir, None)
    check_no_leakage(synthetic_dir, synthetic_dir, None)  # not generated: nothing to check


def test_generated_data_without_records_needs_an_explicit_override(synthetic_dir, generated, tmp_path):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(generated, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["extra"].pop("provenance")
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(HistoSmithError, match="cannot be ruled out"):
        check_no_leakage(copy, synthetic_dir, "val")
    check_no_leakage(copy, synthetic_dir, "val", allow_unknown=True)
