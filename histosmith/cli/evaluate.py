"""``hs-eval``: CoNIC metrics between datasets, and (with a model) reconstruction and count control."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from histosmith.cli.common import SEED, entry_point, marker_depth_option, output_path
from histosmith.cli.evaluate_gate import gate_cmd, sampler_cmd
from histosmith.cli.generation import sampler_option_decorators, sampling_plan_fields

if TYPE_CHECKING:
    from histosmith.runtime.postprocess import MarkerDepth


@click.group(help="Evaluate datasets and models.")
def cli() -> None:
    pass


@cli.command("conic")
@click.option("--true", "true_dir", type=click.Path(path_type=Path), required=True, help="Ground-truth dataset.")
@click.option("--pred", "pred_dir", type=click.Path(path_type=Path), required=True, help="Predicted dataset.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the metrics here.")
def conic_cmd(true_dir: Path, pred_dir: Path, json_path: Path | None) -> None:
    """The CoNIC challenge metrics: PQ, mPQ+, multi-class R², AJI, Dice, per class."""
    output_path(json_path)
    from histosmith.data.atomic import write_json_atomic
    from histosmith.evaluation.conic_dirs import evaluate_conic_dirs

    result = evaluate_conic_dirs(true_dir, pred_dir)
    click.echo(result.format_table())
    if json_path:
        write_json_atomic(json_path, result.to_dict())
        click.echo(f"json: {json_path}")


def _model_eval_options(kind: str, data_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--checkpoint --data --split --json`` of the commands that score a trained model on a dataset."""
    options = [
        click.option("--checkpoint", type=click.Path(path_type=Path), required=True,
                     help=f"hs-train {kind} run or file."),
        click.option("--data", type=click.Path(path_type=Path), required=True, help=data_help),
        click.option("--split", default="val", show_default=True,
                     help="patch_info split to evaluate ('all' for every tile)."),
        click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
                     help="Write the report here."),
    ]

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


def _check_model_and_data(checkpoint: Path, data: Path, json_path: Path | None, split: str,
                          command: str) -> str | None:
    """Check the paths before any work; returns the split to evaluate (None: every tile)."""
    from histosmith.errors import HistoSmithError

    output_path(json_path)
    if not checkpoint.exists():
        raise HistoSmithError(f"{checkpoint}: checkpoint not found")
    if not (data / "meta.json").exists():
        raise HistoSmithError(f"{data}: not a prepared dataset (no meta.json)")
    from histosmith.extras import require

    require(command, "train")
    return None if split == "all" else split


def _echo_and_save(report: Any, json_path: Path | None) -> None:
    """Print a report's table; write its JSON when asked."""
    from histosmith.data.atomic import write_json_atomic

    click.echo(report.format_table())
    if json_path:
        write_json_atomic(json_path, report.to_dict())
        click.echo(f"json: {json_path}")


@cli.command("vqvae")
@_model_eval_options("vqvae", "Dataset (held-out split is used).")
@click.option("--marker-depths", default=None,
              help="Watershed marker depths to try on the reconstructed maps; the smallest as good as the best in "
                   "PQ and mPQ+ is recommended for --marker-depth  [default: 0.1,0.15,0.2,0.25,0.3,0.4,0.5]")
def vqvae_cmd(checkpoint: Path, data: Path, split: str, json_path: Path | None, marker_depths: str | None) -> None:
    """Reconstruction PSNR, class mIoU, instance PQ from reconstructed maps, codebook usage, marker depth."""
    depths = None if marker_depths is None else parse_marker_depths(marker_depths)
    chosen = _check_model_and_data(checkpoint, data, json_path, split, "hs-eval vqvae")
    from histosmith.evaluation.vqvae import MARKER_DEPTHS, evaluate_vqvae

    _echo_and_save(evaluate_vqvae(checkpoint, data, chosen, marker_depths=depths or MARKER_DEPTHS), json_path)


def parse_marker_depths(text: str) -> tuple[float, ...]:
    """``"0.2,0.4"`` -> (0.2, 0.4): distinct values in (0, 1]."""
    from histosmith.errors import HistoSmithError

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise HistoSmithError(f"--marker-depths {text!r}: comma-separated numbers, e.g. 0.2,0.3,0.4") from None
    if not values or len(set(values)) != len(values) or not all(0 < v <= 1 for v in values):
        raise HistoSmithError(f"--marker-depths {text!r}: distinct values in (0, 1]")
    return tuple(sorted(values))


@cli.command("seg")
@_model_eval_options("seg", "Dataset with ground-truth labels.")
def seg_cmd(checkpoint: Path, data: Path, split: str, json_path: Path | None) -> None:
    """Predict with a trained segmenter and score with the CoNIC metrics (the hs-eval conic code)."""
    chosen = _check_model_and_data(checkpoint, data, json_path, split, "hs-eval seg")
    from histosmith.segmentation.evaluate import evaluate_segmenter

    _echo_and_save(evaluate_segmenter(checkpoint, data, chosen).result(), json_path)


@cli.command("downstream")
@click.option("--real", type=click.Path(path_type=Path), required=True,
              help="Real dataset: its 'train' split trains, its held-out 'val' split scores every arm.")
@click.option("--synthetic", type=click.Path(path_type=Path), multiple=True,
              help="Generated dataset (hs-generate / hs-sample); repeat for several.")
@click.option("--arms", default="real,real+synthetic,synthetic", show_default=True,
              help="Comma-separated: real, real+synthetic, synthetic.")
@click.option("--seeds", type=int, default=3, show_default=True, help="Runs per arm (seeds 0..N-1).")
@click.option("--real-fraction", "real_fraction", default="1", show_default=True,
              help="Comma-separated shares of the real training tiles, e.g. 0.25,0.5,1 (a learning curve).")
@click.option("--steps", type=int, default=None, help="Optimiser steps of every run (default: the config's).")
@click.option("--config", default="small", show_default=True, help="Segmenter config: tiny or small.")
@click.option("--extra-ratio", type=float, default=None,
              help="Share of each real+synthetic batch drawn from synthetic tiles (default: uniform over all).")
@click.option("--extra-until", type=float, default=None,
              help="real+synthetic: synthetic tiles only in this first share of the steps, then real alone.")
@click.option("--batch-size", type=int, default=None, help="Batch size (default: the config's).")
@click.option("--bootstrap", "n_boot", type=int, default=1000, show_default=True, help="Bootstrap replicates.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, ...")
@click.option("--jobs", type=int, default=1, show_default=True, help="Runs trained at once (processes).")
@click.option("--allow-unknown-provenance", is_flag=True,
              help="Accept generated data that does not record its generator's training tiles.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="New directory for the report and runs.")
def downstream_cmd(real: Path, synthetic: tuple[Path, ...], arms: str, seeds: int, real_fraction: str,
                   steps: int | None, config: str, extra_ratio: float | None, extra_until: float | None,
                   batch_size: int | None, n_boot: int,
                   device: str, jobs: int, allow_unknown_provenance: bool, out: Path) -> None:
    """Does the synthetic data help? Segmenters on real vs real + synthetic tiles, scored on held-out real tiles."""
    import shlex
    import sys

    from histosmith.errors import HistoSmithError
    from histosmith.segmentation.downstream import DownstreamPlan, parse_arms, parse_fractions, run_downstream

    if batch_size is not None and batch_size < 1:
        raise HistoSmithError(f"--batch-size must be at least 1, got {batch_size}")
    command = shlex.join(["hs-eval", *sys.argv[1:]])
    plan = DownstreamPlan(real=real, synthetic=tuple(synthetic), arms=parse_arms(arms), seeds=seeds, steps=steps,
                          real_fractions=parse_fractions(real_fraction), config=config, extra_ratio=extra_ratio,
                          extra_until=extra_until, batch_size=batch_size, n_boot=n_boot,
                          allow_unknown_provenance=allow_unknown_provenance, device=device, jobs=jobs, command=command)
    report = run_downstream(plan, out)
    click.echo((out / "downstream.md").read_text())
    click.echo(f"report: {out}/downstream.json, downstream.md, downstream.png ({len(report['runs'])} runs)")


def _open_generator(engine: Path | None, checkpoint: Path | None, device: str, threads: int | None, batch: int):
    """A generator session from an export (``--engine``) or a training run (``--checkpoint``): exactly one."""
    from histosmith.errors import HistoSmithError

    if (engine is None) == (checkpoint is None):
        raise HistoSmithError("give exactly one of --engine and --checkpoint")
    if engine is not None:
        from histosmith.runtime.engine import EngineOptions, open_engine

        return open_engine(engine, EngineOptions(device, threads, batch=batch))
    assert checkpoint is not None
    if not checkpoint.exists():
        raise HistoSmithError(f"{checkpoint}: checkpoint not found")
    from histosmith.generator import CheckpointSession, load_generator
    from histosmith.training.loop import pick_device

    return CheckpointSession(load_generator(checkpoint), str(pick_device(device)), batch=batch)


@cli.command("control")
@click.option("--engine", type=click.Path(path_type=Path), default=None, help="Exported U-Net (EXPORT/unet.onnx, .pt).")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="hs-train ldm run or file.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="New directory for the report and tiles (an earlier sweep's resumes).")
@click.option("--levels", type=int, default=5, show_default=True,
              help="Requested levels per class from 0 to the training maximum (1.25x and 1.5x are added).")
@click.option("--tiles-per-level", type=int, default=4, show_default=True, help="Tiles per level (fixed seeds).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Base seed; sweep tile i uses (seed, i).")
@sampler_option_decorators
@click.option("--batch", type=click.IntRange(min=1), default=16, show_default=True, help="Tiles per batch.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, ...")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Real dataset (train + val splits): a tissue classifier trained on it measures tissue collapse.")
@click.option("--qc", type=float, default=None,
              help="QC regeneration as in hs-generate; r, slope, MAE are reported before and after QC.")
@click.option("--qc-attempts", type=int, default=3, show_default=True, help="Samples per tile at most with --qc.")
@marker_depth_option
def control_cmd(engine: Path | None, checkpoint: Path | None, out: Path, levels: int, tiles_per_level: int,
                seed: int, sampler: str | None, steps: int | None, eta: float, guidance: float | None,
                corrector: bool | None, batch: int, device: str, threads: int | None, data: Path | None,
                qc: float | None, qc_attempts: int, marker_depth: MarkerDepth) -> None:
    """Count control: a per-class sweep of requested counts (per tissue's trained range, into the extrapolation
    region); with --data, tissue collapse; with --qc, the sweep before and after QC regeneration. An --out
    holding an earlier sweep with the same settings resumes it (and reuses its cached tissue classifier)."""
    import shlex
    import sys

    from histosmith.data.layout import META_FILE
    from histosmith.errors import HistoSmithError
    from histosmith.evaluation.control import SweepDesign
    from histosmith.runtime.generate import GenerationPlan

    if (engine is None) == (checkpoint is None):
        raise HistoSmithError("give exactly one of --engine and --checkpoint")
    design = SweepDesign(levels=levels, tiles_per_level=tiles_per_level)
    plan = GenerationPlan(seed=seed, eta=eta, batch=batch, qc=qc, qc_attempts=qc_attempts,
                          **sampling_plan_fields(sampler, steps, guidance, corrector))
    from histosmith.evaluation.control_markdown import format_markdown
    from histosmith.evaluation.control_report import check_control_out, run_control

    resume = check_control_out(out)
    if data is not None and not (data / META_FILE).is_file():
        raise HistoSmithError(f"--data {data}: not a prepared dataset (no meta.json)")
    session = _open_generator(engine, checkpoint, device, threads, batch)
    plan = plan.with_marker_depth(marker_depth, session.info.spec.class_names).with_model_defaults(
        session.info.sampling)
    report = run_control(session, plan, design, out, command=shlex.join(["hs-eval", *sys.argv[1:]]), data=data,
                         resume=resume)
    click.echo(format_markdown(report))
    click.echo(f"report: {out}/control.json, control.md, control_scatter.png, control_saturation.png, "
               "control_bland_altman.png")


@cli.command("guidance")
@click.option("--engine", type=click.Path(path_type=Path), default=None, help="Exported U-Net (EXPORT/unet.onnx, .pt).")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="hs-train ldm run or file.")
@click.option("--scales", default="1.5,3,5", show_default=True, help="Comma-separated guidance scales to compare.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Directory for guidance.json/md/png and one control sweep per scale (g<scale>; resumed).")
@click.option("--levels", type=int, default=4, show_default=True, help="Requested levels per class (as control).")
@click.option("--tiles-per-level", type=int, default=2, show_default=True, help="Tiles per level (fixed seeds).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Base seed; sweep tile i uses (seed, i).")
@click.option("--steps", type=click.IntRange(1, 1000), default=25, show_default=True, help="DDIM steps.")
@click.option("--batch", type=click.IntRange(min=1), default=16, show_default=True, help="Tiles per batch.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, ...")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@marker_depth_option
def guidance_cmd(engine: Path | None, checkpoint: Path | None, scales: str, out: Path, levels: int,
                 tiles_per_level: int, seed: int, steps: int, batch: int, device: str, threads: int | None,
                 marker_depth: MarkerDepth) -> None:
    """Which guidance scale follows the counts best? The control sweep at every scale, compared per class."""
    import shlex
    import sys

    from histosmith.evaluation.control import SweepDesign
    from histosmith.evaluation.guidance import compare_guidance, format_markdown, parse_scales
    from histosmith.runtime.generate import GenerationPlan

    values = parse_scales(scales)
    design = SweepDesign(levels=levels, tiles_per_level=tiles_per_level)
    session = _open_generator(engine, checkpoint, device, threads, batch)
    plan = GenerationPlan(seed=seed, steps=steps, batch=batch).with_marker_depth(marker_depth,
                                                                                 session.info.spec.class_names)
    result = compare_guidance(session, values, plan, design, out, command=shlex.join(["hs-eval", *sys.argv[1:]]))
    click.echo(format_markdown(result))
    click.echo(f"recommended guidance: {result['recommended']:g}; report: {out}/guidance.json, guidance.md, "
               "guidance.png")


@cli.command("realism")
@click.option("--real", type=click.Path(path_type=Path), required=True, help="Real dataset.")
@click.option("--generated", type=click.Path(path_type=Path), required=True, help="Generated dataset.")
@click.option("--max-tiles", type=click.IntRange(min=1), default=500, show_default=True,
              help="Tiles read from each dataset (spread evenly over it).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Directory for realism.json and realism.png (created).")
@click.option("--segmenter", type=click.Path(path_type=Path), default=None,
              help="hs-train seg run: add the kernel distance (KID) on its encoder features, with a real-halves floor.")
def realism_cmd(real: Path, generated: Path, max_tiles: int, out: Path, segmenter: Path | None) -> None:
    """Per-class nucleus morphology and per-tile counts, real vs generated (Wasserstein distances, histograms)."""
    output_path(out / "realism.json")
    import shlex
    import sys

    from histosmith.data.atomic import write_json_atomic
    from histosmith.data.reader import Dataset
    from histosmith.evaluation.realism import compare, format_table, plot_histograms

    real_ds, gen_ds = Dataset.open(real), Dataset.open(generated)
    features = None
    if segmenter is not None:
        from histosmith.evaluation.kid import load_feature_model

        features = load_feature_model(segmenter, [real_ds, gen_ds])  # checked before the long part
    report, samples = compare(real_ds, gen_ds, max_tiles)
    if features is not None:
        from histosmith.evaluation.kid import segmenter_kid
        from histosmith.evaluation.realism import spread

        report["kid"] = segmenter_kid(features, real_ds, gen_ds, spread(len(real_ds), max_tiles),
                                      spread(len(gen_ds), max_tiles))
    report["command"] = shlex.join(["hs-eval", *sys.argv[1:]])
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "realism.json", report)
    plot_histograms(report, samples, out / "realism.png")
    click.echo(format_table(report))
    click.echo(f"report: {out}/realism.json, {out}/realism.png")


cli.add_command(gate_cmd)
cli.add_command(sampler_cmd)
main = entry_point(cli)
