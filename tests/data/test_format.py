import numpy as np
import pytest

from histosmith.data.codecs import read_counts_csv
from histosmith.data.meta import DatasetMeta
from histosmith.data.reader import Dataset
from histosmith.data.sources.synthetic import synthetic_tile
from histosmith.data.writer import DatasetWriter
from histosmith.errors import HistoSmithError


def _meta(tile=32):
    return DatasetMeta(class_names=["epithelial", "lymphocyte", "neutrophil"],
                       tissue_names=["stroma", "epithelium"], tile_size=tile)


def test_round_trip_through_shards(tmp_path):
    tiles = [synthetic_tile(3, i, 32) for i in range(7)]
    writer = DatasetWriter(tmp_path / "d", _meta(), shard_size=3)
    for t in tiles:
        writer.add(t.image, t.labels, t.info)
    meta = writer.close()
    assert meta.n_tiles == 7
    ds = Dataset.open(tmp_path / "d")
    assert [s.n_tiles for s in ds.shards] == [3, 3, 1]
    got = [(img.copy(), lab.copy()) for _, imgs, labs in ds.iter_shards() for img, lab in zip(imgs, labs, strict=True)]
    for t, (img, lab) in zip(tiles, got, strict=True):
        assert (img == t.image).all() and (lab == t.labels).all()
    # Counted here independently of count_nuclei: distinct instance ids under each class (the synthetic
    # nuclei have one class each and nothing is cut by a margin).
    expected = np.array([[len(np.unique(t.labels[..., 0][t.labels[..., 1] == c])) for c in (1, 2, 3)]
                         for t in tiles])
    assert expected.sum() > 7
    assert (ds.counts() == expected).all()
    assert meta.count_max == expected.max(0).tolist()
    assert sum(meta.tissue_tiles.values()) == 7
    assert [r["patch_info"] for r in ds.patch_info()] == [t.info["patch_info"] for t in tiles]


def test_resume_keeps_complete_shards(tmp_path):
    writer = DatasetWriter(tmp_path / "d", _meta(), shard_size=2)
    for i in range(5):  # two full shards written, one tile pending when we "crash"
        t = synthetic_tile(0, i, 32)
        writer.add(t.image, t.labels, t.info)
    resumed = DatasetWriter(tmp_path / "d", _meta(), shard_size=2, resume=True)
    assert resumed.tiles_done == 4
    with pytest.raises(HistoSmithError, match="already holds shards"):
        DatasetWriter(tmp_path / "d", _meta(), shard_size=2)
    with pytest.raises(HistoSmithError, match="do not fit"):
        DatasetWriter(tmp_path / "d", _meta(), shard_size=3, resume=True)


def test_resume_of_a_finished_dataset_keeps_its_tiles(tmp_path):
    """A short last shard marks a finished dataset; reopening it to resume must not lose its tiles."""
    writer = DatasetWriter(tmp_path / "d", _meta(), shard_size=4)
    for i in range(3):
        t = synthetic_tile(0, i, 32)
        writer.add(t.image, t.labels, t.info)
    assert writer.close().n_tiles == 3
    resumed = DatasetWriter(tmp_path / "d", _meta(), shard_size=4, resume=True)
    assert resumed.tiles_done == 3 and len(resumed.counts()) == 3
    assert resumed.close().n_tiles == 3
    assert DatasetMeta.load(tmp_path / "d" / "meta.json").n_tiles == 3


def test_failed_shard_write_leaves_nothing(tmp_path, monkeypatch):
    writer = DatasetWriter(tmp_path / "d", _meta(), shard_size=1)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", fail)
    t = synthetic_tile(0, 0, 32)
    with pytest.raises(HistoSmithError, match="disk full"):
        writer.add(t.image, t.labels, t.info)
    assert [p.name for p in (tmp_path / "d").iterdir()] == []


def test_truncated_npy_is_reported(synthetic_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(synthetic_dir, bad)
    images = bad / "shard-00000" / "images.npy"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(HistoSmithError, match="truncated"):
        Dataset.open(bad)


def test_shape_mismatch_is_reported(tmp_path):
    d = tmp_path / "conic"
    d.mkdir()
    np.save(d / "images.npy", np.zeros((2, 8, 8, 3), np.uint8))
    np.save(d / "labels.npy", np.zeros((3, 8, 8, 2), np.int32))
    (d / "counts.csv").write_text("a,b\n0,0\n0,0\n")
    with pytest.raises(HistoSmithError, match="does not match images"):
        Dataset.open(d)


def test_counts_csv_errors(tmp_path):
    p = tmp_path / "counts.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(HistoSmithError, match="missing columns"):
        read_counts_csv(p, ["a", "c"])
    with pytest.raises(HistoSmithError, match="expected 2"):
        read_counts_csv(p, ["a", "b"], n_rows=2)
    p.write_text("a,b\n1,x\n")
    with pytest.raises(HistoSmithError, match="is not a number"):
        read_counts_csv(p, ["a", "b"])


def test_class_ids_out_of_range_are_reported(tmp_path):
    d = tmp_path / "conic"
    d.mkdir()
    np.save(d / "images.npy", np.zeros((1, 8, 8, 3), np.uint8))
    labels = np.zeros((1, 8, 8, 2), np.int32)
    labels[0, 2, 2] = (1, 5)
    np.save(d / "labels.npy", labels)
    (d / "counts.csv").write_text("a,b\n1,0\n")
    ds = Dataset.open(d)
    with pytest.raises(HistoSmithError, match="class ids must lie in 0..2"):
        list(ds.iter_shards())
