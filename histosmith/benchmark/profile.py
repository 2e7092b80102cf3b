"""Where an ONNX Runtime graph spends its time: ONNX Runtime's per-node profile, summed per operator type."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort


def profile_ops(path: Path, feeds: dict[str, np.ndarray], threads: int | None, runs: int = 5,
                top: int = 8) -> list[dict[str, float | str]]:
    """The ``top`` operator types by total kernel time over ``runs`` calls (after one warm-up call):
    op type, milliseconds per call, share of the summed kernel time."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="hs-profile-") as tmp:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        session.run(None, feeds)
        for _ in range(runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + float(event.get("dur", 0))
    whole = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    # The warm-up call is profiled too: divide by runs + 1.
    return [{"op": op, "ms_per_call": us / 1e3 / (runs + 1), "share": us / whole} for op, us in ranked]
