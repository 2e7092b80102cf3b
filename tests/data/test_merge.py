"""``hs-data merge``: datasets of one generator become one dataset, tiles in order, re-sharded."""

from __future__ import annotations

import json

import numpy as np

from histosmith.data.format import Dataset
from tests.conftest import run_cli


def test_merge_concatenates_and_reshards(synthetic_dir, tmp_path):
    out = tmp_path / "merged"
    result = run_cli("hs-data", "merge", str(synthetic_dir), str(synthetic_dir), "--out", str(out),
                     "--shard-size", "32")
    assert result.returncode == 0, result.stderr
    src, merged = Dataset.open(synthetic_dir), Dataset.open(out)
    assert len(merged) == 2 * len(src) and [s.n_tiles for s in merged.shards] == [32, 32, 32]
    images = np.concatenate([np.asarray(s.images()) for s in merged.shards])
    original = np.concatenate([np.asarray(s.images()) for s in src.shards])
    np.testing.assert_array_equal(images, np.concatenate([original, original]))
    np.testing.assert_array_equal(merged.counts(), np.concatenate([src.counts(), src.counts()]))
    assert json.loads((out / "meta.json").read_text())["n_tiles"] == 2 * len(src)


def test_merge_refuses_other_classes_and_existing_out(synthetic_dir, tmp_path):
    other = tmp_path / "other"
    result = run_cli("hs-data", "merge", str(synthetic_dir), "--out", str(other))
    assert result.returncode == 0, result.stderr
    meta = json.loads((other / "meta.json").read_text())
    meta["class_names"] = list(reversed(meta["class_names"]))
    (other / "meta.json").write_text(json.dumps(meta))
    bad = run_cli("hs-data", "merge", str(synthetic_dir), str(other), "--out", str(tmp_path / "m"))
    assert bad.returncode == 2 and "class_names" in bad.stderr and not (tmp_path / "m").exists()
    again = run_cli("hs-data", "merge", str(synthetic_dir), "--out", str(other))
    assert again.returncode == 2 and "already exists" in again.stderr
