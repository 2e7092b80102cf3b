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


class DDIMUpdate(nn.Module):
    """``x_s = A x_t + B ε̂ + σ z`` with ``coefs = (A, B, σ)`` (see histosmith.runtime.schedule).

    A module of its own so its exported nodes carry the ``ddim_update`` scope, which the fp16
    converter keeps in float32: the latent accumulates over every step.
    """

    def forward(self, latent: torch.Tensor, noise_pred: torch.Tensor, coefs: torch.Tensor,
                noise: torch.Tensor) -> torch.Tensor:
        x, eps, z = latent.float(), noise_pred.float(), noise.float()
        return (coefs[0] * x + coefs[1] * eps + coefs[2] * z).type_as(latent)


class DDIMStep(nn.Module):
    """One whole sampling step on the device: guided U-Net, then the DDIM update."""

    def __init__(self, guided: GuidedUNet):
        super().__init__()
        self.guided = guided
        self.ddim_update = DDIMUpdate()

    def forward(self, latent: torch.Tensor, timestep: torch.Tensor, condition: torch.Tensor, guidance: torch.Tensor,
                step_coefs: torch.Tensor, step_noise: torch.Tensor) -> torch.Tensor:
        return self.ddim_update(latent, self.guided(latent, timestep, condition, guidance), step_coefs, step_noise)


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
