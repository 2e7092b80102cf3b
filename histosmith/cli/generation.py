"""Options and steps that ``hs-sample`` and ``hs-generate`` share (no torch imports here)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from histosmith.cli.common import SEED


def generation_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Click options for what to generate; applied to both commands."""
    options = [
        click.option("--out", type=click.Path(path_type=Path), required=True, help="Output dataset directory."),
        click.option("--n", "n", type=click.IntRange(min=1), default=None,
                     help="Tiles to generate (default: 64, or the rows of --conditions)."),
        click.option("--counts", default=None, help="Nuclei per class, e.g. neutrophil=4,epithelial=30."),
        click.option("--tissue", default=None, help="Tissue name (with --counts)."),
        click.option("--conditions", "conditions_csv", type=click.Path(path_type=Path), default=None,
                     help="CSV with one column per class (and 'tissue'); one row per tile, repeated as needed."),
        click.option("--from-dataset", is_flag=True, help="Draw conditions from the training distribution."),
        click.option("--balance", is_flag=True,
                     help="Training draws with rare classes raised within the trained range."),
        click.option("--allow-extrapolation", is_flag=True, help="Allow counts above the training range (warns)."),
        click.option("--seed", type=SEED, default=0, show_default=True,
                     help="Base seed; tile i uses (seed, i)."),
        click.option("--steps", type=click.IntRange(1, 1000), default=50, show_default=True, help="DDIM steps."),
        click.option("--eta", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="DDIM eta."),
        click.option("--guidance", type=click.FloatRange(0), default=4.0, show_default=True,
                     help="Classifier-free guidance scale (1 = conditional only)."),
        click.option("--batch", type=click.IntRange(min=1), default=16, show_default=True, help="Tiles per batch."),
        click.option("--shard-size", type=click.IntRange(min=1), default=None, help="Tiles per output shard."),
        click.option("--resume", is_flag=True, help="Finish an interrupted run in --out."),
        click.option("--qc", type=click.FloatRange(0, 10), default=None,
                     help="Resample a tile unless every class count is within max(1 nucleus, QC x requested)."),
        click.option("--qc-attempts", type=click.IntRange(1, 100), default=3, show_default=True,
                     help="Samples per tile at most with --qc (the best is kept when none passes)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def parse_request(n: int | None, counts: str | None, tissue: str | None, conditions_csv: Path | None,
                  from_dataset: bool, balance: bool, allow_extrapolation: bool, seed: int, steps: int, eta: float,
                  guidance: float, batch: int, shard_size: int | None, out: Path, resume: bool,
                  qc: float | None = None, qc_attempts: int = 3) -> tuple[Any, Any]:
    """The condition request and the generation plan, checked (with ``--out``) before any model loads."""
    from histosmith.runtime.conditions import ConditionRequest
    from histosmith.runtime.generate import GenerationPlan, check_output_dir

    request = ConditionRequest.from_options(n, counts, tissue, conditions_csv, from_dataset, balance,
                                            allow_extrapolation)
    plan = GenerationPlan(seed=seed, steps=steps, eta=eta, guidance=guidance, batch=batch, shard_size=shard_size,
                          qc=qc, qc_attempts=qc_attempts)
    check_output_dir(out, resume)
    return request, plan


def echo_result(result: Any, summary: Any) -> None:
    rate = result.generated / result.seconds if result.seconds > 0 else float("nan")
    click.echo(f"wrote {result.n_tiles} tiles to {result.out} ({result.generated} new, {rate:.2f} tiles/s)")
    click.echo("requested vs measured nuclei per tile:")
    click.echo(summary.format_table())
    qc = summary.qc
    if qc:
        click.echo(f"QC: {qc['passed']} of {qc['tiles']} tiles within tolerance, {qc['mean_attempts']:.2f} samples "
                   "per tile on average")
    control = result.out / "control.png"
    click.echo(f"contact sheet: {result.out / 'preview.png'}   count control: "
               f"{control if control.exists() else result.out / 'control.json'}")
