"""Per-tile randomness: tile ``i`` of a run depends only on (seed, i), never on batching or resume."""

from __future__ import annotations

import numpy as np

STREAM_NOISE = 0
STREAM_CONDITION = 1


def tile_rng(seed: int, index: int, stream: int = STREAM_NOISE) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index, stream]))


def tile_noise(seed: int, indices: np.ndarray, latent_shape: tuple[int, ...], num_steps: int, stochastic: bool
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """Initial latents (B, C, h, w) and, for eta > 0, per-step noise (S, B, C, h, w), float32."""
    initial = np.empty((len(indices), *latent_shape), dtype=np.float32)
    steps = np.empty((num_steps, len(indices), *latent_shape), dtype=np.float32) if stochastic else None
    for b, index in enumerate(indices):
        rng = tile_rng(seed, int(index))
        initial[b] = rng.standard_normal(latent_shape, dtype=np.float32)
        if steps is not None:
            steps[:, b] = rng.standard_normal((num_steps, *latent_shape), dtype=np.float32)
    return initial, steps
