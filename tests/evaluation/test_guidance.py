"""hs-eval guidance: the control sweep at several guidance scales, compared per class."""

import json

import pytest

from histosmith.errors import HistoSmithError
from histosmith.evaluation.guidance import parse_scales, recommend, summarise
from tests.conftest import run_cli


def test_parse_scales():
    assert parse_scales("5,1.5, 3") == [1.5, 3.0, 5.0]
    for bad in ("3", "3,3", "a,b", "-1,2", "inf,2"):
        with pytest.raises(HistoSmithError, match="--scales"):
            parse_scales(bad)


def _report(rs, maes):
    return {"classes": [{"class": f"c{i}", "in_range": {"r": r, "slope": 1.0, "mae": m}}
                        for i, (r, m) in enumerate(zip(rs, maes, strict=True))]}


def test_recommend_takes_the_best_worst_class_then_the_lower_error():
    rows = [summarise(1.0, _report([0.99, 0.50], [1, 1])),  # one class barely follows
            summarise(3.0, _report([0.90, 0.85], [2, 2])),
            summarise(5.0, _report([0.95, 0.85], [1, 3]))]  # same worst r as 3.0, same mean MAE: first wins
    assert [r["worst_r"] for r in rows] == [0.50, 0.85, 0.85]
    assert recommend(rows) == 3.0
    rows[2] = summarise(5.0, _report([0.95, 0.85], [1, 1]))  # now the lower mean MAE breaks the tie
    assert recommend(rows) == 5.0
    rows.append(summarise(7.0, _report([0.99, None], [0, 0])))  # a class without r never wins
    assert rows[-1]["worst_r"] is None and recommend(rows) == 5.0


def test_guidance_command_on_tiny_generator(tiny_runs, tmp_path):
    out = tmp_path / "g"
    args = ["hs-eval", "guidance", "--checkpoint", str(tiny_runs["ldm"]), "--device", "cpu", "--out", str(out),
            "--scales", "0.5,3", "--levels", "2", "--tiles-per-level", "1", "--steps", "2", "--batch", "8",
            "--marker-depth", "0.3,neutrophil=0.2"]  # per class: recorded as the text that reproduces it
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    result = json.loads((out / "guidance.json").read_text())
    assert [row["guidance"] for row in result["scales"]] == [0.5, 3.0]
    assert result["recommended"] == recommend(result["scales"])
    for scale in ("g0.5", "g3"):  # each scale is a full control sweep with its own report
        sweep = json.loads((out / scale / "control.json").read_text())
        assert sweep["sampling"]["guidance"] == float(scale[1:])
        assert sweep["sampling"]["marker_depth"] == "0.3,neutrophil=0.2"
    assert result["marker_depth"] == "0.3,neutrophil=0.2"
    assert "watershed marker depth 0.3,neutrophil=0.2" in (out / "guidance.md").read_text()
    assert (out / "guidance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "recommended" in (out / "guidance.md").read_text()
    again = run_cli(*args)  # finished sweeps are resumed, not resampled: the same numbers
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "guidance.json").read_text())["scales"] == result["scales"]


def test_guidance_bad_input(tmp_path):
    res = run_cli("hs-eval", "guidance", "--checkpoint", "nowhere", "--scales", "2", "--out", str(tmp_path / "g"))
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: --scales")
    res = run_cli("hs-eval", "guidance", "--checkpoint", "nowhere", "--out", str(tmp_path / "g"))
    assert res.returncode == 2 and "checkpoint not found" in res.stderr


def test_marker_depth_for_a_class_the_model_lacks_is_one_error_line(tiny_runs, tmp_path):
    out = tmp_path / "g"
    res = run_cli("hs-eval", "guidance", "--checkpoint", str(tiny_runs["ldm"]), "--device", "cpu", "--out", str(out),
                  "--marker-depth", "0.3,nope=0.1")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "unknown class 'nope'" in lines[0], res.stderr
    assert not out.exists()
