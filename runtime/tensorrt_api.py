"""Where the TensorRT 10 and 11 Python APIs differ, and the one branch per difference.

Checked against NVIDIA's Python bindings (``python/src/infer/pyCore.cpp`` of the TensorRT OSS
releases 10.3, 10.11, 10.13 and 11.1) and the 11.x API reference:

* Execution contexts. 10.0-10.10: ``engine.create_execution_context(strategy=...)`` only. From 10.11 and in
  11.x, ``engine.create_runtime_config()`` returns an ``IRuntimeConfig`` whose
  ``set_execution_context_allocation_strategy`` takes the strategy, and
  ``engine.create_execution_context(runtime_config=...)`` uses it; the strategy overload still exists in
  11.1 but the runtime config is the interface new options go to, so it is preferred wherever it exists.
* Network creation flags. 10.x: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is bit 1 and must be set
  for a strongly typed network. 11.x: strong typing is always on and the flag (now bit 0) is deprecated and
  ignored, so no flag is set.
* Everything else the builder and backend call is the same in both (``deserialize_cuda_engine``,
  ``num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode`` / ``get_tensor_dtype``,
  ``num_optimization_profiles``, ``get_tensor_profile_shape``, ``set_optimization_profile_async``,
  ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``, ``create_builder_config``,
  ``set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...)``, ``create_timing_cache`` /
  ``set_timing_cache(cache, ignore_mismatch)`` / ``get_timing_cache``, ``create_optimization_profile`` /
  ``set_shape`` / ``add_optimization_profile``, ``build_serialized_network``, ``OnnxParser.parse_from_file``).
"""

from __future__ import annotations

from typing import Any

from histosmith.errors import HistoSmithError


def major_version(trt: Any) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        raise HistoSmithError(f"unrecognised TensorRT version {trt.__version__!r}") from None


def network_flags(trt: Any) -> int:
    """``create_network`` flags of a strongly typed network (precision carried by the ONNX graph)."""
    if major_version(trt) >= 11:
        return 0  # always strongly typed; the flag is deprecated and ignored
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def create_context(trt: Any, engine: Any) -> tuple[Any, Any]:
    """An execution context that allocates activation memory for its own profile only (not the largest
    of all). Returns (context, runtime config or None); keep the config alive as long as the context."""
    strategy = trt.ExecutionContextAllocationStrategy.ON_PROFILE_CHANGE
    config = None
    if hasattr(engine, "create_runtime_config"):  # 10.11+ and 11.x
        config = engine.create_runtime_config()
        config.set_execution_context_allocation_strategy(strategy)
        context = engine.create_execution_context(runtime_config=config)
    else:  # 10.0 - 10.10 (JetPack 6 ships 10.3)
        context = engine.create_execution_context(strategy=strategy)
    if context is None:
        raise HistoSmithError("TensorRT could not create an execution context (out of device memory?)")
    return context, config
