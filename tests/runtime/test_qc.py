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


def test_qc_run_is_batch_independent_and_resumes_byte_identical(tiny_runs, tmp_path):
    from histosmith.generator import CheckpointSession, load_generator
    from histosmith.runtime.conditions import from_dataset
    from histosmith.runtime.generate import GenerationPlan, generate

    session = CheckpointSession(load_generator(tiny_runs["ldm"]))
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
