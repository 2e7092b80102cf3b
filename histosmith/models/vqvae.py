"""The dual-head VQ autoencoder (docs/model.md, stage 1).

Input: RGB in [-1, 1] ++ distance map in [0, 1] ++ one-hot classes (K+1), i.e. (B, 3+1+K+1, H, W).
Encoder -> (B, D, H/f, W/f) -> vector quantiser -> shared decoder trunk -> two heads:
head A = RGB (tanh) + distance (sigmoid), head B = class logits (K+1).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from histosmith.config import VQConfig
from histosmith.models.layers import Downsample, ResBlock, SelfAttention, Upsample, norm
from histosmith.models.quantizer import VectorQuantizer


class Decoded(NamedTuple):
    image: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    distance: torch.Tensor  # (B, 1, H, W) in [0, 1]
    logits: torch.Tensor  # (B, K+1, H, W)


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, g = cfg.base_channels, cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        blocks: list[nn.Module] = []
        cur = ch
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.n_res_blocks):
                blocks.append(ResBlock(cur, ch * mult, g))
                cur = ch * mult
            if level < len(cfg.channel_mult) - 1:
                blocks.append(Downsample(cur))
        blocks.append(ResBlock(cur, cur, g))
        if cfg.mid_attention:
            blocks.append(SelfAttention(cur, cfg.head_channels, g))
        blocks.append(ResBlock(cur, cur, g))
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = norm(cur, g)
        self.conv_out = nn.Conv2d(cur, cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.blocks(self.conv_in(x)))))


class Decoder(nn.Module):
    """Shared trunk: latent -> full-resolution features; then the two heads."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, g = cfg.base_channels, cfg.norm_groups
        cur = ch * cfg.channel_mult[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, cur, 3, padding=1)
        blocks: list[nn.Module] = [ResBlock(cur, cur, g)]
        if cfg.mid_attention:
            blocks.append(SelfAttention(cur, cfg.head_channels, g))
        blocks.append(ResBlock(cur, cur, g))
        for level in reversed(range(len(cfg.channel_mult))):
            for _ in range(cfg.n_res_blocks):
                blocks.append(ResBlock(cur, ch * cfg.channel_mult[level], g))
                cur = ch * cfg.channel_mult[level]
            if level > 0:
                blocks.append(Upsample(cur))
        self.trunk = nn.Sequential(*blocks)
        hc = cfg.head_channels
        # Head A: appearance (RGB) and geometry (distance) share one small head.
        self.head_a = nn.Sequential(ResBlock(cur, hc, g), norm(hc, g), nn.SiLU(), nn.Conv2d(hc, 4, 3, padding=1))
        # Head B: semantics.
        self.head_b = nn.Sequential(ResBlock(cur, hc, g), norm(hc, g), nn.SiLU(),
                                    nn.Conv2d(hc, cfg.n_classes + 1, 3, padding=1))

    def forward(self, z: torch.Tensor) -> Decoded:
        h = self.trunk(self.conv_in(z))
        a = self.head_a(h)
        return Decoded(torch.tanh(a[:, :3]), torch.sigmoid(a[:, 3:4]), self.head_b(h))


class VQAutoencoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.latent_channels, cfg.ema_decay,
                                         cfg.dead_code_threshold)
        self.decoder = Decoder(cfg)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation latents (B, D, h, w): what the diffusion model learns."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor, quantize: bool = True) -> Decoded:
        return self.decoder(self.quantizer.quantize(z) if quantize else z)

    def forward(self, x: torch.Tensor) -> tuple[Decoded, torch.Tensor, torch.Tensor]:
        """Return (decoded, code indices, commitment loss)."""
        zq, idx, commitment = self.quantizer(self.encoder(x))
        return self.decoder(zq), idx, commitment
