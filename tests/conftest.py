"""Shared fixtures: tiny datasets written on the fly, and the optional real fixtures in ../shared."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"

# Modules of the full tier (`make test-all`): servers, clusters, training runs and long end-to-end checks.
FULL_TIER = {
    "tests/runtime/test_ray.py", "tests/runtime/test_serve.py", "tests/training/test_ddp.py",
    "tests/segmentation/test_downstream.py", "tests/calibration/test_calibrate.py", "tests/benchmark/test_bench.py",
    "tests/evaluation/test_gate.py", "tests/test_extras.py", "tests/evaluation/test_control.py",
    "tests/evaluation/test_guidance.py", "tests/segmentation/test_consistency.py", "tests/training/test_distill.py",
    "tests/data/test_provenance.py",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).resolve().relative_to(REPO).as_posix() in FULL_TIER:
            item.add_marker(pytest.mark.full)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 synthetic 32 px tiles in shards of 20 (read-only: do not modify in tests)."""
    from histosmith.data.prepare import prepare

    out = tmp_path_factory.mktemp("synthetic") / "data"
    prepare("synthetic", None, out, tile_size=32, n_tiles=48, seed=1, shard_size=20, show_progress=False)
    return out


@pytest.fixture(scope="session")
def real_conic_npz() -> Path:
    path = SHARED_FIXTURES / "cellseg_patches" / "conic_format_3patches.npz"
    if not path.exists():
        pytest.skip(f"real fixtures not present ({path}); they live beside the checkout, not in it")
    return path


def write_conic_dir(path: Path, images: np.ndarray, labels: np.ndarray, class_names: list[str],
                    patch_names: list[str]) -> Path:
    """A CoNIC-layout directory (images.npy, labels.npy, counts.csv, patch_info.csv)."""
    from histosmith.data.labels import count_nuclei

    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "images.npy", images)
    np.save(path / "labels.npy", labels)
    counts = [count_nuclei(lab, len(class_names)) for lab in labels]
    (path / "counts.csv").write_text(
        ",".join(class_names) + "\n" + "".join(",".join(map(str, c)) + "\n" for c in counts)
    )
    (path / "patch_info.csv").write_text("patch_info\n" + "".join(p + "\n" for p in patch_names))
    return path


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run an hs-* console script in a subprocess (args[0] is the command name)."""
    exe = Path(sys.executable).parent / args[0]
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([str(exe), *args[1:]], capture_output=True, text=True, env=full_env, timeout=timeout,
                          check=False)


@pytest.fixture(scope="session")
def tiny_runs(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny VQ autoencoder and generator trained briefly on the synthetic set (read-only)."""
    from histosmith.training.ldm import train_ldm
    from histosmith.training.trainer import RunOptions
    from histosmith.training.vqvae import train_vqvae

    root = tmp_path_factory.mktemp("runs")
    opts = RunOptions(seed=0, device="cpu", max_steps=30, show_progress=False)
    train_vqvae(synthetic_dir, root / "vq", "tiny", opts)
    train_ldm(synthetic_dir, root / "vq", root / "ldm", "tiny", opts)
    return {"data": synthetic_dir, "vq": root / "vq", "ldm": root / "ldm"}


@pytest.fixture(scope="session")
def tiny_export(tiny_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny generator exported (dynamic batch, fp32 + fp16 ONNX, torch.export programs in fp32, fp16, bf16)."""
    from histosmith.export.exporter import ExportOptions, export_generator

    out = tmp_path_factory.mktemp("export") / "exp"
    export_generator(tiny_runs["ldm"], out, ExportOptions(max_batch=64))
    return out


@pytest.fixture(scope="session")
def tiny_segmenter(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny segmenter trained briefly on the synthetic set: the quality gate's judge in tests (read-only)."""
    from histosmith.segmentation.train import train_segmenter
    from histosmith.training.trainer import RunOptions

    out = tmp_path_factory.mktemp("gateseg") / "seg"
    train_segmenter(synthetic_dir, out, "tiny", RunOptions(seed=0, device="cpu", max_steps=40, show_progress=False))
    return out
