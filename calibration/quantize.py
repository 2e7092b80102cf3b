"""Explicit Q/DQ INT8 graphs with ONNX Runtime's static quantiser, one recipe per target (docs/int8.md).

* ``cpu`` (ONNX Runtime's CPU provider): u8 activations (asymmetric), s8 per-channel weights — the
  u8×s8 fast path of VNNI (``vpdpbusd``). ``reduce_range`` (7-bit weights) only on x86 CPUs without
  VNNI, where ``vpmaddubsw`` would saturate its 16-bit sums.
* ``tensorrt``: symmetric s8 activations and s8 per-channel weights (zero points 0), the explicit
  quantisation TensorRT 10/11 builds strongly typed engines from (ModelOpt's recipe).

Activation ranges are calibrated once per graph and method, cached as JSON beside the recorded
trajectories, and reused by every variant and by the sensitivity sweep.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

log = logging.getLogger(__name__)
Target = Literal["cpu", "tensorrt"]
Method = Literal["minmax", "percentile", "entropy"]
METHODS: dict[str, CalibrationMethod] = {"minmax": CalibrationMethod.MinMax,
                                         "percentile": CalibrationMethod.Percentile,
                                         "entropy": CalibrationMethod.Entropy}
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")  # the arithmetic; element-wise ops stay float between Q/DQ pairs
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def has_vnni(flags: set[str] | None = None) -> bool:
    return bool(set(VNNI_FLAGS) & (cpu_flags() if flags is None else flags))


def needs_reduce_range(flags: set[str] | None = None, machine: str | None = None) -> bool:
    """7-bit weights only where u8×s8 products would saturate: x86 without VNNI."""
    machine = (machine or platform.machine()).lower()
    return machine in ("x86_64", "amd64", "i686") and not has_vnni(flags)


@dataclass(frozen=True)
class Recipe:
    target: Target
    activation: QuantType
    weight: QuantType
    symmetric_activations: bool
    reduce_range: bool
    per_channel: bool = True

    def describe(self) -> dict[str, object]:
        return {"target": self.target, "activations": self.activation.name, "weights": self.weight.name,
                "per_channel": self.per_channel, "symmetric_activations": self.symmetric_activations,
                "reduce_range": self.reduce_range, "format": "QDQ", "ops": list(QUANTIZED_OPS)}


def recipe(target: Target, reduce_range: bool | None = None) -> Recipe:
    if target == "cpu":
        rr = needs_reduce_range() if reduce_range is None else reduce_range
        return Recipe("cpu", QuantType.QUInt8, QuantType.QInt8, False, rr)
    return Recipe("tensorrt", QuantType.QInt8, QuantType.QInt8, True, False)


class FeedReader(CalibrationDataReader):
    """Batches of recorded feeds for the calibrator: ``make_feed(rows)`` for each array of rows."""

    def __init__(self, make_feed: Callable[[np.ndarray], dict[str, np.ndarray]], batches: Sequence[np.ndarray]):
        self.make_feed, self.batches = make_feed, list(batches)
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = (self.make_feed(rows) for rows in self.batches)
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def row_batches(n: int, batch: int = 32, groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Rows 0..n-1 in batches; with ``groups``, no batch mixes two group values (e.g. DDIM steps)."""
    if groups is None:
        return [np.arange(s, min(s + batch, n)) for s in range(0, n, batch)]
    out = []
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        out += [rows[s:s + batch] for s in range(0, len(rows), batch)]
    return out


def quantize(model: Path, out: Path, rec: Recipe, method: Method, reader: FeedReader | None, ranges: Path,
             exclude: Sequence[str] = (), only: Sequence[str] | None = None) -> onnx.ModelProto:
    """Quantise ``model`` into ``out``; ``ranges`` caches the calibrated activation ranges (computed with
    ``reader`` when absent). ``exclude`` keeps nodes in float; ``only`` quantises just those nodes."""
    if only is not None and not only:
        raise ValueError("nothing to quantise")
    extra = {"ActivationSymmetric": rec.symmetric_activations, "WeightSymmetric": True,
             # percentile / entropy calibrators take these; min-max ignores them
             "CalibPercentile": 99.99, "CalibTensorRangeSymmetric": rec.symmetric_activations}
    logging.disable(logging.WARNING)  # the quantiser logs advice to the root logger on every call
    try:
        quantize_static(str(model), str(out), reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANTIZED_OPS), per_channel=rec.per_channel,
                        reduce_range=rec.reduce_range, activation_type=rec.activation, weight_type=rec.weight,
                        nodes_to_quantize=list(only) if only is not None else None,
                        nodes_to_exclude=list(exclude),
                        calibrate_method=METHODS[method], extra_options=extra, calibration_cache_path=str(ranges))
    finally:
        logging.disable(logging.NOTSET)
    quantized = onnx.load(str(out))
    onnx.checker.check_model(quantized)
    return quantized


def qdq_summary(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each quantised op type got Q/DQ inputs, and the Q/DQ node count."""
    produced_by = {o: n.op_type for n in model.graph.node for o in n.output}
    summary: dict[str, int] = {"QuantizeLinear": 0, "DequantizeLinear": 0}
    for node in model.graph.node:
        if node.op_type in summary:
            summary[node.op_type] += 1
        elif node.op_type in QUANTIZED_OPS and node.input and produced_by.get(node.input[0]) == "DequantizeLinear":
            summary[f"{node.op_type} (int8)"] = summary.get(f"{node.op_type} (int8)", 0) + 1
    return summary
