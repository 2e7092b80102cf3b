"""Vector quantiser with an EMA codebook and dead-code restart (VQ-VAE-2 / Razavi et al. appendix)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _all_ranks(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` from every data-parallel rank in rank order (the one-process batch); ``x`` alone
    outside torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation of (B, D, h, w) latents.

    Training updates the codebook by exponential moving averages of assigned vectors (no codebook
    gradient); codes whose EMA assignment count falls below ``dead_threshold`` are restarted on random
    encoder outputs of the current batch. The encoder gets the straight-through gradient plus the
    commitment loss ``||z_e - sg(e)||²``.
    """

    def __init__(self, n_codes: int, dim: int, decay: float = 0.99, dead_threshold: float = 0.03,
                 eps: float = 1e-5):
        super().__init__()
        self.n_codes, self.dim, self.decay, self.dead_threshold, self.eps = n_codes, dim, decay, dead_threshold, eps
        self.register_buffer("codebook", torch.randn(n_codes, dim) * 0.1)
        self.register_buffer("ema_count", torch.ones(n_codes))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("usage", torch.zeros(n_codes))  # EMA of the assignment histogram (statistics)
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for (N, D) vectors; distances in float32."""
        flat = flat.float()
        book = self.codebook.float()
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1)[None]  # (N, n_codes)
        return dist.argmin(dim=1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) indices -> (B, D, h, w) code vectors."""
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Snap (B, D, h, w) latents to their nearest codes (no gradient, no update)."""
        b, d, h, w = z.shape
        idx = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, d)).reshape(b, h, w)
        return self.lookup(idx).type_as(z)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        if not bool(self.initialised):
            # Initialise on the data: random encoder outputs of the first batch.
            pick = torch.randint(0, flat.shape[0], (self.n_codes,), device=flat.device)
            self.codebook.copy_(flat[pick])
            self.ema_sum.copy_(flat[pick])
            self.ema_count.fill_(1.0)
            self.initialised.fill_(True)
            return
        # Scatter-adds, not a (N, n_codes) one-hot matmul: linear in N whatever the codebook size.
        count = torch.bincount(idx, minlength=self.n_codes).type_as(flat)
        sums = torch.zeros_like(self.ema_sum).index_add_(0, idx, flat)
        self.ema_count.mul_(self.decay).add_(count, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.usage.mul_(self.decay).add_(count / flat.shape[0], alpha=1 - self.decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (n + self.n_codes * self.eps) * n  # Laplace smoothing
        self.codebook.copy_(self.ema_sum / smoothed[:, None])
        dead = self.ema_count < self.dead_threshold
        n_dead = int(dead.sum())
        if n_dead:
            pick = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
            fresh = flat[pick] + 0.01 * flat.std() * torch.randn_like(flat[pick])
            self.codebook[dead] = fresh
            self.ema_sum[dead] = fresh
            self.ema_count[dead] = 1.0

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (straight-through quantised latents, indices (B, h, w), commitment loss)."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (B*h*w, D)
        idx = self.nearest(flat)
        if self.training:  # under torchrun: the whole global batch's vectors, so every rank's codebook agrees
            self._update(_all_ranks(flat.detach().float()), _all_ranks(idx))
        zq = self.lookup(idx.reshape(b, h, w)).type_as(z)
        commitment = F.mse_loss(z, zq.detach())
        return z + (zq - z).detach(), idx.reshape(b, h, w), commitment

    def stats(self) -> dict[str, float]:
        """Codebook usage: perplexity of the EMA assignment histogram and the number of unused codes."""
        p = self.usage / self.usage.sum().clamp_min(1e-12)
        perplexity = torch.exp(-(p * (p + 1e-12).log()).sum())
        return {"perplexity": float(perplexity), "dead_codes": int((self.usage < 1e-4 / self.n_codes).sum()),
                "codes": self.n_codes}
