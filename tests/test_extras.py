"""The dependency split: a base install that runs ``hs-generate`` on ONNX Runtime, extras for the rest, and
one ``error:`` line naming the extra when a command needs one that is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from histosmith.extras import EXTRA_MODULES, MODULE_EXTRA

tomllib = pytest.importorskip("tomllib", reason="Python < 3.11 has no tomllib")

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
BASE_ONLY = ("numpy", "click", "onnxruntime", "pillow", "tqdm")

# Runs one CLI with every optional module made unimportable, as on a base install.
BLOCKED_RUN = """
import importlib, sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # import raises ModuleNotFoundError, find_spec returns None
from histosmith.cli.common import run
run(importlib.import_module(sys.argv[2]).cli, sys.argv[3:])
"""


def _requirement_name(req: str) -> str:
    for sep in "<>=[ ;!~":
        req = req.split(sep)[0]
    return req.strip().lower()


def run_blocked(module: str, *args: str) -> subprocess.CompletedProcess:
    blocked = ",".join(sorted(MODULE_EXTRA))
    return subprocess.run([sys.executable, "-c", BLOCKED_RUN, blocked, module, *args], capture_output=True,
                          text=True, timeout=300, check=False, env=dict(os.environ, PYTHONWARNINGS="ignore"))


def test_base_install_is_the_lean_runtime():
    base = {_requirement_name(r) for r in PYPROJECT["dependencies"]}
    assert base == set(BASE_ONLY)
    extras = PYPROJECT["optional-dependencies"]
    assert "torch==2.13.0" in extras["train"]
    # every extra that provides modules is in pyproject, and [all] is every CPU-installable one
    for extra, modules in EXTRA_MODULES.items():
        if modules and extra != "gpu":
            assert extra in extras, extra
    assert extras["all"] == ["histosmith[train,export,serve,ray,openvino]"]
    for extra, reqs in extras.items():
        names = {_requirement_name(r) for r in reqs}
        assert not names & {"torch", "onnx", "matplotlib"} or extra in ("train", "export"), (extra, names)


def test_generate_runs_without_any_extra(tiny_export, tmp_path):
    """hs-generate on ONNX Runtime with torch, onnx, matplotlib, pyarrow, ... all unimportable."""
    out = tmp_path / "gen"
    result = run_blocked("histosmith.cli.generate", "--engine", str(tiny_export / "unet.onnx"), "--n", "3",
                         "--steps", "2", "--batch", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "shard-00000" / "images.npy").exists() and (out / "preview.png").exists()
    assert (out / "control.json").exists() and not (out / "control.png").exists()
    assert "control.png skipped" in result.stderr


@pytest.mark.parametrize(("module", "args"), [
    ("histosmith.cli.data", ["info", "{data}"]),
    ("histosmith.cli.evaluate", ["conic", "--true", "{data}", "--pred", "{data}"]),
])
def test_base_commands_run_without_any_extra(module, args, synthetic_dir, tmp_path):
    """The other commands of the base install: no torch, scipy, scikit-image, OpenCV or matplotlib needed."""
    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    result = run_blocked(module, *[a.format(data=data) for a in args])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("module", "args", "extra"), [
    ("histosmith.cli.train", ["vqvae", "--data", "{data}", "--out", "{tmp}/run"], "train"),
    ("histosmith.cli.export", ["--checkpoint", "{data}", "--out", "{tmp}/exp"], "train,export"),
    ("histosmith.cli.data", ["prepare", "--source", "example", "--out", "{tmp}/ex"], "train"),
])
def test_missing_extra_is_one_error_line(module, args, extra, synthetic_dir, tmp_path):
    args = [a.format(data=synthetic_dir, tmp=tmp_path) for a in args]
    result = run_blocked(module, *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert f"pip install 'histosmith[{extra}]'" in lines[0]
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.slow
def test_fresh_base_venv_generates(tiny_export, tmp_path):
    """A new virtual environment with the base install only (no extras) runs hs-generate on an export
    made by the full install, and produces the same tiles."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(REPO)],
                         capture_output=True, text=True, timeout=900, check=False)
    assert pip.returncode == 0, pip.stderr[-2000:]
    installed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                               capture_output=True, text=True, check=True).stdout.lower()
    for heavy in ("torch", "onnx=", "matplotlib", "pyarrow", "ray", "nvidia-pytriton"):
        assert heavy not in installed, heavy
    args = ["--engine", str(tiny_export / "unet.onnx"), "--n", "4", "--steps", "3", "--batch", "2", "--seed", "7"]
    lean = subprocess.run([str(venv / "bin" / "hs-generate"), *args, "--out", str(tmp_path / "lean")],
                          capture_output=True, text=True, timeout=600, check=False)
    assert lean.returncode == 0, lean.stderr
    full = subprocess.run([str(Path(sys.executable).parent / "hs-generate"), *args, "--out", str(tmp_path / "full")],
                          capture_output=True, text=True, timeout=600, check=False)
    assert full.returncode == 0, full.stderr
    for name in ("images.npy", "labels.npy", "counts.csv"):
        assert (tmp_path / "lean" / "shard-00000" / name).read_bytes() == \
            (tmp_path / "full" / "shard-00000" / name).read_bytes(), name
