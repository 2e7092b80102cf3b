"""TensorRT backend (``hs-generate --engine unet.plan``): the whole sampling loop on one CUDA stream.

Lifecycle (explicit, as in TensorRT's demoDiffusion): load -> check against the manifest -> per batch
bucket: one execution context per engine on that bucket's profile, static device buffers, every engine
tensor bound once to a fixed buffer (:data:`histosmith.runtime.planning.BINDINGS`), the per-step
constants (timestep vectors, DDIM coefficients) uploaded once -> the operations of
:func:`histosmith.runtime.planning.capture_plan` (per step: device-to-device copies of that step's
constants into the bound slots, the fused U-Net + DDIM step, the output latent copied back; then the
decoder) captured as one CUDA graph after an uncaptured warm-up run -> per batch: copy noise and
conditions in, replay, copy outputs out, one synchronisation. Where capture fails the same operations
are issued directly, with a warning. Written against the TensorRT 10/11 Python API (differences in
:mod:`histosmith.runtime.tensorrt_api`) and cuda-python.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histosmith.errors import HistoSmithError, file_error
from histosmith.runtime.backends.base import Decoded, tables_check
from histosmith.runtime.cuda_rt import DeviceBuffer, PinnedArray, check, create_stream, device_facts, import_cudart
from histosmith.runtime.manifest import Manifest, Variant
from histosmith.runtime.planning import (
    BINDINGS,
    BatchBuckets,
    Copy,
    StepTables,
    capture_plan,
)
from histosmith.runtime.schedule import SamplerTables
from histosmith.runtime.specs import (
    CONDITION,
    DECODER,
    DISTANCE,
    IMAGE,
    LATENT,
    SEMANTIC,
    STEP,
    X0_HISTORY,
    GraphSpec,
    step_coef_count,
)
from histosmith.runtime.tensorrt_api import create_context
from histosmith.runtime.tensorrt_facts import check_engine_facts

log = logging.getLogger(__name__)


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise HistoSmithError("the TensorRT backend needs the tensorrt package: pip install 'histosmith[trt]' "
                              "(NVIDIA's index) or JetPack's python3-libnvinfer") from None
    return trt


def load_plan(trt: Any, runtime: Any, path: Path, spec: GraphSpec, buckets: BatchBuckets) -> Any:
    """Deserialize a plan and check its I/O names, dtypes and per-bucket profiles against the manifest."""
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        gpu, major, minor = device_facts()
        raise file_error(path, f"TensorRT {trt.__version__} cannot load this plan on {gpu} (compute {major}.{minor}): "
                               "it was built for another GPU or TensorRT version; rebuild it here")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if sorted(inputs) != sorted(spec.input_names) or sorted(outputs) != sorted(spec.output_names):
        raise file_error(path, f"engine I/O {inputs} -> {outputs} does not match the manifest's "
                               f"{spec.input_names} -> {spec.output_names}")
    wrong = [n for n in names if engine.get_tensor_dtype(n) != trt.DataType.FLOAT]
    if wrong:
        raise file_error(path, f"tensors {wrong} are not float32 (the exported graphs keep float32 I/O)")
    if engine.num_optimization_profiles != len(buckets.sizes):
        raise file_error(path, f"{engine.num_optimization_profiles} optimisation profiles, the manifest lists "
                               f"{len(buckets.sizes)} batch buckets")
    for k, size in enumerate(buckets.sizes):
        largest = engine.get_tensor_profile_shape(LATENT, k)[2][0]
        if largest != size:
            raise file_error(path, f"profile {k} ends at batch {largest}, the manifest's bucket is {size}")
    return engine


@dataclass
class _Bucket:
    """Everything one bucket needs on the device; the captured graph reads and writes only these."""

    size: int
    step_ctx: Any
    decoder_ctx: Any
    buffers: dict[str, DeviceBuffer]
    host: dict[str, PinnedArray]  # page-locked twins of the buffers copied per batch (inputs and outputs)
    ops: list = field(default_factory=list)
    graph_exec: Any = None
    graph: Any = None
    keep: list = field(default_factory=list)  # runtime configs that must outlive the contexts


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, step_plan: Path, decoder_plan: Path, step_spec: GraphSpec, decoder_spec: GraphSpec,
                 variant: Variant, tables: SamplerTables, cuda_graph: bool = True):
        trt = import_tensorrt()
        self.trt, self.cudart = trt, import_cudart()
        gpu, major, minor = device_facts()
        current = {"gpu": gpu, "compute_capability": f"{major}.{minor}", "tensorrt": trt.__version__}
        if variant.tensorrt is None:
            raise HistoSmithError(f"{step_plan.name}: the manifest records no TensorRT build facts")
        check_engine_facts(variant.tensorrt.facts(), current, step_plan.name)
        self.buckets = BatchBuckets(variant.tensorrt.buckets)
        self.step_spec, self.decoder_spec = step_spec, decoder_spec
        self.tables = tables
        self.latent_shape = step_spec.input_shapes(1)[LATENT][1:]
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.step_engine = load_plan(trt, self.runtime, step_plan, self.step_spec, self.buckets)
        self.decoder_engine = load_plan(trt, self.runtime, decoder_plan, self.decoder_spec, self.buckets)
        self.stream = create_stream()
        self.use_graph = cuda_graph
        self._buckets: dict[int, _Bucket] = {}
        self.name = f"tensorrt-{variant.precision}" + ("-graph" if cuda_graph else "")

    @classmethod
    def from_files(cls, unet: Path, decoder: Path, manifest: Manifest, variant: Variant,
                   tables: SamplerTables) -> TensorRTBackend:
        return cls(unet, decoder, manifest.graph(STEP), manifest.graph(DECODER), variant, tables)

    def batch_sizes(self) -> tuple[int, int]:
        return 1, self.buckets.largest

    # ------------------------------------------------------------------ setup per bucket

    def _context(self, engine: Any, profile: int, spec: GraphSpec, batch: int, keep: list) -> Any:
        ctx, config = create_context(self.trt, engine)
        keep.append(config)
        if not ctx.set_optimization_profile_async(profile, self.stream):
            raise HistoSmithError(f"TensorRT rejected optimisation profile {profile} (batch {batch})")
        check(self.cudart.cudaStreamSynchronize(self.stream), "profile switch")
        for name, shape in spec.input_shapes(batch).items():
            if not ctx.set_input_shape(name, shape):
                raise HistoSmithError(f"TensorRT rejected shape {shape} for {name}")
        return ctx

    def _setup(self, batch: int) -> _Bucket:
        profile = self.buckets.sizes.index(batch)
        steps = StepTables.build(self.tables, batch, step_coef_count(self.step_spec))
        s, f32 = self.tables.num_steps, np.dtype(np.float32).itemsize
        latent_bytes = batch * int(np.prod(self.latent_shape)) * f32
        sizes = {
            "latent_in": latent_bytes, "latent_out": latent_bytes, "noise_cur": latent_bytes,
            "condition": batch * self.step_spec.input_shapes(batch)[CONDITION][1] * f32, "guidance": batch * f32,
            "timestep_cur": batch * f32, "coefs_cur": steps.coefs.shape[1] * f32,
            "timesteps": steps.timesteps.nbytes, "coefs": steps.coefs.nbytes,
        }
        has_history = X0_HISTORY in self.step_spec.input_names
        if has_history:  # (B, 2, C, h, w): the x̂_0 of the two previous steps, in and out
            sizes |= {"history_in": 2 * latent_bytes, "history_out": 2 * latent_bytes}
        if self.tables.stochastic:
            sizes["noise"] = s * latent_bytes
        out_shapes = self.decoder_spec.output_shapes(batch)
        sizes.update({name: int(np.prod(shape)) * f32 for name, shape in out_shapes.items()})
        buffers = {name: DeviceBuffer(n) for name, n in sizes.items()}
        latent = (batch, *self.latent_shape)
        host_shapes = {"latent_in": latent, "condition": (batch, self.step_spec.input_shapes(batch)[CONDITION][1]),
                       "guidance": (batch,), "latent_out": latent} | out_shapes
        if self.tables.stochastic:
            host_shapes["noise"] = (s, *latent)
        host = {name: PinnedArray(shape) for name, shape in host_shapes.items()}
        buffers["timesteps"].upload(steps.timesteps, self.stream)
        buffers["coefs"].upload(steps.coefs, self.stream)
        if not self.tables.stochastic:  # σ = 0 at every step: the bound noise slot stays zero
            buffers["noise_cur"].upload(np.zeros((batch, *self.latent_shape), np.float32), self.stream)
        if has_history:  # read with zero coefficients until filled (and always, for DDIM): keep it finite
            buffers["history_in"].upload(np.zeros((batch, 2, *self.latent_shape), np.float32), self.stream)
        check(self.cudart.cudaStreamSynchronize(self.stream), "upload step tables")
        keep: list = []
        bucket = _Bucket(batch, self._context(self.step_engine, profile, self.step_spec, batch, keep),
                         self._context(self.decoder_engine, profile, self.decoder_spec, batch, keep), buffers,
                         host, capture_plan(s, self.tables.stochastic, has_history and self.tables.history > 0),
                         keep=keep)
        for graph, ctx in (("step", bucket.step_ctx), ("decoder", bucket.decoder_ctx)):
            for name, buffer in BINDINGS[graph].items():
                if buffer not in buffers:  # the history of a step graph that has none
                    continue
                if not ctx.set_tensor_address(name, buffers[buffer].ptr):
                    raise HistoSmithError(f"TensorRT rejected the address of {name} ({graph} engine)")
        self._issue(bucket)  # uncaptured warm-up: shape-dependent setup happens here, not in the graph
        check(self.cudart.cudaStreamSynchronize(self.stream), "warm-up")
        if self.use_graph:
            self._capture(bucket)
        return bucket

    def _issue(self, bucket: _Bucket) -> None:
        """Issue every operation of the plan on the stream (also what a capture records)."""
        b = bucket.buffers
        for op in bucket.ops:
            if isinstance(op, Copy):
                offset = 0 if op.index is None else op.index * b[op.dst].nbytes  # row i of a per-step table
                b[op.dst].copy_from(b[op.src], self.stream, offset)
                continue
            ctx = bucket.step_ctx if op.graph == "step" else bucket.decoder_ctx
            if not ctx.execute_async_v3(self.stream):
                raise RuntimeError(f"TensorRT enqueue of the {op.graph} engine failed")

    def _capture(self, bucket: _Bucket) -> None:
        """Capture the plan as a CUDA graph; on failure, warn and leave the bucket on the direct path.

        The capture is always ended, but an error from ending it never replaces the error that broke the
        capture: that one is what the warning reports.
        """
        cudart = self.cudart
        graph = None
        try:
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            check(cudart.cudaStreamBeginCapture(self.stream, mode), "cudaStreamBeginCapture")
            try:
                self._issue(bucket)
            except RuntimeError:
                ended = cudart.cudaStreamEndCapture(self.stream)  # invalidated capture: end it, keep the cause
                if ended[0] == cudart.cudaError_t.cudaSuccess and ended[1] is not None:
                    cudart.cudaGraphDestroy(ended[1])
                raise
            graph = check(cudart.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")
            bucket.graph_exec = check(cudart.cudaGraphInstantiateWithFlags(graph, 0), "cudaGraphInstantiate")
            bucket.graph = graph
        except RuntimeError as exc:
            cudart.cudaGetLastError()  # clear the capture error so the direct path starts clean
            if graph is not None:
                cudart.cudaGraphDestroy(graph)
            bucket.graph = bucket.graph_exec = None
            log.warning("CUDA graph capture failed for batch %d (%s); issuing the loop directly", bucket.size, exc)

    # ------------------------------------------------------------------ running

    def sample(self, latents: np.ndarray, conditions: np.ndarray, guidance: np.ndarray,
               step_noise: np.ndarray | None) -> Decoded:
        tables_check(self.tables, step_noise)
        n = len(latents)
        size = self.buckets.bucket_for(n)
        if size not in self._buckets:
            self._buckets[size] = self._setup(size)
        bucket = self._buckets[size]
        b, h, stream = bucket.buffers, bucket.host, self.stream
        # Per batch: fill the pinned twins (padding rows zero, guidance 1), one async copy each.
        for name, rows, fill in (("latent_in", latents, 0.0), ("condition", conditions, 0.0),
                                 ("guidance", guidance, 1.0)):
            h[name].array[:n], h[name].array[n:] = rows, fill
            b[name].upload(h[name].array, stream)
        if step_noise is not None and self.tables.stochastic:
            h["noise"].array[:, :n], h["noise"].array[:, n:] = step_noise, 0.0
            b["noise"].upload(h["noise"].array, stream)  # the whole (S, B, ...) table in one copy
        if bucket.graph_exec is not None:
            check(self.cudart.cudaGraphLaunch(bucket.graph_exec, stream), "cudaGraphLaunch")
        else:
            self._issue(bucket)
        for name in (IMAGE, DISTANCE, SEMANTIC):
            b[name].download(h[name].array, stream)
        b["latent_in"].download(h["latent_out"].array, stream)  # the final latent (the plan copies it back)
        check(self.cudart.cudaStreamSynchronize(stream), "sync")  # the one sync point of a batch
        return Decoded(*(h[name].array[:n].copy() for name in (IMAGE, DISTANCE, SEMANTIC, "latent_out")))

    def close(self) -> None:
        """Destroy graphs, contexts, buffers and the stream (idempotent)."""
        cudart = self.cudart
        if self.stream is None:
            return
        check(cudart.cudaStreamSynchronize(self.stream), "sync before close")
        for bucket in self._buckets.values():
            if bucket.graph_exec is not None:
                check(cudart.cudaGraphExecDestroy(bucket.graph_exec), "cudaGraphExecDestroy")
                check(cudart.cudaGraphDestroy(bucket.graph), "cudaGraphDestroy")
            bucket.step_ctx = bucket.decoder_ctx = None
            bucket.keep.clear()
            for buf in (*bucket.buffers.values(), *bucket.host.values()):
                buf.free()
        self._buckets.clear()
        check(cudart.cudaStreamDestroy(self.stream), "cudaStreamDestroy")
        self.stream = None

