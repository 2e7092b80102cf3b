"""Per-tile randomness: tile ``i`` of a run depends only on (seed, i), never on batching or resume."""

from __future__ import annotations

import numpy as np

STREAM_NOISE = 0
STREAM_CONDITION = 1


def tile_rng(seed: int, index: int, stream: int = STREAM_NOISE, attempt: int = 0) -> np.random.Generator:
    """Attempt 0 is the tile's first sample; QC retries (attempt >= 1) get their own streams."""
    key = [seed, index, stream] if attempt == 0 else [seed, index, stream, attempt]
    return np.random.default_rng(np.random.SeedSequence(key))


def tile_noise(seed: int, indices: np.ndarray, latent_shape: tuple[int, ...], num_steps: int, stochastic: bool,
               attempt: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Initial latents (B, C, h, w) and, for eta > 0, per-step noise (S, B, C, h, w), float32; they depend
    only on (seed, tile index, attempt)."""
    initial = np.empty((len(indices), *latent_shape), dtype=np.float32)
    steps = np.empty((num_steps, len(indices), *latent_shape), dtype=np.float32) if stochastic else None
    for b, index in enumerate(indices):
        rng = tile_rng(seed, int(index), attempt=attempt)
        initial[b] = rng.standard_normal(latent_shape, dtype=np.float32)
        if steps is not None:
            steps[:, b] = rng.standard_normal((num_steps, *latent_shape), dtype=np.float32)
    return initial, steps
