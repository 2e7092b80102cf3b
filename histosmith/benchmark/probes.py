"""This machine's convolution limit, measured in the same run as the engines: a large 3×3 convolution
in fp32 and in bf16 through torch/oneDNN (not an MKL matmul, which on AMD CPUs runs well below the
convolution rate and would overstate every engine's share)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass


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
