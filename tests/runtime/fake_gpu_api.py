"""Recorded stand-ins for the ``tensorrt`` and cuda-python ``cudart`` modules.

Not fake backends: the real TensorRT backend and builder run against these objects, which expose only
the API surface of one TensorRT version (methods another version lacks are absent, keyword names are
the bindings' own) and record every call, so tests can check what the real code asked for.
"""

from __future__ import annotations

import ctypes
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from histosmith.runtime.specs import BATCH, GraphSpec


@dataclass
class Recorder:
    calls: list[tuple[str, tuple, dict]] = field(default_factory=list)

    def add(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, args, kwargs))

    def named(self, name: str) -> list[tuple[tuple, dict]]:
        return [(a, k) for n, a, k in self.calls if n == name]

    def count(self, name: str) -> int:
        return len(self.named(name))


# ---------------------------------------------------------------------------------------------- cudart

SUCCESS, CAPTURE_INVALIDATED = 0, 901


def fake_cudart(rec: Recorder, end_capture_error: bool = False) -> SimpleNamespace:
    handles = itertools.count(0x1000, 0x100)
    state = {"capturing": False, "host": {}}

    def malloc_host(nbytes: int) -> tuple:  # real host memory, so the backend can fill it
        rec.add("cudaMallocHost", nbytes)
        buf = ctypes.create_string_buffer(nbytes)
        state["host"][ctypes.addressof(buf)] = buf
        return (SUCCESS, ctypes.addressof(buf))

    def call(name: str, result: tuple = ()):
        def fn(*args: Any) -> tuple:
            rec.add(name, *args)
            return (SUCCESS, *result) if not callable(result) else result(*args)
        return fn

    def begin(stream: Any, mode: Any) -> tuple:
        rec.add("cudaStreamBeginCapture", stream, mode)
        state["capturing"] = True
        return (SUCCESS,)

    def end(stream: Any) -> tuple:
        rec.add("cudaStreamEndCapture", stream)
        state["capturing"] = False
        return (CAPTURE_INVALIDATED, None) if end_capture_error else (SUCCESS, next(handles))

    return SimpleNamespace(
        state=state,
        cudaError_t=SimpleNamespace(cudaSuccess=SUCCESS),
        cudaGetErrorName=lambda err: (SUCCESS, b"cudaErrorStreamCaptureInvalidated"),
        cudaStreamNonBlocking=1,
        cudaStreamCreateWithFlags=call("cudaStreamCreateWithFlags", lambda *a: (SUCCESS, next(handles))),
        cudaGetDeviceProperties=call("cudaGetDeviceProperties",
                                     (SimpleNamespace(name=b"Fake GPU", major=9, minor=0),)),
        cudaMalloc=call("cudaMalloc", lambda n: (SUCCESS, next(handles))),
        cudaFree=call("cudaFree"),
        cudaMallocHost=malloc_host,
        cudaFreeHost=call("cudaFreeHost"),
        cudaMemcpyKind=SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2, cudaMemcpyDeviceToDevice=3),
        cudaMemcpyAsync=call("cudaMemcpyAsync"),
        cudaStreamSynchronize=call("cudaStreamSynchronize"),
        cudaStreamCaptureMode=SimpleNamespace(cudaStreamCaptureModeThreadLocal=1),
        cudaStreamBeginCapture=begin,
        cudaStreamEndCapture=end,
        cudaGraphInstantiateWithFlags=call("cudaGraphInstantiateWithFlags", lambda *a: (SUCCESS, next(handles))),
        cudaGraphLaunch=call("cudaGraphLaunch"),
        cudaGraphDestroy=call("cudaGraphDestroy"),
        cudaGraphExecDestroy=call("cudaGraphExecDestroy"),
        cudaStreamDestroy=call("cudaStreamDestroy"),
        cudaGetLastError=call("cudaGetLastError"),
    )


# ---------------------------------------------------------------------------------------------- tensorrt

def _version_tuple(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def fake_tensorrt(version: str, rec: Recorder, plans: dict[bytes, tuple[GraphSpec, tuple[int, ...]]],
                  cudart: SimpleNamespace | None = None, fail_enqueue_in_capture: bool = False) -> SimpleNamespace:
    """The subset of ``tensorrt`` the backend and builder use, as ``version`` exposes it.

    ``plans`` maps plan bytes to the graph spec and batch buckets the "engine" was built for.
    """
    v = _version_tuple(version)
    strategy = SimpleNamespace(STATIC="STATIC", ON_PROFILE_CHANGE="ON_PROFILE_CHANGE", USER_MANAGED="USER_MANAGED")
    io_mode = SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT", NONE="NONE")

    class Context:
        def set_optimization_profile_async(self, profile_index: int, stream_handle: Any) -> bool:
            rec.add("set_optimization_profile_async", profile_index, stream_handle)
            return True

        def set_input_shape(self, name: str, shape: Any) -> bool:
            rec.add("set_input_shape", name, tuple(shape))
            return True

        def set_tensor_address(self, name: str, memory: int) -> bool:
            rec.add("set_tensor_address", name, memory)
            return True

        def execute_async_v3(self, stream_handle: Any) -> bool:
            rec.add("execute_async_v3", stream_handle)
            return not (fail_enqueue_in_capture and cudart is not None and cudart.state["capturing"])

    class RuntimeConfig:  # 10.11+
        def set_execution_context_allocation_strategy(self, strategy: Any = strategy.STATIC) -> None:
            rec.add("set_execution_context_allocation_strategy", strategy)

    class Engine:
        def __init__(self, spec: GraphSpec, buckets: tuple[int, ...]):
            self.spec, self.buckets = spec, buckets
            self.names = spec.input_names + spec.output_names
            self.num_io_tensors = len(self.names)
            self.num_optimization_profiles = len(buckets)

        def get_tensor_name(self, index: int) -> str:
            return self.names[index]

        def get_tensor_mode(self, name: str) -> str:
            return io_mode.INPUT if name in self.spec.input_names else io_mode.OUTPUT

        def get_tensor_dtype(self, name: str) -> str:
            return "FLOAT"

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
            size = self.buckets[profile_index]
            low = 1 if profile_index == 0 else self.buckets[profile_index - 1] + 1
            tensor = next(t for t in self.spec.inputs if t.name == name)
            return [tensor.concrete(low), tensor.concrete(size), tensor.concrete(size)]

    if v >= (10, 11):
        def create_execution_context(self, strategy: Any = None, runtime_config: Any = None) -> Context:
            # Two pybind overloads: (strategy=STATIC) and (runtime_config=None); one argument at most.
            if strategy is not None and runtime_config is not None:
                raise TypeError("create_execution_context(): incompatible function arguments")
            rec.add("create_execution_context", strategy=strategy, runtime_config=runtime_config)
            return Context()
    else:
        def create_execution_context(self, strategy: Any = strategy.STATIC) -> Context:
            rec.add("create_execution_context", strategy=strategy)
            return Context()
    Engine.create_execution_context = create_execution_context
    if v >= (10, 11):
        def create_runtime_config(self) -> RuntimeConfig:
            rec.add("create_runtime_config")
            return RuntimeConfig()
        Engine.create_runtime_config = create_runtime_config

    class Runtime:
        def __init__(self, logger: Any):
            rec.add("Runtime")

        def deserialize_cuda_engine(self, serialized_engine: bytes) -> Engine | None:
            rec.add("deserialize_cuda_engine", len(serialized_engine))
            found = plans.get(bytes(serialized_engine))
            return Engine(*found) if found else None

    # ---- builder surface
    class Profile:
        def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - the binding's names
            rec.add("set_shape", input, tuple(min), tuple(opt), tuple(max))

    class TimingCache:
        def serialize(self) -> bytes:
            return b"timing cache"

    class BuilderConfig:
        def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
            rec.add("set_memory_pool_limit", pool, pool_size)

        def create_timing_cache(self, serialized_timing_cache: bytes) -> TimingCache:
            rec.add("create_timing_cache", bytes(serialized_timing_cache))
            return TimingCache()

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            rec.add("set_timing_cache", ignore_mismatch=ignore_mismatch)
            return True

        def get_timing_cache(self) -> TimingCache:
            return TimingCache()

        def add_optimization_profile(self, profile: Profile) -> int:
            rec.add("add_optimization_profile")
            return rec.count("add_optimization_profile") - 1

    class Builder:
        def __init__(self, logger: Any):
            rec.add("Builder")

        def create_network(self, flags: int = 0) -> SimpleNamespace:
            rec.add("create_network", flags)
            return SimpleNamespace(source="")

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: SimpleNamespace, config: BuilderConfig) -> bytes:
            rec.add("build_serialized_network")
            return f"plan:{Path(network.source).name}".encode()  # what the runtime fake deserialises

    class OnnxParser:
        num_errors = 0

        def __init__(self, network: SimpleNamespace, logger: Any):
            self.network = network

        def parse_from_file(self, model: str) -> bool:
            rec.add("parse_from_file", model)
            self.network.source = model
            return True

    flag = SimpleNamespace(STRONGLY_TYPED=0 if v >= (11, 0) else 1)
    return SimpleNamespace(
        __version__=version, Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=2: None}),
        Runtime=Runtime, TensorIOMode=io_mode, DataType=SimpleNamespace(FLOAT="FLOAT", HALF="HALF"),
        ExecutionContextAllocationStrategy=strategy, NetworkDefinitionCreationFlag=flag,
        MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"), Builder=Builder, OnnxParser=OnnxParser,
    )


def plan_table(specs: dict[str, GraphSpec], buckets: tuple[int, ...]) -> dict[bytes, tuple[GraphSpec, tuple]]:
    """Plan file contents -> what the fake runtime deserialises them to."""
    assert all(BATCH in t.shape for s in specs.values() for t in s.inputs[:1])
    return {f"plan:{name}".encode(): (spec, buckets) for name, spec in specs.items()}
