"""What ``hs-bench`` measures: the runtime's engines as ``hs-generate`` loads them, and peers.

Every contender offers the same three things for a batch: one guided U-Net call, one decoder call, and
a backend whose ``sample`` runs the whole loop (for the end-to-end ``generate`` measurement).

Peers (``--peers``): torch eager fp32 and torch bf16 autocast on the training checkpoint's modules, and
OpenVINO (when installed) reading the exported ``unet.onnx`` / ``unet.int8.onnx`` as they are.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histosmith.runtime.backends.base import Backend, Decoded, tables_check
from histosmith.runtime.schedule import SamplerTables, ScheduleConfig, Scheduler
from histosmith.runtime.specs import CONDITION, DISTANCE, GUIDANCE, IMAGE, LATENT, SEMANTIC, TIMESTEP

log = logging.getLogger(__name__)
UnetFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
DecoderFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class BatchInputs:
    latent: np.ndarray  # (B, C, h, w)
    timestep: np.ndarray  # (B,)
    condition: np.ndarray  # (B, D)
    guidance: np.ndarray  # (B,)


@dataclass
class Calls:
    unet: Callable[[], Any]
    decoder: Callable[[], Any]
    backend: Backend


@dataclass
class Contender:
    name: str
    kind: str  # "engine" (the runtime, as hs-generate runs it) | "peer"
    precision: str
    prepare: Callable[[BatchInputs], Calls]
    path: Path | None = None  # engines: the U-Net file
    compiled: bool = False  # engines: loaded with --compile


class FunctionBackend:
    """The sampling loop over plain U-Net / decoder functions (peers); the same tables and arithmetic as the
    runtime (:meth:`histosmith.runtime.schedule.Scheduler.step`, x̂_0 history included)."""

    def __init__(self, name: str, unet: UnetFn, decoder: DecoderFn, tables: SamplerTables,
                 context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        self.name, self.unet, self.decoder, self.tables, self.context = name, unet, decoder, tables, context

    def batch_sizes(self) -> tuple[int, int]:
        return 1, 1 << 20

    def sample(self, latents: np.ndarray, conditions: np.ndarray, guidance: np.ndarray,
               step_noise: np.ndarray | None) -> Decoded:
        tables_check(self.tables, step_noise)
        t = self.tables
        scheduler = Scheduler(ScheduleConfig())  # the tables carry everything; the schedule itself is unused
        scheduler.tables = t
        x = latents.copy()
        with self.context():
            for i in range(t.num_steps):
                eps = self.unet(x, np.full(len(x), t.timesteps[i], np.float32), conditions, guidance)
                x = scheduler.step(eps, i, x, None if step_noise is None else step_noise[i]).astype(np.float32)
            image, distance, semantic = self.decoder(x.astype(np.float32))
        return Decoded(image, distance, semantic, x)


def runtime_engine(path: Path, tables: SamplerTables, threads: int | None, compile_engine: bool = False) -> Contender:
    """An engine file of the export, loaded exactly as ``hs-generate --engine [--compile]`` loads it (compiled
    programs specialise on one batch shape: one session per batch size)."""
    from histosmith.runtime.engine import EngineOptions, open_engine

    sessions: dict[int | None, Any] = {}

    def backend_for(batch: int) -> Any:  # noqa: ANN401
        key = batch if compile_engine else None  # uncompiled: one session serves every batch size
        if key not in sessions:
            sessions[key] = open_engine(path, EngineOptions(device="cpu", threads=threads, compile=compile_engine,
                                                            batch=key))
        return sessions[key].backend(tables)

    first = backend_for(1)
    precision = sessions[1 if compile_engine else None].variant.precision

    def prepare(inp: BatchInputs) -> Calls:
        batch = len(inp.latent)
        backend = backend_for(batch)
        if hasattr(backend, "run_unet"):  # ONNX Runtime: the bound buffers hs-generate uses
            buf = backend.buffers(batch)
            buf.latent[:], buf.timestep[:], buf.condition[:], buf.guidance[:] = (inp.latent, inp.timestep,
                                                                                 inp.condition, inp.guidance)
            return Calls(lambda: backend.run_unet(batch), lambda: backend.run_decoder(batch), backend)
        import torch

        args = [torch.from_numpy(a) for a in (inp.latent, inp.timestep, inp.condition, inp.guidance)]
        args[0] = args[0].to(backend.dtype)  # as the backend's loop feeds its program
        args[2:] = [a.to(backend.dtype) for a in args[2:]]

        def unet() -> Any:
            with torch.inference_mode():
                return backend.guided(*args)

        def decoder() -> Any:
            with torch.inference_mode():
                return backend.decoder(args[0])

        return Calls(unet, decoder, backend)

    return Contender(f"{path.name} ({first.name})", "engine", precision, prepare, path, compile_engine)


def torch_peer(checkpoint: Path, tables: SamplerTables, bf16: bool, threads: int | None) -> Contender:
    """The training code's modules in eager torch: fp32, or bf16 autocast (the one-line speed-up)."""
    import torch

    from histosmith.generator import load_generator

    if threads:
        torch.set_num_threads(threads)
    gen = load_generator(checkpoint)

    def context() -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if bf16:
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        return stack

    def unet(x: np.ndarray, t: np.ndarray, c: np.ndarray, g: np.ndarray) -> np.ndarray:
        with context():
            return gen.guided(*(torch.from_numpy(a) for a in (x, t, c, g))).float().numpy()

    def decoder(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with context():
            return tuple(o.float().numpy() for o in gen.decoder(torch.from_numpy(x)))  # type: ignore[return-value]

    name = "torch-bf16-autocast" if bf16 else "torch-eager-fp32"
    backend = FunctionBackend(name, unet, decoder, tables)

    def prepare(inp: BatchInputs) -> Calls:
        return Calls(lambda: unet(inp.latent, inp.timestep, inp.condition, inp.guidance),
                     lambda: decoder(inp.latent), backend)

    return Contender(name, "peer", "bf16" if bf16 else "fp32", prepare)


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def openvino_peer(unet_path: Path, decoder_path: Path, tables: SamplerTables, precision: str,
                  threads: int | None) -> Contender:
    """OpenVINO's CPU plugin on an exported ONNX graph as is (``bf16``: its bf16 inference precision hint;
    ``int8``: the Q/DQ graph, which OpenVINO executes in int8)."""
    import openvino as ov

    core = ov.Core()
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    config["INFERENCE_PRECISION_HINT"] = "bf16" if precision == "bf16" else "f32"
    unet_model = core.compile_model(str(unet_path), "CPU", config)
    decoder_model = core.compile_model(str(decoder_path), "CPU", config | {"INFERENCE_PRECISION_HINT": "f32"})
    unet_req, decoder_req = unet_model.create_infer_request(), decoder_model.create_infer_request()

    def unet(x: np.ndarray, t: np.ndarray, c: np.ndarray, g: np.ndarray) -> np.ndarray:
        return unet_req.infer({LATENT: x, TIMESTEP: t, CONDITION: c, GUIDANCE: g})[0].copy()

    def decoder(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = decoder_req.infer({LATENT: x})
        by_name = {k.get_any_name(): v for k, v in out.items()}
        return by_name[IMAGE].copy(), by_name[DISTANCE].copy(), by_name[SEMANTIC].copy()

    name = f"openvino-{precision} ({unet_path.name})"
    backend = FunctionBackend(name, unet, decoder, tables)

    def prepare(inp: BatchInputs) -> Calls:
        return Calls(lambda: unet(inp.latent, inp.timestep, inp.condition, inp.guidance),
                     lambda: decoder(inp.latent), backend)

    return Contender(name, "peer", precision, prepare)
