"""``hs-calibrate``: INT8 Q/DQ graphs for an export, calibrated along DDIM trajectories, behind a quality gate.

Steps: record the fp32 U-Net's inputs along trajectories (cached, resumable) → calibrate activation ranges
→ per-block sensitivity sweep → quantise (``unet.int8.onnx`` for ONNX Runtime on CPUs; ``step.int8.onnx``,
the fused step graph in symmetric s8, for TensorRT) → quality gate against fp32 → only then copy the
graphs into the export and record them (recipe, float list, gate results, SHA-256) in the manifest. A
missed gate leaves the export exactly as it was and raises (exit 2), the report kept in the work directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from histosmith.calibration.gate import GateResult, GateThresholds, compare, decode, final_latents
from histosmith.calibration.quantize import FeedReader, Method, qdq_summary, quantize, recipe, row_batches
from histosmith.calibration.report import write_report
from histosmith.calibration.sensitivity import check_blocks, errors_json, float_list, float_nodes, sweep
from histosmith.calibration.trajectories import (
    CalibrationSet,
    TrajectoryOptions,
    dataset_conditions,
    record_trajectories,
    trajectory_key,
)
from histosmith.data.atomic import sha256_file, write_bytes_atomic
from histosmith.data.lock import exclusive
from histosmith.errors import HistoSmithError, file_error
from histosmith.runtime import conditions as cond
from histosmith.runtime.manifest import MANIFEST_FILE, ORT_DEBRIS, Manifest, Variant
from histosmith.runtime.planning import step_coefs, step_graph_feed
from histosmith.runtime.schedule import SamplerTables, Scheduler
from histosmith.runtime.specs import STEP, GraphSpec, step_coef_count

log = logging.getLogger(__name__)
INT8_UNET = "unet.int8.onnx"
INT8_STEP = "step.int8.onnx"
REPORT = "calibration"  # .json / .md / .png


@dataclass(frozen=True)
class CalibrateOptions:
    trajectories: TrajectoryOptions = TrajectoryOptions()
    method: Method = "minmax"
    target: Literal["cpu", "tensorrt", "both"] = "both"
    gate: GateThresholds = GateThresholds()
    sensitivity_rows: int = 64  # recorded inputs the sweep evaluates (spread over every step)
    force: bool = False  # record the graphs even below the gate (marked as failed)
    keep_float: tuple[str, ...] = ()  # U-Net blocks kept float on request (besides the design list and the sweep)
    threads: int | None = None
    cache: Path | None = None
    show_progress: bool = True


@dataclass
class CalibrationOutcome:
    directory: Path  # where the graphs and report went (the export, or the work directory on failure)
    gates: list[GateResult]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)


def fp32_sources(export: Path, manifest: Manifest) -> tuple[str, str, str]:
    """(U-Net, decoder, step) file names of the fp32 ONNX variant, checked against their hashes."""
    for v in manifest.variants:
        if v.format == "onnx" and v.precision == "fp32" and v.guided_unet:
            for name in v.file_names:
                manifest.verify_file(export, name)
            return v.guided_unet, v.decoder, v.fused_step
    raise file_error(export, "no fp32 ONNX graphs in this export (hs-calibrate quantises unet.onnx); "
                             "re-export with hs-export")


def _step_feed(cset: CalibrationSet, tables: SamplerTables,
               spec: GraphSpec) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """Calibration feeds of the fused step graph along the recorded DDIM trajectories (no x̂_0 history)."""
    coefs = step_coefs(tables, step_coef_count(spec))

    def feed(rows: np.ndarray) -> dict[str, np.ndarray]:
        i = int(cset.step[rows[0]])  # batches never mix steps: the coefficients are per call
        return cset.feeds(rows) | step_graph_feed(spec.input_names, coefs[i], cset.latent[rows])

    return feed


def check_calibratable(export: Path, manifest: Manifest) -> None:
    """Refuse, before any work, an export hs-calibrate cannot finish on: graphs of a fixed batch (the calibration
    and gate feeds come in batches of other sizes) or a directory it cannot write its graphs into. Removes the
    temporary graphs an interrupted run of an older version left in the export."""
    if not manifest.batch.dynamic:
        raise file_error(export, f"graphs of a fixed batch ({manifest.batch.max}); hs-calibrate feeds batches of "
                                 "other sizes: re-export with hs-export --dynamic-batch")
    if not os.access(export, os.W_OK) or not os.access(export / MANIFEST_FILE, os.W_OK):
        raise file_error(export, "read-only; hs-calibrate records its INT8 graphs in the export: copy it somewhere "
                                 "writable (or fix its permissions)")
    for debris in export.glob(ORT_DEBRIS):
        debris.unlink(missing_ok=True)


def _sources_in(work: Path, export: Path, names: list[str]) -> dict[str, Path]:
    """Copies of the export's graphs ``names`` in ``work`` (reused while their bytes match): the quantiser writes
    its temporary graphs beside them, never into the export."""
    out = {}
    for name in names:
        copy = work / "source" / name
        if not copy.exists() or copy.stat().st_size != (export / name).stat().st_size:
            copy.parent.mkdir(parents=True, exist_ok=True)
            data = (export / name).read_bytes()
            write_bytes_atomic(copy, lambda f, data=data: f.write(data))
        out[name] = copy
    return out


def _copy_into(export: Path, work: Path, names: list[str]) -> None:
    for name in names:
        data = (work / name).read_bytes()
        write_bytes_atomic(export / name, lambda f, data=data: f.write(data))


def _record(manifest: Manifest, export: Path, files: list[str], decoder: str, report: dict[str, Any]) -> None:
    """Record the INT8 variant (replacing an earlier one) with the SHA-256 of its graphs."""
    unet = INT8_UNET if INT8_UNET in files else ""
    step = INT8_STEP if INT8_STEP in files else ""
    record = {k: report[k] for k in ("method", "samples", "steps", "recipes", "kept_float", "gate", "passed",
                                     "forced", "sha256", "trajectories")}
    variant = Variant("int8", "onnx", entry=unet or step, decoder=decoder, guided_unet=unet, fused_step=step,
                      calibration=record)
    manifest.with_variant(variant, {name: sha256_file(export / name) for name in files}).save(export)


def calibrate(export: Path, data: Path, opts: CalibrateOptions = CalibrateOptions(),
              transform: Callable[[CalibrationSet], CalibrationSet] | None = None) -> CalibrationOutcome:
    """Calibrate, gate and record INT8 graphs for ``export``. ``transform`` edits the recorded set before
    calibration (experiments and tests, e.g. dropping part of the trajectory). One writer per export."""
    with exclusive(export, "export"):
        return _calibrate(export, data, opts, transform)


def _calibrate(export: Path, data: Path, opts: CalibrateOptions,
               transform: Callable[[CalibrationSet], CalibrationSet] | None) -> CalibrationOutcome:
    from histosmith.data.sources.example import cache_dir

    manifest = Manifest.load(export)
    check_calibratable(export, manifest)
    unet_name, decoder_name, step_name = fp32_sources(export, manifest)
    if opts.target in ("tensorrt", "both") and not step_name:
        raise file_error(export, "no fp32 step graph (step.onnx) to quantise for TensorRT; re-export with hs-export")
    check_blocks(export / unet_name, opts.keep_float)
    info = manifest.info
    topts = opts.trajectories
    table = dataset_conditions(data, info.spec, topts.samples, topts.seed)
    cache = opts.cache or cache_dir() / "calibration"
    unet_sha = manifest.files[unet_name]
    work = cache / trajectory_key(unet_sha, table, topts)
    cset = record_trajectories(export / unet_name, unet_sha, info.spec, info.schedule, info.latent_shape, table,
                               topts, cache, opts.threads, opts.show_progress)
    if transform is not None:
        cset = transform(cset)
        work = work / ("variant-" + hashlib.sha256(cset.latent.tobytes()).hexdigest()[:12])
        work.mkdir(parents=True, exist_ok=True)
    if len(cset) == 0:
        raise HistoSmithError("the calibration set is empty")
    tables = Scheduler(info.schedule).set_timesteps(topts.steps)
    targets = ["cpu", "tensorrt"] if opts.target == "both" else [opts.target]

    sources = _sources_in(work, export, [n for n in (unet_name, step_name) if n])  # ORT's temporary graphs go there
    unet_reader = FeedReader(cset.feeds, row_batches(len(cset)))
    cpu = recipe("cpu")
    eval_rows = cset.spread(opts.sensitivity_rows)
    errors, kept_blocks = sweep(sources[unet_name], cset, cpu, opts.method, unet_reader,
                                work / f"ranges-unet-{opts.method}-cpu.json", eval_rows, work, opts.threads,
                                opts.show_progress, requested=opts.keep_float)

    produced: list[str] = []
    recipes: dict[str, Any] = {}
    summaries: dict[str, Any] = {}
    gate_graphs: list[tuple[str, bool]] = []
    for target in targets:
        rec = recipe(target)
        if target == "cpu":
            exclude = float_nodes(onnx.load(str(export / unet_name)), kept_blocks)
            model = quantize(sources[unet_name], work / INT8_UNET, rec, opts.method, unet_reader,
                             work / f"ranges-unet-{opts.method}-cpu.json", sorted(exclude))
            produced.append(INT8_UNET)
            gate_graphs.append((INT8_UNET, False))
        else:
            reader = FeedReader(_step_feed(cset, tables, manifest.graph(STEP)),
                                row_batches(len(cset), groups=cset.step))
            exclude = float_nodes(onnx.load(str(export / step_name)), kept_blocks)
            model = quantize(sources[step_name], work / INT8_STEP, rec, opts.method, reader,
                             work / f"ranges-step-{opts.method}-tensorrt.json", sorted(exclude))
            produced.append(INT8_STEP)
            gate_graphs.append((INT8_STEP, True))
        recipes[target] = rec.describe()
        summaries[produced[-1]] = qdq_summary(model) | {"float_nodes": len(exclude)}

    th = opts.gate
    gate_table = cond.from_dataset(info, th.tiles, th.seed)
    ref_latents = final_latents(export / unet_name, False, info, gate_table, th, opts.threads, "fp32",
                                opts.show_progress)
    ref = decode(export / decoder_name, ref_latents, opts.threads)
    gates = []
    for name, fused in gate_graphs:
        latents = final_latents(work / name, fused, info, gate_table, th, opts.threads, name, opts.show_progress)
        gates.append(compare(name, ref, decode(export / decoder_name, latents, opts.threads), info, gate_table, th))
    passed = all(g.passed for g in gates)
    references = []  # the fp16 graph on the same gate, for scale (never gating)
    fp16 = next((v for v in manifest.variants if v.format == "onnx" and v.precision == "fp16"), None)
    if fp16 is not None and fp16.guided_unet and (export / fp16.guided_unet).exists():
        latents = final_latents(export / fp16.guided_unet, False, info, gate_table, th, opts.threads,
                                fp16.guided_unet, opts.show_progress)
        references.append(compare(fp16.guided_unet, ref, decode(export / decoder_name, latents, opts.threads), info,
                                  gate_table, th))
    sha = {name: sha256_file(work / name) for name in produced}
    report = {
        "export": str(export), "data": str(data), "method": opts.method, "samples": topts.samples,
        "steps": topts.steps, "guidance": topts.guidance, "calibration_inputs": len(cset),
        "trajectories": {"timesteps": sorted({int(t) for t in cset.timestep}, reverse=True),
                         "inputs_per_step": int(np.bincount(cset.step).max())},
        "recipes": recipes, "qdq": summaries, "kept_float": float_list(errors),
        "sensitivity": errors_json(errors),
        "gate": {"thresholds": asdict(th), "results": [asdict(g) for g in gates],
                 "reference": [asdict(g) for g in references]},
        "passed": passed, "forced": opts.force and not passed, "sha256": sha,
    }
    if not passed and not opts.force:
        write_report(work, REPORT, report)
        failures = "; ".join(f"{g.graph}: {', '.join(g.failures)}" for g in gates if not g.passed)
        raise HistoSmithError(f"INT8 quality gate failed ({failures}); the export is unchanged; report: "
                              f"{work / (REPORT + '.md')}")
    _copy_into(export, work, produced)
    write_report(export, REPORT, report)
    _record(manifest, export, produced, decoder_name, report)
    log.info("recorded %s in %s", ", ".join(produced), export / "manifest.json")
    return CalibrationOutcome(export, gates, report)
