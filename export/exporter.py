"""``hs-export``: an LDM checkpoint -> ONNX (fp32 + fp16) graphs, torch.export programs + manifest.json.

Every graph is checked against PyTorch on random inputs before the export reports success. An
export directory is written under a temporary name and renamed into place; a directory whose manifest
carries the same cache key (checkpoint hash, options, opset, library versions) is reused as is.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

import histosmith
from histosmith.config import to_dict
from histosmith.data.atomic import atomic_directory, read_json_object, sha256_file
from histosmith.data.lock import exclusive
from histosmith.errors import HistoSmithError, file_error
from histosmith.export.onnx_export import OPSET, clean, graph_summary, save_onnx, to_fp16, to_onnx
from histosmith.export.torch_export import PRECISIONS as TORCH_PRECISIONS
from histosmith.export.torch_export import cast_inputs, export_program, program_name, save_program
from histosmith.export.verify import OutputError, check, compare
from histosmith.generator import TrainedGenerator, load_generator
from histosmith.models.wrappers import SamplerStep
from histosmith.runtime.backends.torch_program import DTYPES, load_program
from histosmith.runtime.manifest import (
    MANIFEST_FILE,
    MANIFEST_VERSION,
    ORT_DEBRIS,
    BatchRange,
    ExportSource,
    Manifest,
    TrainingConditions,
    Variant,
)
from histosmith.runtime.specs import (
    CONDITION,
    DECODER,
    GUIDANCE,
    LATENT,
    STEP,
    STEP_COEFS,
    STEP_NOISE,
    TIMESTEP,
    UNET,
    X0_HISTORY,
    GraphSpec,
    decoder_spec,
    step_spec,
    unet_spec,
)

log = logging.getLogger(__name__)
# ONNX graphs against the fp32 module; torch programs against the live module in their own dtype.
TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2, "torch": 1e-5, "torch-reduced": 2e-2}


@dataclass(frozen=True)
class ExportOptions:
    batch: int | None = None  # a fixed batch size; None with dynamic_batch
    dynamic_batch: bool = True
    max_batch: int = 256  # the largest batch a dynamic export promises (TensorRT profiles use it)
    fp16: bool = True
    torch_programs: tuple[str, ...] = TORCH_PRECISIONS  # torch.export programs (unet.pt2, unet.fp16.pt2, ...)
    opset: int = OPSET
    force: bool = False

    def __post_init__(self) -> None:
        if self.batch is not None and self.dynamic_batch:
            raise HistoSmithError("--batch and --dynamic-batch exclude each other")
        if self.batch is None and not self.dynamic_batch:
            raise HistoSmithError("give --batch B or --dynamic-batch")
        if self.batch is not None and self.batch < 1:
            raise HistoSmithError(f"--batch must be >= 1, got {self.batch}")
        unknown = sorted(set(self.torch_programs) - set(TORCH_PRECISIONS))
        if unknown:
            raise HistoSmithError(f"torch program precisions {unknown}: expected some of {list(TORCH_PRECISIONS)}")

    @property
    def batch_range(self) -> tuple[int, int]:
        return (1, self.max_batch) if self.dynamic_batch else (self.batch, self.batch)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"histosmith": histosmith.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": ort.__version__, "onnxconverter-common": version("onnxconverter-common"),
            "python": platform.python_version()}


def cache_key(checkpoint: Path, opts: ExportOptions) -> str:
    payload = json.dumps({"checkpoint": sha256_file(checkpoint), "options": asdict(opts) | {"force": False},
                          "versions": versions(), "manifest": MANIFEST_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _cached(out: Path, key: str) -> Manifest | None:
    if not (out / MANIFEST_FILE).exists():
        return None
    try:
        manifest = Manifest.load(out)
        if manifest.cache_key != key:
            return None
        for name in manifest.files:
            manifest.verify_file(out, name)
        return manifest
    except HistoSmithError:
        return None


def random_inputs(gen: TrainedGenerator, graph: str, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Plausible inputs of one graph: unit-normal latents, real training conditions, DDIM-like coefficients."""
    rng = np.random.default_rng(seed)
    info = gen.info
    rows = rng.integers(len(info.training_counts), size=batch)
    unet = {
        LATENT: rng.standard_normal((batch, *info.latent_shape)).astype(np.float32),
        TIMESTEP: rng.integers(0, info.schedule.num_train_timesteps, batch).astype(np.float32),
        CONDITION: info.spec.vectors(info.training_counts[rows], info.training_tissues[rows]),
        GUIDANCE: rng.uniform(1.0, 4.0, batch).astype(np.float32),
    }
    if graph == UNET:
        return unet
    if graph == STEP:
        # (A, B, σ, P, Q, C1, C2) of a multistep solver's step: every term of the update is exercised
        return unet | {STEP_COEFS: np.array([1.2, -0.5, 0.1, 1.5, -0.8, 0.6, -0.2], np.float32),
                       STEP_NOISE: rng.standard_normal((batch, *info.latent_shape)).astype(np.float32),
                       X0_HISTORY: rng.standard_normal((batch, 2, *info.latent_shape)).astype(np.float32)}
    return {LATENT: rng.standard_normal((batch, *info.latent_shape)).astype(np.float32)}


def _ort_runner(path: Path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(None, feeds), strict=True))


def _program_errors(label: str, module: torch.nn.Module, program_path: Path, spec: GraphSpec, precision: str,
                    inputs: dict[str, np.ndarray]) -> list[OutputError]:
    """Reload a saved program and compare it with ``module`` cast to the same dtype, on the same inputs."""
    dtype = DTYPES[precision]
    live = copy.deepcopy(module).to(dtype)
    loaded = load_program(program_path, "cpu", precision)
    args = cast_inputs(spec, [torch.from_numpy(v) for v in inputs.values()], dtype)
    with torch.no_grad():
        want, got = live(*args), loaded(*args)
    want, got = (o if isinstance(o, tuple) else (o,) for o in (want, got))
    names = spec.output_names
    errors = compare({n: o.double().numpy() for n, o in zip(names, want, strict=True)},
                     {n: o.double().numpy() for n, o in zip(names, got, strict=True)},
                     TOLERANCE["torch" if precision == "fp32" else "torch-reduced"])
    if not all(e.ok for e in errors):
        raise HistoSmithError(f"{label}: exported program disagrees with PyTorch: "
                              + "; ".join(e.line() for e in errors))
    return errors


BUILD_FILES = ("build_engines.sh", "timing.cache")  # written beside an export by hs-export --trt
# hs-calibrate's reports on the INT8 variant it adds to the export (calibration/calibrate.py: REPORT, GATE_REPORT)
CALIBRATION_FILES = tuple(f"{stem}.{ext}" for stem in ("calibration", "calibration-gate")
                          for ext in ("json", "md", "png"))


def check_export_out(out: Path, force: bool) -> None:
    """``out`` must be new, empty, or an hs-export directory (replaced only with ``force``). Reads only.

    An export directory is recognised by its manifest and by holding nothing else than the files the
    manifest lists, TensorRT build files and engines, and hs-calibrate's report: ``--force`` never deletes
    anything else.
    """
    if out.exists() and not out.is_dir():
        raise file_error(out, "exists and is not a directory")
    existing = out.parent
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):  # the export is written beside out, then renamed into place
        raise file_error(out, f"read-only: {existing} does not allow writing the export (nothing was done)")
    if not out.exists() or not any(out.iterdir()):
        return
    try:
        listed = set(read_json_object(out / MANIFEST_FILE)["files"])
    except (HistoSmithError, KeyError, TypeError):
        raise file_error(out, "exists, is not empty and is not an hs-export directory; choose a new --out "
                              "(--force replaces only an earlier export)") from None
    known = listed | {MANIFEST_FILE, *BUILD_FILES, *CALIBRATION_FILES}
    foreign = sorted(p.name for p in out.iterdir() if p.name not in known and not p.match(ORT_DEBRIS)
                     and not (p.is_file() and p.suffix in (".plan", ".engine")))
    if foreign:
        raise file_error(out, f"holds files that are not part of the export ({', '.join(foreign[:5])}); "
                              "move them or choose a new --out")


def export_generator(checkpoint: Path, out: Path, opts: ExportOptions = ExportOptions()) -> tuple[Manifest, bool]:
    """Export; returns (manifest, reused_from_cache). One writer per export directory (a second is refused)."""
    with exclusive(out, "export"):
        return _export_generator(checkpoint, out, opts)


def _export_generator(checkpoint: Path, out: Path, opts: ExportOptions) -> tuple[Manifest, bool]:
    check_export_out(out, opts.force)
    for stale in out.parent.glob(f".{out.name}.*.tmp"):  # a killed export's temporary directory (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    gen = load_generator(checkpoint)
    key = cache_key(gen.checkpoint, opts)
    cached = _cached(out, key)
    if cached is not None:
        log.info("found a cached export in %s (same checkpoint, options and library versions)", out)
        return cached, True
    if out.exists() and any(out.iterdir()) and not opts.force:
        raise file_error(out, "exists and holds a different export; pass --force to replace it")
    info = gen.info
    specs = {UNET: unet_spec(info.latent_shape, info.spec.dim),
             DECODER: decoder_spec(info.latent_shape, info.tile_size, info.n_classes),
             STEP: step_spec(info.latent_shape, info.spec.dim)}
    modules = {UNET: gen.guided, DECODER: gen.decoder, STEP: SamplerStep(gen.guided).eval()}
    low, high = opts.batch_range
    check_batches = sorted({low, min(high, 3)}) if opts.dynamic_batch else [low]
    with atomic_directory(out, replace=True) as tmp:
        verification: dict[str, Any] = {}
        variants: list[Variant] = []
        files: dict[str, str] = {}

        def record(label: str, errors: list[OutputError]) -> None:
            verification[label] = [asdict(e) for e in errors]
            for e in errors:
                log.debug("%s %s", label, e.line())

        precisions = ["fp32", "fp16"] if opts.fp16 else ["fp32"]
        names: dict[str, dict[str, str]] = {p: {} for p in precisions}
        for graph in (UNET, DECODER, STEP):
            spec = specs[graph]
            example = [torch.from_numpy(v) for v in random_inputs(gen, graph, low, 0).values()]
            fp32 = clean(to_onnx(modules[graph], spec, example, opts.dynamic_batch, opts.opset))
            models = {"fp32": fp32}
            if opts.fp16:
                models["fp16"] = to_fp16(fp32)
            for precision, model in models.items():
                name = f"{graph}.onnx" if precision == "fp32" else f"{graph}.{precision}.onnx"
                save_onnx(model, tmp / name)
                runner = _ort_runner(tmp / name)
                for b in check_batches:
                    record(f"{name} batch {b}", check(f"{name} (batch {b})", modules[graph], runner,
                                                       random_inputs(gen, graph, b, 100 + b), spec.output_names,
                                                       TOLERANCE[precision]))
                names[precision][graph] = name
                verification[f"{name} ops"] = graph_summary(model)
            for precision in opts.torch_programs if graph != STEP else ():
                name = program_name(graph, precision)
                program = export_program(modules[graph], spec, example, precision,
                                         high if opts.dynamic_batch else None)
                save_program(program, tmp / name)
                for b in check_batches:
                    record(f"{name} batch {b}", _program_errors(f"{name} (batch {b})", modules[graph], tmp / name,
                                                                spec, precision, random_inputs(gen, graph, b, 200 + b)))
        for precision in precisions:
            variants.append(Variant(precision, "onnx", entry=names[precision][UNET], decoder=names[precision][DECODER],
                                    guided_unet=names[precision][UNET], fused_step=names[precision][STEP]))
        for precision in opts.torch_programs:  # device-free: one file runs on the CPU and on any GPU
            entry = program_name(UNET, precision)
            variants.append(Variant(precision, "torch", entry=entry, decoder=program_name(DECODER, precision),
                                    guided_unet=entry))
        for p in sorted(tmp.iterdir()):
            files[p.name] = sha256_file(p)
        manifest = Manifest(
            condition=info.spec,
            schedule=info.schedule,
            latent_shape=info.latent_shape,
            tile_size=info.tile_size,
            latent_scale=float(1.0 / gen.decoder.inv_scale),
            count_margin=info.count_margin,
            models={"unet": to_dict(gen.unet_config), "vqvae": to_dict(gen.vq_config)}
            | ({"distillation": gen.distillation} if gen.distillation is not None else {}),
            graphs=specs,
            batch=BatchRange(opts.dynamic_batch, low, high),
            variants=tuple(variants),
            files=files,
            versions=versions() | {"opset": str(opts.opset)},
            source=ExportSource(str(gen.checkpoint), gen.step, sha256_file(gen.checkpoint)),
            training=TrainingConditions(info.training_counts, info.training_tissues),
            verification=verification,
            cache_key=key,
            provenance=tuple(info.provenance),
        )
        manifest.save(tmp)
    return manifest, False
