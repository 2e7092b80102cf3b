"""``control.md``: the count-control report in words and tables (from ``control.json``'s content)."""

from __future__ import annotations

from typing import Any

from histosmith.runtime.postprocess import MarkerDepth


def num(v: Any, fmt: str = ".2f") -> str:
    """A number for a table: 'n/a' for None, never '-0.00'."""
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
                                   num(a.get("r"), ".3f"), num(a.get("slope")), num(a.get("mae")),
                                   num(a.get("bias")), _saturation(t["saturation_point"])]))
    lines += ["", "## Mean measured count per requested level", "",
              "| class | tissue | level | region | n | mean | sd |", "|---" * 7 + "|"]
    for e in report["classes"]:
        for tissue, t in e["per_tissue"].items():
            for p in t.get("levels", []):
                region = "EXTRAPOLATION" if p["extrapolated"] else "in range"
                lines.append(f"| {e['class']} | {tissue} | {p['level']} | {region} | {p['n']} | {p['mean']:.2f} | "
                             f"{p['sd']:.2f} |")
    return lines


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def tissue_collapse_lines(collapse: dict[str, Any] | None, class_names: list[str]) -> list[str]:
    """The tissue-collapse section (a tissue classifier trained on real tiles, applied to the sweep's tiles)."""
    lines = ["## Tissue collapse", ""]
    if collapse is None:
        return lines + ["Not measured: pass `--data REAL_DATASET` to train a tissue classifier on the real tiles and "
                        "apply it to the generated ones.", ""]
    clf = collapse["classifier"]
    val, names = clf["val"], list(collapse["generated"]["per_tissue"])
    lines += [f"A small CNN trained on the `train` tiles of {collapse['data']} "
              f"({'loaded from the cache' if clf['cached'] else 'trained for this report'}; recipe {clf['recipe']}) "
              f"predicts each generated tile's tissue. Its own accuracy on the real `val` tiles is "
              f"{_pct(val['accuracy'])} (n = {val['n']}; "
              + ", ".join(f"{t} {_pct(a)}" for t, a in val["per_tissue"].items())
              + f"; train {_pct(clf['train_accuracy'])}): a generated tile counts as its requested tissue only as far "
              "as that accuracy allows. Generated tiles as written (after QC when `--qc` was given).", ""]
    matched = collapse.get("count_matched_real")
    if matched:
        lines += [f"Real reference: for every generated tile, the classifier's accuracy on the {matched['k']} real "
                  f"tiles ({matched['tiles']}) of the requested tissue whose nucleus counts are nearest to the "
                  "request, averaged like the generated tiles. A request that real tiles of its tissue rarely hold "
                  "can fool the classifier on real tiles too; collapse is the generated accuracy falling below this "
                  "reference (the classifier has seen the real train tiles, so the reference leans in the real "
                  "tiles' favour).",
                  ""]
    head = ["requested tissue", "tiles", "accuracy (all tiles)", "tiles in range", "accuracy (in range)"]
    if matched:
        head += ["count-matched real (all)", "count-matched real (in range)"]
    lines += [_row(head), "|---" * len(head) + "|"]
    gen, inside = collapse["generated"], collapse["generated_in_range"]
    for t in [*names, None]:  # None: all tissues

        def acc(entry: dict[str, Any], t: str | None = t) -> str:
            return _pct(entry["accuracy"] if t is None else entry["per_tissue"][t])

        cells = [t or "all", gen["n"] if t is None else gen["n_per_tissue"][t], acc(gen),
                 inside["n"] if t is None else inside["n_per_tissue"][t], acc(inside)]
        if matched:
            cells += [acc(matched["all"]), acc(matched["in_range"])]
        lines.append(_row(cells))
    lines += ["", "Requested (rows) vs predicted (columns) tissue, all tiles:", "",
              "| requested \\ predicted | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for t, row in zip(names, gen["confusion"], strict=True):
        lines.append(_row([t, *row]))
    return lines + [""] + _misread_lines(collapse["by_request"], class_names)


def _misread_lines(by_request: list[dict[str, Any]], class_names: list[str]) -> list[str]:
    """The requests whose tiles the classifier reads as another tissue."""
    missed = [r for r in by_request if r["accuracy"] < 1.0]
    lines = ["Where the misread tiles lie: every request (tissue, swept class, level) with a tile the classifier reads "
             "as another tissue, beside the count-matched real accuracy of the same requests"
             + (" — none." if not missed else ":"), ""]
    if missed:
        lines += [_row(["requested tissue", "swept class", "level", "region", "tiles", "accuracy",
                        "count-matched real"]), "|---" * 7 + "|"]
        lines += [_row([r["tissue"], class_names[r["swept_class"]], r["level"],
                        "EXTRAPOLATION" if r["extrapolated"] else "in range", r["n"], _pct(r["accuracy"]),
                        _pct(r["count_matched_real"])]) for r in missed]
        lines.append("")
    return lines


def qc_lines(qc: dict[str, Any] | None) -> list[str]:
    """Before QC (attempt 0 of every tile: the sweep without QC) against after QC, and the acceptance rate."""
    if qc is None:
        return []
    o = qc["overall"]
    lines = ["## QC regeneration", "",
             f"`--qc {qc['tolerance']} --qc-attempts {qc['attempts']}`: a tile passes when {qc['rule']}; failing "
             f"tiles are sampled again with attempt seeds (seed, tile, attempt). Acceptance (tiles within tolerance "
             f"after at most {qc['attempts']} samples): {_pct(o['acceptance'])} ({o['passed']} of {o['tiles']}); "
             f"in range {_pct(qc['in_range']['acceptance'])}, EXTRAPOLATION "
             f"{_pct(qc['extrapolation']['acceptance'])}. Mean samples per tile {num(o['mean_attempts'])}. The "
             "tables above are before QC (each tile's first sample, the same as a run without `--qc`).", "",
             "| class | region | n | r before | r after | slope before | slope after | MAE before | MAE after | "
             "acceptance | mean samples |", "|---" * 11 + "|"]
    for e in qc["classes"]:
        for region, label in (("in_range", "in range"), ("extrapolation", "EXTRAPOLATION")):
            b, a, q = e[region]["before"], e[region]["after"], e[region]["qc"]
            lines.append(_row([e["class"], label, b["n"], num(b.get("r"), ".3f"), num(a.get("r"), ".3f"),
                               num(b.get("slope")), num(a.get("slope")), num(b.get("mae")), num(a.get("mae")),
                               _pct(q["acceptance"]), num(q["mean_attempts"])]))
    return lines + [""]


def _marker_depth(report: dict[str, Any]) -> str:
    h = report.get("sampling", {}).get("marker_depth")  # absent from reports written before it was recorded
    return "" if h is None else f"; watershed marker depth {MarkerDepth.parse(str(h))}"


def format_markdown(report: dict[str, Any]) -> str:
    """The human-readable report; extrapolation rows carry the word in every table."""
    lines = ["# Count control", ""]
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    names = report["class_names"]
    lines += [f"Model: {report.get('model', '')}. {report['n_tiles']} tiles, {report['n_extrapolated_tiles']} of "
              f"them in the extrapolation region. The trained range is per tissue: a class is swept from 0 to its "
              f"largest count among the training tiles of that tissue, then at 1.25x and 1.5x of that maximum "
              f"(EXTRAPOLATION); a class that never occurs in a tissue's training tiles is not swept there. While "
              f"one class is swept the others are held at the training median of the tissue. Counting margin "
              f"{report['count_margin']} px{_marker_depth(report)}.", "",
              "| tissue | " + " | ".join(f"{c}: trained range (median)" for c in names) + " |",
              "|---" * (len(names) + 1) + "|"]
    for tissue, maxima in report["training_max_per_tissue"].items():
        medians = report["held_at_median"][tissue]
        lines.append(_row([tissue, *(f"0..{m} ({h})" if m else f"none ({h})" for m, h in zip(maxima, medians,
                                                                                          strict=True))]))
    lines += ["", "## Per class (tissues pooled)", "",
              "| class | region | n | r | slope | intercept | MAE | BA bias | BA 95% limits | saturation point |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for e in report["classes"]:
        for region, label in (("in_range", "in range"), ("extrapolation", "EXTRAPOLATION")):
            a = e[region]
            cells = [e["class"], label, a["n"], num(a.get("r"), ".3f"), num(a.get("slope")),
                     num(a.get("intercept")), num(a.get("mae")), num(a.get("bias")),
                     f"{num(a.get('loa_low'))} .. {num(a.get('loa_high'))}", _saturation(e["saturation_point"])]
            lines.append(_row(cells))
    lines += _per_tissue_lines(report)
    lines += ["", "## Override", "",
              "Slope of each measured class (columns) against the requested count of the swept class (rows), "
              "in range, within tissue (one intercept per tissue). Ideal: 1 on the diagonal, 0 elsewhere; a large "
              "off-diagonal value means asking for one class produces another.", "",
              "| asked for \\ measured | " + " | ".join(names) + " |",
              "|---" * (len(names) + 1) + "|"]
    for name, row in zip(names, report["override"]["slopes"], strict=True):
        lines.append(f"| {name} | " + " | ".join(num(v) for v in row) + " |")
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
    lines += qc_lines(report.get("qc"))
    lines += tissue_collapse_lines(report.get("tissue_collapse"), list(report["class_names"]))
    return "\n".join(lines)
