"""hs-eval realism: per-nucleus features on hand-built tiles, identical sets give zero distance, bad input."""

import json

import numpy as np
import pytest

from histosmith.data.reader import Dataset
from histosmith.evaluation.realism import NucleusTable, compare, nucleus_features
from tests.conftest import run_cli, write_conic_dir


def _tile(size=32):
    labels = np.zeros((size, size, 2), np.int32)
    labels[4:12, 4:12] = (1, 1)  # 8x8 square, class 1
    labels[20:24, 18:30] = (2, 2)  # 4x12 bar, class 2
    image = np.full((size, size, 3), 230, np.uint8)
    image[labels[..., 0] > 0] = (80, 60, 140)  # purple nuclei on a pale background
    return image, labels


def test_nucleus_features_on_known_shapes():
    image, labels = _tile()
    table = NucleusTable()
    nucleus_features(image, labels, 2, table)
    assert table.classes == [1, 2]
    assert table.values["area"] == [64.0, 48.0]
    assert table.values["solidity"] == pytest.approx([1.0, 1.0])
    assert table.values["eccentricity"][0] == pytest.approx(0.0, abs=1e-6)
    assert table.values["eccentricity"][1] > 0.9
    od = table.values["hematoxylin_od"]
    assert od[0] == pytest.approx(od[1]) and od[0] > 0


def _dataset(path, tiles, names=("a", "b")):
    images = np.stack([t[0] for t in tiles])
    labels = np.stack([t[1] for t in tiles])
    write_conic_dir(path, images, labels, list(names), [f"t{i}" for i in range(len(tiles))])
    return path


def test_identical_sets_have_zero_distance_and_bigger_nuclei_show(tmp_path):
    tile = _tile()
    real = Dataset.open(_dataset(tmp_path / "real", [tile, tile]))
    report, _ = compare(real, Dataset.open(_dataset(tmp_path / "same", [tile, tile])))
    for e in report["classes"]:
        assert all(f["wasserstein"] == pytest.approx(0.0) for f in e["features"].values())
        assert e["median_area_ratio"] == pytest.approx(1.0) and e["share_above_real_p99_area"] == 0.0
    big_image, big = _tile()
    big[2:16, 2:16] = (1, 1)  # class-1 nucleus grown to 14x14
    report, _ = compare(real, Dataset.open(_dataset(tmp_path / "big", [(big_image, big)])))
    a = report["classes"][0]
    assert a["median_area_ratio"] == pytest.approx(196 / 64)
    assert a["share_above_real_p99_area"] == 1.0
    assert a["features"]["area"]["wasserstein"] == pytest.approx(196 - 64)


def test_share_of_touching_nuclei_per_class(tmp_path):
    tile = _tile()
    real = Dataset.open(_dataset(tmp_path / "real", [tile]))
    clump_image, clump = _tile()
    clump[12:16, 4:12] = (3, 1)  # a second class-1 nucleus drawn against the first, no gap
    report, _ = compare(real, Dataset.open(_dataset(tmp_path / "clump", [tile, (clump_image, clump)])))
    a, b = report["classes"]
    assert a["share_touching"] == {"real": 0.0, "generated": pytest.approx(2 / 3)}  # 2 of the 3 class-1 nuclei
    assert b["share_touching"] == {"real": 0.0, "generated": 0.0}


def test_realism_command(tmp_path):
    tile = _tile()
    real = _dataset(tmp_path / "real", [tile, tile])
    res = run_cli("hs-eval", "realism", "--real", str(real), "--generated", str(real), "--out", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "o" / "realism.json").read_text())
    assert report["n_nuclei"] == {"real": 4, "generated": 4}
    assert "touching another nucleus: real 0.0%, generated 0.0%" in res.stdout
    assert (tmp_path / "o" / "realism.png").read_bytes()[:4] == b"\x89PNG"
    other = _dataset(tmp_path / "other", [tile], names=("x", "y"))
    res = run_cli("hs-eval", "realism", "--real", str(real), "--generated", str(other), "--out", str(tmp_path / "p"))
    assert res.returncode == 2 and res.stderr.startswith("error:") and "differ" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "p").exists()


def test_tiles_are_spread_over_the_dataset():
    from histosmith.evaluation.realism import spread

    assert spread(10, 3).tolist() == [0, 4, 9]  # first, middle, last: both tissues of a two-tissue set
    assert spread(2, 5).tolist() == [0, 1]
    assert spread(0, 5).tolist() == []


def _with_tissues(path, tissues):
    rows = "".join(f"t{i},{t}\n" for i, t in enumerate(tissues))
    (path / "patch_info.csv").write_text("patch_info,tissue\n" + rows)
    return path


def test_median_area_per_tissue_finds_the_tissue_that_misses(tmp_path):
    tile = _tile()
    big_image, big = _tile()
    big[2:16, 2:16] = (1, 1)  # class-1 nucleus grown to 14x14, in tissue "y" only
    real = _with_tissues(_dataset(tmp_path / "real", [tile, tile]), ["x", "y"])
    gen = _with_tissues(_dataset(tmp_path / "gen", [tile, (big_image, big)]), ["x", "y"])
    report, _ = compare(Dataset.open(real), Dataset.open(gen))
    rows = {(r["tissue"], r["class"]): r for r in report["area_by_tissue"]}
    assert sorted(rows) == [("x", "a"), ("x", "b"), ("y", "a"), ("y", "b")]
    assert rows["x", "a"]["median_area_ratio"] == pytest.approx(1.0)
    assert rows["y", "a"]["median_area_ratio"] == pytest.approx(196 / 64)
    assert rows["y", "b"]["median_area_ratio"] == pytest.approx(1.0)
    assert rows["y", "a"]["real"]["n"] == 1 and rows["y", "a"]["generated"]["median"] == 196
    # without a tissue column there is no breakdown
    plain, _ = compare(Dataset.open(_dataset(tmp_path / "p", [tile])), Dataset.open(_dataset(tmp_path / "q", [tile])))
    assert plain["area_by_tissue"] == []
