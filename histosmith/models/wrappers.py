"""The two graphs inference runs, as modules: the guided U-Net and the latent-to-labels decoder.

Both are what ``hs-export`` exports (ONNX, torch.export programs) and what the torch reference sampler
calls, so every backend evaluates exactly the same functions.
"""

from __future__ import annotations

import torch
from torch import nn

from histosmith.models.unet import ConditionalUNet
from histosmith.models.vqvae import VQAutoencoder


class GuidedUNet(nn.Module):
    """Classifier-free guidance folded in: one call = conditional and null branches as a 2B batch.

    ``ε̂ = ε_null + g (ε_cond − ε_null)`` (Ho & Salimans 2022), per sample guidance ``g``.
    """

    def __init__(self, unet: ConditionalUNet):
        super().__init__()
        self.unet = unet

    def forward(self, latent: torch.Tensor, timestep: torch.Tensor, condition: torch.Tensor,
                guidance: torch.Tensor) -> torch.Tensor:
        b = latent.shape[0]
        keep = torch.cat([torch.ones_like(timestep), torch.zeros_like(timestep)])  # (2B,)
        out = self.unet(torch.cat([latent, latent]), torch.cat([timestep, timestep]),
                        torch.cat([condition, condition]), keep)  # (2B, C, h, w)
        cond_out, null_out = out[:b], out[b:]
        return null_out + guidance[:, None, None, None].type_as(out) * (cond_out - null_out)


class DistilledUNet(nn.Module):
    """A guidance-distilled student with the guided U-Net's signature: one pass gives ``ε̂`` at scale ``guidance``."""

    def __init__(self, unet: ConditionalUNet):
        super().__init__()
        self.unet = unet

    def forward(self, latent: torch.Tensor, timestep: torch.Tensor, condition: torch.Tensor,
                guidance: torch.Tensor) -> torch.Tensor:
        return self.unet(latent, timestep, condition, torch.ones_like(timestep), guidance)


def guided_unet(unet: ConditionalUNet) -> GuidedUNet | DistilledUNet:
    """The module every backend runs as "the guided U-Net": two-pass guidance, or a distilled student's one pass."""
    return DistilledUNet(unet) if unet.cfg.guidance_range is not None else GuidedUNet(unet)


class SolverUpdate(nn.Module):
    """One step of any sampler (histosmith.runtime.schedule, ``fused_update``): with
    ``coefs = (A, B, σ, P, Q, C1, C2)`` and ``history`` (B, 2, C, h, w) the x̂_0 of the two previous steps,
    ``x̂_0 = P x + Q ε̂`` and ``x_s = A x + B ε̂ + C1 x̂_0' + C2 x̂_0'' + σ z``; returns ``x_s`` and the next history.

    A module of its own so its exported nodes carry the ``solver_update`` scope, which the fp16
    converter keeps in float32: the latent accumulates over every step.
    """

    def forward(self, latent: torch.Tensor, noise_pred: torch.Tensor, coefs: torch.Tensor, noise: torch.Tensor,
                history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, eps, z, hist = latent.float(), noise_pred.float(), noise.float(), history.float()
        x0 = coefs[3] * x + coefs[4] * eps
        nxt = coefs[0] * x + coefs[1] * eps + coefs[5] * hist[:, 0] + coefs[6] * hist[:, 1] + coefs[2] * z
        return nxt.type_as(latent), torch.stack([x0, hist[:, 0]], dim=1).type_as(history)


class SamplerStep(nn.Module):
    """One whole sampling step on the device: guided U-Net, then the solver update."""

    def __init__(self, guided: GuidedUNet | DistilledUNet):
        super().__init__()
        self.guided = guided
        self.solver_update = SolverUpdate()

    def forward(self, latent: torch.Tensor, timestep: torch.Tensor, condition: torch.Tensor, guidance: torch.Tensor,
                step_coefs: torch.Tensor, step_noise: torch.Tensor,
                x0_history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eps = self.guided(latent, timestep, condition, guidance)
        return self.solver_update(latent, eps, step_coefs, step_noise, x0_history)


class LatentDecoder(nn.Module):
    """Diffusion latent -> (image in [-1, 1], distance in [0, 1], class probabilities).

    Undoes the latent scaling, snaps to the nearest codebook entry (as LDM decodes VQ latents) and runs
    the dual-head decoder; the class softmax runs in float32.
    """

    def __init__(self, vq: VQAutoencoder, latent_scale: float):
        super().__init__()
        self.vq = vq
        self.inv_scale = 1.0 / float(latent_scale)

    def forward(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.vq.decode(latent * self.inv_scale, quantize=True)
        return out.image, out.distance, out.logits.float().softmax(dim=1).type_as(out.logits)
