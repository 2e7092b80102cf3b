"""Which classifier-free guidance scale makes the generator follow the requested counts best?

``hs-eval guidance`` runs the same count-control sweep (:mod:`histosmith.evaluation.control`, same seeds,
same tiles per level) once per scale, each into ``OUT/g<scale>``, and compares the in-range agreement per
class: Pearson r, slope and MAE. The recommended scale is the one with the highest *worst-class* r (a
generator is only as controllable as its least controllable class); ties go to the lower mean MAE.
Writes ``guidance.json``, ``guidance.md`` and ``guidance.png`` (r and MAE against the scale, per class).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from histosmith.data.atomic import write_json_atomic, write_text_atomic
from histosmith.errors import HistoSmithError
from histosmith.evaluation.control import SweepDesign
from histosmith.evaluation.control_report import check_control_out, run_control
from histosmith.runtime.engine import GeneratorSession
from histosmith.runtime.generate import GenerationPlan
from histosmith.runtime.postprocess import MarkerDepth, marker_depth_label

log = logging.getLogger(__name__)


def parse_scales(text: str) -> list[float]:
    """``"1.5,3,5"`` -> [1.5, 3.0, 5.0]; at least two distinct non-negative scales."""
    try:
        scales = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise HistoSmithError(f"--scales {text!r}: comma-separated numbers, e.g. 1.5,3,5") from None
    if len(set(scales)) < 2 or len(set(scales)) != len(scales):
        raise HistoSmithError(f"--scales {text!r}: at least two distinct scales")
    if any(s < 0 or not np.isfinite(s) for s in scales):
        raise HistoSmithError(f"--scales {text!r}: scales must be finite and >= 0")
    return sorted(scales)


def scale_dir(out: Path, scale: float) -> Path:
    return out / f"g{scale:g}"


def summarise(scale: float, report: dict[str, Any]) -> dict[str, Any]:
    """One row of the comparison: in-range r / slope / MAE per class and the worst-class r."""
    classes = {e["class"]: {k: e["in_range"].get(k) for k in ("r", "slope", "mae")} for e in report["classes"]}
    rs = [v["r"] for v in classes.values()]
    worst = min((r for r in rs if r is not None), default=None) if all(r is not None for r in rs) else None
    maes = [v["mae"] for v in classes.values() if v["mae"] is not None]
    return {"guidance": scale, "classes": classes, "worst_r": worst,
            "mean_mae": float(np.mean(maes)) if maes else None}


def recommend(rows: list[dict[str, Any]]) -> float:
    """The scale with the highest worst-class r (a class with no r counts as -inf); ties: lower mean MAE."""
    def key(row: dict[str, Any]) -> tuple[float, float]:
        worst = row["worst_r"] if row["worst_r"] is not None else -np.inf
        mae = row["mean_mae"] if row["mean_mae"] is not None else np.inf
        return (round(worst, 3), -mae)
    return max(rows, key=key)["guidance"]


def format_markdown(result: dict[str, Any]) -> str:
    names = result["class_names"]
    depth = MarkerDepth.parse(str(result.get("marker_depth", 0.4)))  # a number, or h,class=h,...
    lines = ["# Guidance scale vs count control", "",
             f"Command: `{result['command']}`", "",
             f"The same sweep at every scale ({result['design']['levels']} levels per class within each tissue's "
             f"trained range, {result['design']['tiles_per_level']} tiles per level, {result['steps']} DDIM "
             f"steps, fixed seeds, watershed marker depth {depth}); in-range tiles only. "
             "Recommended: the highest worst-class r.", "",
             "| guidance | " + " | ".join(f"r {n}" for n in names) + " | worst r | "
             + " | ".join(f"MAE {n}" for n in names) + " |",
             "|---" * (2 * len(names) + 2) + "|"]

    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    for row in result["scales"]:
        mark = " **(recommended)**" if row["guidance"] == result["recommended"] else ""
        lines.append(f"| {row['guidance']:g}{mark} | "
                     + " | ".join(fmt(row["classes"][n]["r"]) for n in names)
                     + f" | {fmt(row['worst_r'])} | "
                     + " | ".join(fmt(row["classes"][n]["mae"]) for n in names) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [row["guidance"] for row in result["scales"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for name in result["class_names"]:
        for ax, key in zip(axes, ("r", "mae"), strict=True):
            values = [row["classes"][name][key] for row in result["scales"]]
            ax.plot(scales, [np.nan if v is None else v for v in values], "o-", label=name)
    for ax, label in zip(axes, ("Pearson r (in range)", "MAE, nuclei (in range)"), strict=True):
        ax.axvline(result["recommended"], color="grey", ls=":", lw=1)
        ax.set_xlabel("guidance scale")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.suptitle("count control against the guidance scale")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare_guidance(session: GeneratorSession, scales: list[float], plan: GenerationPlan, design: SweepDesign,
                     out: Path, command: str = "", show_progress: bool = True) -> dict[str, Any]:
    """Run the control sweep at every scale (an earlier scale's finished sweep in ``out`` is resumed) and
    write the comparison; returns guidance.json's content."""
    rows = []
    names: list[str] = []
    for scale in scales:
        where = scale_dir(out, scale)
        log.info("guidance %g: control sweep into %s", scale, where)
        resume = check_control_out(where)
        report = run_control(session, replace(plan, guidance=scale), design, where, command=command,
                             show_progress=show_progress, resume=resume)
        names = report["class_names"]
        rows.append(summarise(scale, report))
    result = {"command": command, "model": session.model_id, "class_names": names, "steps": plan.steps,
              "marker_depth": marker_depth_label(plan.postprocess, session.info.spec.class_names),
              "design": {"levels": design.levels, "tiles_per_level": design.tiles_per_level},
              "criterion": "highest worst-class in-range r; ties: lower mean MAE",
              "scales": rows, "recommended": recommend(rows)}
    write_json_atomic(out / "guidance.json", result)
    write_text_atomic(out / "guidance.md", format_markdown(result))
    plot(result, out / "guidance.png")
    return result
