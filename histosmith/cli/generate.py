"""``hs-generate``: the lean runtime — an exported engine in, a labelled dataset out. No torch import
unless the engine is a TorchScript ``.pt`` file."""

from __future__ import annotations

from pathlib import Path

import click

from histosmith.cli.common import entry_point
from histosmith.cli.generation import build_conditions, check_condition_choice, echo_result, generation_options
from histosmith.errors import HistoSmithError


@click.command(help="Generate labelled tiles with an exported engine (unet.onnx, unet.fp16.onnx, unet.pt, unet.plan).")
@click.option("--engine", type=click.Path(path_type=Path), required=True,
              help="U-Net graph in an hs-export directory; the decoder and manifest.json are found beside it.")
@click.option("--device", default="auto", show_default=True,
              help="onnx: cpu | cuda | tensorrt (ONNX Runtime providers); pt: cpu | cuda.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16"]), default="auto", show_default=True,
              help="torch (.pt) engines: auto = fp16 on CUDA, fp32 on CPU.")
@click.option("--cuda-graph/--no-cuda-graph", default=True, show_default=True,
              help="torch (.pt) engines on CUDA: capture the whole loop as one CUDA graph.")
@generation_options
def cli(engine: Path, device: str, threads: int | None, precision: str, cuda_graph: bool, out: Path,
        n: int | None, counts: str | None, tissue: str | None, conditions_csv: Path | None, from_dataset: bool,
        balance: bool, allow_extrapolation: bool, seed: int, steps: int, eta: float, guidance: float, batch: int,
        shard_size: int | None, resume: bool) -> None:
    source = check_condition_choice(counts, tissue, conditions_csv, from_dataset, balance)
    from histosmith.runtime.engine import batch_limits, load_engine, resolve_engine
    from histosmith.runtime.generate import generate
    from histosmith.runtime.report import write_report
    from histosmith.runtime.schedule import DDIMScheduler

    manifest, variant = resolve_engine(engine)  # every check before loading anything
    info = manifest.info()
    low, high, _ = batch_limits(manifest, variant)
    if not low <= batch <= high:
        raise HistoSmithError(f"--batch {batch} is outside what the exported graphs accept ({low}..{high})")
    table, label = build_conditions(info, source, n, counts, tissue, conditions_csv, seed, allow_extrapolation)
    tables = DDIMScheduler(info.schedule).set_timesteps(steps, eta)
    loaded = load_engine(engine, tables, device, threads, precision, cuda_graph, batch)
    result = generate(loaded.backend, info, tables, table, out, seed=seed, batch=batch, guidance=guidance,
                      eta=eta, model_id=loaded.model_id, conditions_label=label, resume=resume,
                      shard_size=shard_size)
    echo_result(result, write_report(result, list(info.spec.class_names)))


main = entry_point(cli)
