"""``build_engines.sh``: the trtexec commands equivalent to ``hs-export --trt``, for building on the
target (a Jetson has trtexec at /usr/src/tensorrt/bin/trtexec) when TensorRT's Python API is absent."""

from __future__ import annotations

import shlex
from pathlib import Path

from histosmith.runtime.planning import BatchBuckets
from histosmith.runtime.specs import BATCH, GraphSpec

SCRIPT = "build_engines.sh"


def _shapes(spec: GraphSpec, batch: int) -> str:
    """``name:1x4x16x16,...`` for the inputs with a batch axis (static inputs need no shapes)."""
    return ",".join(f"{t.name}:{'x'.join(str(d) for d in t.concrete(batch))}"
                    for t in spec.inputs if BATCH in t.shape)


def trtexec_command(onnx_file: str, plan_file: str, spec: GraphSpec, buckets: BatchBuckets, workspace_gb: float,
                    timing_cache: str) -> list[str]:
    """One strongly typed build with one optimisation profile per bucket (precision comes from the ONNX)."""
    cmd = ["${TRTEXEC}", f"--onnx={onnx_file}", f"--saveEngine={plan_file}", "--stronglyTyped",
           f"--memPoolSize=workspace:{int(workspace_gb * 1024)}M", f"--timingCacheFile={timing_cache}",
           "--skipInference"]
    for k, (low, opt, high) in enumerate(buckets.profiles()):
        cmd += [f"--profile={k}", f"--minShapes={_shapes(spec, low)}", f"--optShapes={_shapes(spec, opt)}",
                f"--maxShapes={_shapes(spec, high)}"]
    return cmd


def write_build_script(directory: Path, jobs: list[tuple[str, str, GraphSpec]], buckets: BatchBuckets,
                       workspace_gb: float, precision: str) -> Path:
    """Write ``build_engines.sh`` (atomically) for (onnx, plan, spec) jobs; returns its path."""
    from histosmith.data.atomic import write_text_atomic

    lines = [
        "#!/usr/bin/env bash",
        "# Build the TensorRT engines of this export on the target machine (e.g. a Jetson with JetPack 6).",
        "# Equivalent to `hs-export --trt`; precision is carried by the ONNX graphs (strongly typed build).",
        f"# Precision: {precision}; batch buckets: {','.join(map(str, buckets.sizes))}.",
        f"# Afterwards run: hs-export --register-engines --precision {precision} "
        f"--batch-buckets {','.join(map(str, buckets.sizes))} --out <this directory>",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'TRTEXEC=${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}',
        "",
    ]
    for onnx_file, plan_file, spec in jobs:
        cmd = trtexec_command(onnx_file, plan_file, spec, buckets, workspace_gb, "timing.cache")
        quoted = [c if c.startswith("${") else shlex.quote(c) for c in cmd]
        lines.append(f'echo "building {plan_file}"')
        lines.append(" \\\n    ".join(quoted))
        lines.append("")
    path = directory / SCRIPT
    write_text_atomic(path, "\n".join(lines))
    path.chmod(0o755)
    return path
