"""DDIM golden values: the numpy scheduler and the torch sampling loop must agree step for step."""

import math

import numpy as np
import pytest
import torch

from histosmith.runtime.backends.torch_backend import TorchBackend
from histosmith.runtime.schedule import DDIMScheduler, ScheduleConfig, alphas_cumprod

# Trailing spacing written out by hand: t_i = round(T - i T / n) - 1.
GOLDEN_TIMESTEPS = {4: [999, 749, 499, 249], 3: [999, 666, 332], 1: [999]}


def _alpha_bar_by_definition(cfg: ScheduleConfig) -> list[float]:
    """ᾱ_t = Π_{i<=t} (1 - β_i), β on a square-root-linear ramp: a plain-Python loop, independent of numpy's."""
    n, lo, hi = cfg.num_train_timesteps, math.sqrt(cfg.beta_start), math.sqrt(cfg.beta_end)
    out, prod = [], 1.0
    for i in range(n):
        beta = (lo + (hi - lo) * i / (n - 1)) ** 2
        prod *= 1.0 - beta
        out.append(prod)
    return out


def _ddim_step_by_the_paper(x, out, t, s, a, eta, z, prediction):
    """DDIM eq. 12 (Song et al. 2021) written step by step: x̂_0 and ε̂ first, then x_s."""
    a_t, a_s = a[t], (a[s] if s >= 0 else 1.0)
    if prediction == "eps":
        eps = out
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    else:  # v = sqrt(ᾱ) ε - sqrt(1 - ᾱ) x_0
        x0 = math.sqrt(a_t) * x - math.sqrt(1 - a_t) * out
        eps = math.sqrt(1 - a_t) * x + math.sqrt(a_t) * out
    sigma = eta * math.sqrt((1 - a_s) / (1 - a_t)) * math.sqrt(1 - a_t / a_s)
    return math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - sigma**2, 0.0)) * eps + sigma * z


@pytest.mark.parametrize("n", sorted(GOLDEN_TIMESTEPS))
def test_trailing_timesteps(n):
    assert DDIMScheduler(ScheduleConfig()).set_timesteps(n).timesteps.tolist() == GOLDEN_TIMESTEPS[n]


def test_alphas_cumprod_follow_the_definition():
    cfg = ScheduleConfig()
    ours = alphas_cumprod(cfg)
    ref = _alpha_bar_by_definition(cfg)
    assert ours[0] == pytest.approx(1 - 0.0015, rel=1e-12)  # ᾱ_0 = 1 - β_start
    assert np.allclose(ours, ref, rtol=1e-12, atol=0)
    assert ours[-1] == pytest.approx(ref[-1], rel=1e-12) and 0 < ours[-1] < 1e-3  # nearly pure noise at T-1


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_every_step_matches_the_paper_formula(prediction, eta):
    """The precomputed (A, B, σ) tables reproduce DDIM eq. 12 evaluated the long way, at every step."""
    cfg = ScheduleConfig(prediction=prediction)
    sched = DDIMScheduler(cfg)
    tables = sched.set_timesteps(7, eta)
    a = _alpha_bar_by_definition(cfg)
    rng = np.random.default_rng(3)
    for i, t in enumerate(tables.timesteps):
        s_ = int(tables.timesteps[i + 1]) if i + 1 < len(tables.timesteps) else -1
        x, out, z = (float(v) for v in rng.standard_normal(3))
        want = _ddim_step_by_the_paper(x, out, int(t), s_, a, eta, z, prediction)
        got = float(sched.step(np.array([out]), i, np.array([x]), np.array([z]) if eta else None)[0])
        assert got == pytest.approx(want, rel=2e-5, abs=2e-6), (i, int(t))


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
