"""``hs-eval control``: run the sweep, write ``control.json``, ``control.md`` and the PNGs."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from histosmith.data.atomic import read_json_object, write_json_atomic, write_text_atomic
from histosmith.data.reader import Dataset
from histosmith.errors import HistoSmithError
from histosmith.evaluation.control import Sweep, SweepDesign, analyse, build_sweep, qc_comparison
from histosmith.evaluation.control_markdown import format_markdown, num
from histosmith.runtime.engine import GeneratorSession
from histosmith.runtime.generate import PLAN_FILE, GenerationPlan, check_output_dir, generate, run_record
from histosmith.runtime.postprocess import marker_depth_label

log = logging.getLogger(__name__)
TILES_DIR = "tiles"
CLASSIFIER_DIR = "tissue_classifier"  # cached tissue classifiers, keyed by the real tiles' content
EXTRA_COLOUR, INSIDE_COLOUR = "#d95f02", "#1b9e77"


def check_control_out(out: Path) -> bool:
    """``--out`` must be new or empty, or hold an earlier ``hs-eval control`` sweep (returns True): that sweep
    resumes (it must have the same settings), its cached tissue classifier is reused, the report is rewritten.
    Reads only."""
    if (out / TILES_DIR / PLAN_FILE).is_file():
        check_output_dir(out / TILES_DIR, resume=True)
        return True
    check_output_dir(out, resume=False)
    return False


def _first_attempt_counts(rows: list[dict[str, str]], class_names: tuple[str, ...]) -> np.ndarray:
    """(N, K) counts of every tile's first sample, from the ``qc_first_<class>`` columns QC writes."""
    try:
        return np.array([[int(r[f"qc_first_{c}"]) for c in class_names] for r in rows], dtype=np.int64)
    except (KeyError, ValueError):
        raise HistoSmithError("the sweep's tiles lack the first-attempt counts of QC (qc_first_*): written by an "
                              "older version; choose a new --out") from None


def tissue_by_request(sweep: Sweep, correct: np.ndarray, expected: np.ndarray,
                      tissue_names: list[str]) -> list[dict[str, Any]]:
    """Tissue accuracy per request (requested tissue, swept class, level), beside the count-matched real
    accuracy of the same requests: where in the sweep the generated tiles stop looking like their tissue."""
    rows = []
    for t, name in enumerate(tissue_names):
        for c in np.unique(sweep.swept_class).tolist():
            for level in np.unique(sweep.level).tolist():
                group = (sweep.conditions.tissues == t) & (sweep.swept_class == c) & (sweep.level == level)
                if group.any():
                    rows.append({"tissue": name, "swept_class": int(c), "level": int(level),
                                 "extrapolated": bool(sweep.extrapolated[group].any()), "n": int(group.sum()),
                                 "accuracy": float(correct[group].mean()),
                                 "count_matched_real": float(expected[group].mean())})
    return rows


def measure_tissue_collapse(data: Path, tiles: Path, sweep: Sweep, tissue_names: list[str], cache_dir: Path,
                            show_progress: bool) -> dict[str, Any]:
    """Train (or load) the tissue classifier on ``data`` and score the generated tiles against their requested
    tissue: every tile, and the in-range ones alone; beside it, the classifier's accuracy on the real tiles
    whose counts are nearest to each request (:func:`~histosmith.evaluation.tissue.count_matched_accuracy`)."""
    from histosmith.evaluation.tissue import (  # torch: only with --data
        MATCHED_K,
        accuracy,
        count_matched_accuracy,
        load_or_train,
        matched_summary,
        predict,
    )
    from histosmith.training.data import TileStore

    clf = load_or_train(data, tissue_names, cache_dir, show_progress=show_progress)
    images = np.concatenate([np.asarray(imgs) for _, imgs, _ in Dataset.open(tiles).iter_shards()])
    pred = predict(clf.net, images)
    requested = sweep.conditions.tissues
    inside = ~sweep.extrapolated
    real = TileStore.load(data, None, show_progress=False)
    expected = count_matched_accuracy(real.counts, real.tissues, predict(clf.net, real.images) == real.tissues,
                                      sweep.conditions.counts, requested)
    return {"data": str(data), "classifier": {
        "recipe": asdict(clf.recipe), "cache_key": clf.key, "cached": clf.cached,
        "train_accuracy": clf.train_accuracy, "val": clf.val},
        "by_request": tissue_by_request(sweep, pred == requested, expected, tissue_names),
        "generated": accuracy(requested, pred, tissue_names),
        "generated_in_range": accuracy(requested[inside], pred[inside], tissue_names),
        "count_matched_real": {"k": MATCHED_K, "tiles": "train and val",
                               "all": matched_summary(expected, requested, tissue_names),
                               "in_range": matched_summary(expected[inside], requested[inside], tissue_names)}}


def run_control(session: GeneratorSession, plan: GenerationPlan, design: SweepDesign, out: Path,
                command: str = "", show_progress: bool = True, data: Path | None = None,
                resume: bool = False) -> dict[str, Any]:
    """Generate the sweep into ``out/tiles`` and write the report beside it; returns control.json's content.

    ``data``: a real dataset to train the tissue classifier on (tissue collapse); ``plan.qc``: QC regeneration,
    reported before (attempt 0) and after; ``resume``: ``out`` holds an earlier sweep (see
    :func:`check_control_out`)."""
    info = session.info
    sweep = build_sweep(info, design)
    if data is not None:
        from histosmith.evaluation.tissue import check_dataset

        check_dataset(data, list(info.spec.class_names), list(info.spec.tissue_names), info.tile_size)
    tiles = out / TILES_DIR
    if resume:
        previous = read_json_object(tiles / PLAN_FILE)
        diff = sorted(k for k, v in run_record(session, plan, sweep.conditions).items() if previous.get(k) != v)
        if diff:
            raise HistoSmithError(f"{out}: holds a control sweep with other settings ({', '.join(diff)}); "
                                  "choose a new --out")
    log.info("control sweep: %d tiles (%d in the extrapolation region)", len(sweep), int(sweep.extrapolated.sum()))
    result = generate(session, plan, sweep.conditions, tiles, resume=resume, show_progress=show_progress)
    before = result.measured
    if plan.qc is not None:
        rows = Dataset.open(tiles).patch_info()
        before = _first_attempt_counts(rows, info.spec.class_names)
        qc = qc_comparison(sweep, before, result.measured, np.array([int(r["qc_attempts"]) for r in rows]),
                           np.array([r["qc_pass"] == "1" for r in rows]), info.spec.class_names)
    report = analyse(info, sweep, before)
    report |= {"command": command, "model": session.model_id, "design": {
        "levels": design.levels, "tiles_per_level": design.tiles_per_level,
        "extrapolation": list(design.extrapolation)},
        "sampling": {"seed": plan.seed, **plan.sampling.record(), "guidance": plan.guidance,
                     "marker_depth": marker_depth_label(plan.postprocess, info.spec.class_names)}}
    if plan.qc is not None:
        report["qc"] = {"tolerance": plan.qc, "attempts": plan.qc_attempts,
                        "rule": "|measured - requested| <= max(1, tolerance x requested) for every class"} | qc
    if data is not None:
        report["tissue_collapse"] = measure_tissue_collapse(data, tiles, sweep, list(info.spec.tissue_names),
                                                            out / CLASSIFIER_DIR, show_progress)
    write_json_atomic(out / "control.json", report)
    write_text_atomic(out / "control.md", format_markdown(report))
    plot_scatter(report, sweep, before, out / "control_scatter.png",
                 after=result.measured if plan.qc is not None else None)
    plot_saturation(report, out / "control_saturation.png")
    plot_bland_altman(report, sweep, before, out / "control_bland_altman.png")
    return report


def _class_axes(k: int):
    from histosmith.data.plots import plt

    fig, axes = plt.subplots(1, k, figsize=(3.4 * k, 3.3), squeeze=False)
    return fig, axes[0]


def plot_scatter(report: dict[str, Any], sweep: Sweep, measured: np.ndarray, path: Path,
                 after: np.ndarray | None = None) -> None:
    """Requested vs measured per class, identity line; extrapolated tiles in their own colour; with ``after``
    (QC) the kept tiles' counts as black crosses beside the first samples' dots."""
    from histosmith.data.plots import save_figure

    fig, axes = _class_axes(len(report["class_names"]))
    rng = np.random.default_rng(0)
    for c, (ax, e) in enumerate(zip(axes, report["classes"], strict=True)):
        mine = sweep.swept_class == c
        q, m, extra = sweep.level[mine], measured[mine, c], sweep.extrapolated[mine]
        jitter = rng.uniform(-0.2, 0.2, (2, len(q)))
        first = ", before QC" if after is not None else ""
        for sel, colour, label in ((~extra, INSIDE_COLOUR, "in range"), (extra, EXTRA_COLOUR, "extrapolation")):
            ax.scatter(q[sel] + jitter[0, sel], m[sel] + jitter[1, sel], s=10, alpha=0.6, color=colour,
                       label=label + first)
        top = max(q.max(initial=0), m.max(initial=0)) + 1
        if after is not None:
            a = after[mine, c]
            ax.scatter(q + jitter[0], a + jitter[1], s=14, marker="x", lw=0.8, color="black", alpha=0.7,
                       label="after QC")
            top = max(top, a.max(initial=0) + 1)
        ax.plot([0, top], [0, top], color="grey", lw=0.8, ls="--")
        ax.set_title(f"{e['class']}  r={num(e['in_range'].get('r'))} (in range{first})", fontsize=9)
        ax.set_xlabel("requested")
        ax.set_ylabel("measured")
        ax.legend(fontsize=7, loc="upper left")
    save_figure(fig, path)


def plot_saturation(report: dict[str, Any], path: Path) -> None:
    """Mean measured count per level (±1 sd) per tissue, identity, each tissue's trained maximum, saturation."""
    from histosmith.data.plots import save_figure

    fig, axes = _class_axes(len(report["class_names"]))
    for ax, e in zip(axes, report["classes"], strict=True):
        top = 1.0
        for tissue, t in e["per_tissue"].items():
            if not t["swept"]:
                continue
            lv = np.array([p["level"] for p in t["levels"]], float)
            mean = np.array([p["mean"] for p in t["levels"]])
            sd = np.array([p["sd"] for p in t["levels"]])
            line = ax.errorbar(lv, mean, yerr=sd, marker="o", ms=3, capsize=2, lw=1, label=tissue)
            ax.axvline(t["training_max"], color=line.lines[0].get_color(), lw=0.8, ls="--",
                       label=f"{tissue} trained max")  # beyond it: extrapolation for this tissue
            top = max(top, lv.max(initial=0), (mean + sd).max(initial=0))
        ax.plot([0, top], [0, top], color="grey", lw=0.8, ls="--")
        if e["saturation_point"] is not None:
            ax.axvline(e["saturation_point"], color="black", lw=0.8, ls=":", label="saturation")
        ax.set_title(e["class"], fontsize=9)
        ax.set_xlabel("requested")
        ax.set_ylabel("mean measured")
        ax.legend(fontsize=7, loc="upper left")
    save_figure(fig, path)


def plot_bland_altman(report: dict[str, Any], sweep: Sweep, measured: np.ndarray, path: Path) -> None:
    """Difference (measured - requested) against the pair's mean; bias and 95 % limits of the in-range tiles."""
    from histosmith.data.plots import save_figure

    fig, axes = _class_axes(len(report["class_names"]))
    for c, (ax, e) in enumerate(zip(axes, report["classes"], strict=True)):
        mine = sweep.swept_class == c
        q, m, extra = sweep.level[mine].astype(float), measured[mine, c].astype(float), sweep.extrapolated[mine]
        for sel, colour, label in ((~extra, INSIDE_COLOUR, "in range"), (extra, EXTRA_COLOUR, "extrapolation")):
            ax.scatter((q[sel] + m[sel]) / 2, m[sel] - q[sel], s=10, alpha=0.6, color=colour, label=label)
        a = e["in_range"]
        if a.get("bias") is not None:
            ax.axhline(a["bias"], color="black", lw=0.9, label=f"bias {a['bias']:.2f}")
            for key in ("loa_low", "loa_high"):
                ax.axhline(a[key], color="black", lw=0.7, ls="--")
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_title(e["class"], fontsize=9)
        ax.set_xlabel("mean of requested and measured")
        ax.set_ylabel("measured - requested")
        ax.legend(fontsize=7, loc="lower left")
    save_figure(fig, path)
