"""``hs-generate``: the lean runtime — an exported engine in, a labelled dataset out. No torch import
unless the engine is a torch ``.pt2`` program."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from histosmith.cli.common import entry_point
from histosmith.cli.generation import echo_result, generation_options, open_pair_check, parse_request
from histosmith.extras import require

if TYPE_CHECKING:
    from histosmith.runtime.postprocess import MarkerDepth


@click.command(help="Generate labelled tiles with an exported engine (unet.onnx, unet.fp16.onnx, unet.pt2, unet.plan).")
@click.option("--engine", default=None,
              help="U-Net graph in an hs-export directory (the decoder and manifest.json are found beside it), or "
                   "the name of a shipped model  [default: the shipped hgsc-64]")
@click.option("--device", default="auto", show_default=True,
              help="onnx: cpu | cuda | tensorrt (ONNX Runtime providers) | openvino (its CPU plugin, the [openvino] "
                   "extra); pt2: cpu | cuda[:N].")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto", show_default=True,
              help="torch (.pt2) engines: the program's precision (unet.pt2 fp32, unet.fp16.pt2, unet.bf16.pt2); "
                   "another one is refused.")
@click.option("--cuda-graph/--no-cuda-graph", default=True, show_default=True,
              help="CUDA graphs: torch (.pt2) engines capture the whole loop per batch bucket; ONNX Runtime's "
                   "CUDA / TensorRT providers capture each step.")
@click.option("--compile", "compile_engine", is_flag=True,
              help="torch (.pt2) engines: torch.compile the programs (inductor, weights frozen; needs a C++ compiler). "
                   "Compiles once, for the --batch shape, when the run starts; a run "
                   "resumes only with the same choice.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Generate on a Ray cluster: shards made by an actor pool (a new local Ray instance without "
                   "ADDRESS; 'auto' or host:port joins a running cluster). Same bytes as without --ray.")
@click.option("--ray-workers", type=click.IntRange(min=1), default=2, show_default=True, help="Ray actors.")
@click.option("--ray-timeout", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Seconds joining (or starting) the Ray cluster may take before the run stops with an error.")
@generation_options
def cli(engine: str | None, device: str, threads: int | None, precision: str, cuda_graph: bool, compile_engine: bool,
        ray_address: str | None,
        ray_workers: int, ray_timeout: float, out: Path,
        n: int | None, counts: str | None, tissue: str | None, conditions_csv: Path | None, from_dataset: bool,
        balance: bool, allow_extrapolation: bool, seed: int, sampler: str | None, steps: int | None, eta: float,
        guidance: float | None, corrector: bool | None, batch: int, shard_size: int | None, resume: bool,
        qc: float | None, qc_attempts: int, qc_segmenter: Path | None, qc_min_pq: float | None,
        marker_depth: MarkerDepth, qc_max_area: str | None) -> None:
    request, plan = parse_request(n, counts, tissue, conditions_csv, from_dataset, balance, allow_extrapolation, seed,
                                  steps, eta, guidance, batch, shard_size, out, resume, qc, qc_attempts, qc_segmenter,
                                  qc_min_pq, qc_max_area=qc_max_area, sampler=sampler, corrector=corrector)
    qc_flags = [f for f, v in (("--qc", qc), ("--qc-segmenter", qc_segmenter), ("--qc-max-area", qc_max_area))
                if v is not None]
    if ray_address is not None and (qc_flags or compile_engine):
        from histosmith.errors import HistoSmithError

        if compile_engine:
            raise HistoSmithError("--compile: not available with --ray yet (the Ray workers load the engine as it is)")
        raise HistoSmithError(f"{qc_flags[0]}: not available with --ray yet (the Ray workers sample each tile once)")
    from histosmith.runtime.pretrained import resolve_engine

    path, shipped = resolve_engine(engine)
    if shipped is not None:
        click.echo(f"using the shipped model {shipped} ({path.parent}; model card {path.parent / 'MODEL_CARD.md'})",
                   err=True)
    check = open_pair_check("hs-generate", qc_segmenter, qc_min_pq)
    from histosmith.runtime.engine import EngineOptions, open_engine
    from histosmith.runtime.generate import generate
    from histosmith.runtime.report import write_report

    session = open_engine(path, EngineOptions(device, threads, precision, cuda_graph, batch,
                                              compile=compile_engine))  # verified once
    try:
        if check is not None:
            check.require_fit(list(session.info.spec.class_names), session.info.tile_size)
        plan = plan.with_marker_depth(model_marker_depth(marker_depth, session.info.sampling),
                                      session.info.spec.class_names).with_model_defaults(session.info.sampling)
        plan = plan.with_batch_limits(session.batch_limits())
        conditions = request.resolve(session.info, plan.seed)
        if ray_address is not None:
            require("hs-generate --ray", "ray")
            from histosmith.runtime.ray_generate import RayOptions, generate_run_on_ray

            options = RayOptions(None if ray_address == "local" else ray_address, ray_workers,
                                 device=session.options.device, threads=session.options.threads,
                                 connect_timeout_s=ray_timeout)
            result = generate_run_on_ray(session, plan, conditions, out, options, resume)
        else:
            result = generate(session, plan, conditions, out, resume=resume, check=check)
    finally:
        session.close()  # device memory, CUDA graphs and streams, also after an error
    echo_result(result, write_report(result, list(session.info.spec.class_names)))


def model_marker_depth(given: MarkerDepth, defaults: Any) -> MarkerDepth:
    """``--marker-depth`` as given, or (left at its default) the one the model's sampling defaults record."""
    from click.core import ParameterSource

    from histosmith.runtime.postprocess import MarkerDepth

    source = click.get_current_context().get_parameter_source("marker_depth")
    if source == ParameterSource.DEFAULT and defaults.marker_depth:
        return MarkerDepth.parse(defaults.marker_depth)
    return given


main = entry_point(cli)
