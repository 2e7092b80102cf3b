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


def _batches(export: Path, text: str | None) -> tuple[int, ...]:
    """``--batches`` checked against the batch range of the export's graphs (before any probe runs); left out,
    1 and 16 brought inside it."""
    from histosmith.runtime.manifest import Manifest
    from histosmith.runtime.planning import fit_batch

    if not export.is_dir():
        raise HistoSmithError(f"{export}: not an export directory")
    bounds = Manifest.load(export).batch.bounds
    if text is None:
        return tuple(sorted({fit_batch(None, bounds, default=1), fit_batch(None, bounds)}))
    return tuple(fit_batch(b, bounds, "--batches") for b in _ints(text, "--batches"))


@click.command(help="Benchmark exported engines per stage and end to end, in one process (JSON + Markdown + PNG).")
@click.option("--export", "export", type=click.Path(path_type=Path), required=True, help="hs-export directory.")
@click.option("--engines", default="", help="U-Net files, e.g. unet.onnx,unet.int8.onnx (default: every CPU engine).")
@click.option("--batches", default=None,
              help="Batch sizes  [default: 1,16, or the sizes nearest them the export's graphs take]")
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
              help="Also judge every runtime engine with hs-eval gate's quality gate at the export's default sampler "
                   "(needs --real and --segmenter) and name the fastest engine that passes.")
@click.option("--real", type=click.Path(path_type=Path), default=None,
              help="--gate: the real dataset the model was trained on.")
@click.option("--segmenter", type=click.Path(path_type=Path), default=None,
              help="--gate: hs-train seg run trained on real tiles only.")
@click.option("--gate-n", type=click.IntRange(min=8), default=500, show_default=True,
              help="--gate: requests per run (below 500 with --allow-small: a quick look, not recorded).")
@click.option("--allow-small", is_flag=True, help="--gate: allow --gate-n below 500.")
@click.option("--reference", "reference", type=click.Path(path_type=Path), default=None,
              help="--gate: export whose fp32 unet.onnx at DDIM 50 is the reference  [default: --export]")
@click.option("--headline", default=None, metavar="ENGINE:SAMPLER:STEPS[:compile],...",
              help="Instead: end-to-end tiles/s of these configurations against the paper's pipeline (torch eager "
                   "fp32, DDIM 50) in one run, each with its gate verdict from the manifest (hs-eval gate / "
                   "sampler); writes headline.json/.md/.png.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory for bench.json/.md/.png.")
def cli(export: Path, engines: str, batches: str | None, steps: int, repeats: int, threads: int | None, peers: bool,
        checkpoint: Path | None, profile: bool, compile_engines: bool, gate: bool, real: Path | None,
        segmenter: Path | None, gate_n: int, allow_small: bool, reference: Path | None, headline: str | None,
        out: Path) -> None:
    batch_sizes = _batches(export, batches)
    if headline is not None:
        _headline(export, headline, batch_sizes, repeats, threads, checkpoint, out)
        return
    for name, value in (("--steps", steps), ("--repeats", repeats), ("--threads", threads or 1)):
        if value < 1:
            raise HistoSmithError(f"{name} must be >= 1, got {value}")
    if not export.is_dir():
        raise HistoSmithError(f"{export}: not an export directory")
    if checkpoint is not None and not checkpoint.exists():
        raise HistoSmithError(f"{checkpoint}: checkpoint not found")
    output_path(out / "bench.json")
    from histosmith.benchmark.bench import BenchOptions, run_bench
    from histosmith.benchmark.gate import BenchGate
    from histosmith.benchmark.report import write_results
    from histosmith.evaluation.gate import GateInputs

    bench_gate = None
    if gate:
        if real is None or segmenter is None:
            raise HistoSmithError("--gate needs --real (the training data) and --segmenter (an hs-train seg run)")
        if gate_n < 500 and not allow_small:
            raise HistoSmithError(f"--gate-n {gate_n}: the gate judges a set of at least 500 tiles (--allow-small "
                                  "for a quick look)")
        bench_gate = BenchGate(GateInputs(real, segmenter, out / "gate" / "runs", gate_n, threads=threads,
                                          allow_small=allow_small), reference, out / "gate")
    command = "hs-bench " + " ".join(sys.argv[1:])
    opts = BenchOptions(tuple(e.strip() for e in engines.split(",") if e.strip()), batch_sizes, steps, repeats,
                        threads, peers, checkpoint, profile, compile=compile_engines, gate=bench_gate,
                        command=command)
    result = run_bench(export, opts)
    paths = write_results(out, result, command)
    for r in result["rows"]:
        click.echo(f"{r['contender']:<44} batch {r['batch']:>3}: U-Net {r['unet_ms_p50']:7.1f} ms, "
                   f"{r['tiles_per_s']:7.2f} tiles/s")
    click.echo("wrote " + ", ".join(str(p) for p in paths))


def _headline(export: Path, text: str, batches: tuple[int, ...], repeats: int, threads: int | None,
              checkpoint: Path | None, out: Path) -> None:
    if not export.is_dir():
        raise HistoSmithError(f"{export}: not an export directory")
    output_path(out / "headline.json")
    from histosmith.benchmark.headline import HeadlineOptions, parse_configs, plot, run_headline, to_markdown
    from histosmith.data.atomic import write_json_atomic, write_text_atomic
    from histosmith.runtime.manifest import Manifest

    configs = parse_configs(export, text, Manifest.load(export).sampling.guidance)
    result = run_headline(export, configs, HeadlineOptions(batches, repeats, threads, checkpoint))
    command = "hs-bench " + " ".join(sys.argv[1:])
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "headline.json", result | {"command": command})
    write_text_atomic(out / "headline.md", to_markdown(result, command))
    plot(result, out / "headline.png")
    click.echo(to_markdown(result, command))
    click.echo(f"wrote {out / 'headline.json'}, headline.md, headline.png")


main = entry_point(cli)
