"""Losses of the VQ stage: SSIM-type structure loss, Tversky loss, hinge GAN losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gaussian_window(size: int, sigma: float, channels: int, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004) with a Gaussian window, per channel, over (B, C, H, W) in float32.

    Runs with autocast disabled: the variances are differences of means, which bf16 cancels to garbage.
    """
    with torch.autocast(x.device.type, enabled=False):
        return _ssim(x.float(), y.float(), data_range, size, sigma)


def _ssim(x: torch.Tensor, y: torch.Tensor, data_range: float, size: int, sigma: float) -> torch.Tensor:
    c = x.shape[1]
    w = _gaussian_window(size, sigma, c, x.device)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x = F.conv2d(x, w, groups=c)
    mu_y = F.conv2d(y, w, groups=c)
    var_x = F.conv2d(x * x, w, groups=c) - mu_x**2
    var_y = F.conv2d(y * y, w, groups=c) - mu_y**2
    cov = F.conv2d(x * y, w, groups=c) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean()


def tversky_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float, beta: float,
                 eps: float = 1.0) -> torch.Tensor:
    """1 - Tversky index averaged over classes present in the batch or predicted (softmax probabilities).

    ``alpha`` weighs false positives, ``beta`` false negatives (Salehi et al. 2017).
    """
    probs = logits.float().softmax(dim=1)  # (B, K+1, H, W)
    onehot = F.one_hot(target, probs.shape[1]).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    tp = (probs * onehot).sum(dims)
    fp = (probs * (1 - onehot)).sum(dims)
    fn = ((1 - probs) * onehot).sum(dims)
    index = (tp + eps) / (tp + alpha * fp + beta * fn + eps)
    return (1 - index).mean()


def label_map_terms(distance: torch.Tensor, logits: torch.Tensor, target_distance: torch.Tensor,
                    target_classes: torch.Tensor, tversky_alpha: float, tversky_beta: float) -> dict[str, torch.Tensor]:
    """How far decoded label maps are from the true ones: L1 on the distance map, cross-entropy and Tversky
    loss on the class map (in float32). Stage 1 trains on them; stage 2's decoded-map term reuses them."""
    distance, logits = distance.float(), logits.float()
    return {"distance": (distance - target_distance).abs().mean(),
            "ce": F.cross_entropy(logits, target_classes),
            "tversky": tversky_loss(logits, target_classes, tversky_alpha, tversky_beta)}


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())


def hinge_g_loss(fake: torch.Tensor) -> torch.Tensor:
    return -fake.mean()
