"""TensorRT backend (``hs-generate --engine unet.plan``): the whole sampling loop on one CUDA stream.

Lifecycle (explicit, as in TensorRT's demoDiffusion): load -> check against the manifest -> per batch
bucket: one execution context per engine on that bucket's profile, static device buffers, every engine
tensor bound once to a fixed buffer (:data:`histosmith.runtime.planning.BINDINGS`), the per-step
constants (timestep vectors, DDIM coefficients) uploaded once -> the operations of
:func:`histosmith.runtime.planning.capture_plan` (per step: device-to-device copies of that step's
constants into the bound slots, the fused U-Net + DDIM step, the output latent copied back; then the
decoder) captured as one CUDA graph after an uncaptured warm-up run -> per batch: copy noise and
conditions in, replay, copy outputs out, one synchronisation. Where capture fails the same operations
are issued directly, with a warning. Written against the TensorRT 10/11 Python API and cuda-python.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histosmith.errors import HistoSmithError, file_error
from histosmith.runtime.backends.base import Decoded, tables_check
from histosmith.runtime.cuda_rt import DeviceBuffer, check, create_stream, device_facts, import_cudart
from histosmith.runtime.manifest import Manifest, Variant
from histosmith.runtime.planning import (
    BINDINGS,
    BatchBuckets,
    Copy,
    StepTables,
    capture_plan,
    pad_rows,
)
from histosmith.runtime.schedule import DDIMTables
from histosmith.runtime.specs import CONDITION, DECODER, DISTANCE, IMAGE, LATENT, SEMANTIC, STEP, GraphSpec
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
    host_out: dict[str, np.ndarray]
    ops: list = field(default_factory=list)
    graph_exec: Any = None
    graph: Any = None


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, step_plan: Path, decoder_plan: Path, manifest: Manifest, variant: Variant,
                 tables: DDIMTables, cuda_graph: bool = True):
        trt = import_tensorrt()
        self.trt, self.cudart = trt, import_cudart()
        gpu, major, minor = device_facts()
        current = {"gpu": gpu, "compute_capability": f"{major}.{minor}", "tensorrt": trt.__version__}
        if variant.tensorrt is None:
            raise HistoSmithError(f"{step_plan.name}: the manifest records no TensorRT build facts")
        check_engine_facts(variant.tensorrt.facts(), current, step_plan.name)
        self.buckets = BatchBuckets(variant.tensorrt.buckets)
        self.step_spec, self.decoder_spec = manifest.graph(STEP), manifest.graph(DECODER)
        self.tables = tables
        self.latent_shape = tuple(manifest.latent_shape)
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
                   tables: DDIMTables) -> TensorRTBackend:
        return cls(unet, decoder, manifest, variant, tables)

    def batch_sizes(self) -> tuple[int, int]:
        return 1, self.buckets.largest

    # ------------------------------------------------------------------ setup per bucket

    def _context(self, engine: Any, profile: int, spec: GraphSpec, batch: int) -> Any:
        strategy = getattr(self.trt, "ExecutionContextAllocationStrategy", None)
        # Allocate activation memory for this context's own profile, not the largest of all buckets.
        ctx = (engine.create_execution_context(strategy.ON_PROFILE_CHANGE) if strategy is not None
               else engine.create_execution_context())
        ctx.set_optimization_profile_async(profile, self.stream)
        check(self.cudart.cudaStreamSynchronize(self.stream), "profile switch")
        for name, shape in spec.input_shapes(batch).items():
            if not ctx.set_input_shape(name, shape):
                raise HistoSmithError(f"TensorRT rejected shape {shape} for {name}")
        return ctx

    def _setup(self, batch: int) -> _Bucket:
        profile = self.buckets.sizes.index(batch)
        steps = StepTables.build(self.tables, batch)
        s, f32 = self.tables.num_steps, np.dtype(np.float32).itemsize
        latent_bytes = batch * int(np.prod(self.latent_shape)) * f32
        sizes = {
            "latent_in": latent_bytes, "latent_out": latent_bytes, "noise_cur": latent_bytes,
            "condition": batch * self.step_spec.input_shapes(batch)[CONDITION][1] * f32, "guidance": batch * f32,
            "timestep_cur": batch * f32, "coefs_cur": 3 * f32,
            "timesteps": steps.timesteps.nbytes, "coefs": steps.coefs.nbytes,
        }
        if self.tables.stochastic:
            sizes["noise"] = s * latent_bytes
        host_out = {name: np.zeros(shape, np.float32) for name, shape in self.decoder_spec.output_shapes(batch).items()}
        sizes.update({name: arr.nbytes for name, arr in host_out.items()})
        buffers = {name: DeviceBuffer(n) for name, n in sizes.items()}
        buffers["timesteps"].upload(steps.timesteps, self.stream)
        buffers["coefs"].upload(steps.coefs, self.stream)
        if not self.tables.stochastic:  # σ = 0 at every step: the bound noise slot stays zero
            buffers["noise_cur"].upload(np.zeros((batch, *self.latent_shape), np.float32), self.stream)
        check(self.cudart.cudaStreamSynchronize(self.stream), "upload step tables")
        bucket = _Bucket(batch, self._context(self.step_engine, profile, self.step_spec, batch),
                         self._context(self.decoder_engine, profile, self.decoder_spec, batch), buffers, host_out,
                         capture_plan(s, self.tables.stochastic))
        for graph, ctx in (("step", bucket.step_ctx), ("decoder", bucket.decoder_ctx)):
            for name, buffer in BINDINGS[graph].items():
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
        cudart = self.cudart
        graph = None
        try:
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            check(cudart.cudaStreamBeginCapture(self.stream, mode), "cudaStreamBeginCapture")
            try:
                self._issue(bucket)
            finally:
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
        b, stream = bucket.buffers, self.stream
        b["latent_in"].upload(pad_rows(latents.astype(np.float32), size), stream)
        b["condition"].upload(pad_rows(conditions.astype(np.float32), size), stream)
        b["guidance"].upload(pad_rows(guidance.astype(np.float32), size, 1.0), stream)
        if step_noise is not None and self.tables.stochastic:
            padded = np.zeros((self.tables.num_steps, size, *self.latent_shape), np.float32)
            padded[:, :n] = step_noise
            b["noise"].upload(padded, stream)
        if bucket.graph_exec is not None:
            check(self.cudart.cudaGraphLaunch(bucket.graph_exec, stream), "cudaGraphLaunch")
        else:
            self._issue(bucket)
        for name, host in bucket.host_out.items():
            b[name].download(host, stream)
        final = np.zeros((size, *self.latent_shape), np.float32)
        b["latent_in"].download(final, stream)
        check(self.cudart.cudaStreamSynchronize(stream), "sync")  # the one sync point of a batch
        out = bucket.host_out
        return Decoded(out[IMAGE][:n].copy(), out[DISTANCE][:n].copy(), out[SEMANTIC][:n].copy(), final[:n])

    def close(self) -> None:
        cudart = self.cudart
        for bucket in self._buckets.values():
            if bucket.graph_exec is not None:
                check(cudart.cudaGraphExecDestroy(bucket.graph_exec), "cudaGraphExecDestroy")
                check(cudart.cudaGraphDestroy(bucket.graph), "cudaGraphDestroy")
            bucket.step_ctx = bucket.decoder_ctx = None
            for buf in bucket.buffers.values():
                buf.free()
        self._buckets.clear()
        check(cudart.cudaStreamDestroy(self.stream), "cudaStreamDestroy")

