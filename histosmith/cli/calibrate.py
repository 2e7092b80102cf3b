"""``hs-calibrate``: INT8 Q/DQ graphs for an export, calibrated along DDIM trajectories, behind a quality gate."""

from __future__ import annotations

from pathlib import Path

import click

from histosmith.cli.common import SEED, entry_point
from histosmith.errors import HistoSmithError


@click.command(help="Calibrate INT8 graphs (unet.int8.onnx for ONNX Runtime CPUs, step.int8.onnx for TensorRT) "
                    "along DDIM trajectories; they are recorded in the export only if they pass the quality gate.")
@click.option("--export", "export", type=click.Path(path_type=Path), required=True, help="hs-export directory.")
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Labelled dataset of the model's classes; calibration conditions are drawn from its tiles.")
@click.option("--samples", type=int, default=64, show_default=True, help="Calibration trajectories.")
@click.option("--steps", type=int, default=20, show_default=True, help="DDIM steps per trajectory.")
@click.option("--method", type=click.Choice(["minmax", "percentile", "entropy"]), default="minmax",
              show_default=True, help="Activation range calibration.")
@click.option("--target", type=click.Choice(["cpu", "tensorrt", "both"]), default="both", show_default=True)
@click.option("--gate-tiles", type=int, default=64, show_default=True, help="Tiles the quality gate compares.")
@click.option("--gate-steps", type=int, default=50, show_default=True, help="DDIM steps of the gate's runs.")
@click.option("--min-agreement", type=float, default=0.99, show_default=True, help="Gate: class-mask agreement.")
@click.option("--min-same-count", type=float, default=0.90, show_default=True,
              help="Gate: share of tiles with the fp32 instance count.")
@click.option("--max-r-delta", type=float, default=0.02, show_default=True,
              help="Gate: largest change of the count-control r of any class.")
@click.option("--force", is_flag=True, help="Record the graphs even if they miss the gate (marked failed).")
@click.option("--keep-float", "keep_float", default="",
              help="Comma-separated U-Net blocks (e.g. down.0,up.5; see calibration.md) kept in float besides "
                   "the design list and the sensitivity sweep's: accuracy bought with speed.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads.")
@click.option("--cache", type=click.Path(path_type=Path), default=None,
              help="Work directory for trajectories and ranges (default: $HISTOSMITH_CACHE/calibration).")
@click.option("--seed", type=SEED, default=0, show_default=True)
def cli(export: Path, data: Path, samples: int, steps: int, method: str, target: str, gate_tiles: int,
        gate_steps: int, min_agreement: float, min_same_count: float, max_r_delta: float, force: bool,
        keep_float: str, threads: int | None, cache: Path | None, seed: int) -> None:
    for name, value, low in (("--samples", samples, 1), ("--steps", steps, 1), ("--gate-tiles", gate_tiles, 1),
                             ("--gate-steps", gate_steps, 1), ("--threads", threads or 1, 1)):
        if value < low:
            raise HistoSmithError(f"{name} must be >= {low}, got {value}")
    for name, value in (("--min-agreement", min_agreement), ("--min-same-count", min_same_count)):
        if not 0 <= value <= 1:
            raise HistoSmithError(f"{name} must lie in [0, 1], got {value}")
    if max_r_delta < 0:
        raise HistoSmithError(f"--max-r-delta must be >= 0, got {max_r_delta}")
    if not export.is_dir():
        raise HistoSmithError(f"{export}: not an export directory")
    if not data.is_dir():
        raise HistoSmithError(f"{data}: not a dataset directory")
    from histosmith.calibration.calibrate import CalibrateOptions, calibrate
    from histosmith.calibration.gate import GateThresholds
    from histosmith.calibration.trajectories import TrajectoryOptions

    opts = CalibrateOptions(TrajectoryOptions(samples=samples, steps=steps, seed=seed), method, target,
                            GateThresholds(gate_tiles, gate_steps, class_agreement=min_agreement,
                                           same_instance_count=min_same_count, control_r_delta=max_r_delta),
                            force=force, threads=threads, cache=cache,
                            keep_float=tuple(b.strip() for b in keep_float.split(",") if b.strip()))
    outcome = calibrate(export, data, opts)
    for g in outcome.gates:
        click.echo(f"{g.graph}: class-mask agreement {g.class_agreement:.2%}, same instance count "
                   f"{g.same_instance_count:.1%}, max count-control dr {g.control_r_delta:.3f}, image PSNR "
                   f"{g.image_psnr_db:.1f} dB -> {'passed' if g.passed else 'FAILED (forced)'}")
    click.echo(f"kept float: {', '.join(row['part'] for row in outcome.report['kept_float'])}")
    click.echo(f"recorded {', '.join(outcome.report['sha256'])} in {export / 'manifest.json'}; "
               f"report {export / 'calibration.md'}")


main = entry_point(cli)
