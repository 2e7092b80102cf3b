"""Planning shared by the GPU backends (TensorRT and torch CUDA graphs), testable on any CPU.

* **Batch buckets**: the batch sizes for which static buffers, TensorRT profiles and CUDA graphs exist;
  a batch runs in the smallest bucket that holds it, zero-padded.
* **Step tables**: per-step device constants — the timestep vector and the DDIM coefficients ``(A, B, σ)``
  of every step — laid out once, so a captured graph reads step ``i``'s constants from its own address and
  nothing is written from the host inside the loop.
* **Ping-pong latents**: step ``i`` reads latent buffer ``i % 2`` and writes ``(i + 1) % 2``; the decoder
  reads buffer ``S % 2``.
* **Capture plan**: the ordered launches of one batch (S fused U-Net + DDIM steps, then the decoder) with
  the buffer each tensor binds to; the TensorRT backend turns it into ``set_tensor_address`` +
  ``execute_async_v3`` calls inside a CUDA-graph capture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from histosmith.errors import HistoSmithError
from histosmith.runtime.schedule import DDIMTables
from histosmith.runtime.specs import (
    CONDITION,
    DISTANCE,
    GUIDANCE,
    IMAGE,
    LATENT,
    NEXT_LATENT,
    SEMANTIC,
    STEP_COEFS,
    STEP_NOISE,
    TIMESTEP,
)


@dataclass(frozen=True)
class BatchBuckets:
    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.sizes or any(s < 1 for s in self.sizes) or list(self.sizes) != sorted(set(self.sizes)):
            raise HistoSmithError(f"batch buckets must be distinct positive sizes in increasing order: {self.sizes}")

    @classmethod
    def parse(cls, text: str) -> BatchBuckets:
        try:
            sizes = sorted({int(s) for s in text.split(",") if s.strip()})
        except ValueError:
            raise HistoSmithError(f"--batch-buckets: expected sizes like 1,8,32, got {text!r}") from None
        return cls(tuple(sizes))

    @property
    def largest(self) -> int:
        return self.sizes[-1]

    def bucket_for(self, n: int) -> int:
        """The smallest bucket that holds ``n`` tiles."""
        for size in self.sizes:
            if n <= size:
                return size
        raise HistoSmithError(f"batch of {n} exceeds the largest bucket ({self.largest})")

    def profiles(self) -> list[tuple[int, int, int]]:
        """TensorRT (min, opt, max) batch per bucket: each bucket covers sizes above the previous one."""
        out, low = [], 1
        for size in self.sizes:
            out.append((low, size, size))
            low = size + 1
        return out


@dataclass(frozen=True)
class StepTables:
    """Device-ready per-step constants for one bucket."""

    timesteps: np.ndarray  # (S, B) float32: step i's timestep for every row
    coefs: np.ndarray  # (S, 3) float32: (A, B, σ) of step i

    @classmethod
    def build(cls, tables: DDIMTables, batch: int) -> StepTables:
        timesteps = np.repeat(tables.timesteps.astype(np.float32)[:, None], batch, axis=1)
        coefs = np.stack([tables.sample_coef, tables.output_coef, tables.noise_coef], axis=1).astype(np.float32)
        return cls(np.ascontiguousarray(timesteps), np.ascontiguousarray(coefs))


@dataclass(frozen=True)
class Binding:
    """Which buffer (by name, and row/step index into it) one tensor binds to."""

    buffer: str
    index: int | None = None  # for tables: the step whose slice is bound


@dataclass(frozen=True)
class Launch:
    graph: str  # "step" or "decoder"
    inputs: dict[str, Binding]
    outputs: dict[str, Binding]


def latent_buffer(i: int) -> str:
    """Ping-pong buffer that holds the latent before step ``i``."""
    return f"latent{i % 2}"


def capture_plan(num_steps: int) -> list[Launch]:
    """The launches of one batch, in order: S fused steps, then the decoder."""
    launches = []
    for i in range(num_steps):
        launches.append(Launch(
            "step",
            inputs={LATENT: Binding(latent_buffer(i)), TIMESTEP: Binding("timesteps", i),
                    CONDITION: Binding("condition"), GUIDANCE: Binding("guidance"),
                    STEP_COEFS: Binding("coefs", i), STEP_NOISE: Binding("noise", i)},
            outputs={NEXT_LATENT: Binding(latent_buffer(i + 1))},
        ))
    launches.append(Launch("decoder", inputs={LATENT: Binding(latent_buffer(num_steps))},
                           outputs={IMAGE: Binding(IMAGE), DISTANCE: Binding(DISTANCE), SEMANTIC: Binding(SEMANTIC)}))
    return launches


def pad_rows(array: np.ndarray, rows: int, fill: float = 0.0) -> np.ndarray:
    """``array`` with its leading axis padded to ``rows`` (padding rows are discarded after the run)."""
    if len(array) > rows:
        raise HistoSmithError(f"{len(array)} rows do not fit a bucket of {rows}")
    if len(array) == rows:
        return np.ascontiguousarray(array)
    pad = np.full((rows - len(array), *array.shape[1:]), fill, dtype=array.dtype)
    return np.ascontiguousarray(np.concatenate([array, pad]))


def run_plan_on_host(plan: list[Launch], step_fn, decoder_fn, buffers: dict[str, np.ndarray]) -> None:  # noqa: ANN001
    """Execute a capture plan with numpy callables: the reference the GPU backends are tested against.

    ``step_fn(**inputs) -> next_latent`` and ``decoder_fn(latent) -> (image, distance, semantic)``.
    """

    def fetch(b: Binding) -> np.ndarray:
        array = buffers[b.buffer]
        return array[b.index] if b.index is not None else array

    for launch in plan:
        inputs = {name: fetch(b) for name, b in launch.inputs.items()}
        if launch.graph == "step":
            fetch(launch.outputs[NEXT_LATENT])[...] = step_fn(**inputs)
        else:
            for b, value in zip(launch.outputs.values(), decoder_fn(inputs[LATENT]), strict=True):
                fetch(b)[...] = value
