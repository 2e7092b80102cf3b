"""The noise schedule and the DDIM sampler, in numpy — the one definition every part uses.

Notation (DDPM / DDIM papers): ``ᾱ_t`` = ``alphas_cumprod[t]``; forward process
``x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε``. The network predicts ``ε`` ("eps") or
``v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0`` ("v"). HistoSmith trains eps-prediction by default.

DDIM (Song et al. 2021, eq. 12), from step ``t`` to ``s`` (the previous, less noisy timestep):

    x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε̂) / sqrt(ᾱ_t)
    x_s = sqrt(ᾱ_s) x̂_0 + sqrt(1 - ᾱ_s - σ²) ε̂ + σ z,
    σ   = η sqrt((1 - ᾱ_s) / (1 - ᾱ_t)) sqrt(1 - ᾱ_t / ᾱ_s)

Both parameterisations make ``x_s`` linear in ``x_t`` and the network output, so every step reduces
to ``x_s = A_i x_t + B_i out + σ_i z`` with three per-step scalars computed once in
:meth:`DDIMScheduler.set_timesteps`. Every backend runs exactly that update with these tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Prediction = Literal["eps", "v"]
BetaSchedule = Literal["scaled_linear", "linear", "cosine"]


@dataclass(frozen=True)
class ScheduleConfig:
    """The training noise schedule (saved in checkpoints and manifests).

    Defaults follow the LDM f4 VQ configs: 1000 steps, ``β`` on a square-root-linear ramp from 0.0015
    to 0.0195 (``scaled_linear``), eps-prediction.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    beta_schedule: BetaSchedule = "scaled_linear"
    prediction: Prediction = "eps"


def make_betas(cfg: ScheduleConfig) -> np.ndarray:
    """``β_t`` for t = 0..T-1 (float64)."""
    t = cfg.num_train_timesteps
    if cfg.beta_schedule == "scaled_linear":
        return np.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, t, dtype=np.float64) ** 2
    if cfg.beta_schedule == "linear":
        return np.linspace(cfg.beta_start, cfg.beta_end, t, dtype=np.float64)
    if cfg.beta_schedule == "cosine":  # Nichol & Dhariwal 2021, eq. 17, s = 0.008, β clipped at 0.999
        steps = np.arange(t + 1, dtype=np.float64) / t
        f = np.cos((steps + 0.008) / 1.008 * np.pi / 2) ** 2
        return np.clip(1 - f[1:] / f[:-1], 0, 0.999)
    raise ValueError(f"unknown beta schedule {cfg.beta_schedule!r}")


def alphas_cumprod(cfg: ScheduleConfig) -> np.ndarray:
    """``ᾱ_t`` for t = 0..T-1 (float64)."""
    return np.cumprod(1.0 - make_betas(cfg))


@dataclass(frozen=True)
class DDIMTables:
    """Per-step constants of one sampling run: step ``i`` maps ``x`` at ``timesteps[i]`` onward.

    ``sample_coef`` (A), ``output_coef`` (B), ``noise_coef`` (σ): ``x ← A x + B out + σ z``.
    """

    timesteps: np.ndarray  # int64 (S,), descending
    sample_coef: np.ndarray  # float32 (S,)
    output_coef: np.ndarray  # float32 (S,)
    noise_coef: np.ndarray  # float32 (S,)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def stochastic(self) -> bool:
        return bool(np.any(self.noise_coef != 0))


class DDIMScheduler:
    """DDIM with "trailing" timestep spacing (the first step is t = T-1, pure noise).

    ``set_timesteps(n, eta)`` precomputes the tables; ``step`` applies one update; ``timesteps`` lists
    the timesteps the network is called at.
    """

    def __init__(self, cfg: ScheduleConfig):
        self.cfg = cfg
        self.alphas_cumprod = alphas_cumprod(cfg)
        self.tables: DDIMTables | None = None

    def set_timesteps(self, num_inference_steps: int, eta: float = 0.0) -> DDIMTables:
        total = self.cfg.num_train_timesteps
        if not 1 <= num_inference_steps <= total:
            raise ValueError(f"num_inference_steps must be in 1..{total}, got {num_inference_steps}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        # Trailing spacing (Lin et al. 2024, table 2): T-1, T-1-k, ... ; the last step lands on x_0.
        timesteps = np.round(np.arange(total, 0, -total / num_inference_steps)).astype(np.int64) - 1
        prev = np.append(timesteps[1:], -1)
        a_t = self.alphas_cumprod[timesteps]
        a_s = np.where(prev >= 0, self.alphas_cumprod[np.maximum(prev, 0)], 1.0)  # ᾱ_{-1} := 1 (clean)
        sigma = eta * np.sqrt((1 - a_s) / (1 - a_t)) * np.sqrt(1 - a_t / a_s)
        c = np.sqrt(np.clip(1 - a_s - sigma**2, 0, None))  # weight of the predicted ε direction
        if self.cfg.prediction == "eps":
            sample_coef = np.sqrt(a_s / a_t)
            output_coef = c - np.sqrt(a_s) * np.sqrt(1 - a_t) / np.sqrt(a_t)
        elif self.cfg.prediction == "v":
            sample_coef = np.sqrt(a_s * a_t) + c * np.sqrt(1 - a_t)
            output_coef = c * np.sqrt(a_t) - np.sqrt(a_s) * np.sqrt(1 - a_t)
        else:
            raise ValueError(f"unknown prediction type {self.cfg.prediction!r}")
        self.tables = DDIMTables(
            timesteps=timesteps,
            sample_coef=sample_coef.astype(np.float32),
            output_coef=output_coef.astype(np.float32),
            noise_coef=sigma.astype(np.float32),
        )
        return self.tables

    @property
    def timesteps(self) -> np.ndarray:
        if self.tables is None:
            raise RuntimeError("call set_timesteps first")
        return self.tables.timesteps

    def step(self, model_output: np.ndarray, index: int, sample: np.ndarray,
             noise: np.ndarray | None = None) -> np.ndarray:
        """One DDIM update at step ``index`` (not the timestep value): ``A x + B out + σ z``."""
        tables = self.tables
        if tables is None:
            raise RuntimeError("call set_timesteps first")
        out = tables.sample_coef[index] * sample + tables.output_coef[index] * model_output
        if tables.noise_coef[index] != 0:
            if noise is None:
                raise ValueError("eta > 0 needs noise for every step")
            out = out + tables.noise_coef[index] * noise
        return out
