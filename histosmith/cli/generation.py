"""Options and steps that ``hs-sample`` and ``hs-generate`` share (no torch imports here)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from histosmith.cli.common import SEED, marker_depth_option
from histosmith.runtime.generate import sampling_plan_fields
from histosmith.runtime.schedule import SAMPLERS


def generation_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Click options for what to generate; applied to both commands."""
    options = [
        click.option("--out", type=click.Path(path_type=Path), required=True, help="Output dataset directory."),
        click.option("--n", "n", type=click.IntRange(min=1), default=None,
                     help="Tiles to generate (default: 64, or the rows of --conditions)."),
        click.option("--counts", default=None, help="Nuclei per class, e.g. neutrophil=4,epithelial=30."),
        click.option("--tissue", default=None, help="Tissue name (with --counts)."),
        click.option("--conditions", "conditions_csv", type=click.Path(path_type=Path), default=None,
                     help="CSV with one column per class (and 'tissue'); one row per tile, repeated as needed."),
        click.option("--from-dataset", is_flag=True, help="Draw conditions from the training distribution."),
        click.option("--balance", is_flag=True,
                     help="Training draws with rare classes raised within the trained range."),
        click.option("--allow-extrapolation", is_flag=True, help="Allow counts above the training range (warns)."),
        click.option("--seed", type=SEED, default=0, show_default=True,
                     help="Base seed; tile i uses (seed, i)."),
        *sampler_options(),
        click.option("--batch", type=click.IntRange(min=1), default=None,
                     help="Tiles per batch  [default: 16, or the nearest the export's graphs take]"),
        click.option("--shard-size", type=click.IntRange(min=1), default=None, help="Tiles per output shard."),
        click.option("--resume", is_flag=True, help="Finish an interrupted run in --out."),
        click.option("--qc", type=click.FloatRange(0, 10), default=None,
                     help="Resample a tile unless every class count is within max(1 nucleus, QC x requested)."),
        click.option("--qc-attempts", type=click.IntRange(1, 100), default=3, show_default=True,
                     help="Samples per tile at most with --qc / --qc-segmenter / --qc-max-area (the best is kept "
                          "when none passes)."),
        click.option("--qc-segmenter", type=click.Path(path_type=Path), default=None,
                     help="hs-train seg run: keep a tile only when this segmenter's instances on the image agree "
                          "with the generated label (PQ >= --qc-min-pq); failing tiles go to rejected.csv."),
        click.option("--qc-min-pq", type=click.FloatRange(0, 1), default=None,
                     help="Least per-tile PQ for --qc-segmenter  [default: 0.5]"),
        click.option("--qc-max-area", default=None, metavar="CLASS=PX,... | REAL_DATASET",
                     help="Resample a tile holding a nucleus larger than its class's limit: pixels per class, or a "
                          "real dataset whose nuclei's 99th-percentile area per class (train split) is the limit."),
        marker_depth_option,
    ]
    for option in reversed(options):
        f = option(f)
    return f


def sampler_options() -> list[Callable[..., Any]]:
    """``--sampler``, ``--steps``, ``--eta``, ``--guidance``, ``--corrector``: every command that samples takes
    these; what is left out comes from the model (its manifest's sampling defaults)."""
    return [
        click.option("--sampler", type=click.Choice(list(SAMPLERS)), default=None,
                     help="ddim (the paper's), dpmpp-2m (DPM-Solver++(2M)) or unipc  [default: the model's]"),
        click.option("--steps", type=click.IntRange(1, 1000), default=None,
                     help="Network calls per tile  [default: the model's]"),
        click.option("--eta", type=click.FloatRange(0, 1), default=0.0, show_default=True,
                     help="DDIM eta (0 = deterministic; the other samplers take 0 only)."),
        click.option("--guidance", type=click.FloatRange(0), default=None,
                     help="Classifier-free guidance scale (1 = conditional only)  [default: the model's]"),
        click.option("--corrector/--no-corrector", default=None, help="UniPC's corrector  [default: on]"),
    ]


def sampler_option_decorators(f: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`sampler_options` as one decorator."""
    for option in reversed(sampler_options()):
        f = option(f)
    return f


def parse_request(n: int | None, counts: str | None, tissue: str | None, conditions_csv: Path | None,
                  from_dataset: bool, balance: bool, allow_extrapolation: bool, seed: int, steps: int | None,
                  eta: float, guidance: float | None, batch: int | None, shard_size: int | None, out: Path,
                  resume: bool,
                  qc: float | None = None, qc_attempts: int = 3, qc_segmenter: Path | None = None,
                  qc_min_pq: float | None = None, qc_max_area: str | None = None, sampler: str | None = None,
                  corrector: bool | None = None) -> tuple[Any, Any]:
    """The condition request and the generation plan, checked (with ``--out``) before any model loads; the
    plan's ``--marker-depth`` is bound once the model's classes are known (``plan.with_marker_depth``), and
    its unset sampling fields once its defaults are (``plan.with_model_defaults``)."""
    from histosmith.errors import HistoSmithError

    if qc_min_pq is not None and qc_segmenter is None:
        raise HistoSmithError("--qc-min-pq: needs --qc-segmenter RUN (the segmenter whose PQ it bounds)")
    from histosmith.runtime.conditions import ConditionRequest
    from histosmith.runtime.generate import GenerationPlan, check_output_dir
    from histosmith.runtime.planning import DEFAULT_BATCH
    from histosmith.runtime.qc import AreaLimits

    request = ConditionRequest.from_options(n, counts, tissue, conditions_csv, from_dataset, balance,
                                            allow_extrapolation)
    sampling = sampling_plan_fields(sampler, steps, guidance, corrector)
    if batch is None:
        sampling["unset"] |= {"batch"}
    plan = GenerationPlan(seed=seed, eta=eta, batch=batch or DEFAULT_BATCH, shard_size=shard_size, qc=qc,
                          qc_attempts=qc_attempts,
                          qc_max_area=AreaLimits.parse(qc_max_area) if qc_max_area is not None else None, **sampling)
    check_output_dir(out, resume)
    return request, plan


def open_pair_check(command: str, qc_segmenter: Path | None, qc_min_pq: float | None) -> Any:
    """The ``--qc-segmenter`` check (None without it); loads the segmenter, so it needs the [train] extra."""
    if qc_segmenter is None:
        return None
    from histosmith.extras import require

    require(f"{command} --qc-segmenter", "train")
    from histosmith.segmentation.consistency import open_segmenter_check

    return open_segmenter_check(qc_segmenter, 0.5 if qc_min_pq is None else qc_min_pq)


def echo_result(result: Any, summary: Any) -> None:
    rate = result.generated / result.seconds if result.seconds > 0 else float("nan")
    kept = len(result.measured)  # below n_tiles when --qc-segmenter left tiles out
    written = f"{kept} of {result.n_tiles}" if kept != result.n_tiles else f"{kept}"
    click.echo(f"wrote {written} tiles to {result.out} ({result.generated} new, {rate:.2f} tiles/s)")
    click.echo("requested vs measured nuclei per tile:")
    click.echo(summary.format_table())
    qc = summary.qc
    if qc:
        click.echo(f"QC: {qc['passed']} of {qc['tiles']} tiles passed, {qc['mean_attempts']:.2f} samples "
                   "per tile on average")
        if "oversized_nuclei" in qc:
            click.echo(f"QC: {qc['tiles_with_oversized']} tiles kept with {qc['oversized_nuclei']} nuclei above "
                       "their class's --qc-max-area (the best of their attempts)")
        if "rejected" in qc:
            click.echo(f"QC: segmenter PQ {qc['mean_pq']:.3f} on average; {qc['rejected']} tiles it disagreed with "
                       f"left out of the dataset (rows in rejected.csv), {qc['kept']} kept")
    control = result.out / "control.png"
    preview = result.out / "preview.png"
    click.echo(f"contact sheet: {preview if preview.exists() else 'none'}   count control: "
               f"{control if control.exists() else result.out / 'control.json'}")
