"""The torch backend: the reference sampler, and the GPU fallback without TensorRT.

Takes two callables — the guided U-Net ``(latent, timestep, condition, guidance) -> ε̂`` and the decoder
``latent -> (image, distance, semantic)`` — either live modules (``hs-sample``) or the TorchScript files
``hs-export`` writes (``hs-generate --engine unet.pt``). torch is imported here only, lazily by callers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histosmith.errors import file_error
from histosmith.runtime.backends.base import Decoded, tables_check
from histosmith.runtime.schedule import DDIMTables


def torch_device(name: str) -> str:
    """``auto`` -> cuda when available, else cpu; refuses cuda where there is none."""
    from histosmith.errors import HistoSmithError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HistoSmithError(f"--device {name}: CUDA is not available on this machine")
    return name


class TorchBackend:
    name = "torch"

    def __init__(self, guided: Callable[..., torch.Tensor], decoder: Callable[..., Any], tables: DDIMTables,
                 device: str = "cpu", dtype: torch.dtype = torch.float32, max_batch: int = 4096):
        self.guided, self.decoder, self.tables = guided, decoder, tables
        self.device, self.dtype, self.max_batch = torch.device(device), dtype, max_batch
        # Per-step scalars as Python floats: the loop multiplies by constants, no device transfers.
        self.coefs = [(float(a), float(b), float(s)) for a, b, s in
                      zip(tables.sample_coef, tables.output_coef, tables.noise_coef, strict=True)]
        self.timesteps = [float(t) for t in tables.timesteps]

    @classmethod
    def from_files(cls, unet: Path, decoder: Path, tables: DDIMTables, device: str = "cpu",
                   dtype: torch.dtype = torch.float32) -> TorchBackend:
        modules = []
        for path in (unet, decoder):
            try:
                module = torch.jit.load(str(path), map_location=device)
            except (RuntimeError, ValueError, OSError) as exc:
                detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
                raise file_error(path, f"not a loadable TorchScript module ({detail})") from None
            modules.append(module.eval().to(dtype))
        return cls(modules[0], modules[1], tables, device, dtype)

    def batch_sizes(self) -> tuple[int, int]:
        return 1, self.max_batch

    @torch.inference_mode()
    def sample(self, latents: np.ndarray, conditions: np.ndarray, guidance: np.ndarray,
               step_noise: np.ndarray | None) -> Decoded:
        tables_check(self.tables, step_noise)
        dev, dt = self.device, self.dtype
        x = torch.from_numpy(latents).to(dev, dt)
        cond = torch.from_numpy(conditions).to(dev, dt)
        g = torch.from_numpy(guidance).to(dev, dt)
        noise = torch.from_numpy(step_noise).to(dev, dt) if step_noise is not None else None
        t = torch.empty(len(x), device=dev, dtype=dt)
        for i, (a, b, s) in enumerate(self.coefs):
            t.fill_(self.timesteps[i])
            eps = self.guided(x, t, cond, g)
            x = a * x + b * eps  # DDIM step (runtime.schedule): x_s = A x_t + B ε̂ (+ σ z)
            if s != 0.0 and noise is not None:
                x = x + s * noise[i]
        image, distance, semantic = self.decoder(x)
        return Decoded(image.float().cpu().numpy(), distance.float().cpu().numpy(), semantic.float().cpu().numpy())
