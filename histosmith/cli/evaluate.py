"""``hs-eval``: CoNIC metrics between datasets, and (with a model) reconstruction and count control."""

from __future__ import annotations

from pathlib import Path

import click

from histosmith.cli.common import entry_point


@click.group(help="Evaluate datasets and models.")
def cli() -> None:
    pass


@cli.command("conic")
@click.option("--true", "true_dir", type=click.Path(path_type=Path), required=True, help="Ground-truth dataset.")
@click.option("--pred", "pred_dir", type=click.Path(path_type=Path), required=True, help="Predicted dataset.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the metrics here.")
def conic_cmd(true_dir: Path, pred_dir: Path, json_path: Path | None) -> None:
    """The CoNIC challenge metrics: PQ, mPQ+, multi-class R², AJI, Dice, per class."""
    from histosmith.data.atomic import write_json_atomic
    from histosmith.evaluation.conic_dirs import evaluate_conic_dirs

    result = evaluate_conic_dirs(true_dir, pred_dir)
    click.echo(result.format_table())
    if json_path:
        write_json_atomic(json_path, result.to_dict())
        click.echo(f"json: {json_path}")


@cli.command("vqvae")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="hs-train vqvae run or file.")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Dataset (held-out split is used).")
@click.option("--split", default="val", show_default=True, help="patch_info split to evaluate ('all' for every tile).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the report here.")
def vqvae_cmd(checkpoint: Path, data: Path, split: str, json_path: Path | None) -> None:
    """Reconstruction PSNR, class mIoU, instance PQ from reconstructed maps, codebook usage."""
    from histosmith.errors import HistoSmithError

    if not checkpoint.exists():
        raise HistoSmithError(f"{checkpoint}: checkpoint not found")
    if not (data / "meta.json").exists():
        raise HistoSmithError(f"{data}: not a prepared dataset (no meta.json)")
    from histosmith.data.atomic import write_json_atomic
    from histosmith.evaluation.vqvae import evaluate_vqvae

    report = evaluate_vqvae(checkpoint, data, None if split == "all" else split)
    click.echo(report.format_table())
    if json_path:
        write_json_atomic(json_path, report.to_dict())


main = entry_point(cli)
