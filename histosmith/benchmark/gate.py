"""``hs-bench --gate``: every runtime engine of the benchmark through ``hs-eval gate``'s quality gate.

The speed table counts an engine only "at the quality gate". Each engine the benchmark measured generates the
gate's requests as ``hs-generate`` runs it (its own U-Net and decoder, its own precision, compiled when the
benchmark compiled it) at the export's default sampler, and is judged as ``hs-eval gate`` judges a candidate:
the set of tiles against two reference runs of the fp32 two-pass U-Net at DDIM 50 (histosmith.evaluation.gate).
The verdicts go into the engines' manifests, as ``hs-eval gate`` records them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from histosmith.evaluation.gate import Configuration, GateInputs, prepare_gate
from histosmith.evaluation.gate_report import record_verdicts, summary, write_gate
from histosmith.runtime.manifest import Manifest
from histosmith.runtime.postprocess import MarkerDepth
from histosmith.runtime.schedule import SamplerSettings


@dataclass(frozen=True)
class BenchGate:
    """``hs-bench --gate``'s inputs: the gate's (real set, segmenter, runs, n) and the reference export."""

    inputs: GateInputs
    reference: Path | None = None  # export whose fp32 unet.onnx is the reference (default: the benchmarked one)
    report: Path | None = None  # directory for gate.json / .md / .png (default: beside the runs)


def gate_engines(export: Path, engines: list[tuple[str, Path, bool]], gate: BenchGate, command: str,
                 show_progress: bool = True) -> dict[str, Any]:
    """``engines``: (contender name, U-Net file, compiled). Returns the JSON-ready gate section."""
    manifest = Manifest.load(export)
    defaults = manifest.sampling
    settings = SamplerSettings(defaults.sampler, defaults.steps, 0.0, defaults.corrector)
    inputs = replace(gate.inputs, reference_guidance=defaults.guidance)  # the candidates' scale
    prepared = prepare_gate(gate.reference or export, inputs, show_progress)
    candidates = {name: Configuration(path, settings, defaults.guidance, compile=compiled)
                  for name, path, compiled in engines}
    depth = MarkerDepth.parse(defaults.marker_depth) if defaults.marker_depth else None
    result = prepared.run(list(dict.fromkeys(candidates.values())), depth)
    report_dir = gate.report or gate.inputs.runs.parent
    paths = write_gate(report_dir, result, command)
    if not gate.inputs.allow_small:
        record_verdicts(result, command)
    return {"reference": result.reference.label, "n": result.n, "sampling": settings.label,
            "report": str(paths[1]),
            "results": {name: summary(result, c.label) | {"label": c.label} for name, c in candidates.items()}}


def best_at_gate(rows: list[dict[str, Any]], gate: dict[str, Any], batch: int) -> dict[str, Any] | None:
    """The fastest runtime engine at ``batch`` whose gate passed (its row), or None."""
    passed = [r for r in rows if r["batch"] == batch and r["kind"] == "engine"
              and gate["results"].get(r["contender"], {}).get("passed")]
    return min(passed, key=lambda r: r["unet_ms_p50"], default=None)
