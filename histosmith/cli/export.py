"""``hs-export``: a trained generator -> ONNX (fp32, fp16), torch.export programs, manifest.json; TensorRT engines."""

from __future__ import annotations

from pathlib import Path

import click

from histosmith.cli.common import entry_point
from histosmith.errors import HistoSmithError
from histosmith.extras import require


@click.command(help="Export a trained generator (hs-train ldm run) for the lean runtime; build TensorRT engines.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="hs-train ldm run or file.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Export directory.")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Fixed batch size of the graphs.")
@click.option("--dynamic-batch", is_flag=True, help="Graphs accept any batch up to --max-batch (default).")
@click.option("--max-batch", type=click.IntRange(min=1), default=256, show_default=True,
              help="Largest batch a dynamic export promises.")
@click.option("--fp16/--no-fp16", default=True, show_default=True, help="Also write fp16 graphs (fp32 islands).")
@click.option("--opset", type=click.IntRange(13, 21), default=17, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing, different export in --out.")
@click.option("--trt", is_flag=True, help="Also build TensorRT engines (unet.plan, decoder.plan).")
@click.option("--precision", type=click.Choice(["fp16", "fp32", "int8"]), default="fp16", show_default=True,
              help="TensorRT engine precision (carried by the ONNX graph; int8 needs hs-calibrate first).")
@click.option("--batch-buckets", default="1,4,16,64", show_default=True,
              help="TensorRT profiles / CUDA graphs; include the --batch you generate with (no padding).")
@click.option("--workspace-gb", type=click.FloatRange(min=0.25), default=4.0, show_default=True)
@click.option("--register-engines", is_flag=True, help="Record engines built by build_engines.sh in the manifest.")
@click.option("--verify", is_flag=True, help="Compare TensorRT engines with ONNX Runtime (polygraphy).")
@click.option("--triton-repo", type=click.Path(path_type=Path), default=None,
              help="Also write a Triton model repository here (Python backend running the DDIM loop on the ONNX "
                   "graphs, dynamic batching).")
@click.option("--triton-max-batch", type=click.IntRange(min=1), default=None,
              help="max_batch_size of the Triton model (tiles per engine batch)  [default: 16, or the nearest the "
                   "export's graphs take]")
@click.option("--pack", type=click.Path(path_type=Path), default=None,
              help="Also write the export in the form the package ships its models in (U-Net + decoder of one ONNX "
                   "precision, manifest, model card) to this new directory.")
@click.option("--pack-precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True)
@click.option("--card", type=click.Path(path_type=Path), default=None, help="Model card (Markdown) for --pack.")
def cli(checkpoint: Path | None, out: Path, batch: int | None, dynamic_batch: bool, max_batch: int, fp16: bool,
        opset: int, force: bool, trt: bool, precision: str, batch_buckets: str, workspace_gb: float,
        register_engines: bool, verify: bool, triton_repo: Path | None, triton_max_batch: int | None, pack: Path | None,
        pack_precision: str, card: Path | None) -> None:
    from histosmith.runtime.planning import BatchBuckets

    buckets = BatchBuckets.parse(batch_buckets)
    if batch is not None and dynamic_batch:
        raise HistoSmithError("--batch and --dynamic-batch exclude each other")
    if triton_repo is not None and triton_repo.exists():
        raise HistoSmithError(f"{triton_repo}: already exists; choose a new directory for --triton-repo")
    if pack is not None and pack.exists():
        raise HistoSmithError(f"{pack}: already exists; choose a new directory for --pack")
    if card is not None and not card.is_file():
        raise HistoSmithError(f"--card {card}: not found")
    if checkpoint is None and not (register_engines or verify or trt or triton_repo or pack):
        raise HistoSmithError("--checkpoint is required to export")
    if checkpoint is not None and not checkpoint.exists():
        raise HistoSmithError(f"{checkpoint}: checkpoint not found")
    if precision == "fp16" and not fp16 and trt and checkpoint is not None:
        raise HistoSmithError("--trt --precision fp16 needs the fp16 graphs (drop --no-fp16)")
    if checkpoint is not None:
        require("hs-export --checkpoint", "train", "export")
        from histosmith.export.exporter import ExportOptions, check_export_out, export_generator

        check_export_out(out, force)

        opts = ExportOptions(batch=batch, dynamic_batch=batch is None, max_batch=max_batch, fp16=fp16, opset=opset,
                             force=force)
        manifest, cached = export_generator(checkpoint, out, opts)
        click.echo(("reused cached export " if cached else "exported ") + str(out))
        for v in manifest.variants:
            click.echo(f"  {v.format:<12} {v.precision:<5} {v.entry} + {v.decoder}")
        if not cached:
            click.echo("verification against PyTorch (max error relative to each output's scale):")
            for label, rows in manifest.verification.items():
                if isinstance(rows, list):
                    click.echo(f"  {label:<28} worst rel {max(r['max_rel'] for r in rows):.2e}")
    if trt:
        from histosmith.export.tensorrt_build import EngineOptions, build_engines

        variant = build_engines(out, EngineOptions(precision, buckets, workspace_gb))
        build = variant.tensorrt
        click.echo(f"built {variant.entry} + {variant.decoder} for {build.gpu} (compute "
                   f"{build.compute_capability}, TensorRT {build.tensorrt}, buckets {list(build.buckets)})")
    if register_engines:
        from histosmith.export.tensorrt_build import register_engines as register

        variant = register(out, precision, buckets=buckets)
        click.echo(f"registered {variant.entry} + {variant.decoder} in {out / 'manifest.json'}")
    if verify:
        from histosmith.export.verify_trt import verify_engines

        for line in verify_engines(out, precision):
            click.echo(line)
    if triton_repo is not None:
        from histosmith.runtime.triton_repo import RepoOptions, write_triton_repo

        write_triton_repo(out, triton_repo, RepoOptions(max_batch=triton_max_batch), batch_option="--triton-max-batch")
        click.echo(f"wrote the Triton model repository {triton_repo} (model 'histosmith'); serve it with "
                   f"tritonserver --model-repository {triton_repo}, or hs-serve --repo {triton_repo}")
    if pack is not None:
        from histosmith.export.pack import pack_export
        from histosmith.runtime.pretrained import packed_entry

        pack_export(out, pack, pack_precision, card)
        size = sum(p.stat().st_size for p in pack.iterdir()) / 2**20
        click.echo(f"packed the {pack_precision} ONNX graphs into {pack} ({size:.1f} MB); use it with "
                   f"hs-generate --engine {packed_entry(pack)}")


main = entry_point(cli)
