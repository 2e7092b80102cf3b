"""hs-eval gate: the rule on known numbers, and the command end to end on the tiny export."""

import json

import numpy as np
import pytest

from histosmith.evaluation.gate import FLOORS, RunMetrics, judge
from tests.conftest import run_cli

NAMES = ["a", "b"]


def _metrics(r=0.9, mae=1.0, area=1.0, above=0.01, touch=0.1, tissue=0.9, pq=0.7, kid=0.0):
    return RunMetrics([r, r], [mae, mae], [area, area], [above, above], [touch, None], tissue, pq, kid)


def test_rule_uses_twice_the_seed_spread_or_the_floor():
    a, b = _metrics(), _metrics(r=0.85, kid=0.004)  # the seed spread of r is 0.05
    rows = {r["metric"]: r for r in judge(a, b, _metrics(r=0.81, kid=0.007), NAMES)}
    assert rows["count_r[a]"]["tolerance"] == pytest.approx(0.10) and rows["count_r[a]"]["passed"]
    assert rows["kid"]["tolerance"] == pytest.approx(FLOORS["kid"]) and rows["kid"]["passed"]  # 2 x 0.004 < floor
    assert rows["count_mae[a]"]["tolerance"] == FLOORS["count_mae"]  # no spread: the floor
    assert rows["touching[b]"]["passed"] and rows["touching[b]"]["difference"] is None  # no nuclei anywhere
    bad = {r["metric"]: r for r in judge(a, b, _metrics(r=0.75, mae=1.3, kid=0.05), NAMES)}
    assert not bad["count_r[a]"]["passed"] and not bad["kid"]["passed"]
    assert not bad["count_mae[a]"]["passed"]  # 0.3 > floor 0.25
    assert [r["metric"] for r in judge(a, b, a, NAMES) if not r["passed"]] == []


def test_a_class_that_vanishes_from_the_candidate_fails():
    a = _metrics()
    gone = _metrics()
    gone.area_ratio = [1.0, None]
    rows = {r["metric"]: r for r in judge(a, a, gone, NAMES)}
    assert not rows["area_ratio[b]"]["passed"]


@pytest.fixture(scope="module")
def untrained_export(tiny_runs, tmp_path_factory):
    """A generator trained for one step on the same autoencoder: a broken candidate (noise for latents)."""
    from histosmith.export.exporter import ExportOptions, export_generator
    from histosmith.training.ldm import train_ldm
    from histosmith.training.trainer import RunOptions

    root = tmp_path_factory.mktemp("untrained")
    train_ldm(tiny_runs["data"], tiny_runs["vq"], root / "ldm", "tiny",
              RunOptions(seed=3, device="cpu", max_steps=1, show_progress=False))
    export_generator(root / "ldm", root / "exp", ExportOptions(max_batch=64, fp16=False, torch_programs=()))
    return root / "exp"


def test_gate_command_passes_the_reference_and_fails_a_broken_candidate(tiny_export, tiny_runs, tiny_segmenter,
                                                                         untrained_export, tmp_path):
    base = ("hs-eval", "gate", "--export", str(tiny_export), "--real", str(tiny_runs["data"]), "--segmenter",
            str(tiny_segmenter), "--n", "48", "--allow-small", "--batch", "16")
    same = run_cli(*base, "--out", str(tmp_path / "g"), "--steps", "50", "--candidate-seed-offset", "0")
    assert same.returncode == 0, same.stderr[-3000:]
    label = "unet.onnx-ddim-50-g4"
    report = json.loads((tmp_path / "g" / label / "gate.json").read_text())
    cand = report["candidates"][0]
    assert cand["passed"] and all(r["difference"] in (0, None) for r in cand["metrics"] if r["metric"] != "kid")
    assert cand["same_noise"]["same_instance_count"] == 1.0
    assert (tmp_path / "g" / label / "gate.png").stat().st_size > 0
    assert "passes" in (tmp_path / "g" / label / "gate.md").read_text()
    # A second call reuses both reference runs (same settings) and only generates the candidate.
    broken = run_cli(*base, "--out", str(tmp_path / "g"), "--engine", str(untrained_export / "unet.onnx"))
    assert broken.returncode == 2, broken.stderr[-3000:]
    errors = [ln for ln in broken.stderr.splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith("error: gate: ") and "fails" in errors[0], broken.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "g" / "runs").iterdir())
    assert len(runs) == 3, runs
    assert all((tmp_path / "g" / "runs" / r / "gate_metrics.json").is_file() for r in runs)  # measured once
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    assert "gate" not in manifest["verification"]  # --allow-small verdicts are not recorded
    broken_label = next(p for p in (tmp_path / "g").iterdir() if p.name not in ("runs", label))
    assert np.isfinite(json.loads((broken_label / "gate.json").read_text())["candidates"][0]["metrics"][-1]
                       ["candidate"])


def test_verdicts_go_to_the_export_that_holds_each_engine(tiny_export, tmp_path):
    """A distilled student gated against its teacher's export: its verdict is kept in its own manifest."""
    import shutil

    from histosmith.evaluation.gate import Configuration, GateResult
    from histosmith.evaluation.gate_report import record_verdicts
    from histosmith.runtime.manifest import Manifest
    from histosmith.runtime.schedule import SamplerSettings

    teacher, student = tmp_path / "teacher", tmp_path / "student"
    shutil.copytree(tiny_export, teacher)
    shutil.copytree(tiny_export, student)
    reference = Configuration(teacher / "unet.onnx", SamplerSettings("ddim", 50), 3.0)
    own = Configuration(teacher / "unet.onnx", SamplerSettings("unipc", 5), 3.0)
    other = Configuration(student / "unet.onnx", SamplerSettings("unipc", 4), 3.0)
    rows = {own.label: [{"metric": "kid", "passed": True}], other.label: [{"metric": "kid", "passed": False}]}
    result = GateResult(reference, [own, other], rows, {}, {}, 500)
    record_verdicts(result, "hs-eval gate ...")
    assert Manifest.load(teacher).verification["gate"][own.label]["passed"] is True
    assert other.label not in Manifest.load(teacher).verification["gate"]
    verdict = Manifest.load(student).verification["gate"][other.label]
    assert verdict["passed"] is False and verdict["failed"] == ["kid"]
