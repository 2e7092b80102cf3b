"""``hs-export --verify``: ONNX Runtime vs TensorRT on the same inputs, with polygraphy's comparator."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histosmith.errors import HistoSmithError
from histosmith.export.tensorrt_build import import_tensorrt, onnx_sources, plan_names
from histosmith.runtime.manifest import Manifest
from histosmith.runtime.specs import DECODER, STEP

TOLERANCE = {"fp16": (5e-2, 5e-2), "fp32": (1e-3, 1e-3)}  # (atol, rtol)


def verify_engines(directory: Path, precision: str = "fp16") -> list[str]:
    """Compare each engine with its ONNX graph on random inputs at every bucket's largest batch."""
    import_tensorrt()
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator, CompareFunc

    manifest = Manifest.load(directory)
    variant = next((v for v in manifest.variants if v.format == "tensorrt" and v.precision == precision), None)
    if variant is None or variant.tensorrt is None:
        raise HistoSmithError(f"{directory}: no {precision} TensorRT engines registered; run hs-export --trt first")
    step_onnx, decoder_onnx = onnx_sources(manifest, precision, directory)
    unet_plan, decoder_plan = plan_names(precision)
    atol, rtol = TOLERANCE[precision]
    lines = []
    for graph, onnx_file, plan_file in ((STEP, step_onnx, unet_plan), (DECODER, decoder_onnx, decoder_plan)):
        spec = manifest.graph(graph)
        for profile, batch in enumerate(variant.tensorrt.buckets):
            rng = np.random.default_rng(batch)
            feeds = {t.name: rng.standard_normal(t.concrete(batch)).astype(np.float32) for t in spec.inputs}
            if "timestep" in feeds:
                feeds["timestep"] = rng.integers(0, 1000, batch).astype(np.float32)
                feeds["guidance"] = np.full(batch, 2.0, np.float32)
            runners = [OnnxrtRunner(SessionFromOnnx(str(directory / onnx_file))),
                       TrtRunner(EngineFromBytes((directory / plan_file).read_bytes()), optimization_profile=profile)]
            results = Comparator.run(runners, data_loader=[feeds])
            ok = bool(Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=atol, rtol=rtol)))
            lines.append(f"{plan_file} batch {batch}: {'ok' if ok else 'MISMATCH'} (atol {atol}, rtol {rtol})")
            if not ok:
                raise HistoSmithError(f"{plan_file}: TensorRT disagrees with ONNX Runtime at batch {batch}")
    return lines
