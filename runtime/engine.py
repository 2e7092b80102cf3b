"""``--engine FILE``: verify an export once and open a session on it.

``.onnx`` -> ONNX Runtime; ``.pt`` -> torch (TorchScript, reference and GPU fallback); ``.plan`` /
``.engine`` -> TensorRT. :func:`open_engine` makes every check (manifest version and digest, file names
confined to the export, SHA-256 of every graph the variant uses, I/O shapes against the manifest) before
any weights are loaded; the backend itself is created on first use, for the DDIM tables of a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from histosmith.errors import HistoSmithError, file_error
from histosmith.runtime.backends.base import Backend
from histosmith.runtime.info import GeneratorInfo
from histosmith.runtime.manifest import FORMATS, GraphFormat, Manifest, Variant
from histosmith.runtime.schedule import DDIMTables
from histosmith.runtime.specs import DECODER, UNET

TorchPrecision = Literal["auto", "fp32", "fp16", "bf16"]


class GeneratorSession(Protocol):
    """What :func:`histosmith.runtime.generate.generate` needs: the model's facts and a backend."""

    info: GeneratorInfo
    model_id: str  # identity recorded in generation.json (a resumed run must use the same model)

    def batch_limits(self) -> tuple[int, int]:
        """Smallest and largest batch the model accepts."""
        ...

    def backend(self, tables: DDIMTables) -> Backend:
        """The backend for these DDIM tables (created once per tables)."""
        ...


@dataclass(frozen=True)
class EngineOptions:
    """How to run a verified engine. ``precision``/``cuda_graph``/``batch`` concern the torch path: on
    CUDA it runs fp16 with the whole loop captured as a CUDA graph for a bucket of ``batch``."""

    device: str = "auto"
    threads: int | None = None
    precision: TorchPrecision = "auto"
    cuda_graph: bool = True
    batch: int | None = None


@dataclass
class EngineSession:
    """A verified export: its manifest, the chosen variant and (after first use) its backend."""

    directory: Path
    manifest: Manifest
    variant: Variant
    options: EngineOptions
    _loaded: tuple[DDIMTables, Backend] | None = field(default=None, repr=False)

    @property
    def info(self) -> GeneratorInfo:
        return self.manifest.info

    @property
    def model_id(self) -> str:
        return f"{self.variant.entry} sha256:{self.manifest.files[self.variant.entry][:16]}"

    def path(self, name: str) -> Path:
        return self.manifest.path_of(self.directory, name)

    def batch_limits(self) -> tuple[int, int]:
        batch = self.manifest.batch
        if self.variant.tensorrt is not None:
            return 1, max(self.variant.tensorrt.buckets)
        if self.variant.format == "torchscript" or not batch.dynamic:
            return 1, batch.max  # smaller batches are zero-padded
        return batch.min, batch.max

    def backend(self, tables: DDIMTables) -> Backend:
        if self._loaded is None or self._loaded[0] is not tables:  # one loaded backend at a time
            self._loaded = (tables, _load_backend(self, tables))
        return self._loaded[1]


def engine_format(engine: Path) -> GraphFormat:
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
    if fmt == "onnx" and options.device not in ("auto", "cpu", "cuda", "tensorrt"):
        raise HistoSmithError(f"--device {options.device}: ONNX Runtime takes cpu, cuda or tensorrt")
    if options.precision != "auto" and fmt != "torchscript":
        raise HistoSmithError(f"--precision {options.precision} concerns torch (.pt) engines; the precision of "
                              f"{engine.name} is fixed ({variant.precision})")
    return EngineSession(directory, manifest, variant, options)


def _load_backend(session: EngineSession, tables: DDIMTables) -> Backend:
    manifest, variant, opts = session.manifest, session.variant, session.options
    decoder = session.path(variant.decoder)
    if variant.format == "onnx":
        from histosmith.runtime.backends.onnx_backend import OnnxBackend

        provider = "cpu" if opts.device == "auto" else opts.device
        return OnnxBackend(session.path(variant.guided_unet), decoder, manifest.graph(UNET), manifest.graph(DECODER),
                           tables, manifest.batch.bounds, provider, opts.threads)
    if variant.format == "torchscript":
        from histosmith.runtime.backends.torch_backend import TorchBackend, torch_device
        from histosmith.runtime.planning import BatchBuckets

        dev = torch_device(opts.device)
        on_gpu = dev.startswith("cuda")
        chosen = opts.precision if opts.precision != "auto" else ("fp16" if on_gpu else "fp32")
        buckets = BatchBuckets((opts.batch,)) if opts.batch else None
        return TorchBackend.from_files(session.path(variant.guided_unet), decoder, tables, dev, chosen,
                                       opts.cuda_graph and on_gpu, buckets)
    from histosmith.runtime.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend.from_files(session.path(variant.fused_step), decoder, manifest, variant, tables)
