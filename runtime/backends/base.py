"""The contract every backend meets, so the batch loop, post-processing and writing are shared."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from histosmith.runtime.schedule import SamplerTables


@dataclass(frozen=True)
class Decoded:
    """Decoder outputs for a batch, float32 on the host."""

    image: np.ndarray  # (B, 3, H, W) in [-1, 1]
    distance: np.ndarray  # (B, 1, H, W) in [0, 1]
    semantic: np.ndarray  # (B, K+1, H, W) class probabilities
    latent: np.ndarray | None = None  # (B, C, h, w) final latent (parity checks)


class Backend(Protocol):
    """Runs ``x ← A_i x + B_i ε̂(x, t_i, c, g) + σ_i z_i`` for every step, then the decoder."""

    name: str

    def batch_sizes(self) -> tuple[int, int]:
        """Smallest and largest batch the loaded graphs accept."""
        ...

    def sample(self, latents: np.ndarray, conditions: np.ndarray, guidance: np.ndarray,
               step_noise: np.ndarray | None) -> Decoded:
        """``latents`` (B, C, h, w) initial noise, ``conditions`` (B, D), ``guidance`` (B,),
        ``step_noise`` (S, B, C, h, w) or None when eta = 0."""
        ...

    def close(self) -> None:
        """Release device memory, graphs and streams; the backend is unusable afterwards."""
        ...


def tables_check(tables: SamplerTables, step_noise: np.ndarray | None) -> None:
    if tables.stochastic and step_noise is None:
        raise ValueError("eta > 0 needs per-step noise")
