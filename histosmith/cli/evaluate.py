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


main = entry_point(cli)
