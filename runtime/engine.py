"""``--engine FILE``: pick the backend from the file, find the decoder and manifest beside it, check them.

``.onnx`` -> ONNX Runtime; ``.pt`` -> torch (TorchScript, reference and GPU fallback); ``.plan`` /
``.engine`` -> TensorRT. All checks (manifest version, hashes, I/O shapes, batch limits) happen before
any tile is generated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from histosmith.errors import HistoSmithError, file_error
from histosmith.runtime.backends.base import Backend
from histosmith.runtime.manifest import FORMATS, Manifest, Variant
from histosmith.runtime.schedule import DDIMTables
from histosmith.runtime.specs import DECODER, UNET


@dataclass
class LoadedEngine:
    backend: Backend
    manifest: Manifest
    variant: Variant
    directory: Path

    @property
    def model_id(self) -> str:
        return f"{self.variant.unet} sha256:{self.manifest.files[self.variant.unet][:16]}"


def engine_format(engine: Path) -> str:
    fmt = FORMATS.get(engine.suffix.lower())
    if fmt is None:
        raise file_error(engine, f"unknown engine type {engine.suffix!r}; expected one of {sorted(FORMATS)}")
    return fmt


def resolve_engine(engine: Path) -> tuple[Manifest, Variant]:
    """Validate the engine file, its manifest and its decoder without loading any weights."""
    fmt = engine_format(engine)
    if not engine.exists():
        raise file_error(engine, "engine file not found")
    manifest = Manifest.load(engine.parent)
    variant = manifest.variant_for(engine)
    if variant.format != fmt:
        raise file_error(engine, f"the manifest lists it as {variant.format}, not {fmt}")
    manifest.verify_file(engine.parent, variant.unet)
    manifest.verify_file(engine.parent, variant.decoder)
    return manifest, variant


def batch_limits(manifest: Manifest, variant: Variant) -> tuple[int, int, bool]:
    """(smallest, largest, padded) batch an engine accepts; padded: smaller batches are zero-padded."""
    if variant.format == "tensorrt":
        return 1, max(variant.extra.get("buckets") or [manifest.batch_range()[1]]), True
    if variant.format == "torchscript":
        return 1, manifest.batch_range()[1], True
    low, high = manifest.batch_range()
    return (1, high, True) if not manifest.batch["dynamic"] else (low, high, False)


def load_engine(engine: Path, tables: DDIMTables, device: str = "auto", threads: int | None = None,
                precision: str = "auto", cuda_graph: bool = True, batch: int | None = None) -> LoadedEngine:
    """Create the backend for ``engine``. ``precision``/``cuda_graph``/``batch`` concern the torch path:
    on CUDA it runs fp16 with the whole loop captured as a CUDA graph for a bucket of ``batch``."""
    manifest, variant = resolve_engine(engine)
    directory = engine.parent
    unet, decoder = directory / variant.unet, directory / variant.decoder
    if variant.format == "onnx":
        from histosmith.runtime.backends.onnx_backend import OnnxBackend

        provider = "cpu" if device in ("auto", "cpu") else device
        if provider not in ("cpu", "cuda", "tensorrt"):
            raise HistoSmithError(f"--device {device}: ONNX Runtime takes cpu, cuda or tensorrt")
        backend: Backend = OnnxBackend(unet, decoder, manifest.graph(UNET), manifest.graph(DECODER), tables,
                                       manifest.batch_range(), provider, threads)
    elif variant.format == "torchscript":
        from histosmith.runtime.backends.torch_backend import TorchBackend, torch_device
        from histosmith.runtime.planning import BatchBuckets

        dev = torch_device(device)
        on_gpu = dev.startswith("cuda")
        chosen = precision if precision != "auto" else ("fp16" if on_gpu else "fp32")
        buckets = BatchBuckets((batch,)) if batch else None
        backend = TorchBackend.from_files(unet, decoder, tables, dev, chosen, cuda_graph and on_gpu, buckets)
    else:
        from histosmith.runtime.backends.tensorrt_backend import TensorRTBackend

        backend = TensorRTBackend.from_files(unet, decoder, manifest, variant, tables)
    return LoadedEngine(backend, manifest, variant, directory)
