"""Randomly initialised inference modules of a config preset, for speed and numerical checks.

Weights are perturbed away from the zero-initialised output layers so outputs are non-degenerate:
speed does not depend on the weights, and parity is a numerical property of the graphs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from histosmith.config import unet_config, vq_config
from histosmith.models.unet import ConditionalUNet
from histosmith.models.vqvae import VQAutoencoder
from histosmith.models.wrappers import DistilledUNet, GuidedUNet, LatentDecoder, guided_unet

TILE = {"tiny": 16, "small": 64, "paper": 256}
N_CLASSES, N_TISSUES = 3, 2


@dataclass
class RandomModels:
    guided: GuidedUNet | DistilledUNet
    decoder: LatentDecoder
    latent_shape: tuple[int, int, int]
    cond_dim: int

    def inputs(self, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Latent noise (B, C, h, w), conditions (B, D) and guidance (B,) for one batch."""
        rng = np.random.default_rng(seed + batch)
        return (rng.standard_normal((batch, *self.latent_shape)).astype(np.float32),
                rng.random((batch, self.cond_dim)).astype(np.float32), np.full(batch, 2.0, np.float32))


def random_models(preset: str, seed: int = 0, distilled: bool = False) -> RandomModels:
    """``distilled``: a guidance-distilled student's U-Net (guidance as an input, one pass per call)."""
    torch.manual_seed(seed)
    vq_cfg = vq_config(preset, N_CLASSES, TILE[preset])
    cfg = unet_config(preset, vq_cfg, N_TISSUES)
    unet = ConditionalUNet(replace(cfg, guidance_range=(1.0, 5.0)) if distilled else cfg).eval()
    vq = VQAutoencoder(vq_cfg).eval()
    with torch.no_grad():
        for module in (unet, vq):
            for p in module.parameters():
                p.add_(0.02 * torch.randn_like(p))
    shape = (vq_cfg.latent_channels, vq_cfg.latent_size, vq_cfg.latent_size)
    return RandomModels(guided_unet(unet).eval(), LatentDecoder(vq, 1.0).eval(), shape, N_CLASSES + N_TISSUES)
