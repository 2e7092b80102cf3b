"""``hs-eval gate`` and ``hs-eval sampler``: the distribution-level quality gate, and the sampler sweep that picks
a model's default sampler and step count with it (histosmith.evaluation.gate)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from histosmith.cli.common import SEED, marker_depth_option
from histosmith.errors import HistoSmithError

if TYPE_CHECKING:
    from histosmith.runtime.postprocess import MarkerDepth


def _gate_options(f: Any) -> Any:
    options = [
        click.option("--export", "export", type=click.Path(path_type=Path), required=True,
                     help="hs-export directory: its fp32 unet.onnx at DDIM 50 is the reference."),
        click.option("--real", type=click.Path(path_type=Path), required=True,
                     help="The real dataset the model was trained on (morphology, tissue classifier)."),
        click.option("--segmenter", type=click.Path(path_type=Path), required=True,
                     help="hs-train seg run trained on real tiles only (KID features, label consistency)."),
        click.option("--out", type=click.Path(path_type=Path), required=True,
                     help="Directory for the report (gate: <candidate label>/gate.*; sampler: sampler.*) and the "
                          "generated runs (runs/, with their measurements: reused by later calls)."),
        click.option("--n", type=click.IntRange(min=8), default=500, show_default=True,
                     help="Requests per run (conditions drawn from the training distribution)."),
        click.option("--seed", type=SEED, default=0, show_default=True,
                     help="Noise seed of reference run A and the candidates; run B uses seed + 1."),
        click.option("--reference-guidance", type=click.FloatRange(0), default=None,
                     help="Guidance of the reference runs  [default: the model's]"),
        click.option("--batch", type=click.IntRange(min=1), default=16, show_default=True),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads."),
        click.option("--allow-small", is_flag=True,
                     help="Allow --n below 500 (a quick look; its verdict is not recorded in the manifest)."),
        marker_depth_option,
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _setup(export: Path, real: Path, segmenter: Path, out: Path, n: int, seed: int, batch: int,
           threads: int | None, allow_small: bool, reference_guidance: float | None) -> Any:
    """Checks before any work, then the reference, the requests, the judges and the options."""
    from histosmith.evaluation.gate import GateInputs, prepare_gate

    prepared = prepare_gate(export, GateInputs(real, segmenter, out / "runs", n, seed, batch, threads, allow_small,
                                               reference_guidance))
    out.mkdir(parents=True, exist_ok=True)
    return prepared


@click.command("gate")
@_gate_options
@click.option("--engine", type=click.Path(path_type=Path), default=None,
              help="Candidate engine file (default: the export's unet.onnx).")
@click.option("--sampler", type=click.Choice(["ddim", "dpmpp-2m", "unipc"]), default="ddim", show_default=True)
@click.option("--steps", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--guidance", type=click.FloatRange(0), default=None, help="Candidate guidance  [default: the model's]")
@click.option("--corrector/--no-corrector", default=True, show_default=True, help="UniPC's corrector.")
@click.option("--compile", "compile_engine", is_flag=True, help="torch (.pt2) engines: torch.compile them.")
@click.option("--device", type=click.Choice(["auto", "openvino"]), default="auto", show_default=True,
              help="openvino: run an ONNX candidate in OpenVINO's CPU plugin instead of ONNX Runtime.")
@click.option("--candidate-seed-offset", type=click.IntRange(min=0), default=0, show_default=True,
              help="Candidate noise seed = --seed + this (0: the noise of reference run A; 2: a third seed, e.g. to "
                   "gate the reference configuration against itself).")
def gate_cmd(export: Path, real: Path, segmenter: Path, out: Path, n: int, seed: int,
             reference_guidance: float | None, batch: int, threads: int | None, allow_small: bool,
             marker_depth: MarkerDepth, engine: Path | None, sampler: str, steps: int, guidance: float | None,
             corrector: bool, compile_engine: bool, device: str, candidate_seed_offset: int) -> None:
    """Judge one configuration against the reference on a set of tiles; exit 2 (naming the metric) when it fails."""
    from histosmith.evaluation.gate import Configuration
    from histosmith.evaluation.gate_report import record_verdicts, write_gate
    from histosmith.runtime.schedule import SamplerSettings

    try:
        settings = SamplerSettings(sampler, steps, 0.0, corrector)  # type: ignore[arg-type]
    except ValueError as exc:
        raise HistoSmithError(str(exc)) from None
    engine = engine or export / "unet.onnx"
    if not engine.is_file():
        raise HistoSmithError(f"--engine {engine}: not found")
    gate = _setup(export, real, segmenter, out, n, seed, batch, threads, allow_small, reference_guidance)
    candidate = Configuration(engine, settings, gate.reference.guidance if guidance is None else guidance,
                              compile_engine, candidate_seed_offset, device=device)
    result = gate.run([candidate], marker_depth)
    command = shlex.join(["hs-eval", *sys.argv[1:]])
    # one report per candidate (runs/ is shared); an engine of another export is named by its directory too
    name = candidate.label if engine.parent.resolve() == export.resolve() else f"{engine.parent.name}-{candidate.label}"
    paths = write_gate(out / name, result, command)
    if not allow_small:
        record_verdicts(result, command)
    click.echo(f"report: {', '.join(map(str, paths))}")
    failed = result.failures(candidate.label)
    if failed:
        first = failed[0]
        raise HistoSmithError(f"gate: {candidate.label} fails on {len(failed)} metric(s), first {first['metric']} "
                              f"(difference {first['difference']:.4g} > tolerance {first['tolerance']:.4g})"
                              if first["difference"] is not None else
                              f"gate: {candidate.label} fails: {first['metric']} ({first.get('note', '')})")
    click.echo(f"gate: {candidate.label} passes ({n} tiles per run)")


@click.command("sampler")
@_gate_options
@click.option("--engine", type=click.Path(path_type=Path), default=None,
              help="Engine the sweep runs (default: the export's unet.onnx).")
@click.option("--samplers", default="ddim,dpmpp-2m,unipc", show_default=True)
@click.option("--steps", "steps_list", default="6,8,10,15,20,30", show_default=True,
              help="Step counts to try for every sampler.")
@click.option("--record", is_flag=True,
              help="Make the fewest-steps passing configuration the default (manifest sampling) of the export that "
                   "holds --engine.")
def sampler_cmd(export: Path, real: Path, segmenter: Path, out: Path, n: int, seed: int,
                reference_guidance: float | None, batch: int, threads: int | None, allow_small: bool,
                marker_depth: MarkerDepth, engine: Path | None, samplers: str, steps_list: str, record: bool) -> None:
    """Quality against steps for each sampler (the gate's metrics), one plot; the fewest steps that pass win."""
    from histosmith.evaluation.gate import Configuration
    from histosmith.evaluation.gate_report import record_verdicts, write_gate
    from histosmith.evaluation.sampler_sweep import choose, plot_sweep, record_default
    from histosmith.runtime.schedule import SAMPLERS, SamplerSettings

    names = [s.strip() for s in samplers.split(",") if s.strip()]
    unknown = [s for s in names if s not in SAMPLERS]
    if unknown or not names:
        raise HistoSmithError(f"--samplers {samplers}: expected names from {', '.join(SAMPLERS)}")
    try:
        counts = sorted({int(s) for s in steps_list.split(",") if s.strip()})
    except ValueError:
        raise HistoSmithError(f"--steps {steps_list}: expected comma-separated whole numbers") from None
    if not counts or counts[0] < 1 or counts[-1] > 1000:
        raise HistoSmithError(f"--steps {steps_list}: step counts must lie in 1..1000")
    if record and allow_small:
        raise HistoSmithError("--record: a verdict on fewer than 500 tiles is not recorded (drop --allow-small)")
    engine = engine or export / "unet.onnx"
    gate = _setup(export, real, segmenter, out, n, seed, batch, threads, allow_small, reference_guidance)
    candidates = [Configuration(engine, SamplerSettings(s, k), gate.reference.guidance)  # type: ignore[arg-type]
                  for s in names for k in counts]
    result = gate.run(candidates, marker_depth)
    command = shlex.join(["hs-eval", *sys.argv[1:]])
    paths = write_gate(out, result, command, stem="sampler")
    paths.append(plot_sweep(result, out / "sampler_steps.png"))
    best = choose(result)
    if not allow_small:
        record_verdicts(result, command)
    click.echo(f"report: {', '.join(map(str, paths))}")
    if best is None:
        raise HistoSmithError("sampler: no configuration of the sweep passes the gate; the default stays as it is")
    click.echo(f"fewest steps that pass: {best.label}")
    if record:
        record_default(engine.parent, result, best, command, str(marker_depth))  # the export that holds the engine
        click.echo(f"recorded {best.sampling.sampler} at {best.sampling.steps} steps as the default of "
                   f"{engine.parent}")
