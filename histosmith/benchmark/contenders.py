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

from histosmith.runtime.backends.base import Backend
from histosmith.runtime.backends.openvino_backend import FunctionBackend, openvino_functions
from histosmith.runtime.schedule import SamplerTables

log = logging.getLogger(__name__)


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
    unet, decoder = openvino_functions(unet_path, decoder_path, "bf16" if precision == "bf16" else "f32", threads)
    name = f"openvino-{precision} ({unet_path.name})"
    backend = FunctionBackend(name, unet, decoder, tables)

    def prepare(inp: BatchInputs) -> Calls:
        return Calls(lambda: unet(inp.latent, inp.timestep, inp.condition, inp.guidance),
                     lambda: decoder(inp.latent), backend)

    return Contender(name, "peer", precision, prepare)
