"""The planning code both GPU backends share, checked on the CPU against the plain numpy sampler."""

import numpy as np
import pytest
import torch

from histosmith.errors import HistoSmithError
from histosmith.runtime.backends.torch_backend import TorchBackend
from histosmith.runtime.planning import (
    BINDINGS,
    BatchBuckets,
    Copy,
    Run,
    StepTables,
    capture_plan,
    pad_rows,
    run_plan_on_host,
)
from histosmith.runtime.schedule import ScheduleConfig, Scheduler
from histosmith.runtime.specs import LATENT, NEXT_LATENT


def test_buckets_choose_the_smallest_fit_and_cover_every_size():
    b = BatchBuckets.parse("32,1,8")
    assert b.sizes == (1, 8, 32)
    assert [b.bucket_for(n) for n in (1, 2, 8, 9, 32)] == [1, 8, 8, 32, 32]
    assert b.profiles() == [(1, 1, 1), (2, 8, 8), (9, 32, 32)]
    with pytest.raises(HistoSmithError, match="exceeds the largest bucket"):
        b.bucket_for(33)
    with pytest.raises(HistoSmithError, match="expected sizes"):
        BatchBuckets.parse("1,x")


def test_step_tables_and_plan():
    tables = Scheduler(ScheduleConfig()).set_timesteps(5, eta=0.3)
    st = StepTables.build(tables, 4)
    assert st.timesteps.shape == (5, 4) and (st.timesteps[:, 0] == tables.timesteps).all()
    assert np.allclose(st.coefs[:, 0], tables.sample_coef) and np.allclose(st.coefs[:, 2], tables.noise_coef)
    ops = capture_plan(5, stochastic=True)
    runs = [op.graph for op in ops if isinstance(op, Run)]
    assert runs == ["step"] * 5 + ["decoder"]
    copies = [op for op in ops if isinstance(op, Copy)]
    first = [(c.src, c.index) for c in copies[:4]]
    assert first == [("timesteps", 0), ("coefs", 0), ("noise", 0), ("latent_out", None)]
    assert not any(c.src == "noise" for c in capture_plan(5, stochastic=False) if isinstance(c, Copy))
    # Every tensor of both engines is bound once; the step reads latent_in and writes latent_out.
    assert BINDINGS["step"][LATENT] == "latent_in" != BINDINGS["step"][NEXT_LATENT]
    assert BINDINGS["decoder"][LATENT] == "latent_in"


@pytest.mark.parametrize("eta", [0.0, 0.8])
def test_capture_plan_reproduces_the_ddim_loop(eta):
    """Running the plan's operations with a fused numpy step equals Scheduler.step in a loop."""
    sched = Scheduler(ScheduleConfig())
    tables = sched.set_timesteps(7, eta)
    rng = np.random.default_rng(0)
    b, shape = 3, (2, 4, 4)
    x0 = rng.standard_normal((b, *shape)).astype(np.float32)
    noise = rng.standard_normal((7, b, *shape)).astype(np.float32)
    cond = rng.random((b, 5)).astype(np.float32)

    def eps(x, t):
        return np.tanh(0.3 * x) + (t / 1000.0)[:, None, None, None] * cond.mean(1)[:, None, None, None]

    x = x0.copy()
    for i, t in enumerate(tables.timesteps):
        x = sched.step(eps(x, np.full(b, float(t))), i, x, noise[i] if eta else None)

    st = StepTables.build(tables, b)
    buffers = {"latent_in": x0.copy(), "latent_out": np.zeros_like(x0), "timesteps": st.timesteps,
               "coefs": st.coefs, "noise": noise, "timestep_cur": np.zeros(b, np.float32),
               "coefs_cur": np.zeros(7, np.float32), "noise_cur": np.zeros_like(x0), "condition": cond,
               "guidance": np.ones(b, np.float32), "image": np.zeros_like(x0), "distance": np.zeros_like(x0),
               "semantic": np.zeros_like(x0)}

    def step_fn(latent, timestep, condition, guidance, step_coefs, step_noise):
        return step_coefs[0] * latent + step_coefs[1] * eps(latent, timestep) + step_coefs[2] * step_noise

    run_plan_on_host(capture_plan(7, tables.stochastic), step_fn, lambda z: (z, z, z), buffers)
    assert np.allclose(buffers["image"], x, atol=1e-5)
    assert np.allclose(buffers["latent_in"], x, atol=1e-5)


def test_pad_rows():
    a = np.ones((2, 3), np.float32)
    p = pad_rows(a, 4, fill=7.0)
    assert p.shape == (4, 3) and (p[2:] == 7).all() and (p[:2] == 1).all()
    with pytest.raises(HistoSmithError):
        pad_rows(a, 1)


def test_static_buffer_torch_loop_equals_reference_on_cpu(tiny_runs):
    """The static-buffer loop the CUDA graph captures, run eagerly on the CPU with bucket padding."""
    from histosmith.generator import load_generator

    gen = load_generator(tiny_runs["ldm"])
    tables = Scheduler(gen.info.schedule).set_timesteps(6, eta=0.5)
    rng = np.random.default_rng(2)
    n = 3
    lat = rng.standard_normal((n, *gen.info.latent_shape)).astype(np.float32)
    vec = gen.info.spec.vectors(gen.info.training_counts[:n], gen.info.training_tissues[:n])
    g = np.full(n, 2.0, np.float32)
    noise = rng.standard_normal((6, n, *gen.info.latent_shape)).astype(np.float32)
    ref = TorchBackend(gen.guided, gen.decoder, tables).sample(lat, vec, g, noise)
    static = TorchBackend(gen.guided, gen.decoder, tables, buckets=BatchBuckets((4,)), pad=True)
    got = static.sample(lat, vec, g, noise)
    assert np.allclose(got.latent, ref.latent, atol=1e-5)
    assert np.allclose(got.semantic, ref.semantic, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_cuda_graph_backend_matches_fp32_reference(tiny_runs):  # pragma: no cover - GPU only
    from histosmith.generator import load_generator

    gen = load_generator(tiny_runs["ldm"])
    tables = Scheduler(gen.info.schedule).set_timesteps(10)
    rng = np.random.default_rng(0)
    lat = rng.standard_normal((8, *gen.info.latent_shape)).astype(np.float32)
    vec = gen.info.spec.vectors(gen.info.training_counts[:8], gen.info.training_tissues[:8])
    g = np.full(8, 2.0, np.float32)
    ref = TorchBackend(gen.guided, gen.decoder, tables).sample(lat, vec, g, None)
    gpu = TorchBackend(gen.guided.cuda().half(), gen.decoder.cuda().half(), tables, "cuda", torch.float16,
                       cuda_graph=True, buckets=BatchBuckets((8,)))
    first, second = gpu.sample(lat, vec, g, None), gpu.sample(lat, vec, g, None)
    assert np.array_equal(first.latent, second.latent)  # replay is deterministic
    assert np.abs(first.latent - ref.latent).max() / np.abs(ref.latent).max() < 0.05
    assert (first.semantic.argmax(1) == ref.semantic.argmax(1)).mean() > 0.97


def test_compile_option_wraps_live_modules_and_leaves_torchscript(caplog):
    from histosmith.runtime.backends.torch_backend import compiled

    module = torch.nn.Linear(2, 2)
    assert compiled(module, "cpu", False) is not module  # an OptimizedModule, compiled on first call
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    assert compiled(scripted, "cpu", False) is scripted
    assert "TorchScript" in caplog.text


@pytest.mark.slow
def test_compiled_sampler_matches_eager(tiny_runs):  # about a minute of inductor compilation on 2 cores
    from histosmith.generator import load_generator

    gen = load_generator(tiny_runs["ldm"])
    tables = Scheduler(gen.info.schedule).set_timesteps(4)
    rng = np.random.default_rng(0)
    lat = rng.standard_normal((2, *gen.info.latent_shape)).astype(np.float32)
    vec = gen.info.spec.vectors(gen.info.training_counts[:2], gen.info.training_tissues[:2])
    g = np.full(2, 2.0, np.float32)
    ref = TorchBackend(gen.guided, gen.decoder, tables).sample(lat, vec, g, None)
    out = TorchBackend(gen.guided, gen.decoder, tables, compile_modules=True).sample(lat, vec, g, None)
    assert np.abs(out.latent - ref.latent).max() / np.abs(ref.latent).max() < 1e-3
