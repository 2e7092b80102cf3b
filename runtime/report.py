"""After a generation run: the requested-vs-measured table, a scatter plot and a contact sheet."""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from histosmith.data.atomic import write_json_atomic
from histosmith.data.reader import Dataset
from histosmith.extras import available
from histosmith.runtime.generate import ControlSummary, GenerationResult, control_summary
from histosmith.runtime.preview import contact_sheet, save_png
from histosmith.runtime.qc import qc_result

log = logging.getLogger(__name__)


def plot_control(summary: ControlSummary, requested: np.ndarray, measured: np.ndarray, path: Path) -> None:
    from histosmith.data.plots import plt, save_figure

    k = requested.shape[1]
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 3.2), squeeze=False)
    rng = np.random.default_rng(0)
    for c, ax in enumerate(axes[0]):
        q, m = requested[:, c], measured[:, c]
        jitter = rng.uniform(-0.15, 0.15, (2, len(q)))
        ax.scatter(q + jitter[0], m + jitter[1], s=8, alpha=0.6, color="#7b4f9d")
        top = max(q.max(initial=0), m.max(initial=0)) + 1
        ax.plot([0, top], [0, top], color="grey", lw=0.8, ls="--")
        r = summary.pearson_r[c]
        ax.set_title(f"{summary.class_names[c]}  r={'n/a' if r is None else f'{r:.2f}'}", fontsize=9)
        ax.set_xlabel("requested")
        ax.set_ylabel("measured")
    save_figure(fig, path)


def write_report(result: GenerationResult, class_names: list[str], preview_tiles: int = 64) -> ControlSummary:
    """``control.json`` + ``control.png`` (count control) and ``preview.png`` (contact sheet) in the run dir."""
    ds = Dataset.open(result.out)
    summary = replace(control_summary(class_names, result.requested, result.measured), qc=qc_result(ds))
    write_json_atomic(result.out / "control.json", {**asdict(summary), "n_tiles": result.n_tiles})
    if available("matplotlib"):
        plot_control(summary, result.requested, result.measured, result.out / "control.png")
    else:  # the lean runtime install has no matplotlib
        log.info("control.png skipped: matplotlib is not installed (the [train] extra); see control.json")
    shard = next((s for s in ds.shards if s.n_tiles), None)  # a filtered run may have empty shards
    if shard is None:
        log.warning("preview.png skipped: no tile passed the filter (see rejected.csv in the shards)")
        return summary
    take = min(preview_tiles, shard.n_tiles)
    images, labels = np.asarray(shard.images()[:take]), np.asarray(shard.labels()[:take])
    info = shard.patch_info()[:take]
    captions = [r.get("tissue", "") for r in info]
    sheet = contact_sheet(list(images), list(labels), len(class_names), class_names, captions=captions)
    save_png(result.out / "preview.png", sheet)
    return summary
