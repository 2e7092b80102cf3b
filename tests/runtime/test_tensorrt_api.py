"""The TensorRT backend and engine builder run against recorded TensorRT 10.3 / 10.13 / 11.1 and cuda-python
API surfaces (tests/runtime/fake_gpu_api.py): each version branch, the capture lifecycle and close()."""

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_gpu_api import Recorder, fake_cudart, fake_tensorrt, plan_table

from histosmith.export import tensorrt_build
from histosmith.runtime import cuda_rt
from histosmith.runtime.backends import tensorrt_backend
from histosmith.runtime.manifest import TensorRTBuild, Variant
from histosmith.runtime.planning import BINDINGS, BatchBuckets
from histosmith.runtime.schedule import ScheduleConfig, Scheduler
from histosmith.runtime.specs import DECODER, STEP, decoder_spec, step_spec

REPO = Path(__file__).resolve().parents[2]
LATENT, COND, TILE, CLASSES = (3, 4, 4), 5, 8, 3
BUCKETS = (1, 4)
VERSIONS = ["10.3.0", "10.13.0", "11.1.0"]


@pytest.fixture
def gpu_api(monkeypatch, tmp_path):
    """Build the backend for one TensorRT version against the recorded API; returns a factory."""

    def make(version: str, eta: float = 0.0, end_capture_error: bool = False, fail_enqueue_in_capture: bool = False):
        rec = Recorder()
        cudart = fake_cudart(rec, end_capture_error)
        specs = {STEP: step_spec(LATENT, COND), DECODER: decoder_spec(LATENT, TILE, CLASSES)}
        plans = plan_table(specs, BUCKETS)
        trt = fake_tensorrt(version, rec, plans, cudart, fail_enqueue_in_capture)
        monkeypatch.setattr(cuda_rt, "import_cudart", lambda: cudart)
        monkeypatch.setattr(tensorrt_backend, "import_cudart", lambda: cudart)
        monkeypatch.setattr(tensorrt_backend, "import_tensorrt", lambda: trt)
        (tmp_path / "unet.plan").write_bytes(b"plan:step")
        (tmp_path / "decoder.plan").write_bytes(b"plan:decoder")
        variant = Variant("fp16", "tensorrt", entry="unet.plan", decoder="decoder.plan", fused_step="unet.plan",
                          tensorrt=TensorRTBuild("Fake GPU", "9.0", version, BUCKETS))
        tables = Scheduler(ScheduleConfig()).set_timesteps(3, eta)
        backend = tensorrt_backend.TensorRTBackend(tmp_path / "unet.plan", tmp_path / "decoder.plan", specs[STEP],
                                                   specs[DECODER], variant, tables)
        return backend, rec, trt

    return make


def _inputs(n: int, steps: int | None = None):
    rng = np.random.default_rng(0)
    noise = None if steps is None else rng.standard_normal((steps, n, *LATENT)).astype(np.float32)
    return (rng.standard_normal((n, *LATENT)).astype(np.float32), rng.random((n, COND)).astype(np.float32),
            np.full(n, 2.0, np.float32), noise)


@pytest.mark.parametrize("version", VERSIONS)
def test_backend_lifecycle_per_tensorrt_version(gpu_api, version):
    backend, rec, trt = gpu_api(version)
    out = backend.sample(*_inputs(3))
    assert out.image.shape == (3, 3, TILE, TILE) and out.semantic.shape == (3, CLASSES + 1, TILE, TILE)
    # One context per engine, on the profile of bucket 4 (index 1), allocating for that profile only.
    created = rec.named("create_execution_context")
    assert len(created) == 2
    if version == "10.3.0":  # no IRuntimeConfig before 10.11: the strategy goes to create_execution_context
        assert rec.count("create_runtime_config") == 0
        assert all(kw == {"strategy": "ON_PROFILE_CHANGE"} for _, kw in created)
    else:  # 10.11+ and 11.x: the strategy goes through an IRuntimeConfig
        assert rec.count("create_runtime_config") == 2
        assert [a for a, _ in rec.named("set_execution_context_allocation_strategy")] == [("ON_PROFILE_CHANGE",)] * 2
        assert all(kw["runtime_config"] is not None and kw["strategy"] is None for _, kw in created)
    assert [a[0] for a, _ in rec.named("set_optimization_profile_async")] == [1, 1]
    assert ("latent", (4, *LATENT)) in [a for a, _ in rec.named("set_input_shape")]
    bound = [a[0] for a, _ in rec.named("set_tensor_address")]
    assert sorted(bound) == sorted(list(BINDINGS["step"]) + list(BINDINGS["decoder"]))
    # Warm-up run, then one capture; every batch after that is one graph launch.
    assert rec.count("cudaStreamBeginCapture") == 1 and rec.count("cudaGraphInstantiateWithFlags") == 1
    enqueues = rec.count("execute_async_v3")
    assert enqueues == 2 * (3 + 1)  # (3 steps + decoder) warm-up, then the same inside the capture
    backend.sample(*_inputs(2))
    assert rec.count("cudaGraphLaunch") == 2 and rec.count("execute_async_v3") == enqueues
    backend.close()
    assert rec.count("cudaFree") == rec.count("cudaMalloc")
    assert rec.count("cudaFreeHost") == rec.count("cudaMallocHost") > 0  # pinned host twins, freed too
    assert rec.count("cudaGraphExecDestroy") == 1 and rec.count("cudaGraphDestroy") == 1
    assert rec.count("cudaStreamDestroy") == 1
    backend.close()  # idempotent
    assert rec.count("cudaStreamDestroy") == 1


def test_stochastic_sampling_uploads_the_noise_table_once_per_batch(gpu_api):
    backend, rec, _ = gpu_api("11.1.0", eta=0.5)
    before = rec.count("cudaMemcpyAsync")
    backend.sample(*_inputs(4, steps=3))
    first = rec.count("cudaMemcpyAsync") - before
    before = rec.count("cudaMemcpyAsync")
    backend.sample(*_inputs(4, steps=3))
    # Per batch: latent, condition, guidance and the whole (S, B, ...) noise table in, 3 outputs + latent out,
    # all from / to the pinned host buffers allocated with the bucket (none allocated per batch).
    assert rec.count("cudaMemcpyAsync") - before == 4 + 4
    pinned = rec.count("cudaMallocHost")
    backend.sample(*_inputs(3, steps=3))
    assert rec.count("cudaMallocHost") == pinned
    assert first > 8  # the first batch also uploads the step tables and runs the warm-up


def test_failed_capture_reports_its_cause_not_the_end_capture_error(gpu_api, caplog):
    backend, rec, _ = gpu_api("10.3.0", end_capture_error=True, fail_enqueue_in_capture=True)
    with caplog.at_level(logging.WARNING, logger="histosmith"):
        out = backend.sample(*_inputs(1))
    assert out.image.shape[0] == 1
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "enqueue of the step engine failed" in warning and "EndCapture" not in warning
    assert rec.count("cudaStreamEndCapture") == 1 and rec.count("cudaGraphLaunch") == 0
    launches = rec.count("execute_async_v3")
    backend.sample(*_inputs(1))  # the direct path from now on
    assert rec.count("execute_async_v3") == launches + 4
    backend.close()
    assert rec.count("cudaFree") == rec.count("cudaMalloc") and rec.count("cudaGraphExecDestroy") == 0


@pytest.mark.parametrize(("version", "flags"), [("10.3.0", 1 << 1), ("10.13.0", 1 << 1), ("11.1.0", 0)])
def test_builder_per_tensorrt_version(tmp_path, version, flags):
    rec = Recorder()
    trt = fake_tensorrt(version, rec, {})
    spec = step_spec(LATENT, COND)
    onnx_path = tmp_path / "step.fp16.onnx"
    onnx_path.write_bytes(b"onnx")
    buckets = BatchBuckets((1, 4, 16))
    tensorrt_build.build_engine(trt, onnx_path, tmp_path / "unet.plan", spec, buckets, 1.0, tmp_path / "timing.cache")
    assert [a for a, _ in rec.named("create_network")] == [(flags,)]  # strongly typed: set in 10.x, implied in 11
    assert rec.count("add_optimization_profile") == 3
    shapes = [a for a, _ in rec.named("set_shape")]
    assert ("latent", (5, *LATENT), (16, *LATENT), (16, *LATENT)) in shapes
    assert not any(a[0] == "step_coefs" for a in shapes)  # static inputs get no profile
    assert (tmp_path / "unet.plan").read_bytes() == b"plan:step.fp16.onnx"
    assert (tmp_path / "timing.cache").read_bytes() == b"timing cache"
    assert rec.named("set_memory_pool_limit") == [(("WORKSPACE", 2**30), {})]


def test_fake_surfaces_refuse_the_other_versions_calls():
    """The recorded API is strict, so a branch taken on the wrong version fails these tests."""
    rec = Recorder()
    spec = step_spec(LATENT, COND)
    old = fake_tensorrt("10.3.0", rec, {b"p": (spec, BUCKETS)}).Runtime(None).deserialize_cuda_engine(b"p")
    assert not hasattr(old, "create_runtime_config")
    with pytest.raises(TypeError):
        old.create_execution_context(runtime_config=object())


def test_gpu_check_builds_and_runs_tensorrt_engines(monkeypatch, tmp_path):
    """benchmarks/gpu_check.py's TensorRT path (build from the exported ONNX, run with the backend) against the
    recorded TensorRT 11.1 API: it cannot run here for real, so at least its calls are exercised."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check

    from histosmith.export import tensorrt_build as build

    rec = Recorder()
    cudart = fake_cudart(rec)
    specs = {STEP: step_spec(LATENT, COND), DECODER: decoder_spec(LATENT, TILE, CLASSES)}
    buckets = BatchBuckets((1, 4))
    trt = fake_tensorrt("11.1.0", rec, {b"plan:step.fp16.onnx": (specs[STEP], buckets.sizes),
                                        b"plan:decoder.fp16.onnx": (specs[DECODER], buckets.sizes)}, cudart)
    monkeypatch.setattr(cuda_rt, "import_cudart", lambda: cudart)
    monkeypatch.setattr(tensorrt_backend, "import_cudart", lambda: cudart)
    monkeypatch.setattr(tensorrt_backend, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(build, "import_tensorrt", lambda: trt)
    engines = gpu_check.Engines.__new__(gpu_check.Engines)  # only the exported files are needed here
    engines.dir, engines.specs = tmp_path, specs
    tables = Scheduler(ScheduleConfig()).set_timesteps(3)
    backend = engines.tensorrt_backend(tables, buckets)
    out = backend.sample(*_inputs(3))
    assert out.latent.shape == (3, *LATENT) and rec.count("build_serialized_network") == 2
    assert rec.count("add_optimization_profile") == 2 * len(buckets.sizes)
    backend.close()
