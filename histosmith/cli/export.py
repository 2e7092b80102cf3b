"""``hs-export``: a trained generator -> ONNX (fp32, fp16), TorchScript and manifest.json."""

from __future__ import annotations

from pathlib import Path

import click

from histosmith.cli.common import entry_point
from histosmith.errors import HistoSmithError


@click.command(help="Export a trained generator (hs-train ldm run) for the lean runtime.")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="hs-train ldm run or file.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Export directory.")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Fixed batch size of the graphs.")
@click.option("--dynamic-batch", is_flag=True, help="Graphs accept any batch up to --max-batch (default).")
@click.option("--max-batch", type=click.IntRange(min=1), default=256, show_default=True,
              help="Largest batch a dynamic export promises.")
@click.option("--fp16/--no-fp16", default=True, show_default=True, help="Also write fp16 graphs (fp32 islands).")
@click.option("--opset", type=click.IntRange(13, 21), default=17, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing, different export in --out.")
def cli(checkpoint: Path, out: Path, batch: int | None, dynamic_batch: bool, max_batch: int, fp16: bool,
        opset: int, force: bool) -> None:
    if batch is not None and dynamic_batch:
        raise HistoSmithError("--batch and --dynamic-batch exclude each other")
    if not checkpoint.exists():
        raise HistoSmithError(f"{checkpoint}: checkpoint not found")
    from histosmith.export.exporter import ExportOptions, export_generator

    opts = ExportOptions(batch=batch, dynamic_batch=batch is None, max_batch=max_batch, fp16=fp16, opset=opset,
                         force=force)
    manifest, cached = export_generator(checkpoint, out, opts)
    click.echo(("reused cached export " if cached else "exported ") + str(out))
    for v in manifest.variant_list():
        click.echo(f"  {v.format:<12} {v.precision:<5} {v.unet} + {v.decoder}")
    if not cached:
        click.echo("verification against PyTorch (max error relative to each output's scale):")
        for label, rows in manifest.verification.items():
            if isinstance(rows, list):
                worst = max(r["max_rel"] for r in rows)
                click.echo(f"  {label:<28} worst rel {worst:.2e}")


main = entry_point(cli)
