"""``hs-data``: prepare datasets from other layouts, and summarise them."""

from __future__ import annotations

from pathlib import Path

import click

from histosmith.cli.common import SEED, entry_point, output_path
from histosmith.data.prepare import SOURCES
from histosmith.extras import available, require


@click.group(help="Prepare and inspect HistoSmith datasets (the CoNIC layout + meta.json).")
def cli() -> None:
    pass


@cli.command("prepare")
@click.option("--source", "kind", type=click.Choice(SOURCES), required=True, help="Input layout.")
@click.option("--path", type=click.Path(path_type=Path), default=None,
              help="Input directory (conic, pannuke, folder); for example: the download cache.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="New dataset directory.")
@click.option("--tile-size", type=click.IntRange(min=8), default=None, help="Tile size after downscaling.")
@click.option("--stride", type=click.IntRange(min=1), default=None, help="Tile stride (default: tile size).")
@click.option("--downscale", type=click.IntRange(min=1), default=None, help="Integer downscale factor.")
@click.option("--n-tiles", type=click.IntRange(min=1), default=256, show_default=True, help="synthetic only.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="synthetic only.")
@click.option("--shard-size", type=click.IntRange(min=1), default=None, help="Tiles per shard.")
def prepare_cmd(kind: str, path: Path | None, out: Path, tile_size: int | None, stride: int | None,
                downscale: int | None, n_tiles: int, seed: int, shard_size: int | None) -> None:
    """Write a dataset from one of the supported sources."""
    from histosmith.data.info import summarise
    from histosmith.data.prepare import prepare
    from histosmith.data.reader import Dataset

    prepare(kind, path, out, tile_size, stride, downscale, n_tiles, seed, shard_size)
    click.echo(f"wrote {out}")
    click.echo(summarise(Dataset.open(out)).format_table())


@cli.command("info")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--plot", type=click.Path(path_type=Path), default=None,
              help="PNG bar chart (default: DIRECTORY/info.png).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the summary here.")
def info_cmd(directory: Path, plot: Path | None, json_path: Path | None) -> None:
    """Per-class nucleus counts, shares and areas (median, 99th percentile), tiles per tissue, imbalance ratio, and
    a bar chart."""
    if not directory.is_dir():
        from histosmith.errors import file_error

        raise file_error(directory, "not a dataset directory" if directory.exists() else "not found")
    output_path(json_path)
    if plot is not None:
        require("hs-data info --plot", "train")
    from histosmith.data.info import plot_summary, summarise
    from histosmith.data.reader import Dataset

    draw = plot is not None or available("matplotlib")  # the lean install has no matplotlib
    plot = output_path(plot or directory / "info.png")
    summary = summarise(Dataset.open(directory))
    click.echo(summary.format_table())
    if draw:
        plot_summary(summary, plot)
        click.echo(f"chart: {plot}")
    else:
        click.echo("chart skipped: matplotlib is not installed (the [train] extra)")
    if json_path:
        from histosmith.data.atomic import write_json_atomic

        write_json_atomic(json_path, summary.to_dict())
        click.echo(f"json: {json_path}")


@cli.command("plan")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Real dataset (hs-data prepare).")
@click.option("--target-share", "target_share", default=None,
              help="Class shares of real + synthetic nuclei, e.g. neoplastic=0.3,connective=0.3 (others share "
                   "the rest equally).")
@click.option("--equalize", is_flag=True, help="Equal shares for every class.")
@click.option("--n-synthetic", "n_synthetic", type=int, required=True, help="Synthetic tiles to plan.")
@click.option("--split", default="train", show_default=True,
              help="patch_info split counted as the real data ('all': every tile; ignored without a split column).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for the real tiles used as templates.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="conditions CSV for hs-generate.")
@click.option("--plot", type=click.Path(path_type=Path), default=None,
              help="PNG of the shares before/after (default: beside --out, .png).")
def plan_cmd(data: Path, target_share: str | None, equalize: bool, n_synthetic: int, split: str, seed: int, out: Path,
             plot: Path | None) -> None:
    """Plan synthetic conditions so that real + synthetic reach target class shares (inside the trained range)."""
    from histosmith.errors import HistoSmithError

    if (target_share is None) == (not equalize):
        raise HistoSmithError("give exactly one of --target-share and --equalize")
    if n_synthetic < 1:
        raise HistoSmithError(f"--n-synthetic {n_synthetic}: at least 1")
    output_path(out)
    report = out.with_suffix(".json") if out.suffix.lower() != ".json" else out.with_name(f"{out.stem}.report.json")
    plot = output_path(plot or out.with_suffix(".png"))
    if len({p.resolve() for p in (out, report, plot)}) < 3:
        raise HistoSmithError(f"--plot {plot}: the same file as the conditions ({out}) or the report ({report})")
    import numpy as np

    from histosmith.data.atomic import write_json_atomic, write_text_atomic
    from histosmith.data.balance_plan import (
        RealCounts,
        equal_shares,
        parse_target_shares,
        plan_balance,
        plot_shares,
        write_conditions_csv,
    )
    from histosmith.data.info import tile_counts
    from histosmith.data.reader import Dataset

    dataset = Dataset.open(data)
    meta = dataset.meta
    target = equal_shares(meta.class_names) if equalize else parse_target_shares(target_share or "", meta.class_names)
    counts = tile_counts(dataset)
    rows = dataset.patch_info()
    keep = np.array([split == "all" or "split" not in r or r["split"] == split for r in rows])
    if not keep.any():
        raise HistoSmithError(f"--split {split}: no tiles of that split in {data}")
    count_max = list(meta.count_max) or [int(v) for v in counts.max(0)]
    real = RealCounts(counts[keep], [r.get("tissue", "") for r, k in zip(rows, keep, strict=True) if k],
                      list(meta.class_names), count_max)
    plan = plan_balance(real, target, n_synthetic, seed)
    write_text_atomic(out, write_conditions_csv(plan))
    write_json_atomic(report, plan.to_dict() | {"data": str(data), "split": split, "seed": seed})
    plot_shares(plan, plot)
    click.echo(plan.format_table())
    click.echo(f"conditions: {out} ({n_synthetic} tiles; hs-generate --conditions {out})   report: {report}   "
               f"chart: {plot}")


@cli.command("merge")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="New dataset directory.")
@click.option("--shard-size", type=click.IntRange(min=1), default=None, help="Tiles per shard.")
def merge_cmd(sources: tuple[Path, ...], out: Path, shard_size: int | None) -> None:
    """Merge datasets of one generator (same classes, tissues, tile size) into one, re-sharded."""
    from histosmith.data.format import Dataset
    from histosmith.data.info import summarise
    from histosmith.data.merge import merge_datasets

    merge_datasets(list(sources), out, shard_size)
    click.echo(f"wrote {out}")
    click.echo(summarise(Dataset.open(out)).format_table())


main = entry_point(cli)
