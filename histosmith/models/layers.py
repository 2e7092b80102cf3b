"""Building blocks shared by the VQ autoencoder and the U-Net.

fp16 safety: normalisation and softmax run in float32 and cast back with ``type_as`` (traced as a
dynamic cast, so a half-precision copy of a traced module keeps these fp32 islands).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _groups(channels: int, groups: int) -> int:
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).type_as(x)


def norm(channels: int, groups: int) -> GroupNorm32:
    return GroupNorm32(_groups(channels, groups), channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero-initialise the last layer of a residual branch so every block starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Pre-activation residual block; with ``emb_dim`` the embedding modulates the second norm (scale/shift)."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, emb_dim: int = 0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch) if emb_dim else None
        self.norm2 = norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.emb is not None and emb is not None:
            scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Multi-head attention on (B, heads, N, d) tensors; scores and softmax in float32."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q.float() * scale, k.float().transpose(-1, -2))  # (B, heads, Nq, Nk)
    return torch.matmul(scores.softmax(dim=-1).type_as(v), v)


class SelfAttention(nn.Module):
    """Spatial self-attention with a residual connection (used only at low resolution)."""

    def __init__(self, ch: int, head_channels: int, groups: int):
        super().__init__()
        self.heads = max(1, ch // head_channels)
        self.norm = norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = zero_module(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)  # (B, 3, heads, d, HW)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (B, heads, HW, d)
        out = attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class CrossAttention(nn.Module):
    """Attention from spatial positions to condition tokens (B, n_tokens, ctx_dim)."""

    def __init__(self, ch: int, ctx_dim: int, head_channels: int, groups: int):
        super().__init__()
        self.heads = max(1, ch // head_channels)
        self.norm = norm(ch, groups)
        self.q = nn.Conv2d(ch, ch, 1)
        self.kv = nn.Linear(ctx_dim, 2 * ch)
        self.proj = zero_module(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        d = c // self.heads
        q = self.q(self.norm(x)).reshape(b, self.heads, d, h * w).transpose(-1, -2)  # (B, heads, HW, d)
        k, v = self.kv(ctx).reshape(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)  # (B, heads, T, d) each
        out = attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class TimestepEmbedding(nn.Module):
    """Sinusoidal embedding of (B,) timesteps -> (B, dim) (Transformer / DDPM convention).

    The frequency indices are an integer buffer, so they move with the module (``.to(device)``) and a
    traced or exported graph carries no device constant; an integer buffer also survives ``.to(fp16)``,
    and the frequencies themselves are computed in float32 (timesteps up to 999 need it).
    """

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        self.half, self.log_period = dim // 2, math.log(max_period)
        self.register_buffer("index", torch.arange(dim // 2), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-self.log_period * self.index.float() / self.half)  # (half,)
        args = t.float()[:, None] * freqs[None]  # (B, half)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
