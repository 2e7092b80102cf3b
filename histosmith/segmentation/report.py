"""The downstream report: ``downstream.json``, ``downstream.md`` (tables) and ``downstream.png`` (figures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from histosmith.data.atomic import write_text_atomic

SUMMARY = (("pq", "PQ"), ("mpq_plus", "mPQ+"), ("r2", "R²"), ("aji", "AJI"))


def _label(arm: str, fraction: float, fractions: list[float]) -> str:
    return arm if arm == "synthetic" or len(fractions) == 1 else f"{arm} ({fraction:g} of real)"


def _metric_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [(k, name) for k, name in SUMMARY]
    rows += [(f"pq:{c}", f"PQ {c}") for c in report["class_names"]]
    rows += [(f"r2:{c}", f"R² {c}") for c in report["class_names"]]
    return rows


def equivalent_real_fraction(report: dict[str, Any], metric: str = "mpq_plus") -> list[tuple[float, float | None]]:
    """For each fraction f: the real-only fraction whose (interpolated) score equals real+synthetic at f.

    None where real+synthetic is better than real-only at every measured fraction (beyond the curve) or worse
    than at the smallest one.
    """
    groups = {(g["arm"], g["real_fraction"]): g[metric]["value"] for g in report["groups"]}
    fractions = sorted(report["real_fractions"])
    real = np.array([groups[("real", f)] for f in fractions])
    out: list[tuple[float, float | None]] = []
    for f in fractions:
        if ("real+synthetic", f) not in groups:
            continue
        target = groups[("real+synthetic", f)]
        order = np.argsort(real)
        if len(fractions) < 2 or target < real.min() or target > real.max():
            out.append((f, None))
        else:
            out.append((f, float(np.interp(target, real[order], np.array(fractions)[order]))))
    return out


def markdown(report: dict[str, Any]) -> str:
    fractions = report["real_fractions"]
    runs_by_group: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in report["runs"]:
        runs_by_group.setdefault((r["arm"], r["real_fraction"]), []).append(r)
    groups = list(runs_by_group)
    rows = _metric_rows(report)
    lines = [
        "# Downstream: does the synthetic data help?", "",
        f"Segmenter `{report['config']}` trained {report['steps']} optimiser steps "
        f"(batch {report['batch_size']}) per run,"
        f" seeds {', '.join(map(str, report['seeds']))}; scored on the {report['eval']['n_tiles']} held-out real tiles"
        f" (split `{report['eval']['split']}` of `{report['eval']['dataset']}`) only. Training tiles: "
        f"{report['train_tiles']['real']} real (split `train`), {report['train_tiles']['synthetic']} synthetic."
        + _mixing(report), "",
    ]
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    lines += ["## Per arm: mean ± sd over seeds", "",
              "| metric | " + " | ".join(_label(a, f, fractions) for a, f in groups) + " |",
              "|---|" + "---|" * len(groups)]
    for key, name in rows:
        cells = []
        for g in groups:
            values = np.array([r[key] for r in runs_by_group[g]])
            cells.append(f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Paired difference against real-only (bootstrap 95% interval over seeds and held-out tiles)", ""]
    diffs = report["differences"]
    header = [f"{_label(d['arm'], d['real_fraction'], fractions)} − real" for d in diffs]
    lines += ["| metric | " + " | ".join(header) + " |", "|---|" + "---|" * len(diffs)]
    for key, name in rows:
        cells = []
        for d in diffs:
            iv = d[key]
            mark = " *" if iv["low"] > 0 or iv["high"] < 0 else ""
            cells.append(f"{iv['value']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}]{mark}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "`*`: the interval excludes zero."]
    if len(fractions) > 1:
        lines += ["", "## How much real annotation is the synthetic data worth (mPQ+)", "",
                  "| real fraction with synthetic | real-only fraction with the same mPQ+ |", "|---|---|"]
        for f, eq in equivalent_real_fraction(report):
            lines.append(f"| {f:g} | {'outside the measured curve' if eq is None else f'{eq:.2f}'} |")
    for note in report.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    from histosmith.data.plots import plt, save_figure

    fractions = report["real_fractions"]
    top = max(fractions)
    classes = report["class_names"]
    keys = [("mpq_plus", "mPQ+"), ("pq", "PQ")] + [(f"pq:{c}", c) for c in classes]
    groups = [g for g in report["groups"] if g["real_fraction"] in (top, 0.0)]
    curve = len(fractions) > 1
    fig, axes = plt.subplots(1, 2 if curve else 1, figsize=(11 if curve else 7, 3.8), squeeze=False)
    ax = axes[0][0]
    width = 0.8 / max(1, len(groups))
    x = np.arange(len(keys))
    for i, g in enumerate(groups):
        vals = np.array([g[k]["value"] for k, _ in keys])
        low = np.array([g[k]["low"] for k, _ in keys])
        high = np.array([g[k]["high"] for k, _ in keys])
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, vals, width, label=g["arm"],
               yerr=np.stack([vals - low, high - vals]).clip(min=0), capsize=3)
    ax.set_xticks(x, [name for _, name in keys], fontsize=8)
    ax.set_ylabel("PQ on held-out real tiles")
    ax.set_title(f"per-class PQ, mean of {len(report['seeds'])} seeds (95% bootstrap)", fontsize=9)
    ax.legend(fontsize=8)
    if curve:
        ax = axes[0][1]
        n_real = report["train_tiles"]["real"]
        for arm in ("real", "real+synthetic"):
            pts = sorted((g["real_fraction"], g["mpq_plus"]) for g in report["groups"] if g["arm"] == arm)
            if not pts:
                continue
            f = np.array([p[0] for p in pts]) * n_real
            v = np.array([p[1]["value"] for p in pts])
            lo = np.array([p[1]["low"] for p in pts])
            hi = np.array([p[1]["high"] for p in pts])
            ax.plot(f, v, "o-", label=arm)
            ax.fill_between(f, lo, hi, alpha=0.2)
        fractions = report["real_fractions"]
        if max(fractions) / min(fractions) >= 10:  # fractions a decade or more apart: a log axis spaces them
            ax.set_xscale("log")
        ax.set_xlabel("real training tiles")
        ax.set_ylabel("mPQ+ on held-out real tiles")
        ax.set_title("learning curve with and without synthetic data", fontsize=9)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def _mixing(report: dict[str, Any]) -> str:
    """How the real+synthetic arm draws its batches, in words."""
    ratio, until = report.get("extra_ratio"), report.get("extra_until")
    share = f"{ratio:.0%} of each batch synthetic" if ratio is not None else "batches drawn uniformly over the union"
    if until is None:
        return f" real+synthetic: {share}."
    return (f" real+synthetic: {share} in the first {until:.0%} of the steps, real tiles alone after that"
            f" (step {round(until * report['steps'])} on).")


def write_report(report: dict[str, Any], directory: Path) -> None:
    """``downstream.json``, ``downstream.md`` and ``downstream.png`` in ``directory`` (each written atomically)."""
    write_text_atomic(directory / "downstream.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(directory / "downstream.md", markdown(report))
    plot(report, directory / "downstream.png")
