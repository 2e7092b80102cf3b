"""Round-two bad input at the CLI, one test per class: fixed-batch exports, two writers, debris of a failed
start, leaks and colliding outputs. Each: one ``error:`` line, exit 2, nothing lost or left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from histosmith.data.lock import exclusive
from tests.conftest import run_cli


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and lines and lines[-1].startswith("error: "), result.stderr[-2000:]
    assert not any("Traceback" in line for line in lines), result.stderr[-2000:]
    return lines[-1]


@pytest.fixture(scope="module")
def fixed_export(tiny_runs, tmp_path_factory) -> Path:
    """The tiny generator exported with a fixed batch of 4 (fp32 ONNX only)."""
    from histosmith.export.exporter import ExportOptions, export_generator

    out = tmp_path_factory.mktemp("fixed") / "exp"
    export_generator(tiny_runs["ldm"], out, ExportOptions(batch=4, dynamic_batch=False, fp16=False, torch_programs=()))
    return out


# ------------------------------------------------------------------ exports of a fixed batch


def test_generate_fits_its_batch_to_a_fixed_export(fixed_export, tmp_path):
    engine = str(fixed_export / "unet.onnx")
    ok = run_cli("hs-generate", "--engine", engine, "--out", str(tmp_path / "ok"), "--n", "5", "--steps", "2")
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "ok" / "generation.json").read_text())["batch"] == 4
    line = error_line(run_cli("hs-generate", "--engine", engine, "--out", str(tmp_path / "no"), "--n", "5",
                              "--steps", "2", "--batch", "16"))
    assert "--batch 16: this export's graphs take batches of 1..4" in line
    assert not (tmp_path / "no").exists()


def test_tools_around_a_fixed_export_fit_or_name_the_option(fixed_export, synthetic_dir, tmp_path):
    manifest = (fixed_export / "manifest.json").read_bytes()
    line = error_line(run_cli("hs-calibrate", "--export", str(fixed_export), "--data", str(synthetic_dir)))
    assert "fixed batch (4)" in line and "hs-export --dynamic-batch" in line
    assert (fixed_export / "manifest.json").read_bytes() == manifest
    repo = tmp_path / "repo"
    ok = run_cli("hs-export", "--out", str(fixed_export), "--triton-repo", str(repo))
    assert ok.returncode == 0, ok.stderr
    assert "max_batch_size: 4" in (repo / "histosmith" / "config.pbtxt").read_text()
    line = error_line(run_cli("hs-export", "--out", str(fixed_export), "--triton-repo", str(tmp_path / "r2"),
                              "--triton-max-batch", "16"))
    assert line.startswith("error: --triton-max-batch 16:") and not (tmp_path / "r2").exists()
    line = error_line(run_cli("hs-bench", "--export", str(fixed_export), "--batches", "4,16", "--out",
                              str(tmp_path / "bench")))
    assert line.startswith("error: --batches 16: this export's graphs take batches of 4..4")


# ------------------------------------------------------------------ two writers


def test_second_writer_is_refused_before_it_writes(tiny_export, tiny_runs, tmp_path):
    out = tmp_path / "gen"
    with exclusive(out, "dataset"):
        line = error_line(run_cli("hs-generate", "--engine", str(tiny_export / "unet.onnx"), "--out", str(out),
                                  "--n", "2", "--steps", "2"))
        assert "another writer is using this dataset" in line and not out.exists()
    run = tmp_path / "run"
    with exclusive(run, "training run"):
        line = error_line(run_cli("hs-train", "ldm", "--data", str(tiny_runs["data"]), "--vqvae",
                                  str(tiny_runs["vq"]), "--config", "tiny", "--out", str(run), "--max-steps", "1"))
        assert "another writer is using this training run" in line and not run.exists()
    export = tmp_path / "exp"
    with exclusive(export, "export"):
        line = error_line(run_cli("hs-export", "--checkpoint", str(tiny_runs["ldm"]), "--out", str(export)))
        assert "another writer is using this export" in line and not export.exists()
    # a lock file left by a killed writer holds nothing: the next writer takes it over
    (tmp_path / ".gen.lock").write_text("pid 999999: hs-generate")
    ok = run_cli("hs-generate", "--engine", str(tiny_export / "unet.onnx"), "--out", str(out), "--n", "2",
                 "--steps", "2")
    assert ok.returncode == 0, ok.stderr
    assert not (tmp_path / ".gen.lock").exists()


# ------------------------------------------------------------------ debris of a failed start


def test_a_run_that_fails_before_its_first_tile_leaves_nothing(tiny_export, tmp_path, monkeypatch):
    import histosmith.runtime.generate as gen
    from histosmith.runtime.conditions import ConditionRequest
    from histosmith.runtime.engine import open_engine
    from histosmith.runtime.generate import GenerationPlan, generate

    session = open_engine(tiny_export / "unet.onnx")
    plan = GenerationPlan(steps=2)
    conditions = ConditionRequest.from_options(3, None, None, None, True, False, False).resolve(session.info, 0)
    out = tmp_path / "gen"

    def broken(*args, **kwargs):
        def sample_batch(index):
            raise RuntimeError("compiler missing")

        return sample_batch

    with monkeypatch.context() as m:
        m.setattr(gen, "tile_sampler", broken)
        with pytest.raises(RuntimeError):
            generate(session, plan, conditions, out, show_progress=False)
    assert not out.exists() or not any(out.iterdir())
    result = generate(session, plan, conditions, out, show_progress=False)  # the same call again, no --resume
    assert result.n_tiles == 3


def test_ort_debris_never_blocks_an_export(tiny_export, tmp_path):
    import shutil

    from histosmith.calibration.calibrate import check_calibratable
    from histosmith.export.exporter import check_export_out
    from histosmith.runtime.manifest import Manifest

    copy = tmp_path / "exp"
    shutil.copytree(tiny_export, copy)
    (copy / "unet-inferred.onnx").write_bytes(b"partial")
    check_export_out(copy, force=True)  # not "holds files that are not part of the export"
    check_calibratable(copy, Manifest.load(copy))
    assert not (copy / "unet-inferred.onnx").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories: run as a normal user")
def test_read_only_export_is_refused_before_any_work(tiny_export, synthetic_dir, tmp_path):
    import shutil

    copy = tmp_path / "exp"
    shutil.copytree(tiny_export, copy)
    copy.chmod(0o555)
    try:
        line = error_line(run_cli("hs-calibrate", "--export", str(copy), "--data", str(synthetic_dir)))
        assert "read-only" in line
    finally:
        copy.chmod(0o755)


# ------------------------------------------------------------------ leaks and collisions


def test_downstream_refuses_real_tiles_passed_as_synthetic(synthetic_dir, tmp_path):
    line = error_line(run_cli("hs-eval", "downstream", "--real", str(synthetic_dir), "--synthetic",
                              str(synthetic_dir), "--out", str(tmp_path / "ds")))
    assert "tiles of the real 'val' split" in line
    assert not (tmp_path / "ds").exists() or not any((tmp_path / "ds").iterdir())


def test_plan_report_never_overwrites_the_conditions(synthetic_dir, tmp_path):
    out = tmp_path / "plan.json"
    result = run_cli("hs-data", "plan", "--data", str(synthetic_dir), "--equalize", "--n-synthetic", "40",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr
    header = out.read_text().splitlines()[0]
    assert "tissue" in header and not header.startswith("{")  # still the conditions CSV
    assert json.loads((tmp_path / "plan.report.json").read_text())["seed"] == 0
    assert f"--conditions {out}" in result.stdout
    rows = np.loadtxt(out, delimiter=",", skiprows=1, usecols=0, dtype=str)
    assert len(rows) == 40


@pytest.mark.slow
def test_export_cleans_a_killed_exports_debris_and_refuses_read_only(tiny_runs, tmp_path):
    from histosmith.export.exporter import check_export_out

    stale = tmp_path / ".exp.abc123.tmp"  # what a killed hs-export leaves beside its --out
    stale.mkdir()
    (stale / "unet.onnx").write_bytes(b"partial")
    ok = run_cli("hs-export", "--checkpoint", str(tiny_runs["ldm"]), "--out", str(tmp_path / "exp"), "--no-fp16")
    assert ok.returncode == 0, ok.stderr
    assert not stale.exists()
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(Exception, match="read-only"):
            check_export_out(ro / "exp", force=False)
