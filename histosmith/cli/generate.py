"""``hs-generate``: the lean runtime — an exported engine in, a labelled dataset out. No torch import
unless the engine is a torch ``.pt2`` program."""

from __future__ import annotations

from pathlib import Path

import click

from histosmith.cli.common import entry_point
from histosmith.cli.generation import echo_result, generation_options, parse_request


@click.command(help="Generate labelled tiles with an exported engine (unet.onnx, unet.fp16.onnx, unet.pt2, unet.plan).")
@click.option("--engine", type=click.Path(path_type=Path), required=True,
              help="U-Net graph in an hs-export directory; the decoder and manifest.json are found beside it.")
@click.option("--device", default="auto", show_default=True,
              help="onnx: cpu | cuda | tensorrt (ONNX Runtime providers); pt2: cpu | cuda[:N].")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto", show_default=True,
              help="torch (.pt2) engines: the program's precision (unet.pt2 fp32, unet.fp16.pt2, unet.bf16.pt2); "
                   "another one is refused.")
@click.option("--cuda-graph/--no-cuda-graph", default=True, show_default=True,
              help="CUDA graphs: torch (.pt2) engines capture the whole loop per batch bucket; ONNX Runtime's "
                   "CUDA / TensorRT providers capture each step.")
@generation_options
def cli(engine: Path, device: str, threads: int | None, precision: str, cuda_graph: bool, out: Path,
        n: int | None, counts: str | None, tissue: str | None, conditions_csv: Path | None, from_dataset: bool,
        balance: bool, allow_extrapolation: bool, seed: int, steps: int, eta: float, guidance: float, batch: int,
        shard_size: int | None, resume: bool) -> None:
    request, plan = parse_request(n, counts, tissue, conditions_csv, from_dataset, balance, allow_extrapolation, seed,
                                  steps, eta, guidance, batch, shard_size, out, resume)
    from histosmith.runtime.engine import EngineOptions, open_engine
    from histosmith.runtime.generate import generate
    from histosmith.runtime.report import write_report

    session = open_engine(engine, EngineOptions(device, threads, precision, cuda_graph, batch))  # verified once
    conditions = request.resolve(session.info, plan.seed)
    try:
        result = generate(session, plan, conditions, out, resume=resume)
    finally:
        session.close()  # device memory, CUDA graphs and streams, also after an error
    echo_result(result, write_report(result, list(session.info.spec.class_names)))


main = entry_point(cli)
