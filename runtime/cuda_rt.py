"""Thin, checked wrappers over the CUDA runtime API of ``cuda-python`` (for the TensorRT backend).

cuda-python moved ``cuda.cudart`` to ``cuda.bindings.runtime`` (12.6.1; the old path is gone in 13), so
both are tried. Every call returns ``(cudaError_t, *results)``; :func:`check` turns errors into
exceptions. Nothing here runs without an NVIDIA driver.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from histosmith.errors import HistoSmithError


def import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6.1
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise HistoSmithError("the TensorRT backend needs cuda-python: pip install 'histosmith[trt]'") from None
    return cudart


def check(result: tuple[Any, ...], what: str = "CUDA call") -> Any:
    """Unpack a cuda-python result tuple, raising on any error code."""
    cudart = import_cudart()
    err, *rest = result
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(err)[1]
        raise RuntimeError(f"{what} failed: {name.decode() if isinstance(name, bytes) else name}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else tuple(rest)


def create_stream() -> Any:
    """A non-blocking stream: legacy default-stream work elsewhere cannot invalidate its captures."""
    cudart = import_cudart()
    return check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")


def device_facts(device: int = 0) -> tuple[str, int, int]:
    """(GPU name, compute capability major, minor) of one device."""
    cudart = import_cudart()
    props = check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 "), int(props.major), int(props.minor)


class DeviceBuffer:
    """One cudaMalloc'd buffer with host<->device copies on a stream."""

    def __init__(self, nbytes: int):
        self.cudart = import_cudart()
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(check(self.cudart.cudaMalloc(self.nbytes), "cudaMalloc"))

    def _check_host(self, array: Any) -> None:
        if array.nbytes != self.nbytes or not array.flags.c_contiguous:
            raise HistoSmithError(f"host array of {array.nbytes} bytes (contiguous: {array.flags.c_contiguous}) "
                                  f"does not fit a device buffer of {self.nbytes} bytes")

    def upload(self, array: Any, stream: Any) -> None:
        """Asynchronous host-to-device copy of a C-contiguous numpy array of exactly this size."""
        self._check_host(array)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(self.cudart.cudaMemcpyAsync(self.ptr, array.ctypes.data, array.nbytes, kind, stream), "upload")

    def download(self, array: Any, stream: Any) -> None:
        self._check_host(array)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(self.cudart.cudaMemcpyAsync(array.ctypes.data, self.ptr, array.nbytes, kind, stream), "download")

    def copy_from(self, src: DeviceBuffer, stream: Any, offset: int = 0) -> None:
        """Device-to-device copy of ``self.nbytes`` bytes starting ``offset`` bytes into ``src`` (capturable)."""
        if offset + self.nbytes > src.nbytes:
            raise HistoSmithError(f"device copy of {self.nbytes} bytes at offset {offset} overruns {src.nbytes}")
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        check(self.cudart.cudaMemcpyAsync(self.ptr, src.ptr + offset, self.nbytes, kind, stream), "device copy")

    def free(self) -> None:
        if self.ptr:
            check(self.cudart.cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class PinnedArray:
    """A numpy array in page-locked host memory (``cudaMallocHost``): copies from and to it are truly
    asynchronous (they overlap with compute) and skip the driver's staging copy of pageable memory."""

    def __init__(self, shape: tuple[int, ...], dtype: Any = np.float32):
        self.cudart = import_cudart()
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        nbytes = max(count * dtype.itemsize, 1)
        self.ptr = int(check(self.cudart.cudaMallocHost(nbytes), "cudaMallocHost"))
        raw = (ctypes.c_byte * nbytes).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            self.array = None
            check(self.cudart.cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0
