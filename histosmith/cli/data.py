"""``hs-data``: prepare datasets from other layouts, and summarise them."""

from __future__ import annotations

from pathlib import Path

import click

from histosmith.cli.common import SEED, entry_point, output_path
from histosmith.data.prepare import SOURCES


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
    """Per-class nucleus counts and shares, tiles per tissue, imbalance ratio, and a bar chart."""
    if not directory.is_dir():
        from histosmith.errors import file_error

        raise file_error(directory, "not a dataset directory" if directory.exists() else "not found")
    output_path(json_path)
    from histosmith.data.info import plot_summary, summarise
    from histosmith.data.reader import Dataset

    plot = output_path(plot or directory / "info.png")
    summary = summarise(Dataset.open(directory))
    click.echo(summary.format_table())
    plot_summary(summary, plot)
    click.echo(f"chart: {plot}")
    if json_path:
        from histosmith.data.atomic import write_json_atomic

        write_json_atomic(json_path, summary.to_dict())
        click.echo(f"json: {json_path}")


main = entry_point(cli)
