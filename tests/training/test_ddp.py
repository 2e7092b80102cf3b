"""torchrun DDP: 2 CPU processes (gloo) against 1 process at the same global batch.

Tolerances: stage 2 (U-Net MSE) follows one process up to reduction order — relative 1e-4 on every logged
loss. Stage 1 has batch-level terms (SSIM windows are per tile, but the Tversky ratio is taken over each
rank's half of the batch), so its total loss may differ by up to 1% relative.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TORCHRUN = Path(sys.executable).parent / "torchrun"
HS_TRAIN = Path(sys.executable).parent / "hs-train"


def _losses(run: Path) -> list[float]:
    with open(run / "log.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def _train(args: list[str], processes: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [str(HS_TRAIN), *args] if processes == 1 else \
        [str(TORCHRUN), "--standalone", f"--nproc-per-node={processes}", str(HS_TRAIN), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.skipif(shutil.which("torchrun", path=str(TORCHRUN.parent)) is None, reason="torchrun not installed")
def test_two_processes_match_one(synthetic_dir, tmp_path):
    common = ["--data", str(synthetic_dir), "--config", "tiny", "--max-steps", "10", "--batch-size", "8"]
    _train(["vqvae", *common, "--out", str(tmp_path / "vq1")], 1)
    _train(["vqvae", *common, "--out", str(tmp_path / "vq2")], 2)
    one, two = _losses(tmp_path / "vq1"), _losses(tmp_path / "vq2")
    assert len(one) == len(two) == 2
    assert two == pytest.approx(one, rel=1e-2)
    ldm = ["ldm", "--vqvae", str(tmp_path / "vq1"), *common]
    _train([*ldm, "--out", str(tmp_path / "ldm1")], 1)
    _train([*ldm, "--out", str(tmp_path / "ldm2")], 2)
    assert _losses(tmp_path / "ldm2") == pytest.approx(_losses(tmp_path / "ldm1"), rel=1e-4)
    # rank 0 alone wrote the run directory
    names = [sorted(p.name for p in (tmp_path / run).iterdir()) for run in ("ldm1", "ldm2")]
    assert names[0] == names[1]
    # stopped after 5 steps and resumed under torchrun: the losses of the uninterrupted 2-process run
    resumed = tmp_path / "ldm2r"
    base = ["ldm", "--vqvae", str(tmp_path / "vq1"), "--data", str(synthetic_dir), "--batch-size", "8",
            "--out", str(resumed)]
    _train([*base, "--config", "tiny", "--max-steps", "5"], 2)
    _train([*base, "--resume", "--max-steps", "10"], 2)
    assert _losses(resumed) == pytest.approx(_losses(tmp_path / "ldm2"), rel=1e-5)
    # guidance distillation of that U-Net: two processes follow one (fp32: its losses are ~1e-6, where bf16
    # rounding alone moves them by a percent)
    distill = ["distill", "--teacher", str(tmp_path / "ldm1"), "--data", str(synthetic_dir), "--max-steps", "6",
               "--batch-size", "8", "--precision", "fp32"]
    _train([*distill, "--out", str(tmp_path / "d1")], 1)
    _train([*distill, "--out", str(tmp_path / "d2")], 2)
    assert _losses(tmp_path / "d2") == pytest.approx(_losses(tmp_path / "d1"), rel=1e-4)


def test_global_batch_must_split_evenly(synthetic_dir, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([str(TORCHRUN), "--standalone", "--nproc-per-node=2", str(HS_TRAIN), "vqvae", "--data",
                             str(synthetic_dir), "--config", "tiny", "--max-steps", "2", "--batch-size", "7",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=600, env=env,
                            check=False)
    assert result.returncode != 0
    assert "must be a multiple of the 2 torchrun processes" in result.stderr
