"""ONNX Runtime backend: CPU, CUDA or TensorRT execution providers, IOBinding on preallocated buffers.

Host loop (CPU provider): per batch size, the host buffers (latent, timestep, condition, guidance, noise
prediction, x̂_0 history, decoder outputs) are allocated once and bound by pointer; the sampling loop then
only writes the timestep, runs the U-Net and updates the latent in place with the step's scalars
(:mod:`histosmith.runtime.schedule`: ``x̂_0 = P x + Q ε̂``, ``x = A x + B ε̂ + C1 x̂_0' + C2 x̂_0''``) — no
allocation per step; the history rotates by reference.

Device loop (CUDA / TensorRT providers): the fused step graph (guided U-Net + DDIM update) runs on
OrtValues that live on the device (:mod:`histosmith.runtime.backends.ort_device`), so the latent never
leaves the GPU between steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from histosmith.errors import HistoSmithError, file_error
from histosmith.runtime.backends.base import Decoded, tables_check
from histosmith.runtime.backends.ort_device import DeviceLoop
from histosmith.runtime.schedule import SamplerTables
from histosmith.runtime.specs import (
    CONDITION,
    DISTANCE,
    GUIDANCE,
    IMAGE,
    LATENT,
    NOISE_PRED,
    SEMANTIC,
    TIMESTEP,
    GraphSpec,
)

log = logging.getLogger(__name__)
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def installed_onnxruntime() -> list[str]:
    """The ONNX Runtime distributions installed in this environment (they share the ``onnxruntime`` module)."""
    from importlib import metadata

    names = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            continue
        names.append(dist)
    return names


def check_onnxruntime_install() -> None:
    """Refuse the broken mix of ``onnxruntime`` and ``onnxruntime-gpu``: both write the same ``onnxruntime``
    package, so whichever was installed last silently wins, usually without the CUDA provider."""
    found = installed_onnxruntime()
    if len(found) > 1:
        raise HistoSmithError("onnxruntime: both onnxruntime and onnxruntime-gpu are installed and overwrite each "
                              "other; keep one: pip uninstall -y onnxruntime onnxruntime-gpu && "
                              "pip install onnxruntime-gpu (GPU) or onnxruntime (CPU)")


def provider_options(provider: str, cuda_graph: bool) -> dict[str, str]:
    """Options of the chosen execution provider; CUDA graphs are its own capture (``enable_cuda_graph``)."""
    if provider == "cuda":
        return {"enable_cuda_graph": "1" if cuda_graph else "0"}
    if provider == "tensorrt":
        return {"trt_cuda_graph_enable": "1" if cuda_graph else "0", "trt_fp16_enable": "1"}
    return {}


def make_session(path: Path, provider: str, threads: int | None, cuda_graph: bool = False,
                 spin: bool = True) -> ort.InferenceSession:
    """An optimised session on ``provider``. ``spin=False``: its CPU worker threads sleep as soon as a run ends.

    Each session owns a thread pool whose workers spin-wait after a run, ready for the next one. That suits
    the U-Net, called back to back; the decoder runs once per batch, and spinning workers left behind by it
    can only compete with the U-Net's for the cores, so its session does not spin. On an idle 2-core machine
    the difference is small (``benchmarks/bench_decoder_spin.py``: 1.02x tiles/s at batch 1, 1.00x at 16)."""
    check_onnxruntime_install()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    wanted = PROVIDERS[provider]
    if wanted not in ort.get_available_providers():
        raise HistoSmithError(f"ONNX Runtime here has no {wanted} (available: {ort.get_available_providers()}); "
                              "install onnxruntime-gpu for cuda/tensorrt")
    providers: list = [(wanted, provider_options(provider, cuda_graph))]
    if wanted != "CPUExecutionProvider" and not cuda_graph:  # a captured graph must run wholly on the device
        providers.append("CPUExecutionProvider")
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt or invalid models
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise file_error(path, f"ONNX Runtime cannot load it ({first})") from None


@dataclass
class _Buffers:
    """Host buffers for one batch size, bound to both sessions."""

    latent: np.ndarray
    timestep: np.ndarray
    condition: np.ndarray
    guidance: np.ndarray
    noise_pred: np.ndarray
    scratch: np.ndarray
    history: list[np.ndarray]  # x̂_0 of the previous steps, newest first, and one spare (multistep solvers)
    outputs: dict[str, np.ndarray]
    unet_binding: ort.IOBinding
    decoder_binding: ort.IOBinding


def _bind(binding: ort.IOBinding, name: str, array: np.ndarray, output: bool) -> None:
    args = dict(device_type="cpu", device_id=0, element_type=array.dtype, shape=array.shape,
                buffer_ptr=array.ctypes.data)
    (binding.bind_output if output else binding.bind_input)(name, **args)


class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, unet: Path, decoder: Path, unet_spec: GraphSpec, decoder_spec: GraphSpec, tables: SamplerTables,
                 batch_range: tuple[int, int], provider: str = "cpu", threads: int | None = None,
                 step: Path | None = None, step_spec: GraphSpec | None = None, device_loop: bool | None = None,
                 cuda_graph: bool = True, device_id: int = 0):
        """``device_loop`` (default: on for the cuda / tensorrt providers) runs the fused ``step`` graph on
        device-resident OrtValues; ``cuda_graph`` lets the provider capture it (CUDA / TensorRT only)."""
        check_onnxruntime_install()  # before anything: a fallback must never hide it
        self.unet_spec, self.decoder_spec, self.tables = unet_spec, decoder_spec, tables
        self.batch_range = batch_range
        self.loop: DeviceLoop | None = None
        on_device = provider != "cpu" if device_loop is None else device_loop
        self.name = f"onnxruntime-{provider}"
        if on_device:
            if step is None or step_spec is None:
                raise file_error(unet.parent, "this export has no fused step graph (step.onnx), which the device "
                                              "loop needs; re-export it with this version")
            graph = cuda_graph and provider != "cpu"
            self.unet, self.decoder = self._device_sessions(step, decoder, provider, threads, graph)
            graph = graph and self._graph_ok
            self._check_io(self.unet, step_spec, step)
            self.loop = DeviceLoop(self.unet, self.decoder, step_spec, decoder_spec, tables,
                                   "cpu" if provider == "cpu" else "cuda", device_id, graph)
            self.name += "-device" + ("-graph" if graph else "")
        else:
            self.unet = make_session(unet, provider, threads)
            self.decoder = make_session(decoder, provider, threads, spin=False)  # once per batch: see make_session
            self._check_io(self.unet, unet_spec, unet)
        self._check_io(self.decoder, decoder_spec, decoder)
        self._buffers: dict[int, _Buffers] = {}

    def _device_sessions(self, step: Path, decoder: Path, provider: str, threads: int | None,
                         cuda_graph: bool) -> tuple[ort.InferenceSession, ort.InferenceSession]:
        """Sessions for the device loop; without CUDA graphs where the provider cannot capture the graph
        (a node it has no kernel for falls back to the CPU, which a captured graph cannot contain)."""
        self._graph_ok = cuda_graph
        if cuda_graph:
            try:
                return (make_session(step, provider, threads, True),
                        make_session(decoder, provider, threads, True, spin=False))
            except HistoSmithError as exc:
                log.warning("ONNX Runtime cannot capture these graphs as CUDA graphs (%s); running without", exc)
                self._graph_ok = False
        return make_session(step, provider, threads), make_session(decoder, provider, threads, spin=False)

    @staticmethod
    def _check_io(session: ort.InferenceSession, spec: GraphSpec, path: Path) -> None:
        got_in = [i.name for i in session.get_inputs()]
        got_out = [o.name for o in session.get_outputs()]
        if got_in != spec.input_names or got_out != spec.output_names:
            raise file_error(path, f"graph I/O {got_in} -> {got_out} does not match the manifest "
                                   f"({spec.input_names} -> {spec.output_names})")
        for meta, tensor in zip(session.get_inputs(), spec.inputs, strict=True):
            dims = [d if isinstance(d, int) else "batch" for d in meta.shape]
            if dims[1:] != [int(d) for d in tensor.shape[1:]]:
                raise file_error(path, f"input {meta.name} has shape {meta.shape}, manifest says {tensor.shape}")

    def batch_sizes(self) -> tuple[int, int]:
        return self.batch_range

    def close(self) -> None:
        self._buffers.clear()
        if self.loop is not None:
            self.loop.close()

    def _allocate(self, batch: int) -> _Buffers:
        u_in = self.unet_spec.input_shapes(batch)
        buffers = _Buffers(
            latent=np.zeros(u_in[LATENT], np.float32),
            timestep=np.zeros(u_in[TIMESTEP], np.float32),
            condition=np.zeros(u_in[CONDITION], np.float32),
            guidance=np.zeros(u_in[GUIDANCE], np.float32),
            noise_pred=np.zeros(self.unet_spec.output_shapes(batch)[NOISE_PRED], np.float32),
            scratch=np.zeros(u_in[LATENT], np.float32),
            history=[np.zeros(u_in[LATENT], np.float32) for _ in range(self.tables.history + 1 if
                                                                       self.tables.history else 0)],
            outputs={name: np.zeros(shape, np.float32)
                     for name, shape in self.decoder_spec.output_shapes(batch).items()},
            unet_binding=self.unet.io_binding(),
            decoder_binding=self.decoder.io_binding(),
        )
        for name, array in ((LATENT, buffers.latent), (TIMESTEP, buffers.timestep), (CONDITION, buffers.condition),
                            (GUIDANCE, buffers.guidance)):
            _bind(buffers.unet_binding, name, array, output=False)
        _bind(buffers.unet_binding, NOISE_PRED, buffers.noise_pred, output=True)
        _bind(buffers.decoder_binding, LATENT, buffers.latent, output=False)
        for name, array in buffers.outputs.items():
            _bind(buffers.decoder_binding, name, array, output=True)
        return buffers

    def buffers(self, batch: int) -> _Buffers:
        """The bound buffers of one batch size (allocated on first use)."""
        if batch not in self._buffers:
            self._buffers[batch] = self._allocate(batch)
        return self._buffers[batch]

    def run_unet(self, batch: int) -> None:
        """One guided U-Net call on the bound buffers (benchmarks time this)."""
        self.unet.run_with_iobinding(self.buffers(batch).unet_binding)

    def run_decoder(self, batch: int) -> None:
        self.decoder.run_with_iobinding(self.buffers(batch).decoder_binding)

    def sample(self, latents: np.ndarray, conditions: np.ndarray, guidance: np.ndarray,
               step_noise: np.ndarray | None) -> Decoded:
        tables_check(self.tables, step_noise)
        n = len(latents)
        low, high = self.batch_range
        if n > high:
            raise HistoSmithError(f"batch {n} exceeds what the graphs accept ({low}..{high})")
        if self.loop is not None:
            out, latent = self.loop.run(latents, conditions, guidance, step_noise, max(n, low))
            return Decoded(out[IMAGE], out[DISTANCE], out[SEMANTIC], latent)
        buf = self.buffers(max(n, low))  # a fixed-batch graph gets zero padding
        buf.latent[:n], buf.latent[n:] = latents, 0
        buf.condition[:n], buf.condition[n:] = conditions, 0
        buf.guidance[:n], buf.guidance[n:] = guidance, 1
        t = self.tables
        hist = buf.history  # [x̂_0 of step i-1, x̂_0 of step i-2, spare]: rotated, never copied
        for h in hist:
            h.fill(0)
        for i in range(t.num_steps):
            buf.timestep.fill(t.timesteps[i])
            self.unet.run_with_iobinding(buf.unet_binding)
            if hist:  # x̂_0 = P x + Q ε̂, into the spare buffer, before x changes
                x0 = hist[-1]
                np.multiply(buf.latent, t.x0_sample_coef[i], out=x0)
                np.multiply(buf.noise_pred, t.x0_output_coef[i], out=buf.scratch)
                np.add(x0, buf.scratch, out=x0)
            # the step in place: x = A x + B ε̂ (+ C_k x̂_0[i-1-k]) (+ σ z)
            np.multiply(buf.latent, t.sample_coef[i], out=buf.latent)
            np.multiply(buf.noise_pred, t.output_coef[i], out=buf.noise_pred)
            np.add(buf.latent, buf.noise_pred, out=buf.latent)
            for k in range(len(hist) - 1):
                if t.history_coef[i, k] != 0:
                    np.multiply(hist[k], t.history_coef[i, k], out=buf.scratch)
                    np.add(buf.latent, buf.scratch, out=buf.latent)
            if hist:
                hist.insert(0, hist.pop())  # the new x̂_0 becomes the newest; the oldest the spare
            if t.noise_coef[i] != 0 and step_noise is not None:
                np.multiply(step_noise[i], t.noise_coef[i], out=buf.scratch[:n])
                np.add(buf.latent[:n], buf.scratch[:n], out=buf.latent[:n])
        self.decoder.run_with_iobinding(buf.decoder_binding)
        out = buf.outputs
        return Decoded(out[IMAGE][:n].copy(), out[DISTANCE][:n].copy(), out[SEMANTIC][:n].copy(),
                       buf.latent[:n].copy())
