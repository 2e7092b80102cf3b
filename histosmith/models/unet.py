"""The conditional latent U-Net (docs/model.md, stage 2; LDM / improved-diffusion style).

``forward(x, t, cond, keep)``: ``x`` (B, C, h, w) noisy latents, ``t`` (B,) timesteps, ``cond`` (B, K+T)
condition vectors, ``keep`` (B,) 1 = use the condition, 0 = replace it by the learned null condition
(classifier-free guidance). A guidance-distilled student (``cfg.guidance_range`` set) also takes ``guidance`` (B,),
the scale whose guided output it was trained to give in one pass; its embedding is added to the time embedding
(Meng et al., CVPR 2023, stage 1) through a zero-initialised layer, so a student starts as its teacher's
conditional branch. The condition enters twice: an MLP maps it to a scale and shift of the
time embedding (which every residual block applies to its normalised features), and — optionally —
as tokens (one per class count, one for the tissue) that cross-attention layers read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from histosmith.config import UNetConfig
from histosmith.models.layers import (
    CrossAttention,
    Downsample,
    ResBlock,
    SelfAttention,
    TimestepEmbedding,
    Upsample,
    norm,
    zero_module,
)

GUIDANCE_EMBED_SCALE = 100.0


class ConditionEncoder(nn.Module):
    """Condition vector -> (scale/shift of the time embedding, tokens), with learned null versions."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        d = cfg.time_dim
        self.n_classes = cfg.n_classes
        self.mlp = nn.Sequential(nn.Linear(cfg.cond_dim, d), nn.SiLU(), nn.Linear(d, d), nn.SiLU(),
                                 zero_module(nn.Linear(d, 2 * d)))
        self.null_modulation = nn.Parameter(torch.zeros(2 * d))
        self.tokens = cfg.cross_attention
        if self.tokens:
            self.class_embed = nn.Parameter(torch.randn(cfg.n_classes, d) * 0.02)
            self.count_mlp = nn.Sequential(nn.Linear(1, d), nn.SiLU(), nn.Linear(d, d))
            self.tissue_embed = nn.Linear(cfg.n_tissues, d, bias=False)
            self.null_tokens = nn.Parameter(torch.randn(cfg.n_classes + 1, d) * 0.02)

    def forward(self, cond: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = keep.to(cond.dtype)[:, None]  # (B, 1)
        modulation = k * self.mlp(cond) + (1 - k) * self.null_modulation[None]  # (B, 2d)
        if not self.tokens:
            return modulation, None
        counts = self.count_mlp(cond[:, : self.n_classes, None]) + self.class_embed[None]  # (B, K, d)
        tissue = self.tissue_embed(cond[:, self.n_classes :])[:, None]  # (B, 1, d)
        tokens = torch.cat([counts, tissue], dim=1)  # (B, K+1, d)
        tokens = k[:, :, None] * tokens + (1 - k[:, :, None]) * self.null_tokens[None]
        return modulation, tokens


class UNetBlock(nn.Module):
    """A residual block, then (at attention levels) self-attention and cross-attention to the tokens."""

    def __init__(self, in_ch: int, out_ch: int, cfg: UNetConfig, attend: bool):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, cfg.norm_groups, cfg.time_dim, cfg.dropout)
        self.attn = SelfAttention(out_ch, cfg.head_channels, cfg.norm_groups) if attend else None
        self.cross = (CrossAttention(out_ch, cfg.time_dim, cfg.head_channels, cfg.norm_groups)
                      if attend and cfg.cross_attention else None)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        if self.cross is not None and tokens is not None:
            x = self.cross(x, tokens)
        return x


class ConditionalUNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch, td = cfg.base_channels, cfg.time_dim
        self.time_embedding = TimestepEmbedding(ch)
        self.time_mlp = nn.Sequential(nn.Linear(ch, td), nn.SiLU(), nn.Linear(td, td))
        self.guidance_mlp = (nn.Sequential(nn.Linear(ch, td), nn.SiLU(), zero_module(nn.Linear(td, td)))
                             if cfg.guidance_range is not None else None)
        self.condition = ConditionEncoder(cfg)
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [ch]
        cur = ch
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.n_res_blocks):
                self.down.append(UNetBlock(cur, ch * mult, cfg, level in cfg.attention_levels))
                cur = ch * mult
                skips.append(cur)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(Downsample(cur))
                skips.append(cur)
        self.mid = nn.ModuleList([UNetBlock(cur, cur, cfg, True), UNetBlock(cur, cur, cfg, False)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(cfg.channel_mult))):
            for i in range(cfg.n_res_blocks + 1):
                self.up.append(UNetBlock(cur + skips.pop(), ch * cfg.channel_mult[level], cfg,
                                         level in cfg.attention_levels))
                cur = ch * cfg.channel_mult[level]
                if level > 0 and i == cfg.n_res_blocks:
                    self.up.append(Upsample(cur))
        self.norm_out = norm(cur, cfg.norm_groups)
        self.conv_out = zero_module(nn.Conv2d(cur, cfg.latent_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, keep: torch.Tensor,
                guidance: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_mlp(self.time_embedding(t).type_as(x))  # (B, time_dim)
        if self.guidance_mlp is not None:
            if guidance is None:
                raise ValueError("a guidance-distilled U-Net needs the guidance scale")
            # Scales of a few units spread over the sinusoids' range as timesteps do.
            emb = emb + self.guidance_mlp(self.time_embedding(guidance * GUIDANCE_EMBED_SCALE).type_as(x))
        modulation, tokens = self.condition(cond.type_as(x), keep)
        scale, shift = modulation.chunk(2, dim=1)
        emb = emb * (1 + scale) + shift
        h = self.conv_in(x)
        stack = [h]
        for layer in self.down:
            h = layer(h, emb, tokens) if isinstance(layer, UNetBlock) else layer(h)
            stack.append(h)
        for layer in self.mid:
            h = layer(h, emb, tokens)
        for layer in self.up:
            if isinstance(layer, UNetBlock):
                h = layer(torch.cat([h, stack.pop()], dim=1), emb, tokens)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))
