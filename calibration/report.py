"""The calibration report: JSON (everything), Markdown (the tables a person reads), PNG (the sensitivity sweep)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from histosmith.data.atomic import write_json_atomic, write_text_atomic


def _gate_lines(gate: dict[str, Any] | None) -> list[str]:
    if gate is None:
        return ["## Quality gate: not run (recorded with --force)", ""]
    lines = [f"## Quality gate: {gate['n']} tiles per run against `{gate['reference']}`", "",
             f"Every metric of `hs-eval gate` (counts, morphology, KID, tissue, label consistency); the tables are in "
             f"[{gate['report']}]({gate['report']}).", "",
             "| configuration | verdict | failed metrics |", "|---|---|---|"]
    lines += [f"| `{label}` | {'passes' if v['passed'] else '**fails**'} | {', '.join(v['failed']) or '-'} |"
              for label, v in gate["verdicts"].items()]
    return [*lines, ""]


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# INT8 calibration of {report['export']}",
        "",
        f"Method {report['method']}, {report['samples']} trajectories x {report['steps']} DDIM steps = "
        f"{report['calibration_inputs']} recorded U-Net inputs (conditions from {report['data']}).",
        "",
        *_gate_lines(report["gate"]),
        "## Kept in float", "", "| part | reason |", "|---|---|",
    ]
    lines += [f"| {row['part']} | {row['reason']} |" for row in report["kept_float"]]
    lines += ["", "## Sensitivity: one block quantised at a time, everything else float", "",
              "| block | Conv/MatMul/Gemm nodes | rel. error of the noise prediction | worst step | kept float |",
              "|---|---|---|---|---|"]
    lines += [f"| {e['block']} | {e['nodes']} | {e['rel_error']:.4f} | {e['worst_step_error']:.4f} | "
              f"{e['kept_float'] or '-'} |" for e in report["sensitivity"]]
    lines += ["", "## Recipes", ""]
    lines += [f"* {t}: {', '.join(f'{k} {v}' for k, v in r.items())}" for t, r in report["recipes"].items()]
    lines += [f"* {name}: {', '.join(f'{k} {v}' for k, v in s.items())}" for name, s in report["qdq"].items()]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    from histosmith.data.plots import plt, save_figure

    rows = report["sensitivity"]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(rows)), 3.5))
    colours = ["#999999" if r["kept_float"] else "#1f77b4" for r in rows]
    ax.bar(range(len(rows)), [r["rel_error"] for r in rows], color=colours)
    ax.set_xticks(range(len(rows)), [r["block"] for r in rows], rotation=70, fontsize=7)
    ax.set_ylabel("rel. error of noise prediction")
    ax.set_title("INT8 sensitivity, one block at a time (grey: kept float)")
    save_figure(fig, path)


def write_report(directory: Path, stem: str, report: dict[str, Any]) -> None:
    write_json_atomic(directory / f"{stem}.json", report)
    write_text_atomic(directory / f"{stem}.md", markdown(report))
    plot(report, directory / f"{stem}.png")
