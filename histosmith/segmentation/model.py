"""The downstream segmenter: a compact U-Net with HoVer-Net-style heads, trained from scratch.

HoVer-Net (Graham et al. 2019) predicts, per pixel, nucleus vs background (NP), a map that separates
touching nuclei (HV) and the nucleus type (TP). Here the separating map is the same normalised distance
map the generator produces, so the generator's post-processing (``runtime/postprocess.py``) turns the
three outputs into instances: foreground = sigmoid(NP) > 0.5, class = argmax of the nucleus types
inside it, watershed on the distance map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from histosmith.segmentation.config import SegConfig


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions with batch norm and ReLU (the U-Net unit)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        )


@dataclass
class SegOutput:
    foreground: torch.Tensor  # (B, 1, H, W) logits of nucleus vs background
    distance: torch.Tensor  # (B, 1, H, W) in [0, 1]
    logits: torch.Tensor  # (B, K+1, H, W) class logits, channel 0 = background


class Segmenter(nn.Module):
    """RGB in [-1, 1] (B, 3, H, W) -> :class:`SegOutput`."""

    def __init__(self, cfg: SegConfig):
        super().__init__()
        self.cfg = cfg
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        self.down = nn.ModuleList()
        c_prev = 3
        for w in widths:
            self.down.append(ConvBlock(c_prev, w))
            c_prev = w
        self.up = nn.ModuleList(ConvBlock(widths[i + 1] + widths[i], widths[i])
                                for i in reversed(range(len(widths) - 1)))
        c0 = widths[0]
        self.foreground_head = nn.Conv2d(c0, 1, 1)
        self.distance_head = nn.Conv2d(c0, 1, 1)
        self.class_head = nn.Conv2d(c0, cfg.n_classes + 1, 1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's output at every level, full resolution first; the last is the bottleneck
        (B, base_channels * channel_mult[-1], H / 2^(levels-1), W / 2^(levels-1))."""
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        return skips

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C) global-average-pooled bottleneck features: the tile's descriptor for the kernel distance."""
        return self.encode(x)[-1].mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> SegOutput:
        skips = self.encode(x)
        x = skips[-1]
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return SegOutput(self.foreground_head(x), torch.sigmoid(self.distance_head(x)), self.class_head(x))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
