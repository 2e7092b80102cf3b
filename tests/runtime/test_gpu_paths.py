"""GPU paths checked on the CPU: ONNX Runtime's device loop, the onnxruntime/onnxruntime-gpu clash,
batch buckets for --batch, close() of every run, and benchmarks/gpu_check.sh --dry-run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from histosmith.cli import generate as generate_cli
from histosmith.cli.common import run
from histosmith.export.tensorrt_build import EngineOptions as BuildOptions
from histosmith.runtime import engine as engine_mod
from histosmith.runtime.backends import onnx_backend
from histosmith.runtime.backends.onnx_backend import OnnxBackend
from histosmith.runtime.backends.torch_backend import TorchBackend
from histosmith.runtime.engine import EngineOptions, EngineSession, engine_buckets, open_engine
from histosmith.runtime.manifest import Manifest
from histosmith.runtime.planning import BatchBuckets
from histosmith.runtime.schedule import Scheduler
from histosmith.runtime.seeds import tile_noise
from histosmith.runtime.specs import DECODER, STEP, UNET

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ort_device_loop_matches_the_host_loop(tiny_export, eta):
    """The CUDA path's code (fused step graph on bound OrtValues, one binding per step, latents used in
    turn) driven with CPU OrtValues, against the host loop on the same noise."""
    manifest = Manifest.load(tiny_export)
    info = manifest.info
    tables = Scheduler(info.schedule).set_timesteps(4, eta)
    args = (tiny_export / "unet.onnx", tiny_export / "decoder.onnx", manifest.graph(UNET), manifest.graph(DECODER),
            tables, manifest.batch.bounds)
    host = OnnxBackend(*args)
    device = OnnxBackend(*args, step=tiny_export / "step.onnx", step_spec=manifest.graph(STEP), device_loop=True)
    assert device.loop is not None and device.name == "onnxruntime-cpu-device"
    for n in (3, 3, 2):  # the second batch reuses the bound values of the first
        latents, noise = tile_noise(n, np.arange(n), info.latent_shape, 4, tables.stochastic)
        vectors = info.spec.vectors(info.training_counts[:n], info.training_tissues[:n])
        g = np.full(n, 2.0, np.float32)
        want, got = host.sample(latents, vectors, g, noise), device.sample(latents, vectors, g, noise)
        assert got.latent.shape == (n, *info.latent_shape)
        assert np.abs(got.latent - want.latent).max() <= 1e-4 * np.abs(want.latent).max()
        assert np.abs(got.semantic - want.semantic).max() <= 1e-4
    device.close()


def test_both_onnxruntime_packages_are_refused(tiny_export, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(onnx_backend, "installed_onnxruntime", lambda: ["onnxruntime", "onnxruntime-gpu"])
    with pytest.raises(SystemExit) as exc:
        run(generate_cli.cli, ["--engine", str(tiny_export / "unet.onnx"), "--out", str(tmp_path / "o"),
                               "--n", "2", "--steps", "2", "--device", "cuda"])
    assert exc.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: onnxruntime: both onnxruntime and onnxruntime-gpu")
    assert not (tmp_path / "o").exists()


def test_installed_onnxruntime_reads_the_environment():
    assert onnx_backend.installed_onnxruntime() == ["onnxruntime"]  # this environment: the CPU package only


def test_buckets_for_the_default_batch(tiny_export):
    ladder = BatchBuckets.ladder(16)
    assert ladder.sizes == (1, 2, 4, 8, 16) and ladder.padding(16) == 0
    assert all(ladder.bucket_for(n) < 2 * n for n in range(1, 17))  # never beyond the next bucket
    assert BatchBuckets.ladder(20).sizes == (1, 2, 4, 8, 16, 20) and BatchBuckets.ladder(1).sizes == (1,)
    assert 16 in BuildOptions().buckets.sizes  # TensorRT's default profiles include hs-generate's --batch 16
    manifest = Manifest.load(tiny_export)
    torch_variant = manifest.variant_for(tiny_export / "unet.pt2")
    assert engine_buckets(manifest, torch_variant, 16).largest == 16  # no 4096 default
    assert engine_buckets(manifest, torch_variant, 500).largest == 64  # capped at the export's max batch
    tables = Scheduler(manifest.info.schedule).set_timesteps(2)
    # Static buffers follow the batches actually run: their own size without buckets, the bucket with them.
    guided, decoder = (lambda x, t, c, g: torch.zeros_like(x)), (lambda z: (z, z, z))
    lat, cond, g = np.zeros((5, 3, 4, 4), np.float32), np.zeros((5, 5), np.float32), np.ones(5, np.float32)
    bare = TorchBackend(guided, decoder, tables)
    bare.sample(lat, cond, g, None)
    assert bare.buckets is None and set(bare._static) == {5}
    padded = TorchBackend(guided, decoder, tables, buckets=BatchBuckets.ladder(16), pad=True)
    assert padded.sample(lat, cond, g, None).latent.shape[0] == 5 and set(padded._static) == {8}
    session = open_engine(tiny_export / "unet.pt2", EngineOptions(device="cpu", batch=8))
    assert session.backend(tables).buckets.sizes == (1, 2, 4, 8)
    session.close()


class _Spy:
    def __init__(self, inner, fail: bool):
        self.inner, self.fail, self.closed = inner, fail, False
        self.name = inner.name

    def batch_sizes(self):
        return self.inner.batch_sizes()

    def sample(self, *args):
        if self.fail:
            raise RuntimeError("device lost")
        return self.inner.sample(*args)

    def close(self):
        self.closed = True
        self.inner.close()


@pytest.mark.parametrize("fail", [False, True])
def test_hs_generate_passes_batch_and_always_closes_the_backend(tiny_export, tmp_path, monkeypatch, fail):
    seen = {}
    load = engine_mod._load_backend

    def spy_load(session: EngineSession, tables):
        seen["batch"] = session.options.batch
        seen["backend"] = _Spy(load(session, tables), fail)
        return seen["backend"]

    monkeypatch.setattr(engine_mod, "_load_backend", spy_load)
    args = ["--engine", str(tiny_export / "unet.onnx"), "--out", str(tmp_path / "o"), "--n", "4", "--steps", "2",
            "--batch", "4"]
    with pytest.raises((SystemExit, RuntimeError)):
        run(generate_cli.cli, args)
    assert seen["batch"] == 4 and seen["backend"].closed


@pytest.mark.full  # about a minute: every engine exported and run on tiny random models
def test_gpu_check_dry_run_runs_the_whole_script(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                       text=True, env=env, timeout=900, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["meta"]["dry_run"] is True
    engines = {p["engine"] for p in data["parity"]}
    assert {"eager-fp32", "eager-bf16", "bf16-cuda-graph", "onnxruntime-cpu-fp16-device"} <= engines
    for p in data["parity"]:
        assert p["class_agreement"] > 0.9 and p["latent_rel_err"] < 0.05, p
    assert {p["sampler"] for p in data["parity"]} == {"ddim", "dpmpp-2m", "unipc"}  # every solver's tables
    assert {(t["batch"], t["engine"]) for t in data["throughput"]} >= {(1, "torch eager-fp32"), (2, "torch eager-bf16")}
    assert all(t["tiles_per_s"] > 0 for t in data["throughput"])
    # the guidance-distilled U-Net (one pass per call): parity for every solver, and its speed
    assert {p["sampler"] for p in data["parity"] if p["preset"] == "tiny-distilled"} == {"ddim", "dpmpp-2m", "unipc"}
    assert any(t["preset"] == "tiny-distilled" for t in data["throughput"])
    md = (tmp_path / "gpu_check.md").read_text()
    rows = len(data["throughput"]) + len(data["parity"])
    assert md.count("| tiny |") + md.count("| tiny-distilled |") == rows and "DRY RUN" in md
