"""``hs-generate --ray``: on a local Ray cluster (num_cpus=2) shared by the module, the same bytes as one
process, --resume, a worker killed mid-shard, and an unknown address."""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

import pytest

from tests.conftest import run_cli

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

# a marker depth other than the default, with area limits: the workers must post-process as the single process does
ARGS = ["--n", "10", "--shard-size", "4", "--batch", "3", "--steps", "3", "--seed", "5", "--from-dataset",
        "--marker-depth", "0.2,epithelial>20,lymphocyte>10,split=0.05"]


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module; CLI runs join it with ``--ray auto``."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def single(tiny_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "gen"
    result = run_cli("hs-generate", "--engine", str(tiny_export / "unet.onnx"), *ARGS, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def assert_same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert filecmp.cmp(a / rel, b / rel, shallow=False), rel


def test_ray_equals_one_process_and_resumes(cluster, single, tiny_export, tmp_path):
    out = tmp_path / "ray"
    cmd = ["hs-generate", "--engine", str(tiny_export / "unet.onnx"), *ARGS, "--out", str(out), "--ray", "auto",
           "--ray-workers", "2"]
    result = run_cli(*cmd)
    assert result.returncode == 0, result.stderr
    assert_same_tree(single, out)
    # a crash that lost shard 1 and the metadata: --resume makes only what is missing
    kept = (out / "shard-00000" / "images.npy").stat().st_mtime_ns
    for name in ("images.npy", "labels.npy", "counts.csv", "patch_info.csv"):
        (out / "shard-00001" / name).unlink()
    (out / "shard-00001").rmdir()
    (out / "meta.json").unlink()
    again = run_cli(*cmd, "--resume")
    assert again.returncode == 0, again.stderr
    assert (out / "shard-00000" / "images.npy").stat().st_mtime_ns == kept
    assert_same_tree(single, out)
    info = run_cli("hs-data", "info", str(out))
    assert info.returncode == 0 and "10" in info.stdout, info.stdout + info.stderr


def test_killed_worker_is_retried(cluster, single, tiny_export, tmp_path):
    """The actor making shard 1 kills its own process after its first batch; Ray restarts it, retries the
    shard, and the dataset is complete, with no shard lost or duplicated."""
    from histosmith.runtime.conditions import ConditionRequest
    from histosmith.runtime.engine import open_engine
    from histosmith.runtime.generate import GenerationPlan, begin_output, run_record
    from histosmith.runtime.postprocess import PostprocessConfig
    from histosmith.runtime.ray_generate import RayOptions, generate_on_ray

    engine = tiny_export / "unet.onnx"
    session = open_engine(engine)
    plan = GenerationPlan(seed=5, steps=3, batch=3, shard_size=4, postprocess=PostprocessConfig(h=0.1))  # as ARGS
    conditions = ConditionRequest.from_options(10, None, None, None, True, False, False).resolve(session.info, 5)
    out = tmp_path / "ray"
    record = run_record(session, plan, conditions)
    meta = begin_output(session, plan, record, out, resume=False)
    marker = tmp_path / "killed"
    result = generate_on_ray(engine, plan, record, meta, conditions, out,
                             RayOptions(address="auto", workers=2, fault_shard=1, fault_marker=str(marker)),
                             show_progress=False)
    assert marker.exists()  # the worker did die mid-shard
    assert result.n_tiles == 10
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("shard-")) == [
        "shard-00000", "shard-00001", "shard-00002"]
    for name in os.listdir(single):
        if name.startswith("shard-"):
            assert_same_tree(single / name, out / name)


def test_unknown_ray_address_is_one_error_line(tiny_export, tmp_path):
    out = tmp_path / "gen"
    result = run_cli("hs-generate", "--engine", str(tiny_export / "unet.onnx"), *ARGS, "--out", str(out),
                     "--ray", "127.0.0.1:1", timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --ray 127.0.0.1:1"), lines
    assert not out.exists()


def test_an_address_that_answers_but_is_no_cluster_fails_after_the_wait(tiny_export, tmp_path):
    """Something listens on the port (not Ray): one error line after --ray-timeout, nothing written."""
    import socket
    import threading
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    port = server.getsockname()[1]
    out = tmp_path / "gen"
    started = time.monotonic()
    try:
        result = run_cli("hs-generate", "--engine", str(tiny_export / "unet.onnx"), *ARGS, "--out", str(out),
                         "--ray", f"127.0.0.1:{port}", "--ray-timeout", "8", timeout=300)
    finally:
        server.close()
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"error: --ray 127.0.0.1:{port}: ") and "Ray cluster" in lines[0], lines
    assert time.monotonic() - started < 120
    assert not out.exists() or not any(out.iterdir())
