"""``hs-sample``: the torch reference sampler, straight from an ``hs-train ldm`` checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from histosmith.cli.common import entry_point
from histosmith.cli.generation import build_conditions, check_condition_choice, echo_result, generation_options


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
        balance: bool, allow_extrapolation: bool, seed: int, steps: int, eta: float, guidance: float, batch: int,
        shard_size: int | None, resume: bool) -> None:
    source = check_condition_choice(counts, tissue, conditions_csv, from_dataset, balance)
    from histosmith.errors import HistoSmithError

    if not checkpoint.exists():
        raise HistoSmithError(f"{checkpoint}: checkpoint not found")
    from histosmith.generator import load_generator
    from histosmith.runtime.backends.torch_backend import DTYPES, TorchBackend
    from histosmith.runtime.generate import generate
    from histosmith.runtime.planning import BatchBuckets
    from histosmith.runtime.report import write_report
    from histosmith.runtime.schedule import DDIMScheduler
    from histosmith.training.loop import pick_device

    dev = pick_device(device)
    gen = load_generator(checkpoint)
    table, label = build_conditions(gen.info, source, n, counts, tissue, conditions_csv, seed, allow_extrapolation)
    tables = DDIMScheduler(gen.info.schedule).set_timesteps(steps, eta)
    dtype = DTYPES[precision]
    buckets = BatchBuckets((batch,)) if cuda_graph else None
    backend = TorchBackend(gen.guided.to(dev, dtype), gen.decoder.to(dev, dtype), tables, str(dev), dtype, cuda_graph,
                           buckets, compile_modules=compile_modules)
    result = generate(backend, gen.info, tables, table, out, seed=seed, batch=batch, guidance=guidance, eta=eta,
                      model_id=f"{gen.checkpoint} step {gen.step}", conditions_label=label, resume=resume,
                      shard_size=shard_size)
    echo_result(result, write_report(result, list(gen.info.spec.class_names)))


main = entry_point(cli)
