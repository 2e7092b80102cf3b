"""The torch backend: the reference sampler on the CPU, and the GPU path for machines without TensorRT.

It takes two callables — the guided U-Net ``(latent, timestep, condition, guidance) -> ε̂`` and the decoder
``latent -> (image, distance, semantic)`` — either live modules (``hs-sample``) or the torch.export programs
``hs-export`` writes (``hs-generate --engine unet.pt2`` / ``unet.bf16.pt2`` ...), which carry no device: they
run wherever they are loaded.

Every batch bucket gets static buffers; on CUDA (``cuda_graph=True``) the whole loop — S guided U-Net calls,
the sampler updates (with a multistep solver's x̂_0 history) and the decoder — is captured once per bucket as
one CUDA graph and replayed for every batch. Per batch, noise, conditions and (eta > 0) the step noise go
through pinned host buffers in one asynchronous copy each, and the outputs come back the same way before the
one sync. Modules may run in fp16 / bf16 (their normalisation and softmax stay fp32 inside); the latent itself
is kept and updated in fp32, since it accumulates over all steps. torch is imported only when this backend is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histosmith.errors import HistoSmithError
from histosmith.runtime.backends.base import Decoded, tables_check
from histosmith.runtime.backends.torch_program import DTYPES, load_program
from histosmith.runtime.planning import BatchBuckets
from histosmith.runtime.schedule import SamplerTables

log = logging.getLogger(__name__)


def torch_device(name: str) -> str:
    """``auto`` -> cuda when available, else cpu; refuses cuda where there is none."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HistoSmithError(f"--device {name}: CUDA is not available on this machine")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise HistoSmithError(f"--device {name}: the torch backend takes cpu or cuda[:N]")
    return name


def compiled(module: Callable[..., Any], device: str, cuda_graph: bool) -> Callable[..., Any]:
    """``torch.compile`` a live module or loaded program (kernel fusion); TorchScript modules are left as they are.

    With our own whole-loop CUDA graph, inductor's CUDA graphs are switched off
    (``max-autotune-no-cudagraphs``): compiled kernels are then captured like any others.
    """
    if isinstance(module, torch.jit.ScriptModule):
        log.warning("torch.compile does not apply to TorchScript modules; running them uncompiled")
        return module
    mode = "max-autotune-no-cudagraphs" if device.startswith("cuda") and cuda_graph else "default"
    # Inference only: fold the weights into the compiled graph as constants (prepacked for oneDNN on CPUs).
    # Compiled so, the bf16 U-Net program runs 1.5x its eager speed on this project's CPU
    # (benchmarks/results/int8_ceiling_reference/).
    import torch._inductor.config as inductor

    inductor.freezing = True
    program = torch.compile(module, mode=mode, dynamic=False)

    def call(*args: Any) -> Any:
        try:
            return program(*args)
        except Exception as exc:  # compilation happens on the first call: a missing C++ compiler surfaces here
            if not type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise HistoSmithError(f"--compile: torch.compile failed ({type(exc).__name__}: {first[:200]}); run "
                                  "without --compile, or install a C++ compiler (inductor needs one on the CPU)"
                                  ) from None

    return call


@dataclass
class _Static:
    """Buffers of one bucket; the captured graph reads and writes exactly the device ones."""

    latent: torch.Tensor  # (B, C, h, w) fp32 initial noise
    condition: torch.Tensor  # (B, D) model dtype
    guidance: torch.Tensor  # (B,)
    timesteps: torch.Tensor  # (S, B) float32: step i's timestep vector, no host write inside the loop
    noise: torch.Tensor | None  # (S, B, C, h, w) fp32, only when eta > 0
    staging: dict[str, torch.Tensor]  # pinned host twins of the inputs above (CUDA only)
    outputs: tuple[torch.Tensor, ...] | None = None  # written by the captured graph
    host_outputs: tuple[torch.Tensor, ...] | None = None  # pinned host twins of ``outputs`` (CUDA only)
    graph: Any = None  # torch.cuda.CUDAGraph once captured
    capture_failed: bool = False


class TorchBackend:
    name = "torch"

    def __init__(self, guided: Callable[..., torch.Tensor], decoder: Callable[..., Any], tables: SamplerTables,
                 device: str = "cpu", dtype: torch.dtype = torch.float32, cuda_graph: bool = False,
                 buckets: BatchBuckets | None = None, compile_modules: bool = False, pad: bool | None = None):
        """``buckets``: the batch sizes static buffers (and CUDA graphs) exist for; a batch runs in the
        smallest that holds it, zero-padded (``hs-generate`` passes :meth:`BatchBuckets.ladder` of its
        ``--batch``). Without buckets every batch size gets its own buffers (and graph), unpadded.
        ``pad``: whether to use the buckets (default: on CUDA; a fixed-batch program needs it anywhere)."""
        if compile_modules:
            guided, decoder = (compiled(m, device, cuda_graph) for m in (guided, decoder))
        self.guided, self.decoder, self.tables = guided, decoder, tables
        self.device, self.dtype = torch.device(device), dtype
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        if cuda_graph and not self.cuda_graph:
            log.warning("CUDA graphs need a CUDA device; running the loop eagerly on %s", self.device)
        self.buckets = buckets
        self.pad = buckets is not None and (self.device.type == "cuda" if pad is None else pad)
        # Per-step scalars as Python floats: the loop multiplies by constants (baked into a captured graph).
        # Rows (A, B, σ, P, Q, C1, C2): runtime.schedule.
        self.coefs = [tuple(float(c) for c in row) for row in tables.coefs()]
        self.history = tables.history
        self._static: dict[int, _Static] = {}
        precision = str(dtype).removeprefix("torch.")
        if self.cuda_graph:
            self.name = f"torch-cuda-graph-{precision}"
        elif self.device.type != "cpu":
            self.name = f"torch-{self.device.type}-{precision}"
        elif dtype != torch.float32:
            self.name = f"torch-cpu-{precision}"
        if compile_modules:
            self.name += "-compiled"

    @classmethod
    def from_files(cls, unet: Path, decoder: Path, tables: SamplerTables, device: str = "cpu",
                   precision: str = "fp32", cuda_graph: bool | None = None,
                   buckets: BatchBuckets | None = None, pad: bool | None = None,
                   compile_modules: bool = False) -> TorchBackend:
        """The torch.export programs of one precision from ``hs-export``, moved to ``device``; on CUDA the
        loop is captured as CUDA graphs unless told otherwise."""
        modules = [load_program(path, device, precision) for path in (unet, decoder)]
        graph = device.startswith("cuda") if cuda_graph is None else cuda_graph
        return cls(modules[0], modules[1], tables, device, DTYPES[precision], graph, buckets,
                   compile_modules=compile_modules, pad=pad)

    def close(self) -> None:
        """Release the static buffers and captured graphs."""
        self._static.clear()

    def batch_sizes(self) -> tuple[int, int]:
        return 1, self.buckets.largest if self.buckets is not None else 2**31 - 1

    # ------------------------------------------------------------------ the loop

    def _loop(self, st: _Static) -> tuple[torch.Tensor, ...]:
        """S steps + the decoder, reading only the static buffers (so it can be captured)."""
        x = st.latent
        history: list[torch.Tensor] = []  # x̂_0 of the previous steps, newest first (multistep solvers)
        for i, (a, b, s, p, q, c1, c2) in enumerate(self.coefs):
            eps = self.guided(x.to(self.dtype), st.timesteps[i], st.condition, st.guidance).float()
            x0 = p * x + q * eps if self.history else None
            x_next = a * x + b * eps  # runtime.schedule: x_s = A x_t + B ε̂ (+ C_k x̂_0[i-1-k]) (+ σ z)
            for c, earlier in zip((c1, c2), history, strict=False):
                if c != 0.0:
                    x_next = x_next + c * earlier
            if s != 0.0 and st.noise is not None:
                x_next = x_next + s * st.noise[i]
            if x0 is not None:
                history = [x0, *history[:self.history - 1]]
            x = x_next
        image, distance, semantic = self.decoder(x.to(self.dtype))
        return image.float(), distance.float(), semantic.float(), x

    def _buffers(self, bucket: int, latent_shape: tuple[int, ...], cond_dim: int) -> _Static:
        """The static buffers of one bucket, allocated on first use (pinned host twins on CUDA)."""
        st = self._static.get(bucket)
        if st is not None and st.latent.shape[1:] == latent_shape and st.condition.shape[1:] == (cond_dim,):
            return st
        dev = self.device
        steps = np.repeat(self.tables.timesteps.astype(np.float32)[:, None], bucket, axis=1)  # (S, B)
        st = _Static(
            latent=torch.zeros((bucket, *latent_shape), device=dev, dtype=torch.float32),
            condition=torch.zeros((bucket, cond_dim), device=dev, dtype=self.dtype),
            guidance=torch.ones((bucket,), device=dev, dtype=self.dtype),
            timesteps=torch.tensor(steps, device=dev, dtype=torch.float32),  # bf16 would round 999 to 1000
            noise=(torch.zeros((len(self.coefs), bucket, *latent_shape), device=dev, dtype=torch.float32)
                   if self.tables.stochastic else None),
            staging={},
        )
        if dev.type == "cuda":  # page-locked twins: asynchronous copies that overlap, no hidden staging copy
            st.staging = {name: torch.zeros(t.shape, dtype=t.dtype, pin_memory=True)
                          for name, t in (("latent", st.latent), ("condition", st.condition),
                                          ("guidance", st.guidance), ("noise", st.noise)) if t is not None}
        self._static[bucket] = st
        return st

    def _upload(self, st: _Static, name: str, rows: np.ndarray, fill: float = 0.0, axis: int = 0) -> None:
        """Copy ``rows`` into the first rows (along ``axis``) of a static input, the rest set to ``fill``;
        on CUDA through its pinned twin, one non-blocking copy."""
        device_buf = getattr(st, name)
        target = st.staging.get(name, device_buf)
        n = rows.shape[axis]
        head = target[:n] if axis == 0 else target[:, :n]
        tail = target[n:] if axis == 0 else target[:, n:]
        head.copy_(torch.from_numpy(rows))
        tail.fill_(fill)
        if target is not device_buf:
            device_buf.copy_(target, non_blocking=True)

    def _capture(self, st: _Static) -> None:
        """Warm up on a side stream, then capture the whole loop (torch.cuda.graphs semantics)."""
        try:
            with torch.cuda.device(self.device):
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(2):
                        self._loop(st)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    st.outputs = self._loop(st)
            st.graph = graph
        except RuntimeError as exc:
            log.warning("CUDA graph capture failed (%s); running this bucket without a graph",
                        str(exc).splitlines()[0])
            st.outputs, st.graph, st.capture_failed = None, None, True

    @torch.inference_mode()
    def sample(self, latents: np.ndarray, conditions: np.ndarray, guidance: np.ndarray,
               step_noise: np.ndarray | None) -> Decoded:
        tables_check(self.tables, step_noise)
        n = len(latents)
        bucket = self.buckets.bucket_for(n) if self.pad and self.buckets is not None else n
        st = self._buffers(bucket, tuple(latents.shape[1:]), conditions.shape[1])
        # The only host-to-device traffic of a batch: noise and conditions in (zero-padded to the bucket);
        # with eta > 0 the step noise of all S steps, in one copy.
        self._upload(st, "latent", latents)
        self._upload(st, "condition", conditions)
        self._upload(st, "guidance", guidance, fill=1.0)
        if st.noise is not None and step_noise is not None:
            self._upload(st, "noise", step_noise, axis=1)
        if self.cuda_graph and st.graph is None and not st.capture_failed:
            self._capture(st)
        if st.graph is not None:
            st.graph.replay()
            outputs = st.outputs
        else:
            outputs = self._loop(st)
        if self.device.type == "cuda":
            if st.host_outputs is None:
                st.host_outputs = tuple(torch.empty(o.shape, dtype=o.dtype, pin_memory=True) for o in outputs)
            for host, out in zip(st.host_outputs, outputs, strict=True):
                host.copy_(out, non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()  # the one sync point of a batch
            outputs = st.host_outputs
        image, distance, semantic, latent = (o[:n].numpy().copy() for o in outputs)
        return Decoded(image, distance, semantic, latent)
