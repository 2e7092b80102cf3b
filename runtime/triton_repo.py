"""``hs-export --triton-repo DIR``: a standard Triton model repository for users who run ``tritonserver``.

::

    DIR/histosmith/config.pbtxt        Python backend, dynamic batching, per-tile inputs and outputs
    DIR/histosmith/1/model.py          runtime/triton_model.py: the DDIM loop on the lean runtime
    DIR/histosmith/1/manifest.json     the export's manifest and the files of the chosen engine (default: the fp32
                                       ONNX graphs unet.onnx and decoder.onnx)

The directory is written next to ``DIR`` and renamed into place, so it is complete or absent. ``hs-serve
--export`` serves an export through a repository written this way into a temporary directory.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from histosmith.data.atomic import atomic_directory
from histosmith.errors import file_error
from histosmith.runtime.engine import EngineOptions, open_engine
from histosmith.runtime.planning import fit_batch
from histosmith.runtime.postprocess import MarkerDepth
from histosmith.runtime.serving import (
    IN_COUNTS,
    IN_GUIDANCE,
    IN_INDEX,
    IN_SEED,
    IN_STEPS,
    IN_TISSUE,
    MODEL_NAME,
    OUT_CLASS,
    OUT_COUNTS,
    OUT_IMAGE,
    OUT_INSTANCE,
    ServeDefaults,
)

MODEL_TEMPLATE = Path(__file__).with_name("triton_model.py")


@dataclass(frozen=True)
class RepoOptions:
    max_batch: int | None = None  # None: 16, or the nearest the export's graphs take
    max_delay_us: int = 5000
    instances: int = 1  # model instances (processes), each with its own engine
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = its default
    device: str = "auto"
    defaults: ServeDefaults = ServeDefaults()


def _tensor(name: str, dtype: str, dims: tuple[int, ...], optional: bool = False) -> str:
    extra = "\n    optional: true" if optional else ""
    return f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: [ {", ".join(map(str, dims))} ]{extra}\n  }}'


def config_pbtxt(n_classes: int, tile_size: int, options: RepoOptions, engine: str) -> str:
    """The model configuration (Triton's protobuf text format)."""
    t = tile_size
    inputs = [_tensor(IN_COUNTS, "TYPE_INT32", (n_classes,)), _tensor(IN_TISSUE, "TYPE_STRING", (1,)),
              _tensor(IN_SEED, "TYPE_INT64", (1,)), _tensor(IN_INDEX, "TYPE_INT64", (1,)),
              _tensor(IN_STEPS, "TYPE_INT32", (1,), optional=True),
              _tensor(IN_GUIDANCE, "TYPE_FP32", (1,), optional=True)]
    outputs = [_tensor(OUT_IMAGE, "TYPE_UINT8", (t, t, 3)), _tensor(OUT_INSTANCE, "TYPE_INT32", (t, t)),
               _tensor(OUT_CLASS, "TYPE_INT32", (t, t)), _tensor(OUT_COUNTS, "TYPE_INT32", (n_classes,))]
    d = options.defaults
    params = {"engine": engine, "steps": str(d.steps), "guidance": repr(d.guidance), "eta": repr(d.eta),
              "sampler": str(d.sampler), "corrector": "false" if d.corrector is False else "true",
              "allow_extrapolation": "true" if d.allow_extrapolation else "false", "threads": str(options.threads),
              "device": options.device, "marker_depth": d.marker_depth}
    parameters = "\n".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items())
    sep = ",\n"
    return (f'name: "{MODEL_NAME}"\nbackend: "python"\nmax_batch_size: {options.max_batch}\n'
            f"input [\n{sep.join(inputs)}\n]\noutput [\n{sep.join(outputs)}\n]\n"
            f"dynamic_batching {{\n  max_queue_delay_microseconds: {options.max_delay_us}\n}}\n"
            f"instance_group [ {{ kind: KIND_CPU count: {options.instances} }} ]\n{parameters}\n")


def write_triton_repo(export_dir: Path, repo: Path, options: RepoOptions = RepoOptions(),
                      engine: str = "unet.onnx", batch_option: str = "--max-batch") -> Path:
    """Write the model repository ``repo`` for the engine ``engine`` of ``export_dir`` (``batch_option``: the
    command's name for ``options.max_batch``, for its error line)."""
    session = open_engine(export_dir / engine, EngineOptions(batch=options.max_batch))  # verified, not loaded
    variant = session.variant
    info = session.info
    options = replace(options, max_batch=fit_batch(options.max_batch, session.batch_limits(), batch_option),
                      defaults=options.defaults.resolved(info.sampling))  # the model's own sampling
    info.check_guidance(float(options.defaults.guidance))  # type: ignore[arg-type]
    MarkerDepth.parse(options.defaults.marker_depth).config(info.spec.class_names)  # an unknown class: refused now
    if repo.exists():
        raise file_error(repo, "already exists; choose a new directory")
    with atomic_directory(repo) as tmp:
        version = tmp / MODEL_NAME / "1"
        version.mkdir(parents=True)
        shutil.copy2(export_dir / "manifest.json", version / "manifest.json")
        for name in variant.file_names:  # the graphs this variant runs (checked against their SHA-256 above)
            (version / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(session.path(name), version / name)
        shutil.copy2(MODEL_TEMPLATE, version / "model.py")
        (tmp / MODEL_NAME / "config.pbtxt").write_text(
            config_pbtxt(info.n_classes, info.tile_size, options, engine))
    return repo
