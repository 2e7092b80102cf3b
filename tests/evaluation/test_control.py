"""hs-eval control: sweep design, statistics on known numbers, the command on a tiny export, bad input."""

import json

import numpy as np
import pytest

from histosmith.data.conditioning import ConditionSpec
from histosmith.errors import HistoSmithError
from histosmith.evaluation.control import (
    SweepDesign,
    agreement,
    analyse,
    build_sweep,
    class_levels,
    level_means,
    saturation_point,
    tissue_maxima,
    tissue_medians,
)
from histosmith.evaluation.control_markdown import format_markdown
from histosmith.runtime.info import GeneratorInfo
from histosmith.runtime.schedule import ScheduleConfig
from tests.conftest import run_cli


def _info(counts, tissues, count_max=(8, 4)):
    spec = ConditionSpec(("a", "b"), ("t0", "t1"), (4.0, 2.0), tuple(count_max))
    return GeneratorInfo(spec, ScheduleConfig(), (4, 8, 8), 32, np.array(counts, np.int64),
                         np.array(tissues, np.int64))


def test_levels_cover_the_training_range_and_flag_extrapolation():
    inside, beyond = class_levels(8, SweepDesign(levels=5))
    assert inside == [0, 2, 4, 6, 8]
    assert beyond == [10, 12]
    inside, beyond = class_levels(0, SweepDesign(levels=5))
    assert inside == [0] and beyond == []


def test_sweep_holds_other_classes_at_the_tissue_median():
    info = _info([[1, 3], [3, 1], [5, 1], [8, 4]], [0, 0, 0, 1])
    assert tissue_medians(info).tolist() == [[3, 1], [8, 4]]
    assert tissue_maxima(info).tolist() == [[5, 3], [8, 4]]
    design = SweepDesign(levels=3, tiles_per_level=2)
    sweep = build_sweep(info, design)
    # the trained range is per tissue: t0 sweeps a at 0,2,5 | 6,8 and b at 0,2,3 | 4;
    # t1 sweeps a at 0,4,8 | 10,12 and b at 0,2,4 | 5,6 (| extrapolation); two tiles each
    assert len(sweep) == (5 + 4 + 5 + 5) * 2
    counts, swept, tissues = sweep.conditions.counts, sweep.swept_class, sweep.conditions.tissues
    t0_a = (tissues == 0) & (swept == 0)
    assert set(counts[t0_a, 1]) == {1}  # b held at tissue 0's median
    assert sorted(set(counts[t0_a, 0])) == [0, 2, 5, 6, 8]
    assert sorted(set(counts[(tissues == 0) & (swept == 1), 1])) == [0, 2, 3, 4]
    assert sorted(set(counts[(tissues == 1) & (swept == 0), 0])) == [0, 4, 8, 10, 12]
    assert (sweep.extrapolated == (sweep.level > sweep.maxima[tissues, swept])).all()
    assert sorted(set(sweep.level[t0_a & sweep.extrapolated])) == [6, 8]
    assert (counts[np.arange(len(sweep)), swept] == sweep.level).all()


def test_class_absent_from_a_tissue_is_not_swept_there():
    info = _info([[1, 0], [3, 0], [5, 0], [8, 4]], [0, 0, 0, 1])
    sweep = build_sweep(info, SweepDesign(levels=3, tiles_per_level=1))
    assert not ((sweep.conditions.tissues == 0) & (sweep.swept_class == 1)).any()
    report = analyse(info, sweep, sweep.conditions.counts.copy())
    b = report["classes"][1]
    assert b["per_tissue"]["t0"] == {"training_max": 0, "swept": False, "note": "not in this tissue's trained range"}
    assert b["per_tissue"]["t1"]["swept"] and b["training_max"] == {"t0": 0, "t1": 4}
    text = format_markdown(report)
    assert "| b | t0 | none | not in this tissue's trained range |" in text
    assert "| t0 | 0..5 (3) | none (0) |" in text and "| t1 | 0..8 (8) | 0..4 (4) |" in text
    assert "trained range is per tissue" in text
    with pytest.raises(HistoSmithError, match="nothing to sweep"):
        build_sweep(_info([[0, 0]], [0]), SweepDesign())


def test_agreement_on_known_numbers():
    q = np.array([0, 2, 4, 6, 8])
    perfect = agreement(q, q)
    assert perfect["r"] == pytest.approx(1.0) and perfect["slope"] == pytest.approx(1.0)
    assert perfect["mae"] == 0 and perfect["bias"] == 0 and perfect["loa_low"] == perfect["loa_high"] == 0
    half = agreement(q, q / 2 + 1)
    assert half["slope"] == pytest.approx(0.5) and half["intercept"] == pytest.approx(1.0)
    assert half["bias"] == pytest.approx(np.mean(q / 2 + 1 - q))
    sd = np.std(q / 2 + 1 - q, ddof=1)
    assert half["loa_high"] - half["loa_low"] == pytest.approx(2 * 1.96 * sd)
    flat = agreement(np.full(4, 3), np.array([1, 2, 3, 4]))
    assert flat["r"] is None and flat["slope"] is None


def test_saturation_point():
    def curve(levels, means):
        return level_means(np.repeat(levels, 2), np.repeat(means, 2), np.repeat(levels > levels[-1], 2))

    assert saturation_point(curve(np.array([0, 2, 4, 6]), np.array([0, 2, 4, 6]))) is None
    assert saturation_point(curve(np.array([0, 2, 4, 6, 8]), np.array([0, 2, 4, 4.5, 4.6]))) == 4
    assert saturation_point(curve(np.array([0, 2, 4]), np.array([3, 3, 3]))) == 0
    # a dip and recovery is still following
    assert saturation_point(curve(np.array([0, 2, 4, 6]), np.array([0, 2, 2, 6]))) is None


def test_analyse_identity_and_override():
    info = _info([[1, 3], [3, 1], [5, 1], [8, 4]], [0, 0, 0, 1])
    sweep = build_sweep(info, SweepDesign(levels=3, tiles_per_level=1))
    measured = sweep.conditions.counts.copy()
    report = analyse(info, sweep, measured)
    for e in report["classes"]:
        assert e["in_range"]["r"] == pytest.approx(1.0)
        assert e["in_range"]["mae"] == 0
        assert e["saturation_point"] is None
        assert e["extrapolation"]["extrapolated"] is True
    slopes = np.array(report["override"]["slopes"], dtype=float)
    assert slopes == pytest.approx(np.eye(2))
    text = format_markdown(report)
    # a in range: t0 levels 0, 2, 5 and t1 levels 0, 4, 8, one tile each
    assert "EXTRAPOLATION" in text and "| a | in range | 6 | 1.000 | 1.00 | 0.00 | 0.00 | 0.00 |" in text
    assert "| a | t0 | 0..5 | in range | 3 | 1.000 | 1.00 | 0.00 | 0.00 | follows to the end |" in text
    # override: asking for a produces b instead
    swapped = measured.copy()
    mine = sweep.swept_class == 0
    swapped[mine, 0], swapped[mine, 1] = sweep.conditions.counts[mine, 1], sweep.conditions.counts[mine, 0]
    slopes = np.array(analyse(info, sweep, swapped)["override"]["slopes"], dtype=float)
    assert slopes[0, 1] == pytest.approx(1.0) and slopes[0, 0] == pytest.approx(0.0)


def test_design_rejects_bad_values():
    with pytest.raises(HistoSmithError):
        SweepDesign(levels=1)
    with pytest.raises(HistoSmithError):
        SweepDesign(tiles_per_level=0)


def test_control_command_on_tiny_generator(tiny_runs, tmp_path):
    out = tmp_path / "ctl"
    res = run_cli("hs-eval", "control", "--checkpoint", str(tiny_runs["ldm"]), "--device", "cpu", "--out", str(out),
                  "--levels", "2", "--tiles-per-level", "1", "--steps", "2", "--batch", "8")
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "control.json").read_text())
    assert report["n_tiles"] == sum(len(t.get("levels", [])) for e in report["classes"]
                                    for t in e["per_tissue"].values())
    assert report["n_extrapolated_tiles"] > 0
    assert any(p["extrapolated"] for e in report["classes"] for p in e["levels"])
    assert "EXTRAPOLATION" in (out / "control.md").read_text()
    for name in ("control_scatter.png", "control_saturation.png", "control_bland_altman.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # measured counts are the dataset's own (count_nuclei with the training margin)
    from histosmith.data.reader import Dataset

    tiles = Dataset.open(out / "tiles")
    assert len(tiles) == report["n_tiles"]
    assert "Tissue collapse" in (out / "control.md").read_text() and "tissue_collapse" not in report
    assert report["sampling"]["marker_depth"] == 0.4
    assert "watershed marker depth 0.4" in (out / "control.md").read_text()

    # The same sweep with QC and a tissue classifier: before QC is the sweep above, tile for tile.
    qc_out = tmp_path / "ctl-qc"
    args = ["hs-eval", "control", "--checkpoint", str(tiny_runs["ldm"]), "--device", "cpu", "--out", str(qc_out),
            "--levels", "2", "--tiles-per-level", "1", "--steps", "2", "--batch", "8", "--qc", "0.2",
            "--qc-attempts", "2", "--data", str(tiny_runs["data"])]
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    with_qc = json.loads((qc_out / "control.json").read_text())
    assert with_qc["classes"] == report["classes"] and with_qc["override"] == report["override"]
    rows = Dataset.open(qc_out / "tiles").patch_info()
    passed = [r["qc_pass"] == "1" for r in rows]
    qc = with_qc["qc"]
    assert qc["overall"]["tiles"] == len(rows) and qc["overall"]["passed"] == sum(passed)
    assert qc["overall"]["mean_attempts"] == pytest.approx(np.mean([int(r["qc_attempts"]) for r in rows]))
    before = np.array([[int(r[f"qc_first_{c}"]) for c in report["class_names"]] for r in rows])
    assert np.array_equal(before, Dataset.open(out / "tiles").counts())  # attempt 0 = the no-QC sweep
    for e, q in zip(report["classes"], qc["classes"], strict=True):
        assert q["in_range"]["before"] == e["in_range"]
    text = (qc_out / "control.md").read_text()
    assert "## QC regeneration" in text and "r before | r after" in text
    collapse = with_qc["tissue_collapse"]
    assert collapse["classifier"]["val"]["n"] == 4 and not collapse["classifier"]["cached"]
    assert collapse["generated"]["n"] == with_qc["n_tiles"]
    assert sum(map(sum, collapse["generated"]["confusion"])) == with_qc["n_tiles"]
    assert "accuracy (in range)" in text and "real `val` tiles" in text
    matched = collapse["count_matched_real"]
    assert matched["k"] > 0 and 0 <= matched["all"]["accuracy"] <= 1 and "count-matched real (in range)" in text
    # Per request: the groups cover every tile once and average back to the overall accuracies.
    groups = collapse["by_request"]
    assert sum(g["n"] for g in groups) == with_qc["n_tiles"]
    assert sum(g["n"] * g["accuracy"] for g in groups) / with_qc["n_tiles"] == pytest.approx(
        collapse["generated"]["accuracy"])
    assert sum(g["n"] * g["count_matched_real"] for g in groups) / with_qc["n_tiles"] == pytest.approx(
        matched["all"]["accuracy"])
    assert len({(g["tissue"], g["swept_class"], g["level"]) for g in groups}) == len(groups)
    assert {g["tissue"] for g in groups} <= set(with_qc["tissue_names"]) and all(g["n"] >= 1 for g in groups)
    assert "Where the misread tiles lie" in text
    # A rerun into the same --out resumes the (finished) sweep and reuses the cached classifier.
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    again = json.loads((qc_out / "control.json").read_text())
    assert again["tissue_collapse"]["classifier"]["cached"]
    assert again["tissue_collapse"]["generated"] == collapse["generated"] and again["qc"] == qc
    # ... but not with other settings
    res = run_cli(*args[:-4], "--qc-attempts", "3", "--data", str(tiny_runs["data"]))
    assert res.returncode == 2 and "other settings (qc_attempts)" in res.stderr
    res = run_cli(*args, "--marker-depth", "0.3")  # another watershed: other labels, so no resume either
    assert res.returncode == 2 and "other settings (postprocess)" in res.stderr


@pytest.mark.parametrize("args, needle", [
    ([], "exactly one of --engine and --checkpoint"),
    (["--checkpoint", "nowhere", "--levels", "1"], "--levels 1"),
    (["--checkpoint", "nowhere"], "checkpoint not found"),
    (["--checkpoint", "nowhere", "--qc", "0.2", "--qc-attempts", "0"], "--qc-attempts 0"),
    (["--checkpoint", "nowhere", "--qc", "-1"], "--qc -1.0"),
    (["--checkpoint", "nowhere", "--data", "nowhere"], "--data nowhere: not a prepared dataset"),
    (["--checkpoint", "nowhere", "--marker-depth", "0"], "--marker-depth"),
])
def test_control_bad_input(tmp_path, args, needle):
    res = run_cli("hs-eval", "control", "--out", str(tmp_path / "o"), *args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.stderr
    assert not (tmp_path / "o").exists()


def test_control_refuses_data_without_val_tiles(tiny_runs, tmp_path):
    from histosmith.data.prepare import prepare

    few = tmp_path / "few"
    prepare("synthetic", None, few, tile_size=32, n_tiles=4, seed=1, show_progress=False)  # no 10th tile: no val
    res = run_cli("hs-eval", "control", "--checkpoint", str(tiny_runs["ldm"]), "--device", "cpu", "--out",
                  str(tmp_path / "o"), "--data", str(few))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and "no 'val' tiles" in lines[0]
    assert not (tmp_path / "o").exists()
