"""``hs-sample``: the torch reference sampler, straight from an ``hs-train ldm`` checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from histosmith.cli.common import entry_point
from histosmith.cli.generation import echo_result, generation_options, open_pair_check, parse_request

if TYPE_CHECKING:
    from histosmith.runtime.postprocess import MarkerDepth


@click.command(help="Sample labelled tiles from a trained generator with the torch reference sampler.")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="hs-train ldm run or file.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Module precision (normalisation, softmax and the latent stay fp32).")
@click.option("--cuda-graph", is_flag=True, help="CUDA: capture the whole sampling loop as one CUDA graph.")
@click.option("--compile", "compile_modules", is_flag=True, help="torch.compile the U-Net and the decoder.")
@generation_options
def cli(checkpoint: Path, device: str, precision: str, cuda_graph: bool, compile_modules: bool, out: Path,
        n: int | None, counts: str | None, tissue: str | None, conditions_csv: Path | None, from_dataset: bool,
        balance: bool, allow_extrapolation: bool, seed: int, sampler: str | None, steps: int | None, eta: float,
        guidance: float | None, corrector: bool | None, batch: int, shard_size: int | None, resume: bool,
        qc: float | None, qc_attempts: int, qc_segmenter: Path | None, qc_min_pq: float | None,
        marker_depth: MarkerDepth, qc_max_area: str | None) -> None:
    request, plan = parse_request(n, counts, tissue, conditions_csv, from_dataset, balance, allow_extrapolation, seed,
                                  steps, eta, guidance, batch, shard_size, out, resume, qc, qc_attempts, qc_segmenter,
                                  qc_min_pq, qc_max_area=qc_max_area, sampler=sampler, corrector=corrector)
    from histosmith.errors import HistoSmithError

    if not checkpoint.exists():
        raise HistoSmithError(f"{checkpoint}: checkpoint not found")
    from histosmith.extras import require

    require("hs-sample", "train")
    check = open_pair_check("hs-sample", qc_segmenter, qc_min_pq)
    from histosmith.generator import CheckpointSession, load_generator
    from histosmith.runtime.generate import generate
    from histosmith.runtime.report import write_report
    from histosmith.training.loop import pick_device

    dev = pick_device(device)
    session = CheckpointSession(load_generator(checkpoint), str(dev), precision, cuda_graph, compile_modules, batch)
    if check is not None:
        check.require_fit(list(session.info.spec.class_names), session.info.tile_size)
    plan = plan.with_marker_depth(marker_depth, session.info.spec.class_names).with_model_defaults(
        session.info.sampling)
    conditions = request.resolve(session.info, plan.seed)
    result = generate(session, plan, conditions, out, resume=resume, check=check)
    echo_result(result, write_report(result, list(session.info.spec.class_names)))


main = entry_point(cli)
