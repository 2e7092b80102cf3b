"""--qc: the tolerance rule, attempt seeds, batch independence and byte-identical resume with QC."""

import json
import shutil

import numpy as np
import pytest

from histosmith.errors import HistoSmithError
from histosmith.runtime.qc import sample_with_qc, within_tolerance
from histosmith.runtime.seeds import tile_noise
from tests.conftest import run_cli


def test_tolerance_is_one_nucleus_or_relative_whichever_is_larger():
    q = np.array([[0, 10, 40]])
    assert within_tolerance(q, np.array([[1, 11, 44]]), 0.1).all()
    assert not within_tolerance(q, np.array([[2, 10, 40]]), 0.1).any()  # 2 > max(1, 0)
    assert not within_tolerance(q, np.array([[0, 10, 45]]), 0.1).any()  # 5 > max(1, 4)
    assert within_tolerance(q, np.array([[0, 12, 40]]), 0.2).all()


def test_attempt_noise_depends_only_on_seed_index_attempt():
    a0, _ = tile_noise(3, np.array([5, 6]), (2, 4, 4), 1, False)
    a1, _ = tile_noise(3, np.array([6]), (2, 4, 4), 1, False, attempt=1)
    b1, _ = tile_noise(3, np.array([2, 6]), (2, 4, 4), 1, False, attempt=1)
    assert np.array_equal(a1[0], b1[1])  # same (seed, index, attempt), other batch
    assert not np.allclose(a0[1], a1[0])  # a retry is a new sample


def _fake_sampler(calls):
    """Tile i at attempt a holds (i + a) % 4 nuclei of class 1 (a 1-px nucleus each)."""

    def sample(indices, attempt):
        calls.append((tuple(int(i) for i in indices), attempt))
        images, labels = [], []
        for i in indices:
            lab = np.zeros((8, 8, 2), np.int32)
            for n in range((int(i) + attempt) % 4):
                lab[n, n] = (n + 1, 1)
            images.append(np.full((8, 8, 3), int(i) * 10 + attempt, np.uint8))
            labels.append(lab)
        return images, labels

    return sample


def test_sample_with_qc_keeps_first_pass_or_best_and_is_batch_independent():
    requested = np.array([[3], [3], [3], [3]])
    calls = []
    got = sample_with_qc(_fake_sampler(calls), np.arange(4), requested, 1, 0, tol=0.0, attempts=3)
    # tile 0: 0,1,2 nuclei -> never within 1 of 3 until attempt 2 (2 nuclei): passes at the third sample
    assert got.attempts.tolist() == [3, 2, 1, 1] and got.passed.tolist() == [True, True, True, True]
    assert [img[0, 0, 0] for img in got.images] == [2, 11, 20, 30]
    assert calls == [((0, 1, 2, 3), 0), ((0, 1), 1), ((0,), 2)]
    assert got.first.tolist() == [[0], [1], [2], [3]]  # attempt 0's counts, whatever was kept
    split = [sample_with_qc(_fake_sampler([]), np.arange(k, k + 2), requested[k:k + 2], 1, 0, 0.0, 3)
             for k in (0, 2)]
    assert [int(img[0, 0, 0]) for s in split for img in s.images] == [2, 11, 20, 30]
    none = sample_with_qc(_fake_sampler([]), np.array([0]), np.array([[9]]), 1, 0, tol=0.0, attempts=2)
    assert none.passed.tolist() == [False] and none.attempts.tolist() == [2]
    assert int(none.images[0][0, 0, 0]) == 1  # the better of 0 and 1 nuclei


def test_qc_run_is_batch_independent_and_resumes_byte_identical(tiny_export, tmp_path):
    """On ONNX Runtime, whose kernels give every row the same bits whatever the batch size. (torch's oneDNN
    kernels on AVX-512 CPUs choose their blocking by batch size: a tile can then differ by one level in a
    few pixels between runs of different --batch; a resume with the same --batch is byte-identical.)"""
    from histosmith.runtime.conditions import from_dataset
    from histosmith.runtime.engine import open_engine
    from histosmith.runtime.generate import GenerationPlan, generate

    session = open_engine(tiny_export / "unet.onnx")
    table = from_dataset(session.info, 6, 0)

    def run(out, batch, resume=False):
        plan = GenerationPlan(seed=1, steps=2, batch=batch, shard_size=3, qc=0.0, qc_attempts=2)
        return generate(session, plan, table, out, resume=resume, show_progress=False)

    run(tmp_path / "a", 6)
    run(tmp_path / "b", 2)
    files = [p.relative_to(tmp_path / "a") for p in sorted((tmp_path / "a").rglob("*")) if p.is_file()
             and p.suffix in (".npy", ".csv")]
    assert any(f.name == "patch_info.csv" for f in files)
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    import csv

    rows = [r for k in (0, 1) for r in csv.DictReader((tmp_path / "a" / f"shard-0000{k}" / "patch_info.csv").open())]
    attempts = [r["qc_attempts"] for r in rows]
    assert set(attempts) <= {"1", "2"} and "2" in attempts  # the tiny model misses often: retries happened
    assert all(r["qc_pass"] in ("0", "1") for r in rows)
    from histosmith.data.reader import Dataset

    kept = Dataset.open(tmp_path / "a").counts()
    first = np.array([[int(r[f"qc_first_{c}"]) for c in session.info.spec.class_names] for r in rows])
    once = np.array(attempts) == "1"
    assert np.array_equal(first[once], kept[once])  # a tile kept at its first sample: before QC = after QC
    result = json.loads((tmp_path / "a" / "generation.json").read_text())["qc_result"]
    passed = sum(r["qc_pass"] == "1" for r in rows)
    assert result == {"tiles": 6, "passed": passed, "acceptance": passed / 6,
                      "mean_attempts": sum(map(int, attempts)) / 6}
    shutil.rmtree(tmp_path / "b" / "shard-00001")
    assert run(tmp_path / "b", 2, resume=True).generated == 3
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    # The resumed process made 3 tiles; generation.json reports all 6 on disk, as the uninterrupted run does.
    assert json.loads((tmp_path / "b" / "generation.json").read_text())["qc_result"] == result


def test_qc_plan_and_options_refuse_bad_values(tmp_path):
    from histosmith.runtime.generate import GenerationPlan

    with pytest.raises(HistoSmithError):
        GenerationPlan(qc=0.1, qc_attempts=0)
    with pytest.raises(HistoSmithError):
        GenerationPlan(qc=float("nan"))
    res = run_cli("hs-sample", "--checkpoint", "nowhere", "--out", str(tmp_path / "o"), "--qc", "0.1",
                  "--qc-attempts", "0")
    assert res.returncode == 2 and res.stderr.startswith("error: --qc-attempts")
    assert len(res.stderr.strip().splitlines()) == 1


class _EvenCheck:
    """A pair check that agrees with tiles holding an even number of nuclei."""

    min_score = 0.5

    def scores(self, images, labels):
        return np.array([1.0 if len(np.unique(lab[..., 0])) % 2 == 1 else 0.0 for lab in labels])

    def record(self):
        return {"qc_even": True}


def test_pair_check_combines_with_counts_prefers_agreeing_attempts_and_is_batch_independent():
    requested = np.array([[3], [3], [3], [3]])
    got = sample_with_qc(_fake_sampler([]), np.arange(4), requested, 1, 0, tol=0.0, attempts=3, check=_EvenCheck())
    # nuclei per attempt: tile 0: 0,1,2; tile 1: 1,2; tile 2: 2; tile 3: 3,0,1 (only 2 passes both checks)
    assert got.attempts.tolist() == [3, 2, 1, 3] and got.passed.tolist() == [True, True, True, False]
    assert got.agrees.tolist() == [True, True, True, True] and got.score.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert int(got.images[3][0, 0, 0]) == 31  # the attempt the check agrees with beats a smaller count error
    split = [sample_with_qc(_fake_sampler([]), np.arange(k, k + 2), requested[k:k + 2], 1, 0, 0.0, 3, _EvenCheck())
             for k in (0, 2)]
    assert [int(img[0, 0, 0]) for s in split for img in s.images] == [2, 11, 20, 31]
    alone = sample_with_qc(_fake_sampler([]), np.arange(4), requested, 1, 0, tol=None, attempts=3, check=_EvenCheck())
    assert alone.attempts.tolist() == [1, 2, 1, 2] and alone.passed.all()  # no count check: tile 0 keeps 0 nuclei
    once = sample_with_qc(_fake_sampler([]), np.array([1]), requested[:1], 1, 0, tol=None, attempts=1,
                          check=_EvenCheck())
    assert once.agrees.tolist() == [False] and once.passed.tolist() == [False]  # rejected by the generation loop


def _sized_sampler(calls):
    """Tile i at attempt a holds one class-1 nucleus of 1, 5 or 9 pixels: 1 + 4 * ((i + a) % 3)."""

    def sample(indices, attempt):
        calls.append((tuple(int(i) for i in indices), attempt))
        images, labels = [], []
        for i in indices:
            lab = np.zeros((8, 8, 2), np.int32)
            lab.reshape(-1, 2)[: 1 + 4 * ((int(i) + attempt) % 3)] = (1, 1)
            images.append(np.full((8, 8, 3), int(i) * 10 + attempt, np.uint8))
            labels.append(lab)
        return images, labels

    return sample


def test_size_check_resamples_oversized_tiles_batch_independent_and_keeps_the_fewest():
    requested = np.array([[1], [1], [1]])
    limit = np.array([6.0])  # 1 and 5 px pass, 9 px is oversized
    got = sample_with_qc(_sized_sampler([]), np.arange(3), requested, 1, 0, tol=None, attempts=2, max_area=limit)
    assert got.attempts.tolist() == [1, 1, 2] and got.passed.all() and got.oversized.tolist() == [0, 0, 0]
    assert [int(img[0, 0, 0]) for img in got.images] == [0, 10, 21]  # tile 2: 9 px at attempt 0, 1 px at 1
    split = [sample_with_qc(_sized_sampler([]), np.array([k]), requested[k:k + 1], 1, 0, None, 2, max_area=limit)
             for k in range(3)]
    assert [int(s.images[0][0, 0, 0]) for s in split] == [0, 10, 21]
    once = sample_with_qc(_sized_sampler([]), np.array([2]), requested[:1], 1, 0, tol=0.0, attempts=1, max_area=limit)
    assert once.passed.tolist() == [False] and once.oversized.tolist() == [1]  # right count, too large
    off = sample_with_qc(_sized_sampler([]), np.arange(3), requested, 1, 0, tol=0.0, attempts=2)
    assert off.oversized is None and off.passed.all()  # no size check: the 9 px nucleus passes on counts


def test_area_limits_from_pairs_or_from_a_real_dataset(synthetic_dir, tmp_path):
    from skimage.measure import regionprops

    from histosmith.data.labels import instance_classes
    from histosmith.data.reader import Dataset
    from histosmith.runtime.qc import AreaLimits

    given = AreaLimits.parse("epithelial=120, neutrophil=40")
    names = Dataset.open(synthetic_dir).meta.class_names
    vector = given.vector(names)
    assert vector[names.index("epithelial")] == 120 and vector[names.index("neutrophil")] == 40
    assert np.isinf(vector).sum() == len(names) - 2
    measured = AreaLimits.parse(str(synthetic_dir))
    ds = Dataset.open(synthetic_dir)
    train = [r.get("split") == "train" for r in ds.patch_info()]
    areas = {k: [] for k in range(1, len(names) + 1)}
    index = 0
    for _, _, labels in ds.iter_shards():
        for lab in labels:
            if train[index]:
                cls = instance_classes(lab[..., 0], lab[..., 1], len(names))
                for region in regionprops(lab[..., 0]):  # hs-eval realism's definition of an area
                    if cls[region.label]:
                        areas[int(cls[region.label])].append(region.area)
            index += 1
    expected = [np.percentile(areas[k + 1], 99) for k in range(len(names))]
    assert np.allclose(measured.vector(names), expected)
    assert "99th percentile" in measured.record()["qc_max_area_source"]
    for text, message in (("epithelial=0", "pixels > 0"), ("epithelial=x", "pixels > 0"),
                          ("epithelial=5,epithelial=6", "twice"), (str(tmp_path), "no meta.json")):
        with pytest.raises(HistoSmithError, match=message):
            AreaLimits.parse(text)
    with pytest.raises(HistoSmithError, match="unknown class 'blob'"):
        AreaLimits.parse("blob=5").vector(names)


def test_hs_sample_with_size_check_records_it_and_resumes(tiny_runs, tmp_path):
    args = ["hs-sample", "--checkpoint", str(tiny_runs["ldm"]), "--n", "4", "--from-dataset", "--steps", "2",
            "--batch", "2", "--shard-size", "2", "--qc-max-area", "epithelial=4,neutrophil=4", "--qc-attempts", "2"]
    res = run_cli(*args, "--out", str(tmp_path / "a"))
    assert res.returncode == 0, res.stderr[-2000:]
    record = json.loads((tmp_path / "a" / "generation.json").read_text())
    assert record["qc_max_area"] == {"epithelial": 4.0, "neutrophil": 4.0} and record["qc_attempts"] == 2
    import csv

    rows = [r for k in (0, 1) for r in csv.DictReader((tmp_path / "a" / f"shard-0000{k}" / "patch_info.csv").open())]
    assert all(int(r["qc_oversized"]) >= 0 for r in rows)
    assert record["qc_result"]["oversized_nuclei"] == sum(int(r["qc_oversized"]) for r in rows)
    assert run_cli(*args, "--out", str(tmp_path / "b")).returncode == 0
    shutil.rmtree(tmp_path / "b" / "shard-00001")
    assert run_cli(*args, "--resume", "--out", str(tmp_path / "b")).returncode == 0
    for f in ("shard-00001/patch_info.csv", "shard-00001/images.npy", "shard-00001/labels.npy"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    other = run_cli(*args[:-4], "--qc-max-area", "epithelial=9", "--resume", "--out", str(tmp_path / "b"))
    assert other.returncode == 2 and other.stderr.startswith("error: ")
    bad = run_cli(*args[:-4], "--qc-max-area", "blob=3", "--out", str(tmp_path / "c"))
    assert bad.returncode == 2 and "unknown class 'blob'" in bad.stderr and not (tmp_path / "c").exists()


def test_qc_max_area_bad_values_are_one_error_line_before_anything_runs(tmp_path):
    cases = [(("hs-sample", "--checkpoint", "nowhere"), ("--qc-max-area", "epithelial=0"), "pixels > 0"),
             (("hs-sample", "--checkpoint", "nowhere"), ("--qc-max-area", "a=2,a=3"), "twice"),
             (("hs-sample", "--checkpoint", "nowhere"), ("--qc-max-area", str(tmp_path / "none")), "no meta.json"),
             (("hs-generate", "--engine", "nowhere.onnx", "--ray"), ("--qc-max-area", "a=3"),
              "--qc-max-area: not available with --ray")]
    for command, option, expected in cases:
        res = run_cli(*command, *option, "--out", str(tmp_path / "o"))
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
        assert expected in lines[0], (expected, lines[0])
        assert not (tmp_path / "o").exists()
