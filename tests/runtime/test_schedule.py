"""DDIM golden values: the numpy scheduler and the torch sampling loop must agree step for step."""

import numpy as np
import pytest
import torch

from histosmith.runtime.backends.torch_backend import TorchBackend
from histosmith.runtime.schedule import DDIMScheduler, ScheduleConfig, alphas_cumprod

# Golden values (computed once from the formulas in runtime/schedule.py and checked by hand against
# ᾱ at t = 999, 499): any change to the schedule or its spacing changes them.
GOLDEN_TIMESTEPS_4 = [999, 749, 499, 249]


def test_trailing_timesteps_and_alphas():
    s = DDIMScheduler(ScheduleConfig())
    tables = s.set_timesteps(4)
    assert tables.timesteps.tolist() == GOLDEN_TIMESTEPS_4
    a = alphas_cumprod(ScheduleConfig())
    assert a[0] == pytest.approx(1 - 0.0015)
    # eps: A = sqrt(ᾱ_s / ᾱ_t), B = sqrt(1 - ᾱ_s) - sqrt(ᾱ_s) sqrt(1 - ᾱ_t) / sqrt(ᾱ_t)
    t, s_ = 999, 749
    assert tables.sample_coef[0] == pytest.approx(np.sqrt(a[s_] / a[t]), rel=1e-6)
    assert tables.output_coef[0] == pytest.approx(np.sqrt(1 - a[s_]) - np.sqrt(a[s_] * (1 - a[t]) / a[t]), rel=1e-5)
    assert tables.sample_coef[-1] == pytest.approx(1 / np.sqrt(a[249]), rel=1e-6)  # last step lands on x_0


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_perfect_predictor_recovers_x0(prediction):
    cfg = ScheduleConfig(prediction=prediction)
    sched = DDIMScheduler(cfg)
    tables = sched.set_timesteps(20)
    a = sched.alphas_cumprod
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal(16), rng.standard_normal(16)
    x = np.sqrt(a[999]) * x0 + np.sqrt(1 - a[999]) * eps
    for i, t in enumerate(tables.timesteps):
        out = eps if prediction == "eps" else np.sqrt(a[t]) * eps - np.sqrt(1 - a[t]) * x0
        x = sched.step(out, i, x)
    assert np.abs(x - x0).max() < 1e-4


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_numpy_and_torch_loops_agree_with_a_dummy_predictor(eta):
    """Same noise, same dummy ε̂(x, t, c, g) = 0.1 x + t/1000 c̄ g: identical trajectories."""
    sched = DDIMScheduler(ScheduleConfig())
    tables = sched.set_timesteps(12, eta)
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    cond = rng.random((2, 5)).astype(np.float32)
    g = np.array([1.0, 3.0], np.float32)
    noise = rng.standard_normal((12, 2, 3, 4, 4)).astype(np.float32) if eta else None

    def dummy_np(x, t, c, gg):
        return 0.1 * x + (t / 1000.0) * c.mean(1)[:, None, None, None] * gg[:, None, None, None]

    x = x0.copy()
    for i, t in enumerate(tables.timesteps):
        x = sched.step(dummy_np(x, float(t), cond, g), i, x, None if noise is None else noise[i])

    def dummy_torch(x, t, c, gg):
        return 0.1 * x + (t / 1000.0)[:, None, None, None] * c.mean(1)[:, None, None, None] * gg[:, None, None, None]

    backend = TorchBackend(dummy_torch, lambda z: (z, z, z), tables)
    out = backend.sample(x0, cond, g, noise)
    assert np.allclose(out.image, x, rtol=1e-5, atol=1e-5)
    assert np.abs(x - x0).max() > 0.1  # the loop did something


def test_step_requires_noise_when_stochastic():
    sched = DDIMScheduler(ScheduleConfig())
    sched.set_timesteps(5, eta=1.0)
    with pytest.raises(ValueError, match="noise"):
        sched.step(np.zeros(2), 0, np.zeros(2))


def test_torch_reference_matches_in_float64():
    # The table arithmetic itself: torch and numpy multiply the same float32 constants.
    sched = DDIMScheduler(ScheduleConfig())
    tables = sched.set_timesteps(3)
    x = torch.ones(1, dtype=torch.float64)
    assert float(tables.sample_coef[0] * x + tables.output_coef[0] * x) == pytest.approx(
        float(sched.step(np.ones(1), 0, np.ones(1))[0]))
