"""TensorRT backend (``hs-generate --engine unet.plan``): the whole sampling loop on one CUDA stream.

Lifecycle (explicit, as in TensorRT's demoDiffusion): load -> check against the manifest -> per batch
bucket: one execution context per engine on that bucket's profile, static device buffers bound once,
the per-step constants (timestep vectors, DDIM coefficients) uploaded once -> capture the launches of
:func:`histosmith.runtime.planning.capture_plan` (S fused U-Net + DDIM steps, then the decoder) as one
CUDA graph after an uncaptured warm-up run -> per batch: copy noise and conditions in, replay, copy
outputs out, one synchronisation. Where capture fails the same launches are enqueued directly, with a
warning. Written against the TensorRT 10/11 Python API and cuda-python; needs an NVIDIA GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histosmith.errors import HistoSmithError, file_error
from histosmith.runtime.backends.base import Decoded, tables_check
from histosmith.runtime.cuda_rt import DeviceBuffer, check, device_facts, import_cudart
from histosmith.runtime.manifest import Manifest, Variant
from histosmith.runtime.planning import BatchBuckets, Binding, StepTables, capture_plan, pad_rows
from histosmith.runtime.schedule import DDIMTables
from histosmith.runtime.specs import (
    CONDITION,
    DECODER,
    DISTANCE,
    IMAGE,
    SEMANTIC,
    STEP,
    GraphSpec,
)
from histosmith.runtime.tensorrt_facts import check_engine_facts

log = logging.getLogger(__name__)


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise HistoSmithError("the TensorRT backend needs the tensorrt package: pip install 'histosmith[trt]' "
                              "(NVIDIA's index) or JetPack's python3-libnvinfer") from None
    return trt


def load_plan(trt: Any, runtime: Any, path: Path, spec: GraphSpec, n_profiles: int) -> Any:
    """Deserialize a plan and check its I/O against the graph spec."""
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
    if engine.num_optimization_profiles != n_profiles:
        raise file_error(path, f"{engine.num_optimization_profiles} optimisation profiles, the manifest lists "
                               f"{n_profiles} batch buckets")
    return engine


@dataclass
class _Bucket:
    """Everything one bucket needs on the device; the captured graph reads and writes only these."""

    size: int
    step_ctx: Any
    decoder_ctx: Any
    buffers: dict[str, DeviceBuffer]
    host_out: dict[str, np.ndarray]
    graph_exec: Any = None
    graph: Any = None
    plan: list = field(default_factory=list)


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, step_plan: Path, decoder_plan: Path, manifest: Manifest, variant: Variant,
                 tables: DDIMTables, cuda_graph: bool = True):
        trt = import_tensorrt()
        self.trt, self.cudart = trt, import_cudart()
        gpu, major, minor = device_facts()
        current = {"gpu": gpu, "compute_capability": f"{major}.{minor}", "tensorrt": trt.__version__}
        check_engine_facts(variant.extra, current, step_plan.name)
        self.buckets = BatchBuckets(tuple(variant.extra.get("buckets") or ()))
        self.step_spec, self.decoder_spec = manifest.graph(STEP), manifest.graph(DECODER)
        self.tables = tables
        self.latent_shape = tuple(manifest.latent_shape)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        n = len(self.buckets.sizes)
        self.step_engine = load_plan(trt, self.runtime, step_plan, self.step_spec, n)
        self.decoder_engine = load_plan(trt, self.runtime, decoder_plan, self.decoder_spec, n)
        self.stream = check(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
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
        ctx = engine.create_execution_context()
        ctx.set_optimization_profile_async(profile, self.stream)
        check(self.cudart.cudaStreamSynchronize(self.stream), "profile switch")
        for name, shape in spec.input_shapes(batch).items():
            if not ctx.set_input_shape(name, shape):
                raise HistoSmithError(f"TensorRT rejected shape {shape} for {name}")
        return ctx

    def _setup(self, batch: int) -> _Bucket:
        profile = self.buckets.sizes.index(batch)
        steps = StepTables.build(self.tables, batch)
        s, c = self.tables.num_steps, self.latent_shape
        f32 = np.dtype(np.float32).itemsize
        sizes = {
            "latent0": batch * int(np.prod(c)) * f32, "latent1": batch * int(np.prod(c)) * f32,
            "condition": batch * self.step_spec.input_shapes(batch)[CONDITION][1] * f32,
            "guidance": batch * f32, "timesteps": steps.timesteps.nbytes, "coefs": steps.coefs.nbytes,
            "noise": (s if self.tables.stochastic else 1) * batch * int(np.prod(c)) * f32,
        }
        host_out = {name: np.zeros(shape, np.float32) for name, shape in self.decoder_spec.output_shapes(batch).items()}
        sizes.update({name: arr.nbytes for name, arr in host_out.items()})
        buffers = {name: DeviceBuffer(n) for name, n in sizes.items()}
        buffers["timesteps"].upload(steps.timesteps, self.stream)
        buffers["coefs"].upload(steps.coefs, self.stream)
        if not self.tables.stochastic:  # σ = 0 every step: one zero buffer serves as the noise of all steps
            buffers["noise"].upload(np.zeros((batch, *c), np.float32), self.stream)
        check(self.cudart.cudaStreamSynchronize(self.stream), "upload step tables")
        bucket = _Bucket(batch, self._context(self.step_engine, profile, self.step_spec, batch),
                         self._context(self.decoder_engine, profile, self.decoder_spec, batch), buffers, host_out,
                         plan=capture_plan(s))
        self._enqueue(bucket)  # uncaptured warm-up: shape-dependent setup happens here, not in the graph
        check(self.cudart.cudaStreamSynchronize(self.stream), "warm-up")
        if self.use_graph:
            self._capture(bucket)
        return bucket

    def _address(self, bucket: _Bucket, binding: Binding) -> int:
        """Device address of a binding: step tables are (S, ...) arrays, step i's slice is bound."""
        buf = bucket.buffers[binding.buffer]
        shared_zero_noise = binding.buffer == "noise" and not self.tables.stochastic
        if binding.index is None or shared_zero_noise:
            return buf.ptr
        return buf.ptr + binding.index * (buf.nbytes // self.tables.num_steps)

    def _enqueue(self, bucket: _Bucket) -> None:
        """Issue every launch of the plan on the stream (also what a capture records)."""
        for launch in bucket.plan:
            ctx = bucket.step_ctx if launch.graph == "step" else bucket.decoder_ctx
            for name, binding in {**launch.inputs, **launch.outputs}.items():
                ctx.set_tensor_address(name, self._address(bucket, binding))
            if not ctx.execute_async_v3(self.stream):
                raise RuntimeError(f"TensorRT enqueue of the {launch.graph} engine failed")

    def _capture(self, bucket: _Bucket) -> None:
        cudart = self.cudart
        try:
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
            check(cudart.cudaStreamBeginCapture(self.stream, mode), "cudaStreamBeginCapture")
            try:
                self._enqueue(bucket)
            finally:
                graph = check(cudart.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")
            bucket.graph = graph
            bucket.graph_exec = check(cudart.cudaGraphInstantiateWithFlags(graph, 0), "cudaGraphInstantiate")
        except RuntimeError as exc:
            log.warning("CUDA graph capture failed for batch %d (%s); enqueueing the loop directly", bucket.size, exc)
            bucket.graph = bucket.graph_exec = None

    # ------------------------------------------------------------------ running

    def sample(self, latents: np.ndarray, conditions: np.ndarray, guidance: np.ndarray,
               step_noise: np.ndarray | None) -> Decoded:
        tables_check(self.tables, step_noise)
        n = len(latents)
        size = self.buckets.bucket_for(n)
        bucket = self._buckets.get(size) or self._buckets.setdefault(size, self._setup(size))
        b, stream = bucket.buffers, self.stream
        b["latent0"].upload(pad_rows(latents.astype(np.float32), size), stream)
        b["condition"].upload(pad_rows(conditions.astype(np.float32), size), stream)
        b["guidance"].upload(pad_rows(guidance.astype(np.float32), size, 1.0), stream)
        if step_noise is not None and self.tables.stochastic:
            padded = np.zeros((self.tables.num_steps, size, *self.latent_shape), np.float32)
            padded[:, :n] = step_noise
            b["noise"].upload(padded, stream)
        if bucket.graph_exec is not None:
            check(self.cudart.cudaGraphLaunch(bucket.graph_exec, stream), "cudaGraphLaunch")
        else:
            self._enqueue(bucket)
        for name, host in bucket.host_out.items():
            b[name].download(host, stream)
        final = np.zeros((size, *self.latent_shape), np.float32)
        b[f"latent{self.tables.num_steps % 2}"].download(final, stream)
        check(self.cudart.cudaStreamSynchronize(stream), "sync")  # the one sync point of a batch
        out = bucket.host_out
        return Decoded(out[IMAGE][:n].copy(), out[DISTANCE][:n].copy(), out[SEMANTIC][:n].copy(), final[:n])

    def close(self) -> None:
        for bucket in self._buckets.values():
            if bucket.graph_exec is not None:
                check(self.cudart.cudaGraphExecDestroy(bucket.graph_exec), "cudaGraphExecDestroy")
                check(self.cudart.cudaGraphDestroy(bucket.graph), "cudaGraphDestroy")
            for buf in bucket.buffers.values():
                buf.free()
        self._buckets.clear()

