"""``hs-calibrate``: INT8 Q/DQ graphs for an export, calibrated along DDIM trajectories, behind a quality gate.

Steps: record the fp32 U-Net's inputs along trajectories (cached, resumable) → calibrate activation ranges
→ per-block sensitivity sweep → quantise (``unet.int8.onnx`` for ONNX Runtime on CPUs; ``step.int8.onnx``,
the fused step graph in symmetric s8, for TensorRT) → the quality gate of ``hs-eval gate``
(histosmith.evaluation.gate: the set of tiles each graph generates at the export's default sampler, against
two reference runs of the fp32 two-pass U-Net at DDIM 50; the fused step graph runs through ONNX Runtime's
step loop on the CPU) → only then copy the graphs into the export and record them (recipe, float list, gate
verdicts, SHA-256) in the manifest. The gate runs the graphs from a staged copy of the export in the work
directory, so a missed gate leaves the export exactly as it was and raises (exit 2), the reports kept in the
work directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

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
from histosmith.evaluation.gate import MIN_TILES, Configuration, GateInputs, GateResult, PreparedGate, prepare_gate
from histosmith.evaluation.gate_report import record_verdicts_in, summary, write_gate
from histosmith.runtime.manifest import MANIFEST_FILE, ORT_DEBRIS, Manifest, Variant
from histosmith.runtime.planning import step_coefs, step_graph_feed
from histosmith.runtime.postprocess import MarkerDepth
from histosmith.runtime.schedule import SamplerSettings, SamplerTables, Scheduler
from histosmith.runtime.specs import STEP, GraphSpec, step_coef_count

log = logging.getLogger(__name__)
INT8_UNET = "unet.int8.onnx"
INT8_STEP = "step.int8.onnx"
REPORT = "calibration"  # .json / .md / .png
GATE_REPORT = "calibration-gate"  # .json / .md / .png: hs-eval gate's report of the INT8 graphs
STAGED = "staged"  # the work directory's copy of the export with the INT8 variant, which the gate runs


@dataclass(frozen=True)
class CalibrationGate:
    """The quality gate the INT8 graphs must pass (``hs-eval gate``'s, on the calibration data as the real set)."""

    segmenter: Path  # hs-train seg run trained on real tiles only
    reference: Path | None = None  # export whose fp32 unet.onnx at DDIM 50 is the reference (default: this one)
    runs: Path | None = None  # generated runs, shared with hs-eval gate (default: the calibration cache's gate-runs)
    n: int = MIN_TILES
    seed: int = 0
    allow_small: bool = False
    sampling: SamplerSettings | None = None  # the candidates' sampler (default: the export's default)


@dataclass(frozen=True)
class CalibrateOptions:
    trajectories: TrajectoryOptions = TrajectoryOptions()
    method: Method = "minmax"
    target: Literal["cpu", "tensorrt", "both"] = "both"
    gate: CalibrationGate | None = None  # None: refused unless ``force`` (the graphs are then recorded ungated)
    sensitivity_rows: int = 64  # recorded inputs the sweep evaluates (spread over every step)
    force: bool = False  # record the graphs even below the gate (marked as failed)
    keep_float: tuple[str, ...] = ()  # U-Net blocks kept float on request (besides the design list and the sweep)
    threads: int | None = None
    cache: Path | None = None
    show_progress: bool = True
    command: str = "histosmith.calibration.calibrate"  # how the reports name what made them


@dataclass
class CalibrationOutcome:
    directory: Path  # where the graphs and report went (the export, or the work directory on failure)
    gate: GateResult | None  # None: recorded ungated (``force`` without a gate)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.gate is not None and all(self.gate.passed(c.label) for c in self.gate.candidates)


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
    record = {k: report[k] for k in ("method", "samples", "steps", "recipes", "kept_float", "gate", "passed",
                                     "forced", "sha256", "trajectories")}
    variant = _int8_variant(files, decoder, record)
    manifest.with_variant(variant, {name: sha256_file(export / name) for name in files}).save(export)


def _int8_variant(files: list[str], decoder: str, calibration: Mapping[str, Any] | None = None) -> Variant:
    unet = INT8_UNET if INT8_UNET in files else ""
    step = INT8_STEP if INT8_STEP in files else ""
    return Variant("int8", "onnx", entry=unet or step, decoder=decoder, guided_unet=unet, fused_step=step,
                   calibration=calibration)


def _prepare_gate(export: Path, data: Path, manifest: Manifest, opts: CalibrateOptions,
                  cache: Path) -> PreparedGate | None:
    """The gate's reference, requests and judges, checked before any calibration work."""
    gate = opts.gate
    if gate is None:
        if not opts.force:
            raise HistoSmithError("the INT8 graphs need the quality gate: pass --segmenter (an hs-train seg run on "
                                  "the real tiles), or --force to record them ungated")
        return None
    if gate.reference is None and manifest.distillation is not None:
        raise HistoSmithError(f"{export}: a guidance-distilled export is gated against its teacher: pass the "
                              "teacher's hs-export directory as --reference")
    inputs = GateInputs(data, gate.segmenter, gate.runs or cache / "gate-runs", gate.n, gate.seed,
                        threads=opts.threads, allow_small=gate.allow_small,
                        reference_guidance=manifest.sampling.guidance)  # the candidates' scale
    return prepare_gate(gate.reference or export, inputs, opts.show_progress)


def _stage(work: Path, export: Path, manifest: Manifest, produced: list[str], decoder: str) -> Path:
    """A copy of the export in ``work`` holding the INT8 graphs, the decoder and a manifest that lists them: the
    gate runs them as ``hs-generate`` would, and the export stays untouched until they pass."""
    staged = work / STAGED
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir(parents=True)
    for name in produced:
        shutil.copyfile(work / name, staged / name)
    shutil.copyfile(export / decoder, staged / decoder)
    manifest.with_variant(_int8_variant(produced, decoder),
                          {name: sha256_file(staged / name) for name in produced}).save(staged)
    return staged


def _gate_candidates(staged: Path, produced: list[str], manifest: Manifest,
                     gate: CalibrationGate) -> list[Configuration]:
    """The CPU graph in ONNX Runtime's host loop, the TensorRT step graph in its step loop; each at the export's
    default sampler and guidance (or the gate's)."""
    defaults = manifest.sampling
    settings = gate.sampling or SamplerSettings(defaults.sampler, defaults.steps, 0.0, defaults.corrector)
    entry = _int8_variant(produced, "").entry
    out = [Configuration(staged / INT8_UNET, settings, defaults.guidance)] if INT8_UNET in produced else []
    if INT8_STEP in produced:
        out.append(Configuration(staged / entry, settings, defaults.guidance, fused_step=True))
    return out


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
    gate = _prepare_gate(export, data, manifest, opts, cache)
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
    for target in targets:
        rec = recipe(target)
        if target == "cpu":
            exclude = float_nodes(onnx.load(str(export / unet_name)), kept_blocks)
            model = quantize(sources[unet_name], work / INT8_UNET, rec, opts.method, unet_reader,
                             work / f"ranges-unet-{opts.method}-cpu.json", sorted(exclude))
            produced.append(INT8_UNET)
        else:
            reader = FeedReader(_step_feed(cset, tables, manifest.graph(STEP)),
                                row_batches(len(cset), groups=cset.step))
            exclude = float_nodes(onnx.load(str(export / step_name)), kept_blocks)
            model = quantize(sources[step_name], work / INT8_STEP, rec, opts.method, reader,
                             work / f"ranges-step-{opts.method}-tensorrt.json", sorted(exclude))
            produced.append(INT8_STEP)
        recipes[target] = rec.describe()
        summaries[produced[-1]] = qdq_summary(model) | {"float_nodes": len(exclude)}

    result, verdicts = None, {}
    if gate is not None:
        assert opts.gate is not None
        staged = _stage(work, export, manifest, produced, decoder_name)
        candidates = _gate_candidates(staged, produced, manifest, opts.gate)
        depth = manifest.sampling.marker_depth
        result = gate.run(candidates, MarkerDepth.parse(depth) if depth else None)
        verdicts = {c.label: summary(result, c.label) for c in candidates}
        shutil.rmtree(staged)  # the graphs stay in the work directory; the runs are kept by the gate
    passed = result is not None and all(v["passed"] for v in verdicts.values())
    sha = {name: sha256_file(work / name) for name in produced}
    report = {
        "export": str(export), "data": str(data), "method": opts.method, "samples": topts.samples,
        "steps": topts.steps, "guidance": topts.guidance, "calibration_inputs": len(cset),
        "trajectories": {"timesteps": sorted({int(t) for t in cset.timestep}, reverse=True),
                         "inputs_per_step": int(np.bincount(cset.step).max())},
        "recipes": recipes, "qdq": summaries, "kept_float": float_list(errors),
        "sensitivity": errors_json(errors),
        "gate": None if result is None else {
            "n": result.n, "reference": result.reference.label, "verdicts": verdicts, "report": GATE_REPORT + ".md"},
        "passed": passed, "forced": opts.force and not passed, "sha256": sha,
    }
    directory = export if passed or opts.force else work
    if result is not None:
        write_gate(directory, result, opts.command, stem=GATE_REPORT)
    if directory == work:
        write_report(work, REPORT, report)
        failures = "; ".join(f"{label}: {', '.join(v['failed'])}" for label, v in verdicts.items() if not v["passed"])
        raise HistoSmithError(f"INT8 quality gate failed ({failures}); the export is unchanged; report: "
                              f"{work / (GATE_REPORT + '.md')}")
    _copy_into(export, work, produced)
    write_report(export, REPORT, report)
    _record(manifest, export, produced, decoder_name, report)
    if result is not None and not result.n < MIN_TILES:  # a quick look on fewer tiles is not a verdict
        record_verdicts_in(export, result, [replace(c, engine=export / c.engine.name) for c in result.candidates],
                           opts.command)
    log.info("recorded %s in %s", ", ".join(produced), export / "manifest.json")
    return CalibrationOutcome(export, result, report)
