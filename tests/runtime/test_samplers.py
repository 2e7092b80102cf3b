"""The multistep solvers on every CPU backend: the same tables, the same trajectory, batch independence,
byte-identical resume and the refusal to resume with another sampler."""

import numpy as np
import pytest

from histosmith.errors import HistoSmithError
from histosmith.generator import load_generator
from histosmith.runtime import conditions as cond
from histosmith.runtime.backends.onnx_backend import OnnxBackend
from histosmith.runtime.backends.torch_backend import TorchBackend
from histosmith.runtime.engine import EngineOptions, open_engine
from histosmith.runtime.generate import GenerationPlan, generate
from histosmith.runtime.manifest import Manifest
from histosmith.runtime.planning import StepTables, capture_plan, run_plan_on_host
from histosmith.runtime.schedule import ScheduleConfig, Scheduler, fused_update
from histosmith.runtime.seeds import tile_noise
from histosmith.runtime.specs import DECODER, STEP, UNET
from tests.conftest import run_cli
from tests.runtime.test_generate import _FailingBackend, _one_error_line, _same_dataset, _Wrapped

SOLVERS = [("dpmpp-2m", True), ("unipc", True), ("unipc", False)]


def _inputs(info, sampler, corrector, n=6, steps=7):
    tables = Scheduler(info.schedule).set_timesteps(steps, sampler=sampler, corrector=corrector)
    table = cond.from_dataset(info, n, 3)
    latents, _ = tile_noise(3, np.arange(n), info.latent_shape, steps, False)
    return tables, latents, info.spec.vectors(table.counts, table.tissues), np.full(n, 2.5, np.float32)


def _numpy_loop(guided, tables, latents, vectors, guidance):
    """The scheduler's own step() around the torch U-Net: the reference trajectory."""
    import torch

    sched = Scheduler(ScheduleConfig())
    sched.tables = tables
    x = latents.astype(np.float64)
    for i, t in enumerate(tables.timesteps):
        with torch.no_grad():
            eps = guided(torch.from_numpy(x.astype(np.float32)), torch.full((len(x),), float(t)),
                         torch.from_numpy(vectors), torch.from_numpy(guidance)).numpy()
        x = sched.step(eps.astype(np.float64), i, x)
    return x


@pytest.mark.parametrize(("sampler", "corrector"), SOLVERS)
def test_every_cpu_backend_runs_the_solver_tables(tiny_runs, tiny_export, sampler, corrector):
    """torch loop, ONNX Runtime host loop and the fused step graph on ORT's device loop (CPU OrtValues) follow
    the scheduler's own trajectory on the same noise."""
    gen = load_generator(tiny_runs["ldm"])
    tables, latents, vectors, guidance = _inputs(gen.info, sampler, corrector)
    assert tables.history >= 1
    want = _numpy_loop(gen.guided, tables, latents, vectors, guidance)
    scale = np.abs(want).max()
    ref = TorchBackend(gen.guided, gen.decoder, tables).sample(latents, vectors, guidance, None)
    assert np.abs(ref.latent - want).max() / scale < 1e-4
    manifest = Manifest.load(tiny_export)
    args = (tiny_export / "unet.onnx", tiny_export / "decoder.onnx", manifest.graph(UNET), manifest.graph(DECODER),
            tables, manifest.batch.bounds)
    host = OnnxBackend(*args).sample(latents, vectors, guidance, None)
    assert np.abs(host.latent - want).max() / scale < 1e-4
    device = OnnxBackend(*args, step=tiny_export / "step.onnx", step_spec=manifest.graph(STEP),
                         device_loop=True).sample(latents, vectors, guidance, None)
    assert np.abs(device.latent - want).max() / scale < 1e-4
    ddim = Scheduler(gen.info.schedule).set_timesteps(7)
    other = TorchBackend(gen.guided, gen.decoder, ddim).sample(latents, vectors, guidance, None)
    assert np.abs(other.latent - want).max() / scale > 1e-3  # the solver changed the trajectory


@pytest.mark.parametrize(("sampler", "corrector"), SOLVERS)
def test_capture_plan_carries_the_history(sampler, corrector):
    """The GPU backends' plan (copies + fused step) with the step graph's numpy arithmetic equals the
    scheduler's loop: the x̂_0 history is copied back like the latent."""
    sched = Scheduler(ScheduleConfig())
    tables = sched.set_timesteps(6, sampler=sampler, corrector=corrector)
    rng = np.random.default_rng(2)
    b, shape = 2, (2, 4, 4)
    x0 = rng.standard_normal((b, *shape)).astype(np.float32)

    def eps(x, t):
        return np.tanh(0.3 * x) + (t / 1000.0)[:, None, None, None]

    x = x0.copy()
    for i, t in enumerate(tables.timesteps):
        x = sched.step(eps(x, np.full(b, float(t))), i, x)
    st = StepTables.build(tables, b)
    buffers = {"latent_in": x0.copy(), "latent_out": np.zeros_like(x0), "timesteps": st.timesteps,
               "coefs": st.coefs, "timestep_cur": np.zeros(b, np.float32), "coefs_cur": np.zeros(7, np.float32),
               "noise_cur": np.zeros_like(x0), "condition": np.zeros((b, 3), np.float32),
               "guidance": np.ones(b, np.float32), "history_in": np.zeros((b, 2, *shape), np.float32),
               "history_out": np.zeros((b, 2, *shape), np.float32), "image": np.zeros_like(x0),
               "distance": np.zeros_like(x0), "semantic": np.zeros_like(x0)}

    def step_fn(latent, timestep, condition, guidance, step_coefs, step_noise, x0_history):
        return fused_update(step_coefs, latent, eps(latent, timestep), step_noise, x0_history)

    run_plan_on_host(capture_plan(6, False, history=True), step_fn, lambda z: (z, z, z), buffers)
    assert np.allclose(buffers["image"], x, atol=1e-5)


def _run(engine, out, sampler, batch=3, resume=False, wrap=None):
    session = open_engine(engine, EngineOptions(batch=batch))
    table = cond.from_dataset(session.info, 8, 1)
    plan = GenerationPlan(seed=1, steps=5, guidance=2.0, batch=batch, shard_size=4, sampler=sampler)
    return generate(_Wrapped(session, wrap) if wrap else session, plan, table, out, resume=resume,
                    show_progress=False)


@pytest.mark.parametrize("sampler", ["dpmpp-2m", "unipc"])
@pytest.mark.parametrize("engine", ["unet.onnx", pytest.param("unet.pt2", marks=pytest.mark.full)])
def test_solver_runs_are_batch_independent_and_resume_byte_identical(tiny_export, tmp_path, sampler, engine):
    path = tiny_export / engine
    _run(path, tmp_path / "b3", sampler, batch=3)
    _run(path, tmp_path / "b4", sampler, batch=4)
    a = np.concatenate([np.load(p / "images.npy") for p in sorted((tmp_path / "b3").glob("shard-*"))])
    b = np.concatenate([np.load(p / "images.npy") for p in sorted((tmp_path / "b4").glob("shard-*"))])
    assert np.abs(a.astype(int) - b).max() <= 1  # batch size moves a pixel by rounding at most
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):  # killed in the second shard
        _run(path, part, sampler, wrap=lambda b: _FailingBackend(b, 3, KeyboardInterrupt()))
    assert sorted(p.name for p in part.glob("shard-*")) == ["shard-00000"]
    _run(path, part, sampler, batch=3, resume=True)
    _same_dataset(tmp_path / "b3", part)
    with pytest.raises(HistoSmithError, match=r"different settings \(sampler\)"):
        _run(path, part, "ddim", batch=3, resume=True)
    other = "unipc" if sampler == "dpmpp-2m" else "dpmpp-2m"
    with pytest.raises(HistoSmithError, match=r"different settings \(.*sampler"):
        _run(path, part, other, batch=3, resume=True)


def test_cli_sampler_recorded_refused_with_eta_and_on_resume(tiny_export, tmp_path):
    out = tmp_path / "g"
    base = ("hs-generate", "--engine", str(tiny_export / "unet.onnx"), "--out", str(out), "--n", "4", "--steps", "4",
            "--batch", "2")
    ok = run_cli(*base, "--sampler", "unipc", "--no-corrector")
    assert ok.returncode == 0, ok.stderr[-2000:]
    record = __import__("json").loads((out / "generation.json").read_text())
    assert record["sampler"] == "unipc" and record["corrector"] is False and record["steps"] == 4
    again = run_cli(*base, "--sampler", "dpmpp-2m", "--resume")
    assert "sampler" in _one_error_line(again)
    bad = run_cli("hs-generate", "--engine", str(tiny_export / "unet.onnx"), "--out", str(tmp_path / "e"),
                  "--n", "2", "--sampler", "dpmpp-2m", "--eta", "0.5")
    assert "ODE solver" in _one_error_line(bad) and not (tmp_path / "e").exists()
