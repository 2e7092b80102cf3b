"""Trace the two inference graphs to ONNX, clean them up, and make fp16 variants with fp32 islands."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch

from histosmith.export.fp16 import convert_to_fp16
from histosmith.runtime.specs import GraphSpec

log = logging.getLogger(__name__)
OPSET = 17


def to_onnx(module: torch.nn.Module, spec: GraphSpec, example: Sequence[torch.Tensor], dynamic_batch: bool,
            opset: int = OPSET) -> onnx.ModelProto:
    """Export with the TorchScript exporter (``dynamo=False``: stable names and opset control)."""
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            module, tuple(example), buf, input_names=spec.input_names, output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes() if dynamic_batch else None, opset_version=opset,
            do_constant_folding=True, dynamo=False,
        )
    return onnx.load_from_string(buf.getvalue())


def clean(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding (polygraphy + onnx-graphsurgeon, backed by ONNX Runtime), shape inference, checker.

    Folding removes the shape arithmetic the tracer records (about 45% of the U-Net's nodes).
    """
    import onnxruntime
    from polygraphy.backend.onnx import fold_constants
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR
    onnxruntime.set_default_logger_severity(3)
    folded = fold_constants(model, num_passes=3, do_shape_inference=True, error_ok=False)
    folded = onnx.shape_inference.infer_shapes(folded)
    onnx.checker.check_model(folded)
    return folded


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 graph with fp32 islands and float32 I/O (see :mod:`histosmith.export.fp16`)."""
    return convert_to_fp16(model)


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    from histosmith.data.atomic import write_bytes_atomic

    data = model.SerializeToString()
    write_bytes_atomic(path, lambda f: f.write(data))


def graph_summary(model: onnx.ModelProto) -> dict[str, int]:
    """Op counts (for the manifest and for eyeballing the fp32 islands)."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
