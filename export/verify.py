"""Check exported graphs against PyTorch on random inputs before an export reports success."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from histosmith.errors import HistoSmithError


@dataclass(frozen=True)
class OutputError:
    name: str
    max_abs: float
    max_rel: float  # max |a - b| / max |b|: error relative to the output's scale
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_rel <= self.tolerance

    def line(self) -> str:
        mark = "ok" if self.ok else "FAIL"
        return f"{self.name:<12} max abs {self.max_abs:.2e}  rel {self.max_rel:.2e}  (tol {self.tolerance:.0e}) {mark}"


def compare(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], tolerance: float
            ) -> list[OutputError]:
    errors = []
    for name, ref in reference.items():
        got = candidate[name]
        if got.shape != ref.shape:
            raise HistoSmithError(f"{name}: exported graph returns shape {got.shape}, torch {ref.shape}")
        diff = float(np.abs(got.astype(np.float64) - ref).max()) if ref.size else 0.0
        scale = float(np.abs(ref).max()) if ref.size else 1.0
        errors.append(OutputError(name, diff, diff / max(scale, 1e-12), tolerance))
    return errors


def torch_outputs(module: torch.nn.Module, inputs: Mapping[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = module(*(torch.from_numpy(v) for v in inputs.values()))
    out = out if isinstance(out, tuple) else (out,)
    return {n: o.double().numpy() for n, o in zip(names, out, strict=True)}


def check(label: str, module: torch.nn.Module, run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
          inputs: dict[str, np.ndarray], output_names: list[str], tolerance: float) -> list[OutputError]:
    """Compare ``run(inputs)`` with ``module(*inputs)``; raise with every line if any output is off."""
    errors = compare(torch_outputs(module, inputs, output_names), run(inputs), tolerance)
    if not all(e.ok for e in errors):
        detail = "; ".join(e.line() for e in errors)
        raise HistoSmithError(f"{label}: exported graph disagrees with PyTorch beyond tolerance: {detail}")
    return errors
