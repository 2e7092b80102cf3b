"""``hs-export --trt``: TensorRT engines from the exported ONNX graphs (written against TensorRT 10 and 11).

* Strongly typed networks: precision comes from the ONNX graph (the fp16 graphs with fp32 islands, or
  an explicit Q/DQ INT8 graph), never from builder flags — TensorRT 11 removed those flags and ignores
  the STRONGLY_TYPED creation flag (always on), while 10.x (JetPack 6) needs it set. One code path and
  one set of ONNX files serve both.
* One optimisation profile per batch bucket, shapes from the graph specs.
* A timing cache beside the engines, reused across builds.
* The GPU name, compute capability, TensorRT version and buckets are recorded in the manifest; the
  runtime refuses an engine built for anything else.

Engines: ``unet.plan`` is the fused step graph (guided U-Net + DDIM update) so the whole loop stays on
the device; ``decoder.plan`` the dual-head decoder. fp32 engines are ``unet.fp32.plan`` / ``decoder.fp32.plan``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histosmith.data.atomic import sha256_file, write_bytes_atomic
from histosmith.data.lock import exclusive
from histosmith.errors import HistoSmithError, file_error
from histosmith.export.trtexec import write_build_script
from histosmith.runtime.manifest import Manifest, Precision, TensorRTBuild, Variant
from histosmith.runtime.planning import BatchBuckets
from histosmith.runtime.specs import BATCH, DECODER, STEP, GraphSpec
from histosmith.runtime.tensorrt_api import network_flags
from histosmith.runtime.tensorrt_facts import UNKNOWN, engine_facts

log = logging.getLogger(__name__)
TIMING_CACHE = "timing.cache"
INSTALL_HINT = ("TensorRT's Python package is not installed here: on an x86 server `pip install "
                "'histosmith[trt]'` (tensorrt and cuda-python from NVIDIA's index); on a Jetson use JetPack's "
                "python3-libnvinfer")


@dataclass(frozen=True)
class EngineOptions:
    precision: Precision = "fp16"
    buckets: BatchBuckets = BatchBuckets((1, 4, 16, 64))  # hs-generate's default --batch 16 is a bucket
    workspace_gb: float = 4.0


def plan_names(precision: Precision) -> tuple[str, str]:
    suffix = "" if precision == "fp16" else f".{precision}"
    return f"unet{suffix}.plan", f"decoder{suffix}.plan"


def onnx_sources(manifest: Manifest, precision: Precision, directory: Path) -> tuple[str, str]:
    """The ONNX files (step, decoder) an engine of ``precision`` is built from.

    INT8: the symmetric s8 Q/DQ step graph ``hs-calibrate`` recorded (its float parts stay float32 in a
    strongly typed build), with the fp16 decoder where the export has one.
    """
    variants = [v for v in manifest.variants if v.format == "onnx"]
    if precision == "int8":
        int8 = next((v for v in variants if v.precision == "int8" and v.fused_step), None)
        if int8 is None:
            raise file_error(directory, "no INT8 Q/DQ step graph in this export; run hs-calibrate --export "
                                        f"{directory} --data DATASET --target tensorrt first")
        fp16 = next((v for v in variants if v.precision == "fp16"), None)
        return int8.fused_step, fp16.decoder if fp16 else int8.decoder
    for v in variants:
        if v.precision == precision and v.fused_step:
            return v.fused_step, v.decoder
    raise file_error(directory, f"no {precision} step graph in this export; re-export (hs-export) with this version")


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise HistoSmithError(INSTALL_HINT) from None
    return trt


def build_engine(trt: Any, onnx_path: Path, plan_path: Path, spec: GraphSpec, buckets: BatchBuckets,
                 workspace_gb: float, timing_cache: Path) -> None:
    """Build one strongly typed engine with a profile per bucket; reads and updates the timing cache."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))  # strongly typed (runtime/tensorrt_api.py)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise file_error(onnx_path, f"TensorRT's ONNX parser failed: {errors[:400]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 2**30))
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("%s was made by another GPU or TensorRT version; starting a fresh timing cache", timing_cache)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    dynamic = {t.name for t in spec.inputs if BATCH in t.shape}
    for low, opt, high in buckets.profiles():
        profile = builder.create_optimization_profile()
        for name, (mn, op, mx) in spec.profile(low, opt, high).items():
            if name in dynamic:
                profile.set_shape(name, mn, op, mx)
        if config.add_optimization_profile(profile) < 0:
            raise HistoSmithError(f"{plan_path.name}: TensorRT rejected the profile for batches {low}..{high}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise HistoSmithError(f"{plan_path.name}: TensorRT failed to build the engine (see its log above)")
    data = bytes(serialized)
    write_bytes_atomic(plan_path, lambda f: f.write(data))
    updated = config.get_timing_cache()
    if updated is not None:
        cache_bytes = bytes(updated.serialize())
        write_bytes_atomic(timing_cache, lambda f: f.write(cache_bytes))


def build_engines(directory: Path, opts: EngineOptions) -> Variant:
    """Build both engines into ``directory`` and register them in its manifest.

    Without TensorRT, writes ``build_engines.sh`` (trtexec) and raises with the install hint.
    """
    with exclusive(directory, "export"):
        return _build_engines(directory, opts)


def _build_engines(directory: Path, opts: EngineOptions) -> Variant:
    manifest = Manifest.load(directory)
    step_onnx, decoder_onnx = onnx_sources(manifest, opts.precision, directory)
    unet_plan, decoder_plan = plan_names(opts.precision)
    specs = {STEP: manifest.graph(STEP), DECODER: manifest.graph(DECODER)}
    jobs = [(step_onnx, unet_plan, specs[STEP]), (decoder_onnx, decoder_plan, specs[DECODER])]
    high = manifest.batch.max
    if not manifest.batch.dynamic and opts.buckets.sizes != (high,):
        raise HistoSmithError(f"a fixed-batch export takes exactly one bucket: --batch-buckets {high}")
    if opts.buckets.largest > high:
        raise HistoSmithError(f"bucket {opts.buckets.largest} exceeds the exported graphs' max batch {high}")
    script = write_build_script(directory, jobs, opts.buckets, opts.workspace_gb, opts.precision)
    try:
        trt = import_tensorrt()
    except HistoSmithError as exc:
        raise HistoSmithError(f"{exc}; wrote {script} with the equivalent trtexec commands") from None
    from histosmith.runtime.cuda_rt import device_facts

    gpu, major, minor = device_facts()
    for onnx_file, plan_file, spec in jobs:
        log.info("building %s from %s (buckets %s)", plan_file, onnx_file, opts.buckets.sizes)
        manifest.verify_file(directory, onnx_file)
        build_engine(trt, directory / onnx_file, directory / plan_file, spec, opts.buckets, opts.workspace_gb,
                     directory / TIMING_CACHE)
    facts = engine_facts(gpu, major, minor, trt.__version__, list(opts.buckets.sizes), opts.precision)
    return _register(directory, opts.precision, facts)


def register_engines(directory: Path, precision: Precision, facts: dict[str, Any] | None = None,
                     buckets: BatchBuckets | None = None) -> Variant:
    """Add (or replace) the TensorRT variant in the manifest, with file hashes and build facts."""
    with exclusive(directory, "export"):
        return _register(directory, precision, facts, buckets)


def _register(directory: Path, precision: Precision, facts: dict[str, Any] | None = None,
              buckets: BatchBuckets | None = None) -> Variant:
    manifest = Manifest.load(directory)
    unet_plan, decoder_plan = plan_names(precision)
    for name in (unet_plan, decoder_plan):
        if not (directory / name).exists():
            raise file_error(directory / name, "engine not found; build it first")
    if facts is None:  # built by trtexec: the plan itself knows its GPU and TensorRT version
        facts = {"gpu": UNKNOWN, "compute_capability": UNKNOWN, "tensorrt": UNKNOWN,
                 "buckets": list((buckets or EngineOptions().buckets).sizes)}
    build = TensorRTBuild(str(facts["gpu"]), str(facts["compute_capability"]), str(facts["tensorrt"]),
                          tuple(int(b) for b in facts["buckets"]))
    variant = Variant(precision, "tensorrt", entry=unet_plan, decoder=decoder_plan, fused_step=unet_plan,
                      tensorrt=build)
    hashes = {name: sha256_file(directory / name) for name in (unet_plan, decoder_plan)}
    manifest.with_variant(variant, hashes).save(directory)
    return variant
