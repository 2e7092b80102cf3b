"""``--engine FILE``: verify an export once and open a session on it.

``.onnx`` -> ONNX Runtime; ``.pt2`` -> torch (torch.export programs, one per precision: reference and GPU
fallback); ``.plan`` / ``.engine`` -> TensorRT. :func:`open_engine` makes every check (manifest version
and digest, file names confined to the export, SHA-256 of every graph the variant uses, I/O shapes
against the manifest, the torch program's precision) before any weights are loaded; the backend itself
is created on first use, for the DDIM tables of a run, and released by :meth:`EngineSession.close`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from histosmith.errors import HistoSmithError, file_error
from histosmith.extras import require
from histosmith.runtime.backends.base import Backend
from histosmith.runtime.info import GeneratorInfo
from histosmith.runtime.manifest import FORMATS, GraphFormat, Manifest, Variant
from histosmith.runtime.planning import BatchBuckets
from histosmith.runtime.schedule import SamplerTables
from histosmith.runtime.specs import DECODER, STEP, UNET

log = logging.getLogger(__name__)

TorchPrecision = Literal["auto", "fp32", "fp16", "bf16"]


class GeneratorSession(Protocol):
    """What :func:`histosmith.runtime.generate.generate` needs: the model's facts and a backend."""

    info: GeneratorInfo
    model_id: str  # identity recorded in generation.json (a resumed run must use the same model)

    def batch_limits(self) -> tuple[int, int]:
        """Smallest and largest batch the model accepts."""
        ...

    def backend(self, tables: SamplerTables) -> Backend:
        """The backend for these DDIM tables (created once per tables)."""
        ...


@dataclass(frozen=True)
class EngineOptions:
    """How to run a verified engine. ``precision``: torch (.pt2) engines only, the program's own (another is
    refused). ``cuda_graph``: CUDA graphs of the torch loop per batch bucket, or ONNX Runtime's on the
    CUDA / TensorRT providers. ``batch``: the run's ``--batch``; buckets are sized for it (no padding of
    full batches). ``compile``: torch (.pt2) engines only, ``torch.compile`` the programs (inductor, weights
    frozen); every batch then runs padded to the one bucket of ``batch``, so it compiles once."""

    device: str = "auto"
    threads: int | None = None
    precision: TorchPrecision = "auto"
    cuda_graph: bool = True
    batch: int | None = None
    compile: bool = False
    device_loop: bool | None = None  # ONNX engines: the fused step graph (default: on the GPU providers only)


@dataclass
class EngineSession:
    """A verified export: its manifest, the chosen variant and (after first use) its backend."""

    directory: Path
    manifest: Manifest
    variant: Variant
    options: EngineOptions
    _loaded: tuple[SamplerTables, Backend] | None = field(default=None, repr=False)

    @property
    def info(self) -> GeneratorInfo:
        return self.manifest.info

    @property
    def model_id(self) -> str:
        # compiled kernels (and OpenVINO's) round differently from eager ones: a resumed run must use the same
        compiled = " (torch.compile)" if self.options.compile else ""
        compiled += " (OpenVINO)" if self.options.device == "openvino" else ""
        return f"{self.variant.entry} sha256:{self.manifest.files[self.variant.entry][:16]}{compiled}"

    def path(self, name: str) -> Path:
        return self.manifest.path_of(self.directory, name)

    def batch_limits(self) -> tuple[int, int]:
        batch = self.manifest.batch
        if self.variant.tensorrt is not None:
            return 1, max(self.variant.tensorrt.buckets)
        if self.variant.format == "torch" or not batch.dynamic:
            return 1, batch.max  # smaller batches are zero-padded
        return batch.min, batch.max

    def backend(self, tables: SamplerTables) -> Backend:
        if self._loaded is None or self._loaded[0] is not tables:  # one loaded backend at a time
            self.close()
            self._loaded = (tables, _load_backend(self, tables))
        return self._loaded[1]

    def close(self) -> None:
        """Release the loaded backend (device buffers, graphs, streams); a later use loads it again."""
        if self._loaded is not None:
            loaded, self._loaded = self._loaded, None
            loaded[1].close()


def engine_format(engine: Path) -> GraphFormat:
    if engine.suffix.lower() == ".pt":
        raise file_error(engine, "TorchScript engines are no longer written or read (they cannot run in fp16/bf16 "
                                 "and pin the tracing device); re-export with hs-export and use unet.pt2")
    fmt = FORMATS.get(engine.suffix.lower())
    if fmt is None:
        raise file_error(engine, f"unknown engine type {engine.suffix!r}; expected one of {sorted(FORMATS)}")
    return fmt


def open_engine(engine: Path, options: EngineOptions = EngineOptions()) -> EngineSession:
    """Verify ``engine``, its manifest and every file its variant uses; load no weights yet."""
    fmt = engine_format(engine)
    if not engine.is_file():
        raise file_error(engine, "engine file not found" if not engine.exists() else "not a file")
    directory = engine.parent
    manifest = Manifest.load(directory)
    variant = manifest.variant_for(engine)
    if variant.format != fmt:
        raise file_error(engine, f"the manifest lists it as {variant.format}, not {fmt}")
    for name in variant.file_names:
        manifest.verify_file(directory, name)
    if fmt == "onnx" and options.device not in ("auto", "cpu", "cuda", "tensorrt", "openvino"):
        raise HistoSmithError(f"--device {options.device}: ONNX graphs run on cpu, cuda or tensorrt (ONNX Runtime) "
                              "or openvino")
    if options.device == "openvino" and fmt != "onnx":
        raise HistoSmithError(f"--device openvino runs ONNX graphs; {engine.name} is {fmt}")
    if options.device == "openvino" and options.device_loop:
        raise HistoSmithError("--device openvino runs the U-Net graph, not the fused step graph")
    if options.device_loop and fmt != "onnx":
        raise HistoSmithError(f"the fused step graph's loop concerns ONNX engines; {engine.name} is {fmt}")
    if options.compile and fmt != "torch":
        raise HistoSmithError(f"--compile concerns torch (.pt2) engines; {engine.name} is {fmt}")
    if options.precision != "auto" and fmt != "torch":
        raise HistoSmithError(f"--precision {options.precision} concerns torch (.pt2) engines; the precision of "
                              f"{engine.name} is fixed ({variant.precision})")
    if options.precision not in ("auto", variant.precision):
        raise file_error(engine, f"is the {variant.precision} program; --precision {options.precision} needs its "
                                 f"{options.precision} sibling (hs-export writes unet.pt2, unet.fp16.pt2, "
                                 "unet.bf16.pt2)")
    return EngineSession(directory, manifest, variant, options)


def engine_buckets(manifest: Manifest, variant: Variant, batch: int | None) -> BatchBuckets:
    """The batch buckets a run of ``--batch`` uses: the engine's own (TensorRT profiles, a fixed-batch
    export), else :meth:`BatchBuckets.ladder` of the batch (full batches never padded)."""
    if variant.tensorrt is not None:
        return BatchBuckets(variant.tensorrt.buckets)
    if not manifest.batch.dynamic:
        return BatchBuckets((manifest.batch.max,))
    return BatchBuckets.ladder(min(batch or 16, manifest.batch.max))


def _load_backend(session: EngineSession, tables: SamplerTables) -> Backend:
    manifest, variant, opts = session.manifest, session.variant, session.options
    decoder = session.path(variant.decoder)
    if variant.format == "onnx" and opts.device == "openvino":
        require("--device openvino", "openvino")
        from histosmith.runtime.backends.openvino_backend import openvino_backend

        return openvino_backend(session.path(variant.guided_unet), decoder, tables, opts.threads,
                                manifest.batch.bounds)
    if variant.format == "onnx":
        from histosmith.runtime.backends.onnx_backend import OnnxBackend

        provider = "cpu" if opts.device == "auto" else opts.device
        step = session.path(variant.fused_step) if variant.fused_step else None
        return OnnxBackend(session.path(variant.guided_unet), decoder, manifest.graph(UNET), manifest.graph(DECODER),
                           tables, manifest.batch.bounds, provider, opts.threads, step,
                           manifest.graphs.get(STEP), device_loop=opts.device_loop, cuda_graph=opts.cuda_graph)
    buckets = engine_buckets(manifest, variant, opts.batch)
    if variant.format == "torch":
        from histosmith.runtime.backends.torch_backend import TorchBackend, torch_device

        dev = torch_device(opts.device)
        on_gpu = dev.startswith("cuda")
        if opts.compile:  # one batch shape, one compilation
            buckets = BatchBuckets((buckets.largest,))
        return TorchBackend.from_files(session.path(variant.guided_unet), decoder, tables, dev, variant.precision,
                                       opts.cuda_graph and on_gpu, buckets,
                                       pad=on_gpu or not manifest.batch.dynamic or opts.compile,
                                       compile_modules=opts.compile)
    from histosmith.runtime.backends.tensorrt_backend import TensorRTBackend

    if opts.batch and buckets.padding(min(opts.batch, buckets.largest)):
        log.warning("--batch %d is not one of the engine's batch buckets %s: every batch is padded to %d; use --batch "
                    "%d", opts.batch, list(buckets.sizes), buckets.bucket_for(min(opts.batch, buckets.largest)),
                    max([s for s in buckets.sizes if s <= opts.batch] or [buckets.sizes[0]]))
    return TensorRTBackend.from_files(session.path(variant.fused_step), decoder, manifest, variant, tables)
