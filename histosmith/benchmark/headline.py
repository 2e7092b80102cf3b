"""``hs-bench --headline``: labelled tiles per second end to end, at the quality gate, against the paper's pipeline.

The paper's pipeline is the training checkpoint's modules in eager torch fp32 with DDIM at 50 steps and
two-pass classifier-free guidance (the conditional and null branches as one 2B batch per call). Every other
contender is a configuration of the export — an engine file, a sampler, a step count, the model's guidance —
run exactly as ``hs-generate`` runs it (the same ``generate`` loop: sampling, decoding, the watershed, writing
shards). Its gate verdict is the one ``hs-eval gate`` / ``hs-eval sampler`` recorded in the manifest of the
export holding its engine (``verification.gate``, by configuration label); a configuration never gated shows as
such, and the headline speed-up is the fastest *passing* configuration's, measured in the same process as the
paper's pipeline.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from histosmith.benchmark.bench import BenchSession, e2e_batches
from histosmith.evaluation.gate import Configuration
from histosmith.runtime import conditions as cond
from histosmith.runtime.backends.base import Backend
from histosmith.runtime.engine import EngineOptions, open_engine
from histosmith.runtime.generate import GenerationPlan, decode_labels, generate
from histosmith.runtime.info import GeneratorInfo
from histosmith.runtime.manifest import Manifest
from histosmith.runtime.postprocess import PostprocessConfig
from histosmith.runtime.schedule import SamplerSettings, Scheduler
from histosmith.runtime.seeds import tile_noise

PAPER = "paper: torch eager fp32, DDIM 50, two-pass guidance"


@dataclass(frozen=True)
class HeadlineOptions:
    batches: tuple[int, ...] = (1, 16)
    repeats: int = 3
    threads: int | None = None
    checkpoint: Path | None = None  # the paper's pipeline runs the training checkpoint (default: the export's)
    show_progress: bool = True


def tiles_per_second(backend: Backend, info: GeneratorInfo, settings: SamplerSettings, guidance: float,
                     batch: int, repeats: int) -> float:
    """Median tiles/s of the runtime's generate loop over whole batches (sampling, labels, writing)."""
    n = batch * e2e_batches(batch)
    table = cond.from_dataset(info, n, 7)
    plan = GenerationPlan(seed=0, steps=settings.steps, sampler=settings.sampler, corrector=settings.corrector,
                          guidance=guidance, batch=batch)
    rates = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="hs-bench-headline-") as tmp:
            result = generate(BenchSession(info, backend), plan, table, Path(tmp) / "out", show_progress=False)
        rates.append(result.generated / result.seconds)
    return statistics.median(rates)


def stage_shares(backend: Backend, info: GeneratorInfo, settings: SamplerSettings, guidance: float, batch: int,
                 repeats: int) -> dict[str, float]:
    """Seconds per batch of the sampling loop (U-Net calls + updates + decoder) and of the watershed, and
    their shares of the two together (``decoder`` is measured inside the loop's time as one call)."""
    table = cond.from_dataset(info, batch, 3)
    latents, _ = tile_noise(0, np.arange(batch), info.latent_shape, settings.steps, False)
    vectors = info.spec.vectors(table.counts, table.tissues)
    g = np.full(batch, guidance, np.float32)
    loop, post = [], []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        decoded = backend.sample(latents, vectors, g, None)
        mid = time.perf_counter()
        decode_labels(decoded, info.n_classes, PostprocessConfig())
        loop.append(mid - start)
        post.append(time.perf_counter() - mid)
    loop_s, post_s = statistics.median(loop[1:]), statistics.median(post[1:])
    total = loop_s + post_s
    return {"sampling_loop_s": loop_s, "postprocess_s": post_s, "postprocess_share": post_s / total}


def run_headline(export: Path, configs: list[Configuration], opts: HeadlineOptions) -> dict[str, Any]:
    """Measure the paper's pipeline and every configuration at every batch size, in this one process."""
    from histosmith.benchmark.contenders import torch_peer

    manifest = Manifest.load(export)
    info = manifest.info
    checkpoint = opts.checkpoint or Path(manifest.source.checkpoint)
    if not checkpoint.exists():
        from histosmith.errors import file_error

        raise file_error(checkpoint, "the paper's pipeline runs the training checkpoint; pass --checkpoint")
    paper_settings = SamplerSettings("ddim", 50)
    guidance = manifest.sampling.guidance
    paper = torch_peer(checkpoint, Scheduler(info.schedule).settings_tables(paper_settings), False, opts.threads)
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(opts.batches) * (1 + len(configs)), desc="hs-bench --headline", unit="run",
               disable=not opts.show_progress, dynamic_ncols=True)
    for batch in opts.batches:
        base = tiles_per_second(_peer_backend(paper), info, paper_settings, guidance, batch, opts.repeats)
        rows.append({"contender": PAPER, "label": "paper", "batch": batch, "tiles_per_s": base, "speedup": 1.0,
                     "gate": "reference"})
        bar.update()
        for config in configs:
            session = open_engine(config.engine, EngineOptions(device="cpu", threads=opts.threads, batch=batch,
                                                               compile=config.compile))
            tables = Scheduler(info.schedule).settings_tables(config.sampling)
            backend = session.backend(tables)
            rate = tiles_per_second(backend, info, config.sampling, config.guidance, batch, opts.repeats)
            verdict = _verdict(config)
            where = "" if config.engine.parent.resolve() == export.resolve() else f"{config.engine.parent.name}/"
            row = {"contender": f"{where}{config.label} ({backend.name})", "label": config.label, "batch": batch,
                   "tiles_per_s": rate, "speedup": rate / base,
                   "gate": ("pass" if verdict["passed"] else "fail") if verdict else "not gated"}
            if verdict and not verdict["passed"]:
                row["gate_failed"] = verdict.get("failed", [])
            if batch == max(opts.batches):
                row["stages"] = stage_shares(backend, info, config.sampling, config.guidance, batch, opts.repeats)
            rows.append(row)
            session.close()
            bar.update()
    bar.close()
    best = {}
    for batch in opts.batches:
        passing = [r for r in rows if r["batch"] == batch and r["gate"] == "pass"]
        best[str(batch)] = max(passing, key=lambda r: r["tiles_per_s"]) if passing else None
    return {"export": str(export), "paper": PAPER, "guidance": guidance, "rows": rows, "fastest_passing": best}


def _verdict(config: Configuration) -> dict[str, Any] | None:
    """The gate verdict recorded for ``config`` in the manifest of the export that holds its engine."""
    return Manifest.load(config.engine.parent).verification.get("gate", {}).get(config.label)


def _peer_backend(contender: Any) -> Backend:  # noqa: ANN401
    """The backend of a torch peer (its ``prepare`` hands it out with the calls)."""
    from histosmith.benchmark.contenders import BatchInputs

    dummy = BatchInputs(np.zeros((1, 1, 1, 1), np.float32), np.zeros(1, np.float32), np.zeros((1, 1), np.float32),
                        np.ones(1, np.float32))
    return contender.prepare(dummy).backend


def parse_configs(export: Path, text: str, guidance: float) -> list[Configuration]:
    """``ENGINE:SAMPLER:STEPS[:compile],...`` (engine files, relative to the export: ``../other/unet.onnx`` names
    one of another export of the same model, e.g. a distilled student) -> configurations."""
    from histosmith.errors import HistoSmithError

    out = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        parts = item.split(":")
        if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "compile"):
            raise HistoSmithError(f"--headline {item!r}: expected ENGINE:SAMPLER:STEPS[:compile]")
        try:
            settings = SamplerSettings(parts[1], int(parts[2]))  # type: ignore[arg-type]
        except ValueError as exc:
            raise HistoSmithError(f"--headline {item!r}: {exc}") from None
        engine = export / parts[0]
        if not engine.is_file():
            raise HistoSmithError(f"--headline {item!r}: {engine} not found")
        out.append(Configuration(engine, settings, guidance, compile=len(parts) == 4))
    if not out:
        raise HistoSmithError("--headline: name at least one configuration")
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in result["rows"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 0.5 + 0.42 * len(result["rows"])),
                             squeeze=False)
    colours = {"pass": "#2e7d32", "fail": "#c62828", "not gated": "#9e9e9e", "reference": "#1565c0"}
    for ax, batch in zip(axes[0], batches, strict=True):
        rows = [r for r in result["rows"] if r["batch"] == batch]
        ax.barh([r["label"] for r in rows], [r["tiles_per_s"] for r in rows],
                color=[colours[r["gate"]] for r in rows])
        for y, r in enumerate(rows):
            ax.text(r["tiles_per_s"], y, f" {r['speedup']:.1f}x ({r['gate']})", va="center", fontsize=7)
        ax.set_title(f"batch {batch}", fontsize=10)
        ax.set_xlabel("labelled tiles / s (end to end)")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle("Tiles per second at the quality gate (green: passes, red: fails, blue: the paper's pipeline)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_markdown(result: dict[str, Any], command: str) -> str:
    lines = ["# Labelled tiles per second at the quality gate", "", f"`{command}`", "",
             f"Reference: {result['paper']} (guidance {result['guidance']:g}); every row runs the whole pipeline "
             "(sampling, decoder, watershed, writing shards) in one process.", "",
             "| contender | batch | tiles/s | vs paper | gate |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['contender']} | {r['batch']} | {r['tiles_per_s']:.2f} | {r['speedup']:.2f}x | "
                     f"{r['gate']} |")
    lines.append("")
    for batch, row in result["fastest_passing"].items():
        if row is None:
            lines.append(f"* batch {batch}: no gated configuration passes")
        else:
            lines.append(f"* batch {batch}: fastest passing **{row['label']}**, {row['tiles_per_s']:.2f} tiles/s, "
                         f"**{row['speedup']:.2f}x** the paper's pipeline")
            if "stages" in row:
                s = row["stages"]
                lines.append(f"  (per batch: sampling loop {1e3 * s['sampling_loop_s']:.0f} ms, watershed "
                             f"{1e3 * s['postprocess_s']:.0f} ms = {s['postprocess_share']:.0%} of the two)")
    return "\n".join(lines) + "\n"
