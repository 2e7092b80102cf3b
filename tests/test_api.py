"""The Python API: in memory and on disk give the same tiles; packed exports and the shipped model."""

import hashlib
import json

import numpy as np
import pytest

from histosmith import Generator, QCPolicy
from histosmith.data.reader import Dataset
from histosmith.errors import HistoSmithError
from histosmith.runtime.pretrained import DEFAULT_MODEL, available, pretrained_root, resolve_engine
from tests.conftest import run_cli


def test_in_memory_tiles_equal_the_dataset_written(tiny_export, tmp_path):
    gen = Generator.open(tiny_export, threads=1)
    assert gen.class_names and gen.tile_size == 32 and "Generator(" in repr(gen)
    options = dict(seed=3, sampler="dpmpp-2m", steps=4, guidance=2.0, batch=4)
    tiles = gen.generate(6, **options)
    assert tiles.images.shape == (6, 32, 32, 3) and tiles.images.dtype == np.uint8
    assert tiles.instances.shape == tiles.classes.shape == (6, 32, 32) and tiles.counts.shape == (6, 3)
    result = gen.generate_to(tmp_path / "d", 6, show_progress=False, **options)
    ds = Dataset.open(result.out)
    assert np.array_equal(np.concatenate([i for _, i, _ in ds.iter_shards()]), tiles.images)
    assert np.array_equal(np.concatenate([lab for _, _, lab in ds.iter_shards()]), tiles.labels)
    assert np.array_equal(ds.counts(), tiles.counts)
    record = json.loads((tmp_path / "d" / "generation.json").read_text())
    assert record["sampler"] == "dpmpp-2m" and record["steps"] == 4


def test_explicit_counts_tissue_and_qc(tiny_export):
    gen = Generator.open(tiny_export, threads=1)
    first = gen.class_names[0]
    tiles = gen.generate(3, counts={first: 2}, tissue=gen.tissue_names[0], steps=3, qc=QCPolicy(0.5, 2))
    assert tiles.requested[:, 0].tolist() == [2, 2, 2] and tiles.tissues == [gen.tissue_names[0]] * 3
    with pytest.raises(HistoSmithError, match="unknown class"):
        gen.generate(1, counts={"nope": 1}, steps=2)


def test_pack_round_trip(tiny_export, tmp_path):
    from histosmith.export.pack import pack_export

    packed = pack_export(tiny_export, tmp_path / "packed")
    names = sorted(p.name for p in packed.iterdir())
    assert names == ["MODEL_CARD.md", "decoder.onnx", "manifest.json", "unet.onnx"]
    gen = Generator.open(packed, threads=1)
    a = gen.generate(2, steps=3, seed=1).images
    b = Generator.open(tiny_export, threads=1).generate(2, steps=3, seed=1).images
    assert np.array_equal(a, b)
    with pytest.raises(HistoSmithError, match="already exists"):
        pack_export(tiny_export, packed)


@pytest.mark.skipif(DEFAULT_MODEL not in available(), reason="the shipped model is not in this checkout")
def test_shipped_model_digests_and_tiles():
    directory = pretrained_root() / DEFAULT_MODEL
    manifest = json.loads((directory / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((directory / name).read_bytes()).hexdigest() == digest, name
    assert (directory / "MODEL_CARD.md").read_text().strip()
    path, name = resolve_engine(None)
    assert name == DEFAULT_MODEL and path.parent == directory
    tiles = Generator.from_pretrained().generate(4, steps=4, seed=0)
    assert tiles.images.shape[0] == 4 and tiles.images.std() > 5  # not a blank tile


@pytest.mark.skipif(DEFAULT_MODEL not in available(), reason="the shipped model is not in this checkout")
def test_hs_generate_without_engine_names_the_shipped_model(tmp_path):
    res = run_cli("hs-generate", "--out", str(tmp_path / "g"), "--n", "4", "--steps", "4")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"shipped model {DEFAULT_MODEL}" in res.stderr
    assert len(Dataset.open(tmp_path / "g")) == 4
