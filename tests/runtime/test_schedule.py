"""DDIM golden values: the numpy scheduler and the torch sampling loop must agree step for step."""

import math

import numpy as np
import pytest
import torch

from histosmith.runtime.backends.torch_backend import TorchBackend
from histosmith.runtime.schedule import STEP_COEF_COUNT, ScheduleConfig, Scheduler, alphas_cumprod

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
    assert Scheduler(ScheduleConfig()).set_timesteps(n).timesteps.tolist() == GOLDEN_TIMESTEPS[n]


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
    sched = Scheduler(cfg)
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
    sched = Scheduler(cfg)
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
    sched = Scheduler(ScheduleConfig())
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
    sched = Scheduler(ScheduleConfig())
    sched.set_timesteps(5, eta=1.0)
    with pytest.raises(ValueError, match="noise"):
        sched.step(np.zeros(2), 0, np.zeros(2))


def test_torch_reference_matches_in_float64():
    # The table arithmetic itself: torch and numpy multiply the same float32 constants.
    sched = Scheduler(ScheduleConfig())
    tables = sched.set_timesteps(3)
    x = torch.ones(1, dtype=torch.float64)
    assert float(tables.sample_coef[0] * x + tables.output_coef[0] * x) == pytest.approx(
        float(sched.step(np.ones(1), 0, np.ones(1))[0]))


# ---------------------------------------------------------------- multistep solvers

def _mixture_x0(x, abar):
    """E[x_0 | x_t] for a 1-D mixture of three Gaussians: an exact denoiser, smooth in x and t."""
    mu, var0, weight = np.array([-1.0, 0.5, 2.0]), np.array([0.3, 0.5, 0.2]), np.array([0.3, 0.5, 0.2])
    a = math.sqrt(abar)
    var = a * a * var0 + (1 - abar)
    logw = np.log(weight) - 0.5 * np.log(var) - 0.5 * (x[..., None] - a * mu) ** 2 / var
    w = np.exp(logw - logw.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return (w * (mu + a * var0 / var * (x[..., None] - a * mu))).sum(-1)


def toy_denoiser(x, t, abar_table, prediction="eps"):
    abar = float(abar_table[int(t)])
    x0 = _mixture_x0(x, abar)
    eps = (x - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
    return eps if prediction == "eps" else math.sqrt(abar) * eps - math.sqrt(1 - abar) * x0


def _solve(sampler, steps, x, prediction="eps", corrector=True):
    sched = Scheduler(ScheduleConfig(prediction=prediction))
    tables = sched.set_timesteps(steps, sampler=sampler, corrector=corrector)
    for i, t in enumerate(tables.timesteps):
        x = sched.step(toy_denoiser(x, t, sched.alphas_cumprod, prediction), i, x)
    return x


def _lam(abar):
    return 0.5 * math.log(abar) - 0.5 * math.log(1 - abar)


def _dpmpp_2m_by_the_paper(steps, x, prediction):
    """DPM-Solver++(2M), Lu et al. 2022 Algorithm 2, in float64 with explicit λ, h and r (no tables)."""
    a = alphas_cumprod(ScheduleConfig(prediction=prediction))
    ts = [round(1000 - i * 1000 / steps) - 1 for i in range(steps)]
    prev_x0, prev_h = None, None
    for i, t in enumerate(ts):
        out = toy_denoiser(x, t, a, prediction)
        al, si = math.sqrt(a[t]), math.sqrt(1 - a[t])
        x0 = (x - si * out) / al if prediction == "eps" else al * x - si * out
        if i == steps - 1:  # σ_s = 0: the last step returns the data prediction (lower order final)
            return x0
        s = ts[i + 1]
        al_s, si_s = math.sqrt(a[s]), math.sqrt(1 - a[s])
        h = _lam(a[s]) - _lam(a[t])
        if prev_x0 is None:  # first step: first order
            d = x0
        else:
            r = prev_h / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev_x0
        x = si_s / si * x - al_s * math.expm1(-h) * d
        prev_x0, prev_h = x0, h
    return x


def _unipc_by_the_paper(steps, x, prediction, corrector):
    """UniPC-2 with B(h) = e^h - 1 (Zhao et al. 2023, Algorithms 2-3, data prediction), as written there:
    UniC refines the sample from the previous one with the new x̂_0, then UniP predicts from it."""
    a = alphas_cumprod(ScheduleConfig(prediction=prediction))
    ts = [round(1000 - i * 1000 / steps) - 1 for i in range(steps)]
    lam = [_lam(a[t]) for t in ts]
    x0s, last, last_order = [], None, 0
    for i, t in enumerate(ts):
        out = toy_denoiser(x, t, a, prediction)
        al, si = math.sqrt(a[t]), math.sqrt(1 - a[t])
        m = (x - si * out) / al if prediction == "eps" else al * x - si * out
        if corrector and i > 0:
            h = lam[i] - lam[i - 1]
            si_p = math.sqrt(1 - a[ts[i - 1]])
            base = si / si_p * last - al * math.expm1(-h) * x0s[-1]
            if last_order == 1:
                x = base - al * math.expm1(-h) * 0.5 * (m - x0s[-1])
            else:  # UniC-2: ρ from R ρ = b with r = (λ_{i-2} - λ_{i-1}) / h
                r = (lam[i - 2] - lam[i - 1]) / h
                hh = -h
                phi2 = math.expm1(hh) / hh - 1
                phi3 = phi2 / hh - 0.5
                rho = np.linalg.solve([[1.0, 1.0], [r, 1.0]], [phi2 / math.expm1(hh), 2 * phi3 / math.expm1(hh)])
                d1 = (x0s[-2] - x0s[-1]) / r
                x = base - al * math.expm1(-h) * (rho[0] * d1 + rho[1] * (m - x0s[-1]))
        x0s.append(m)
        if i == steps - 1:
            return m
        order = min(2, steps - i, i + 1)
        s = ts[i + 1]
        al_s, si_s = math.sqrt(a[s]), math.sqrt(1 - a[s])
        h = _lam(a[s]) - lam[i]
        last, last_order = x, order
        x = si_s / si * x - al_s * math.expm1(-h) * m
        if order == 2:  # UniP-2 with ρ_p = 1/2
            r = (lam[i - 1] - lam[i]) / h
            x = x - al_s * math.expm1(-h) * 0.5 * (x0s[-2] - m) / r
    return x


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 12])
def test_solver_tables_follow_the_papers(prediction, steps):
    """The precomputed linear-combination tables reproduce each solver written the long way."""
    x = np.random.default_rng(steps).standard_normal(32)
    got = _solve("dpmpp-2m", steps, x.copy(), prediction)
    assert np.allclose(got, _dpmpp_2m_by_the_paper(steps, x.copy(), prediction), rtol=1e-4, atol=1e-5)
    for corrector in (True, False):
        got = _solve("unipc", steps, x.copy(), prediction, corrector)
        want = _unipc_by_the_paper(steps, x.copy(), prediction, corrector)
        assert np.allclose(got, want, rtol=1e-4, atol=1e-5), corrector


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("sampler", ["dpmpp-2m", "unipc", "unipc-no-corrector"])
def test_solvers_match_diffusers(prediction, sampler):
    """Numerical cross-check against diffusers' schedulers configured as ours (trailing spacing, final σ = 0)."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers (the oracle) is a test dependency: [dev]")
    steps = 9
    common = dict(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
                  prediction_type="epsilon" if prediction == "eps" else "v_prediction",
                  timestep_spacing="trailing", final_sigmas_type="zero", lower_order_final=True, solver_order=2)
    if sampler == "dpmpp-2m":
        ref = diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_type="midpoint", **common)
    else:
        off = list(range(steps)) if sampler == "unipc-no-corrector" else []
        ref = diffusers.UniPCMultistepScheduler(solver_type="bh2", predict_x0=True, disable_corrector=off, **common)
    ref.set_timesteps(steps)
    sched = Scheduler(ScheduleConfig(prediction=prediction))
    tables = sched.set_timesteps(steps, sampler=sampler.removesuffix("-no-corrector"),
                                 corrector=sampler != "unipc-no-corrector")
    assert ref.timesteps.tolist() == tables.timesteps.tolist()
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    ours, theirs = x.copy(), torch.tensor(x)
    for i, t in enumerate(tables.timesteps):
        ours = sched.step(toy_denoiser(ours, t, sched.alphas_cumprod, prediction), i, ours)
        out = torch.tensor(toy_denoiser(theirs.numpy(), t, sched.alphas_cumprod, prediction))
        theirs = ref.step(out, int(t), theirs).prev_sample
    assert np.allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-5)
    assert np.abs(ours - x).max() > 0.5


def test_multistep_solvers_converge_faster_than_ddim():
    """Error against a 500-step solution of the same ODE: at 10 steps DPM-Solver++(2M) and UniPC are closer
    than DDIM, and their error falls faster with steps (DDIM is first order)."""
    x = np.random.default_rng(1).standard_normal(256)
    gold = _solve("dpmpp-2m", 500, x.copy())

    def err(sampler, steps):
        return float(np.sqrt(np.mean((_solve(sampler, steps, x.copy()) - gold) ** 2)))

    ddim = [err("ddim", n) for n in (10, 20, 40)]
    for sampler in ("dpmpp-2m", "unipc"):
        ours = [err(sampler, n) for n in (10, 20, 40)]
        assert ours[0] < 0.7 * ddim[0], (sampler, ours, ddim)
        assert ours[0] / ours[2] > 1.15 * ddim[0] / ddim[2], (sampler, ours, ddim)


def test_solver_tables_shape_and_history():
    sched = Scheduler(ScheduleConfig())
    assert sched.set_timesteps(10).history == 0
    assert sched.set_timesteps(10, sampler="dpmpp-2m").history == 1
    assert sched.set_timesteps(10, sampler="unipc").history == 2
    assert sched.set_timesteps(10, sampler="unipc", corrector=False).history == 1
    coefs = sched.set_timesteps(10, sampler="unipc").coefs()
    assert coefs.shape == (10, STEP_COEF_COUNT) and coefs.dtype == np.float32
    with pytest.raises(ValueError, match="ODE solver"):
        sched.set_timesteps(10, 0.5, sampler="dpmpp-2m")
    with pytest.raises(ValueError, match="unknown sampler"):
        sched.set_timesteps(10, sampler="euler")


def test_multistep_steps_run_in_order():
    sched = Scheduler(ScheduleConfig())
    sched.set_timesteps(5, sampler="dpmpp-2m")
    sched.step(np.zeros(2), 0, np.ones(2))
    with pytest.raises(RuntimeError, match="in order"):
        sched.step(np.zeros(2), 3, np.ones(2))
