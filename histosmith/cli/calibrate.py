"""``hs-calibrate``: INT8 Q/DQ graphs for an export, calibrated along DDIM trajectories, behind a quality gate."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from histosmith.cli.common import SEED, entry_point
from histosmith.errors import HistoSmithError


@click.command(help="Calibrate INT8 graphs (unet.int8.onnx for ONNX Runtime CPUs, step.int8.onnx for TensorRT) "
                    "along DDIM trajectories; they are recorded in the export only if they pass hs-eval gate's "
                    "quality gate at the export's default sampler.")
@click.option("--export", "export", type=click.Path(path_type=Path), required=True, help="hs-export directory.")
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="The real dataset the model was trained on: calibration conditions are drawn from its tiles, and "
                   "the gate's morphology and tissue classifier come from it.")
@click.option("--samples", type=int, default=64, show_default=True, help="Calibration trajectories.")
@click.option("--steps", type=int, default=20, show_default=True, help="DDIM steps per trajectory.")
@click.option("--method", type=click.Choice(["minmax", "percentile", "entropy"]), default="minmax",
              show_default=True, help="Activation range calibration.")
@click.option("--target", type=click.Choice(["cpu", "tensorrt", "both"]), default="both", show_default=True)
@click.option("--segmenter", type=click.Path(path_type=Path), default=None,
              help="Gate: hs-train seg run trained on real tiles only (KID features, label consistency).")
@click.option("--reference", "reference", type=click.Path(path_type=Path), default=None,
              help="Gate: export whose fp32 unet.onnx at DDIM 50 is the reference  [default: --export; a "
                   "guidance-distilled export names its teacher's]")
@click.option("--gate-n", type=click.IntRange(min=8), default=500, show_default=True,
              help="Gate: requests per run (below 500 with --allow-small only).")
@click.option("--gate-runs", type=click.Path(path_type=Path), default=None,
              help="Gate: directory of its generated runs, e.g. an hs-eval gate --out's runs/ to reuse its reference "
                   "runs  [default: gate-runs in --cache]")
@click.option("--allow-small", is_flag=True, help="Gate: allow --gate-n below 500 (a quick look; the verdict is not "
                                                    "kept among the manifest's gate verdicts).")
@click.option("--force", is_flag=True, help="Record the graphs even if they miss the gate (marked failed), or "
                                            "ungated without --segmenter.")
@click.option("--keep-float", "keep_float", default="",
              help="Comma-separated U-Net blocks (e.g. down.0,up.5; see calibration.md) kept in float besides "
                   "the design list and the sensitivity sweep's: accuracy bought with speed.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads.")
@click.option("--cache", type=click.Path(path_type=Path), default=None,
              help="Work directory for trajectories and ranges (default: $HISTOSMITH_CACHE/calibration).")
@click.option("--seed", type=SEED, default=0, show_default=True)
def cli(export: Path, data: Path, samples: int, steps: int, method: str, target: str, segmenter: Path | None,
        reference: Path | None, gate_n: int, gate_runs: Path | None, allow_small: bool, force: bool,
        keep_float: str, threads: int | None, cache: Path | None, seed: int) -> None:
    for name, value, low in (("--samples", samples, 1), ("--steps", steps, 1), ("--threads", threads or 1, 1)):
        if value < low:
            raise HistoSmithError(f"{name} must be >= {low}, got {value}")
    if not export.is_dir():
        raise HistoSmithError(f"{export}: not an export directory")
    if not data.is_dir():
        raise HistoSmithError(f"{data}: not a dataset directory")
    if segmenter is not None and gate_n < 500 and not allow_small:
        raise HistoSmithError(f"--gate-n {gate_n}: the gate judges a set of at least 500 tiles (--allow-small for a "
                              "quick look)")
    if reference is not None and not (reference / "manifest.json").is_file():
        raise HistoSmithError(f"--reference {reference}: not an hs-export directory")
    from histosmith.calibration.calibrate import CalibrateOptions, CalibrationGate, calibrate
    from histosmith.calibration.trajectories import TrajectoryOptions

    gate = None if segmenter is None else CalibrationGate(segmenter, reference, gate_runs, gate_n, seed, allow_small)
    opts = CalibrateOptions(TrajectoryOptions(samples=samples, steps=steps, seed=seed), method, target, gate,
                            force=force, threads=threads, cache=cache,
                            keep_float=tuple(b.strip() for b in keep_float.split(",") if b.strip()),
                            command=shlex.join(["hs-calibrate", *sys.argv[1:]]))
    outcome = calibrate(export, data, opts)
    for label, verdict in (outcome.report["gate"] or {"verdicts": {}})["verdicts"].items():
        state = "passes" if verdict["passed"] else f"FAILS on {', '.join(verdict['failed'])} (forced)"
        click.echo(f"gate: {label} {state} ({verdict['n']} tiles per run)")
    click.echo(f"kept float: {', '.join(row['part'] for row in outcome.report['kept_float'])}")
    click.echo(f"recorded {', '.join(outcome.report['sha256'])} in {export / 'manifest.json'}; "
               f"report {export / 'calibration.md'}")


main = entry_point(cli)
