"""OpenVINO's CPU plugin on an export's ONNX graphs (``hs-generate --device openvino``, the ``[openvino]`` extra).

OpenVINO reads ``unet.onnx`` (or the Q/DQ ``unet.int8.onnx``, which it executes in int8) and ``decoder.onnx`` as
they are; its inference precision is pinned to f32 so that an fp32 graph runs in fp32 (on CPUs with AMX or
AVX-512 bf16 the plugin would otherwise pick bf16 by itself). The sampling loop is :class:`FunctionBackend`'s:
the scheduler's tables and arithmetic, as every other backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from histosmith.runtime.backends.base import Decoded, tables_check
from histosmith.runtime.schedule import SamplerTables, ScheduleConfig, Scheduler
from histosmith.runtime.specs import CONDITION, DISTANCE, GUIDANCE, IMAGE, LATENT, SEMANTIC, TIMESTEP

UnetFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
DecoderFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


class FunctionBackend:
    """The sampling loop over plain U-Net / decoder functions; the same tables and arithmetic as the runtime
    (:meth:`histosmith.runtime.schedule.Scheduler.step`, x̂_0 history included)."""

    def __init__(self, name: str, unet: UnetFn, decoder: DecoderFn, tables: SamplerTables,
                 context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 batch_range: tuple[int, int] = (1, 1 << 20)):
        self.name, self.unet, self.decoder, self.tables, self.context = name, unet, decoder, tables, context
        self.batch_range = batch_range

    def batch_sizes(self) -> tuple[int, int]:
        return self.batch_range

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

    def close(self) -> None:
        pass


def openvino_functions(unet_path: Path, decoder_path: Path, precision: str = "f32",
                       threads: int | None = None) -> tuple[UnetFn, DecoderFn]:
    """The guided U-Net and the decoder compiled by OpenVINO's CPU plugin (``precision``: its inference precision
    hint for the U-Net, ``f32`` or ``bf16``; the decoder always f32)."""
    import openvino as ov

    core = ov.Core()
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    unet_req = core.compile_model(str(unet_path), "CPU", config).create_infer_request()
    decoder_req = core.compile_model(str(decoder_path), "CPU",
                                     config | {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()

    def unet(x: np.ndarray, t: np.ndarray, c: np.ndarray, g: np.ndarray) -> np.ndarray:
        return unet_req.infer({LATENT: x, TIMESTEP: t, CONDITION: c, GUIDANCE: g})[0].copy()

    def decoder(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        by_name = {k.get_any_name(): v for k, v in decoder_req.infer({LATENT: x}).items()}
        return by_name[IMAGE].copy(), by_name[DISTANCE].copy(), by_name[SEMANTIC].copy()

    return unet, decoder


def openvino_backend(unet_path: Path, decoder_path: Path, tables: SamplerTables, threads: int | None = None,
                     batch_range: tuple[int, int] = (1, 1 << 20)) -> FunctionBackend:
    """``hs-generate --device openvino``: the export's graphs in OpenVINO, f32 inference precision."""
    unet, decoder = openvino_functions(unet_path, decoder_path, "f32", threads)
    return FunctionBackend("openvino-cpu", unet, decoder, tables, batch_range=batch_range)
