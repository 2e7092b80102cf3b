"""This machine's convolution limit, measured in the same run as the engines: a large 3×3 convolution
in fp32 and in bf16 through torch/oneDNN (not an MKL matmul, which on AMD CPUs runs well below the
convolution rate and would overstate every engine's share), and the same convolution through ONNX
Runtime in fp32 and as an INT8 Q/DQ graph of ``hs-calibrate``'s CPU recipe: what INT8 can gain on this
machine where every convolution is quantised (the ceiling of ``unet.int8.onnx``'s speed-up)."""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ProbeResult:
    dtype: str
    gflops_per_s: float  # the median over repeats
    best_gflops_per_s: float
    shape: str


def conv_probe(dtype: str = "fp32", batch: int = 16, channels: int = 256, size: int = 32, repeats: int = 7,
               threads: int | None = None) -> ProbeResult:
    """GFLOP/s of a (batch, channels, size, size) 3×3 convolution, channels-last, in ``dtype``."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen).to(torch_dtype).contiguous(
        memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(torch_dtype).to(
        memory_format=torch.channels_last).eval()
    flops = 2 * batch * channels * channels * 9 * size * size
    times = []
    with torch.inference_mode():
        conv(x)  # oneDNN primitive creation
        for _ in range(repeats):
            start = time.perf_counter()
            conv(x)
            times.append(time.perf_counter() - start)
    return ProbeResult(dtype, flops / statistics.median(times) / 1e9, flops / min(times) / 1e9,
                       f"{batch}x{channels}x{size}x{size}, 3x3, {channels} out")


def _conv_model(path: Path, batch: int, channels: int, size: int) -> np.ndarray:
    """Write a one-convolution fp32 ONNX graph (input ``x``) to ``path``; returns an input for it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((channels, channels, 3, 3)) / np.sqrt(9 * channels)).astype(np.float32)
    shape = [batch, channels, size, size]
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv_probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return rng.standard_normal(shape).astype(np.float32)


def ort_conv_probe(dtype: str = "fp32", batch: int = 16, channels: int = 256, size: int = 32, repeats: int = 7,
                   threads: int | None = None) -> ProbeResult:
    """GFLOP/s (GOP/s for INT8) of the same 3×3 convolution through ONNX Runtime's CPU provider, NCHW as the
    U-Net graphs are; ``int8`` quantises it with ``hs-calibrate``'s CPU recipe (u8 activations, s8 per-channel
    weights, reduce_range only without VNNI), the Q/DQ pairs fused into one integer convolution at load."""
    import onnxruntime as ort

    from histosmith.calibration.quantize import FeedReader, quantize, recipe

    if dtype not in ("fp32", "int8"):
        raise ValueError(f"unknown probe dtype {dtype!r}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conv.onnx"
        x = _conv_model(path, batch, channels, size)
        if dtype == "int8":
            reader = FeedReader(lambda rows: {"x": x}, [np.arange(1)])
            quantize(path, Path(tmp) / "conv.int8.onnx", recipe("cpu"), "minmax", reader, Path(tmp) / "ranges")
            path = Path(tmp) / "conv.int8.onnx"
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    flops = 2 * batch * channels * channels * 9 * size * size
    session.run(None, {"x": x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return ProbeResult(f"ort-{dtype}", flops / statistics.median(times) / 1e9, flops / min(times) / 1e9,
                       f"{batch}x{channels}x{size}x{size}, 3x3, {channels} out, NCHW, ONNX Runtime")
