"""``hs-train``: stage 1 (VQ autoencoder) and stage 2 (conditional latent U-Net)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from histosmith.cli.common import SEED, entry_point
from histosmith.config import PRESETS
from histosmith.errors import HistoSmithError
from histosmith.extras import require
from histosmith.segmentation.config import SEG_PRESETS


def run_options(f: Callable[..., Any], configs: tuple[str, ...] | None = PRESETS) -> Callable[..., Any]:
    """The options every training command takes (``configs`` None: no ``--config``, ``--data`` optional)."""
    data_help = "Dataset from hs-data prepare." if configs else "Dataset (default: the teacher's, where it was)."
    options = [
        click.option("--data", type=click.Path(path_type=Path), required=configs is not None, help=data_help),
        *([click.option("--config", type=click.Choice(configs), default="small", show_default=True)]
          if configs else []),
        click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory."),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint."),
        click.option("--max-steps", type=click.IntRange(min=1), default=None,
                     help="Training steps (also the learning-rate schedule's horizon)."),
        click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Stop (with a checkpoint) after this long; --resume continues."),
        click.option("--seed", type=SEED, default=0, show_default=True),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ..."),
        click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
                     help="auto: bf16 autocast on CUDA and on CPUs with native bf16."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _check_data(data: Path) -> None:
    require("hs-train", "train")
    if not (data / "meta.json").exists():
        raise HistoSmithError(f"{data}: not a prepared dataset (no meta.json); run hs-data prepare first")


def _options(**kw: Any) -> Any:
    from histosmith.training.trainer import RunOptions

    return RunOptions(seed=kw["seed"], device=kw["device"], precision=kw["precision"], max_steps=kw["max_steps"],
                      max_minutes=kw["max_minutes"], batch_size=kw["batch_size"], lr=kw["lr"], resume=kw["resume"])


def _report(result: Any, out: Path) -> None:
    state = "interrupted" if result.interrupted else "stopped"
    click.echo(f"{state} at step {result.step} after {result.seconds / 60:.1f} min; "
               f"checkpoint {out / 'checkpoint.pt'}, log {out / 'log.csv'}, curves {out / 'loss.png'}")
    if result.interrupted:
        raise KeyboardInterrupt


@click.group(help="Train the two stages of a HistoSmith generator, and the downstream segmenter.")
def cli() -> None:
    pass


@cli.command("vqvae")
@run_options
def vqvae_cmd(data: Path, config: str, out: Path, **kw: Any) -> None:
    """Stage 1: the dual-head VQ autoencoder."""
    _check_data(data)
    from histosmith.training.vqvae import train_vqvae

    _report(train_vqvae(data, out, config, _options(**kw)), out)


@cli.command("ldm")
@click.option("--vqvae", type=click.Path(path_type=Path), required=True, help="Stage-1 run directory or checkpoint.")
@run_options
def ldm_cmd(vqvae: Path, data: Path, config: str, out: Path, **kw: Any) -> None:
    """Stage 2: the conditional latent U-Net (classifier-free guidance, EMA weights)."""
    _check_data(data)
    if not vqvae.exists():
        raise HistoSmithError(f"{vqvae}: stage-1 checkpoint not found")
    from histosmith.training.ldm import train_ldm

    _report(train_ldm(data, vqvae, out, config, _options(**kw)), out)


def _guidance_range(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected LOW,HIGH, e.g. 1,5") from None
    if not 0 <= low < high <= 100:
        raise click.BadParameter(f"{value!r}: needs 0 <= LOW < HIGH <= 100")
    return low, high


@cli.command("distill")
@click.option("--teacher", type=click.Path(path_type=Path), required=True,
              help="The two-pass U-Net to distil: an hs-train ldm run directory or checkpoint.")
@click.option("--guidance-range", callback=_guidance_range, default=None,
              help="LOW,HIGH: the guidance scales the student serves [default: 1,5].")
@functools.partial(run_options, configs=None)
def distill_cmd(teacher: Path, guidance_range: tuple[float, float] | None, data: Path | None, out: Path,
                **kw: Any) -> None:
    """Guidance distillation: a one-pass student that takes the guidance scale as an input (half the U-Net work)."""
    require("hs-train", "train")
    if not teacher.exists():
        raise HistoSmithError(f"{teacher}: teacher checkpoint not found")
    if data is not None:
        _check_data(data)
    from histosmith.training.distill import distill

    _report(distill(teacher, out, data, guidance_range, _options(**kw)), out)


@cli.command("seg")
@click.option("--extra", type=click.Path(path_type=Path), multiple=True,
              help="Extra (e.g. synthetic) dataset, all its tiles; repeat for several.")
@click.option("--extra-ratio", type=float, default=None,
              help="Share of each batch drawn from the --extra tiles (default: uniform over all tiles).")
@click.option("--extra-until", type=float, default=None,
              help="Draw --extra tiles only in this first share of the steps, then real tiles alone (e.g. 0.75).")
@functools.partial(run_options, configs=SEG_PRESETS)
def seg_cmd(extra: tuple[Path, ...], extra_ratio: float | None, extra_until: float | None, data: Path, config: str,
            out: Path, **kw: Any) -> None:
    """The downstream nucleus segmenter (HoVer-Net style) on the train split of --data (+ --extra tiles)."""
    _check_data(data)
    for path in extra:
        _check_data(path)
    if extra_ratio is not None and not (extra and 0 <= extra_ratio <= 1):
        raise HistoSmithError(f"--extra-ratio {extra_ratio}: needs --extra and a value in [0, 1]")
    from histosmith.segmentation.train import train_segmenter

    _report(train_segmenter(data, out, config, _options(**kw), list(extra), extra_ratio, extra_until=extra_until),
            out)


main = entry_point(cli)
