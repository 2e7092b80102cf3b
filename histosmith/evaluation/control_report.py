"""``hs-eval control``: run the sweep, write ``control.json``, ``control.md`` and the PNGs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from histosmith.data.atomic import write_json_atomic, write_text_atomic
from histosmith.evaluation.control import Sweep, SweepDesign, analyse, build_sweep
from histosmith.runtime.engine import GeneratorSession
from histosmith.runtime.generate import GenerationPlan, generate

log = logging.getLogger(__name__)
TILES_DIR = "tiles"
EXTRA_COLOUR, INSIDE_COLOUR = "#d95f02", "#1b9e77"


def run_control(session: GeneratorSession, plan: GenerationPlan, design: SweepDesign, out: Path,
                command: str = "", show_progress: bool = True) -> dict[str, Any]:
    """Generate the sweep into ``out/tiles`` and write the report beside it; returns control.json's content."""
    sweep = build_sweep(session.info, design)
    log.info("control sweep: %d tiles (%d in the extrapolation region)", len(sweep), int(sweep.extrapolated.sum()))
    result = generate(session, plan, sweep.conditions, out / TILES_DIR, show_progress=show_progress)
    report = analyse(session.info, sweep, result.measured)
    report |= {"command": command, "model": session.model_id, "design": {
        "levels": design.levels, "tiles_per_level": design.tiles_per_level,
        "extrapolation": list(design.extrapolation)},
        "sampling": {"seed": plan.seed, "steps": plan.steps, "eta": plan.eta, "guidance": plan.guidance}}
    write_json_atomic(out / "control.json", report)
    write_text_atomic(out / "control.md", format_markdown(report))
    plot_scatter(report, sweep, result.measured, out / "control_scatter.png")
    plot_saturation(report, out / "control_saturation.png")
    plot_bland_altman(report, sweep, result.measured, out / "control_bland_altman.png")
    return report


def _num(v: Any, fmt: str = ".2f") -> str:
    if v is None:
        return "n/a"
    text = format(v, fmt)
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"


def _saturation(level: int | None) -> str:
    return "follows to the end" if level is None else str(level)


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _per_tissue_lines(report: dict[str, Any]) -> list[str]:
    lines = ["", "## Per tissue", "",
             "| class | tissue | trained range | region | n | r | slope | MAE | BA bias | saturation point |",
             "|---" * 10 + "|"]
    for e in report["classes"]:
        for tissue, t in e["per_tissue"].items():
            if not t["swept"]:
                lines.append(_row([e["class"], tissue, "none", t["note"], 0, "", "", "", "", ""]))
                continue
            for region, label in (("in_range", "in range"), ("extrapolation", "EXTRAPOLATION")):
                a = t[region]
                lines.append(_row([e["class"], tissue, f"0..{t['training_max']}", label, a["n"],
                                   _num(a.get("r"), ".3f"), _num(a.get("slope")), _num(a.get("mae")),
                                   _num(a.get("bias")), _saturation(t["saturation_point"])]))
    lines += ["", "## Mean measured count per requested level", "",
              "| class | tissue | level | region | n | mean | sd |", "|---" * 7 + "|"]
    for e in report["classes"]:
        for tissue, t in e["per_tissue"].items():
            for p in t.get("levels", []):
                region = "EXTRAPOLATION" if p["extrapolated"] else "in range"
                lines.append(f"| {e['class']} | {tissue} | {p['level']} | {region} | {p['n']} | {p['mean']:.2f} | "
                             f"{p['sd']:.2f} |")
    return lines


def tissue_collapse_lines(collapse: dict[str, Any] | None) -> list[str]:
    """The tissue-collapse section (a tissue classifier trained on real tiles, applied to the sweep's tiles)."""
    lines = ["## Tissue collapse", ""]
    if collapse is None:
        return lines + ["Not measured: pass `--data REAL_DATASET` to train a tissue classifier on the real tiles and "
                        "apply it to the generated ones.", ""]
    return lines


def format_markdown(report: dict[str, Any]) -> str:
    """The human-readable report; extrapolation rows carry the word in every table."""
    lines = ["# Count control", ""]
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    lines += [f"Model: {report.get('model', '')}. {report['n_tiles']} tiles, {report['n_extrapolated_tiles']} of "
              f"them in the extrapolation region. The trained range is per tissue: a class is swept from 0 to its "
              f"largest count among the training tiles of that tissue ({report['training_max_per_tissue']}), "
              f"then at 1.25x and 1.5x of that maximum (EXTRAPOLATION); a class that never occurs in a tissue's "
              f"training tiles is not swept there. Other classes held at the training median per tissue: "
              f"{report['held_at_median']}. Counting margin {report['count_margin']} px.", "",
              "## Per class (tissues pooled)", "",
              "| class | region | n | r | slope | intercept | MAE | BA bias | BA 95% limits | saturation point |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for e in report["classes"]:
        for region, label in (("in_range", "in range"), ("extrapolation", "EXTRAPOLATION")):
            a = e[region]
            cells = [e["class"], label, a["n"], _num(a.get("r"), ".3f"), _num(a.get("slope")),
                     _num(a.get("intercept")), _num(a.get("mae")), _num(a.get("bias")),
                     f"{_num(a.get('loa_low'))} .. {_num(a.get('loa_high'))}", _saturation(e["saturation_point"])]
            lines.append(_row(cells))
    lines += _per_tissue_lines(report)
    names = report["class_names"]
    lines += ["", "## Override", "",
              "Slope of each measured class (columns) against the requested count of the swept class (rows), "
              "in range, within tissue (one intercept per tissue). Ideal: 1 on the diagonal, 0 elsewhere; a large "
              "off-diagonal value means asking for one class produces another.", "",
              "| asked for \\ measured | " + " | ".join(names) + " |",
              "|---" * (len(names) + 1) + "|"]
    for name, row in zip(names, report["override"]["slopes"], strict=True):
        lines.append(f"| {name} | " + " | ".join(_num(v) for v in row) + " |")
    lines += ["", "Class shares at each tissue's training maximum of the swept class (requested -> measured):", "",
              "| asked for | tiles | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for s in report["override"]["at_training_max"]:
        if s["requested_shares"] is None:
            continue
        cells = [f"{q:.2f} -> {m:.2f}" for q, m in zip(s["requested_shares"], s["measured_shares"], strict=True)]
        lines.append(f"| {s['class']} | {s['n_tiles']} | " + " | ".join(cells) + " |")
    lines += ["", f"Saturation point: the lowest level from which the mean measured count rises by less than "
              f"{report['saturation_slope']} nuclei per requested nucleus on every later step (extrapolation "
              f"included; pooled: tissues averaged per level).", ""]
    lines += tissue_collapse_lines(report.get("tissue_collapse"))
    return "\n".join(lines)


def _class_axes(k: int):
    from histosmith.data.plots import plt

    fig, axes = plt.subplots(1, k, figsize=(3.4 * k, 3.3), squeeze=False)
    return fig, axes[0]


def plot_scatter(report: dict[str, Any], sweep: Sweep, measured: np.ndarray, path: Path) -> None:
    """Requested vs measured per class, identity line; extrapolated tiles in their own colour."""
    from histosmith.data.plots import save_figure

    fig, axes = _class_axes(len(report["class_names"]))
    rng = np.random.default_rng(0)
    for c, (ax, e) in enumerate(zip(axes, report["classes"], strict=True)):
        mine = sweep.swept_class == c
        q, m, extra = sweep.level[mine], measured[mine, c], sweep.extrapolated[mine]
        jitter = rng.uniform(-0.2, 0.2, (2, len(q)))
        for sel, colour, label in ((~extra, INSIDE_COLOUR, "in range"), (extra, EXTRA_COLOUR, "extrapolation")):
            ax.scatter(q[sel] + jitter[0, sel], m[sel] + jitter[1, sel], s=10, alpha=0.6, color=colour, label=label)
        top = max(q.max(initial=0), m.max(initial=0)) + 1
        ax.plot([0, top], [0, top], color="grey", lw=0.8, ls="--")
        ax.set_title(f"{e['class']}  r={_num(e['in_range'].get('r'))} (in range)", fontsize=9)
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
