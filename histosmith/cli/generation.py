"""Options and steps that ``hs-sample`` and ``hs-generate`` share (no torch imports here)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from histosmith.errors import HistoSmithError


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
        click.option("--seed", type=int, default=0, show_default=True, help="Base seed; tile i uses (seed, i)."),
        click.option("--steps", type=click.IntRange(1, 1000), default=50, show_default=True, help="DDIM steps."),
        click.option("--eta", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="DDIM eta."),
        click.option("--guidance", type=click.FloatRange(0), default=4.0, show_default=True,
                     help="Classifier-free guidance scale (1 = conditional only)."),
        click.option("--batch", type=click.IntRange(min=1), default=16, show_default=True, help="Tiles per batch."),
        click.option("--shard-size", type=click.IntRange(min=1), default=None, help="Tiles per output shard."),
        click.option("--resume", is_flag=True, help="Finish an interrupted run in --out."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def check_condition_choice(counts: str | None, tissue: str | None, conditions_csv: Path | None, from_dataset: bool,
                           balance: bool) -> str:
    """Exactly one condition source; returns its name."""
    chosen = [name for name, on in (("counts", counts is not None), ("conditions", conditions_csv is not None),
                                    ("from-dataset", from_dataset), ("balance", balance)) if on]
    if len(chosen) > 1:
        raise HistoSmithError(f"choose one condition source, got --{' and --'.join(chosen)}")
    if tissue is not None and chosen and chosen[0] != "counts":
        raise HistoSmithError("--tissue goes with --counts")
    if conditions_csv is not None and not conditions_csv.exists():
        raise HistoSmithError(f"{conditions_csv}: not found")
    return chosen[0] if chosen else ("counts" if tissue is not None else "from-dataset")


def build_conditions(info: Any, source: str, n: int | None, counts: str | None, tissue: str | None,
                     conditions_csv: Path | None, seed: int, allow_extrapolation: bool) -> tuple[Any, str]:
    """The per-tile condition table and a label describing it."""
    from histosmith.runtime import conditions as cond

    if source == "counts":
        if counts is None:
            raise HistoSmithError("--tissue needs --counts")
        parsed = info.spec.parse_counts(counts)
        table = cond.explicit(info, parsed, info.spec.tissue_index(tissue), n or 64)
        label = f"counts {counts} tissue {tissue}"
    elif source == "conditions":
        table = cond.from_csv(info, conditions_csv, n)
        label = f"conditions {conditions_csv}"
    elif source == "balance":
        table = cond.balanced(info, n or 64, seed)
        label = "balance"
    else:
        table = cond.from_dataset(info, n or 64, seed)
        label = "from-dataset"
    info.spec.check_range(table.counts, allow_extrapolation)
    return table, label


def echo_result(result: Any, summary: Any) -> None:
    rate = result.generated / result.seconds if result.seconds > 0 else float("nan")
    click.echo(f"wrote {result.n_tiles} tiles to {result.out} ({result.generated} new, {rate:.2f} tiles/s)")
    click.echo("requested vs measured nuclei per tile:")
    click.echo(summary.format_table())
    click.echo(f"contact sheet: {result.out / 'preview.png'}   count control: {result.out / 'control.png'}")
