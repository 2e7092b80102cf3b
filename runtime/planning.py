"""Planning shared by the GPU backends (TensorRT and torch CUDA graphs), testable on any CPU.

* **Batch buckets**: the batch sizes for which static buffers, TensorRT profiles and CUDA graphs exist; a
  batch runs in the smallest bucket that holds it, zero-padded.
* **Step tables**: per-step device constants — the timestep vector and the solver coefficients ``(A, B, σ, P,
  Q, C1, C2)`` of every step (:mod:`histosmith.runtime.schedule`) — laid out once, so a captured graph reads
  step ``i``'s constants from its own address and nothing is written from the host inside the loop.
* **Fixed bindings**: every engine tensor is bound once to one buffer (``BINDINGS``); step ``i``'s constants
  are copied device-to-device into the bound slots, and the step's output latent (and x̂_0 history) back into
  its input.
* **Capture plan**: the ordered operations of one batch (per step: copies, the fused U-Net + solver step; then
  the decoder); the TensorRT backend issues them on one stream inside a CUDA-graph capture, and
  :func:`run_plan_on_host` executes the same plan in numpy for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from histosmith.errors import HistoSmithError
from histosmith.runtime.schedule import SamplerTables
from histosmith.runtime.specs import (
    CONDITION,
    DISTANCE,
    GUIDANCE,
    IMAGE,
    LATENT,
    NEXT_LATENT,
    NEXT_X0_HISTORY,
    SEMANTIC,
    STEP_COEFS,
    STEP_NOISE,
    TIMESTEP,
    X0_HISTORY,
)

DEFAULT_BATCH = 16


def fit_batch(given: int | None, limits: tuple[int, int], option: str = "--batch", default: int = DEFAULT_BATCH) -> int:
    """The batch a run uses: ``given`` when the export's graphs take it; left unset, ``default`` brought inside
    the graphs' range (a fixed-batch export of 4 runs batches of 4). A given batch outside it is refused in one
    line that names ``option`` and the range."""
    low, high = limits
    fitted = min(max(default, low), high)
    if given is None:
        return fitted
    if not low <= given <= high:
        raise HistoSmithError(f"{option} {given}: this export's graphs take batches of {low}..{high}; pick one in "
                              f"that range, or leave {option} out ({fitted})")
    return given


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

    @classmethod
    def ladder(cls, batch: int) -> BatchBuckets:
        """Buckets for runs of ``batch`` tiles: ``batch`` itself (full batches are never padded) and the
        powers of two below it (a final partial batch pads to at most twice its size)."""
        if batch < 1:
            raise HistoSmithError(f"batch must be >= 1, got {batch}")
        return cls(tuple(sorted({2**k for k in range(batch.bit_length()) if 2**k < batch} | {batch})))

    def padding(self, n: int) -> int:
        """Rows of zero padding a batch of ``n`` tiles gets."""
        return self.bucket_for(n) - n

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
    coefs: np.ndarray  # (S, K) float32: the first K of (A, B, σ, P, Q, C1, C2) of step i

    @classmethod
    def build(cls, tables: SamplerTables, batch: int, coef_count: int = 7) -> StepTables:
        """``coef_count``: what the step graph takes (:func:`histosmith.runtime.specs.step_coef_count`)."""
        timesteps = np.repeat(tables.timesteps.astype(np.float32)[:, None], batch, axis=1)
        return cls(np.ascontiguousarray(timesteps), step_coefs(tables, coef_count))


def step_graph_feed(input_names: list[str], coefs: np.ndarray, latent: np.ndarray,
                    history: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The step graph's solver inputs for one call on the host: this step's ``coefs`` (a row of
    :func:`step_coefs`), zero step noise, and the x̂_0 ``history`` (zeros when None) where the graph has one."""
    feed = {STEP_COEFS: coefs, STEP_NOISE: np.zeros_like(latent)}
    if X0_HISTORY in input_names:
        feed[X0_HISTORY] = history if history is not None else np.zeros((len(latent), 2, *latent.shape[1:]),
                                                                          latent.dtype)
    return feed


def step_coefs(tables: SamplerTables, coef_count: int) -> np.ndarray:
    """(S, ``coef_count``) float32 step-graph coefficients; a 3-coefficient graph (an export made before the
    multistep solvers) runs DDIM only."""
    if coef_count < 7 and tables.history:
        raise HistoSmithError(f"the {tables.sampler} sampler needs a step graph with an x̂_0 history, which this "
                              "export predates; re-export it with hs-export (or use --sampler ddim)")
    return np.ascontiguousarray(tables.coefs()[:, :coef_count])


@dataclass(frozen=True)
class Copy:
    """Device-to-device copy of ``src`` (row ``index`` of a per-step table, or all of it) into ``dst``."""

    src: str
    dst: str
    index: int | None = None


@dataclass(frozen=True)
class Run:
    """One engine launch; its tensors are bound once, to the buffers in ``BINDINGS[graph]``."""

    graph: str  # "step" | "decoder"


# Every tensor is bound to one fixed buffer for the life of a bucket: a captured graph then replays
# launches whose addresses never change, and no per-step slice needs TensorRT's 256-byte alignment.
BINDINGS: dict[str, dict[str, str]] = {
    "step": {LATENT: "latent_in", TIMESTEP: "timestep_cur", CONDITION: "condition", GUIDANCE: "guidance",
             STEP_COEFS: "coefs_cur", STEP_NOISE: "noise_cur", NEXT_LATENT: "latent_out",
             X0_HISTORY: "history_in", NEXT_X0_HISTORY: "history_out"},
    "decoder": {LATENT: "latent_in", IMAGE: IMAGE, DISTANCE: DISTANCE, SEMANTIC: SEMANTIC},
}


def capture_plan(num_steps: int, stochastic: bool, history: bool = False) -> list[Copy | Run]:
    """The operations of one batch, in stream order: per step, copy that step's constants into the bound
    slots, run the fused step engine, copy its output back to the input latent (and, for a multistep
    solver, its x̂_0 history back to the history input); then the decoder.

    With eta = 0 the noise slot is zero-filled once at setup and never copied; so is the history slot of a
    graph that has one when the sampler reads none (its coefficients are zero).
    """
    ops: list[Copy | Run] = []
    for i in range(num_steps):
        ops += [Copy("timesteps", "timestep_cur", i), Copy("coefs", "coefs_cur", i)]
        if stochastic:
            ops.append(Copy("noise", "noise_cur", i))
        ops += [Run("step"), Copy("latent_out", "latent_in")]
        if history:
            ops.append(Copy("history_out", "history_in"))
    ops.append(Run("decoder"))
    return ops


def pad_rows(array: np.ndarray, rows: int, fill: float = 0.0) -> np.ndarray:
    """``array`` with its leading axis padded to ``rows`` (padding rows are discarded after the run)."""
    if len(array) > rows:
        raise HistoSmithError(f"{len(array)} rows do not fit a bucket of {rows}")
    if len(array) == rows:
        return np.ascontiguousarray(array)
    pad = np.full((rows - len(array), *array.shape[1:]), fill, dtype=array.dtype)
    return np.ascontiguousarray(np.concatenate([array, pad]))


def run_plan_on_host(plan: list[Copy | Run], step_fn, decoder_fn, buffers: dict[str, np.ndarray]) -> None:
    """Execute a plan with numpy callables: the reference the GPU backends are tested against.

    ``step_fn(**inputs) -> next_latent`` (or ``(next_latent, next_x0_history)`` where ``buffers`` holds the
    history slots) and ``decoder_fn(latent) -> (image, distance, semantic)``; ``buffers`` maps buffer names
    (tables and bound slots) to arrays.
    """
    for op in plan:
        if isinstance(op, Copy):
            src = buffers[op.src] if op.index is None else buffers[op.src][op.index]
            buffers[op.dst][...] = src
            continue
        bound = BINDINGS[op.graph]
        if op.graph == "step":
            inputs = {name: buffers[buf] for name, buf in bound.items()
                      if name not in (NEXT_LATENT, NEXT_X0_HISTORY) and buf in buffers}
            out = step_fn(**inputs)
            if isinstance(out, tuple):
                buffers[bound[NEXT_LATENT]][...], buffers[bound[NEXT_X0_HISTORY]][...] = out
            else:
                buffers[bound[NEXT_LATENT]][...] = out
        else:
            outputs = decoder_fn(buffers[bound[LATENT]])
            for name, value in zip((IMAGE, DISTANCE, SEMANTIC), outputs, strict=True):
                buffers[bound[name]][...] = value
