"""``hs-bench``: throughput of an export's engines (and, with --peers, torch and OpenVINO) on this machine."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from histosmith.cli.common import entry_point, output_path
from histosmith.errors import HistoSmithError


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise HistoSmithError(f"{option} takes comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise HistoSmithError(f"{option} takes positive whole numbers, got {text!r}")
    return values


@click.command(help="Benchmark exported engines per stage and end to end, in one process (JSON + Markdown + PNG).")
@click.option("--export", "export", type=click.Path(path_type=Path), required=True, help="hs-export directory.")
@click.option("--engines", default="", help="U-Net files, e.g. unet.onnx,unet.int8.onnx (default: every CPU engine).")
@click.option("--batches", default="1,16", show_default=True)
@click.option("--steps", type=int, default=20, show_default=True, help="DDIM steps of the end-to-end runs.")
@click.option("--repeats", type=int, default=5, show_default=True)
@click.option("--threads", type=int, default=None, help="Threads for every engine and peer (default: all).")
@click.option("--peers", is_flag=True, help="Add torch eager fp32, torch bf16 autocast and OpenVINO (if installed).")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Training run for --peers (default: the export's source checkpoint).")
@click.option("--profile/--no-profile", default=True, show_default=True, help="ONNX Runtime per-operator profile.")
@click.option("--compile", "compile_engines", is_flag=True,
              help="Also measure every torch (.pt2) engine as hs-generate --compile runs it.")
@click.option("--gate", is_flag=True,
              help="Run every engine through hs-calibrate's quality gate against fp32 unet.onnx (64 tiles, 50 steps) "
                   "and name the fastest engine that passes.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory for bench.json/.md/.png.")
def cli(export: Path, engines: str, batches: str, steps: int, repeats: int, threads: int | None, peers: bool,
        checkpoint: Path | None, profile: bool, compile_engines: bool, gate: bool, out: Path) -> None:
    batch_sizes = _ints(batches, "--batches")
    for name, value in (("--steps", steps), ("--repeats", repeats), ("--threads", threads or 1)):
        if value < 1:
            raise HistoSmithError(f"{name} must be >= 1, got {value}")
    if not export.is_dir():
        raise HistoSmithError(f"{export}: not an export directory")
    if checkpoint is not None and not checkpoint.exists():
        raise HistoSmithError(f"{checkpoint}: checkpoint not found")
    output_path(out / "bench.json")
    from histosmith.benchmark.bench import BenchOptions, run_bench
    from histosmith.benchmark.report import write_results

    opts = BenchOptions(tuple(e.strip() for e in engines.split(",") if e.strip()), batch_sizes, steps, repeats,
                        threads, peers, checkpoint, profile, compile=compile_engines, gate=gate)
    result = run_bench(export, opts)
    command = "hs-bench " + " ".join(sys.argv[1:])
    paths = write_results(out, result, command)
    for r in result["rows"]:
        click.echo(f"{r['contender']:<44} batch {r['batch']:>3}: U-Net {r['unet_ms_p50']:7.1f} ms, "
                   f"{r['tiles_per_s']:7.2f} tiles/s")
    click.echo("wrote " + ", ".join(str(p) for p in paths))


main = entry_point(cli)
