from pathlib import Path

import cv2
import numpy as np
import pytest

from histosmith.data.prepare import prepare
from histosmith.data.reader import Dataset
from histosmith.data.sources.conic import cohort
from histosmith.data.sources.pannuke import merge_pannuke_masks
from histosmith.data.sources.synthetic import synthetic_tile
from histosmith.errors import HistoSmithError
from tests.conftest import write_conic_dir

CLASSES = ["epithelial", "lymphocyte", "neutrophil"]


def _tiles(n, size=32, seed=0):
    return [synthetic_tile(seed, i, size) for i in range(n)]


def test_synthetic_is_deterministic_per_index():
    a, b = synthetic_tile(5, 11, 32), synthetic_tile(5, 11, 32)
    assert (a.image == b.image).all() and (a.labels == b.labels).all()
    assert not (synthetic_tile(5, 12, 32).image == a.image).all()


def test_synthetic_dataset_counts_match_labels(synthetic_dir):
    ds = Dataset.open(synthetic_dir)
    assert len(ds) == 48 and ds.meta.class_names == CLASSES
    counts = ds.counts()
    n_instances = [int(lab[..., 0].max()) for _, _, labels in ds.iter_shards() for lab in labels]
    assert counts.sum(1).tolist() == n_instances


def test_conic_source(tmp_path):
    tiles = _tiles(4)
    names = ["crag_1-0000", "crag_1-0001", "glas_3-0000", "consep_2-0004"]
    src = write_conic_dir(tmp_path / "conic", np.stack([t.image for t in tiles]),
                          np.stack([t.labels for t in tiles]), CLASSES, names)
    meta = prepare("conic", src, tmp_path / "out", show_progress=False)
    assert meta.tissue_names == ["consep", "crag", "glas"]
    assert meta.class_names == CLASSES and meta.n_tiles == 4
    ds = Dataset.open(tmp_path / "out")
    assert [r["tissue"] for r in ds.patch_info()] == ["crag", "crag", "glas", "consep"]
    # Downscale and re-tile: 32 px -> 16 px after 2x.
    meta = prepare("conic", src, tmp_path / "out2", downscale=2, show_progress=False)
    assert meta.tile_size == 16


def test_cohort_prefix():
    assert cohort("crag_12-0003") == "crag"
    assert cohort("pannuke_3-0001") == "pannuke"


@pytest.mark.parametrize("breakage, message", [
    ("truncate", "truncated"),
    ("labels_shape", "does not match images"),
    ("counts_columns", "missing columns|not a number"),
    ("counts_rows", "expected 4"),
    ("class_range", "class ids must lie"),
])
def test_conic_bad_input_leaves_nothing(tmp_path, breakage, message):
    tiles = _tiles(4)
    images, labels = np.stack([t.image for t in tiles]), np.stack([t.labels for t in tiles])
    if breakage == "labels_shape":
        labels = labels[:, :16]
    if breakage == "class_range":
        labels[2, 0, 0] = (99, 7)
    src = write_conic_dir(tmp_path / "c", images, labels, CLASSES, ["a_1"] * 4)
    if breakage == "truncate":
        (src / "images.npy").write_bytes((src / "images.npy").read_bytes()[:-10])
    if breakage == "counts_columns":
        (src / "counts.csv").write_text("epithelial,lymphocyte\n" + "1,x\n" * 4)
    if breakage == "counts_rows":
        (src / "counts.csv").write_text(",".join(CLASSES) + "\n1,2,3\n")
    with pytest.raises(HistoSmithError, match=message):
        prepare("conic", src, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_pannuke_masks_get_unique_ids():
    mask = np.zeros((8, 8, 6))
    mask[0:2, 0:2, 0] = 1  # neoplastic id 1
    mask[4:6, 4:6, 1] = 1  # inflammatory id 1 again
    mask[6:8, 0:2, 4] = 3  # epithelial id 3
    mask[..., 5] = (mask[..., :5].sum(-1) == 0)
    labels = merge_pannuke_masks(mask)
    assert sorted(np.unique(labels[..., 0])) == [0, 1, 2, 3]
    assert labels[0, 0, 1] == 1 and labels[4, 4, 1] == 2 and labels[6, 0, 1] == 5


def test_pannuke_source(tmp_path):
    tiles = _tiles(3)
    d = tmp_path / "Fold 1" / "images" / "fold1"
    d.mkdir(parents=True)
    np.save(d / "images.npy", np.stack([t.image for t in tiles]).astype(np.float64))
    masks = np.zeros((3, 32, 32, 6))
    for i, t in enumerate(tiles):
        for c in range(3):
            sel = t.labels[..., 1] == c + 1
            masks[i, sel, c] = t.labels[sel, 0]
        masks[i, ..., 5] = t.labels[..., 0] == 0
    np.save(d / "masks.npy", masks)
    np.save(d / "types.npy", np.array(["Breast", "Colon", "Breast"]))
    meta = prepare("pannuke", tmp_path, tmp_path / "out", show_progress=False)
    assert meta.tissue_names == ["breast", "colon"]
    assert meta.class_names[:3] == ["neoplastic", "inflammatory", "connective"]
    ds = Dataset.open(tmp_path / "out")
    n_instances = [int(lab[..., 0].max()) for _, _, labels in ds.iter_shards() for lab in labels]
    assert n_instances == [int(t.labels[..., 0].max()) for t in tiles]


def _write_folder(root: Path, tiles, ext=".png"):
    for sub in ("images", "instances", "classes"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for i, t in enumerate(tiles):
        cv2.imwrite(str(root / "images" / f"t{i}.png"), t.image[..., ::-1])
        cv2.imwrite(str(root / "instances" / f"t{i}{ext}"), t.labels[..., 0].astype(np.uint16))
        np.save(root / "classes" / f"t{i}.npy", t.labels[..., 1])
    (root / "tissues.csv").write_text("t0,colon\nt1,colon\n")


def test_folder_source(tmp_path):
    tiles = _tiles(3)
    _write_folder(tmp_path / "f", tiles)
    meta = prepare("folder", tmp_path / "f", tmp_path / "out", show_progress=False)
    assert meta.n_tiles == 3 and meta.tissue_names == ["colon", "tissue"]
    ds = Dataset.open(tmp_path / "out")
    labels = [lab.copy() for _, _, labs in ds.iter_shards() for lab in labs]
    assert all((a == t.labels).all() for a, t in zip(labels, tiles, strict=True))


def test_folder_unmatched_and_unreadable(tmp_path):
    tiles = _tiles(2)
    _write_folder(tmp_path / "f", tiles)
    (tmp_path / "f" / "images" / "extra.png").write_bytes(b"not a png")
    with pytest.raises(HistoSmithError, match="unmatched files for stems \\['extra'\\]"):
        prepare("folder", tmp_path / "f", tmp_path / "out", show_progress=False)
    (tmp_path / "f" / "instances" / "extra.png").write_bytes(b"x")
    (tmp_path / "f" / "classes" / "extra.png").write_bytes(b"x")
    with pytest.raises(HistoSmithError, match="unreadable image"):
        prepare("folder", tmp_path / "f", tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_real_fixture_through_conic_source(real_conic_npz, tmp_path):
    z = np.load(real_conic_npz)
    names = [f"cellseg_{i}-0000" for i in range(3)]
    classes = [f"class{i}" for i in range(1, 6)]
    src = write_conic_dir(tmp_path / "c", z["images"], z["labels"].astype(np.int32), classes, names)
    meta = prepare("conic", src, tmp_path / "out", show_progress=False)
    assert meta.count_margin == 16  # 256 px tiles use the CoNIC rule
    ds = Dataset.open(tmp_path / "out")
    whole = [int(np.unique(lab[..., 0]).size - 1) for _, _, labs in ds.iter_shards() for lab in labs]
    assert whole == [20, 47, 58]
    assert (ds.counts().sum(1) <= np.array(whole)).all()


@pytest.mark.network
def test_example_source_from_the_wheel(tmp_path):
    try:
        meta = prepare("example", None, tmp_path / "ex", show_progress=False)
    except HistoSmithError as exc:  # pragma: no cover - only without PyPI and without a cache
        if "downloading" in str(exc):
            pytest.skip(f"example wheel not reachable: {exc}")
        raise
    assert meta.class_names == ["neoplastic", "inflammatory", "connective"]
    assert meta.tissue_names == ["tumour_nest", "stroma"]
    assert meta.tile_size == 64 and meta.n_tiles == 242
    assert meta.tissue_tiles == {"tumour_nest": 121, "stroma": 121}
    ds = Dataset.open(tmp_path / "ex")
    rows = ds.patch_info()
    val = [r for r in rows if r["split"] == "val"]
    assert len(val) == 66 and len(rows) - len(val) == 176  # bottom 3 tile rows of each crop held out
    assert {r["tissue"] for r in val} == {"tumour_nest", "stroma"}
    assert (ds.counts().sum(0) > 300).all()  # every class is present in numbers
    images = np.concatenate([imgs for _, imgs, _ in ds.iter_shards()])
    assert 100 < images.mean() < 230  # real stained tissue, not blank


@pytest.mark.network
def test_example_stride_keeps_the_held_out_band(tmp_path):
    """A smaller --stride gives more, overlapping training windows, never reaching into the val band, and
    the very same 66 val tiles."""
    try:
        prepare("example", None, tmp_path / "grid", show_progress=False)
        prepare("example", None, tmp_path / "s32", stride=32, show_progress=False)
    except HistoSmithError as exc:  # pragma: no cover - only without PyPI and without a cache
        if "downloading" in str(exc):
            pytest.skip(f"example wheel not reachable: {exc}")
        raise

    def split(path):
        ds = Dataset.open(path)
        rows = ds.patch_info()
        images = np.concatenate([imgs for _, imgs, _ in ds.iter_shards()])
        val = [i for i, r in enumerate(rows) if r["split"] == "val"]
        return rows, images, val

    rows, images, val = split(tmp_path / "grid")
    rows32, images32, val32 = split(tmp_path / "s32")
    assert len(val32) == 66 and len(rows32) - 66 == 2 * 15 * 22  # y 0..448, x 0..672, step 32
    assert [rows[i]["patch_info"] for i in val] == [rows32[i]["patch_info"] for i in val32]
    assert np.array_equal(images[val], images32[val32])
    band = {r["tissue"]: min(int(r["y"]) for r in rows if r["split"] == "val") for r in rows}
    assert set(band.values()) == {512}
    assert all(int(r["y"]) + 64 <= band[r["tissue"]] for r in rows32 if r["split"] == "train")
