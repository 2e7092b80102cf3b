"""What a TensorRT engine was built for, and the check that refuses an engine built for something else.

TensorRT plans are specific to the GPU model (compute capability) and the exact TensorRT version that
built them. The builder records both in the manifest; the runtime compares before deserialising, so
the user gets one clear line instead of TensorRT's serialization assertion.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from histosmith.errors import HistoSmithError

UNKNOWN = "unknown"


def engine_facts(gpu_name: str, major: int, minor: int, trt_version: str, buckets: list[int],
                 precision: str) -> dict[str, Any]:
    return {"gpu": gpu_name, "compute_capability": f"{major}.{minor}", "tensorrt": trt_version,
            "buckets": list(buckets), "precision": precision}


def check_engine_facts(recorded: Mapping[str, Any], current: Mapping[str, Any], engine: str) -> None:
    """Raise unless ``current`` (this machine) matches what ``engine`` was built for.

    Facts recorded as ``unknown`` (engines registered after a ``trtexec`` build) are not compared;
    TensorRT itself then refuses a mismatched plan, which the backend reports the same way.
    """
    problems = []
    for key, label in (("compute_capability", "compute capability"), ("tensorrt", "TensorRT version")):
        want, have = str(recorded.get(key, UNKNOWN)), str(current.get(key, UNKNOWN))
        if want != UNKNOWN and have != UNKNOWN and want != have:
            problems.append(f"{label} {want} (this machine: {have})")
    if problems:
        raise HistoSmithError(
            f"{engine}: built for {recorded.get('gpu', 'another GPU')} with " + ", ".join(problems)
            + "; rebuild it here with `hs-export --trt` (or build_engines.sh)"
        )
    want_gpu, have_gpu = recorded.get("gpu", UNKNOWN), current.get("gpu", UNKNOWN)
    if UNKNOWN not in (want_gpu, have_gpu) and want_gpu != have_gpu:
        # Same compute capability and TensorRT: the plan loads, but its tactics were timed elsewhere.
        import logging

        logging.getLogger(__name__).warning("%s was built on %s, running on %s (same compute capability); "
                                            "rebuild for best speed", engine, want_gpu, have_gpu)
