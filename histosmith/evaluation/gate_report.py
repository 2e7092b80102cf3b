"""The gate's files: ``gate.json`` (every number), ``gate.md`` (a table per candidate), ``gate.png`` (each metric's
difference as a share of its tolerance), and the verdict recorded in the export's manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from histosmith.data.atomic import write_json_atomic, write_text_atomic
from histosmith.evaluation.gate import FLOORS, SPREAD_FACTOR, Configuration, GateResult


def _config(c: Configuration) -> dict[str, Any]:
    return {"engine": c.engine.name, "label": c.label, **c.sampling.record(), "guidance": c.guidance,
            "compile": c.compile}


def summary(result: GateResult, label: str) -> dict[str, Any]:
    """The verdict of one candidate in a few fields (what the manifest keeps)."""
    failed = result.failures(label)
    return {"passed": not failed, "n": result.n, "failed": [r["metric"] for r in failed],
            "reference": result.reference.label}


def to_json(result: GateResult, command: str) -> dict[str, Any]:
    return {
        "command": command,
        "n": result.n,
        "rule": f"|candidate - A| <= max({SPREAD_FACTOR:g} |B - A|, floor) for every metric; KID is a distance "
                "to A already",
        "floors": FLOORS,
        "reference": _config(result.reference),
        "candidates": [{**_config(c), **summary(result, c.label), "metrics": result.rows[c.label],
                        "same_noise": result.diagnostics[c.label]} for c in result.candidates],
    }


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "pass" if v else "**FAIL**"
    return f"{v:.3f}" if abs(v) >= 0.001 or v == 0 else f"{v:.2e}"


def to_markdown(result: GateResult, command: str) -> str:
    lines = [f"# Quality gate: {result.n} tiles per run", "", f"`{command}`", "",
             f"Reference A and B: `{result.reference.label}` (noise seeds s and s+1). A candidate passes when every "
             f"metric's difference from A is within max({SPREAD_FACTOR:g} × |B − A|, floor).", ""]
    for c in result.candidates:
        verdict = "passes" if result.passed(c.label) else "fails"
        lines += [f"## `{c.label}` {verdict}", "",
                  "| metric | A | B | candidate | difference | tolerance | |", "|---|---|---|---|---|---|---|"]
        for r in result.rows[c.label]:
            lines.append(f"| {r['metric']} | {_fmt(r['reference'])} | {_fmt(r['reference_b'])} | "
                         f"{_fmt(r['candidate'])} | {_fmt(r['difference'])} | {_fmt(r['tolerance'])} | "
                         f"{_fmt(r['passed'])} |")
        d = result.diagnostics[c.label]
        lines += ["", f"Same noise as A (diagnostic, not gated): same instance count on "
                      f"{d['same_instance_count']:.1%} of tiles, class-pixel agreement "
                      f"{d['class_pixel_agreement']:.1%}.", ""]
    return "\n".join(lines) + "\n"


def plot(result: GateResult, path: Path) -> None:
    """Difference / tolerance per metric and candidate (a bar beyond 1 is a failure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [r["metric"] for r in next(iter(result.rows.values()))]
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(metrics)), 4.5))
    width = 0.8 / max(1, len(result.candidates))
    for k, c in enumerate(result.candidates):
        share = [(r["difference"] / r["tolerance"]) if r["tolerance"] else 0.0 for r in result.rows[c.label]]
        ax.bar([i + k * width for i in range(len(metrics))], [min(s, 3.0) for s in share], width, label=c.label)
    ax.axhline(1.0, color="k", lw=1, ls="--")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(metrics))], metrics, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("|difference| / tolerance (capped at 3)")
    ax.set_title(f"Quality gate, {result.n} tiles per run (above the line: fails)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_gate(out: Path, result: GateResult, command: str, stem: str = "gate") -> list[Path]:
    """``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    write_json_atomic(paths[0], to_json(result, command))
    write_text_atomic(paths[1], to_markdown(result, command))
    plot(result, paths[2])
    return paths


def record_verdicts(result: GateResult, command: str) -> None:
    """Keep each candidate's verdict in the manifest of the export that holds its engine (``verification.gate``,
    by label): a distilled student's verdict goes with the student, though the teacher's export is the reference."""
    from histosmith.data.lock import exclusive
    from histosmith.runtime.manifest import MANIFEST_FILE

    by_export: dict[Path, list[Configuration]] = {}
    for c in result.candidates:
        if (c.engine.parent / MANIFEST_FILE).is_file():
            by_export.setdefault(c.engine.parent.resolve(), []).append(c)
    for export, candidates in by_export.items():
        with exclusive(export, "export"):
            record_verdicts_in(export, result, candidates, command)


def record_verdicts_in(export: Path, result: GateResult, candidates: list[Configuration], command: str) -> None:
    """:func:`record_verdicts` for ``candidates`` into ``export``'s manifest; the caller holds its lock."""
    from histosmith.runtime.manifest import Manifest, record_verification

    manifest = Manifest.load(export)
    gates = dict(manifest.verification.get("gate", {}))
    for c in candidates:
        gates[c.label] = summary(result, c.label) | {"command": command}
    record_verification(manifest, "gate", gates).save(export)
