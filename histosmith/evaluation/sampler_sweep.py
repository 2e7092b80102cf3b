"""``hs-eval sampler``: the gate's metrics against steps for each sampler, and the choice of a default (the fewest
network calls that pass; ties go to the sampler named first)."""

from __future__ import annotations

from pathlib import Path

from histosmith.evaluation.gate import Configuration, GateResult
from histosmith.evaluation.gate_report import summary


def choose(result: GateResult) -> Configuration | None:
    """The passing candidate with the fewest steps (the first such in the sweep's order), or None."""
    passing = [c for c in result.candidates if result.passed(c.label)]
    return min(passing, key=lambda c: c.sampling.steps) if passing else None


def plot_sweep(result: GateResult, path: Path) -> Path:
    """Per gated metric family, the largest |difference| / tolerance over classes against steps, one line per
    sampler (below 1: within tolerance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = sorted({r["metric"].split("[")[0] for rows in result.rows.values() for r in rows})
    fig, axes = plt.subplots(2, (len(families) + 1) // 2, figsize=(3.2 * ((len(families) + 1) // 2), 6),
                             squeeze=False)
    by_sampler: dict[str, list[Configuration]] = {}
    for c in result.candidates:
        by_sampler.setdefault(c.sampling.sampler, []).append(c)
    for ax, family in zip(axes.flat, families, strict=False):
        for sampler, configs in by_sampler.items():
            xs, ys = [], []
            for c in sorted(configs, key=lambda c: c.sampling.steps):
                shares = [r["difference"] / r["tolerance"] for r in result.rows[c.label]
                          if r["metric"].split("[")[0] == family and r["tolerance"]]
                if shares:
                    xs.append(c.sampling.steps)
                    ys.append(min(max(shares), 5.0))
            ax.plot(xs, ys, marker="o", label=sampler)
        ax.axhline(1.0, color="k", lw=1, ls="--")
        ax.set_title(family, fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("network calls (steps)", fontsize=8)
    for ax in list(axes.flat)[len(families):]:
        ax.axis("off")
    axes.flat[0].set_ylabel("|difference| / tolerance (worst class)")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"Quality against steps ({result.n} tiles per run; reference {result.reference.label})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def record_default(export: Path, result: GateResult, best: Configuration, command: str,
                   marker_depth: str | None = None) -> None:
    """Make ``best`` the export's sampling default (manifest ``sampling``), with the gate summary behind it and
    the watershed setting it was judged with."""
    from histosmith.data.lock import exclusive
    from histosmith.runtime.manifest import Manifest
    from histosmith.runtime.schedule import SamplingDefaults

    with exclusive(export, "export"):
        manifest = Manifest.load(export)
        s = best.sampling
        defaults = SamplingDefaults(s.sampler, s.steps, best.guidance, s.corrector,  # type: ignore[arg-type]
                                    summary(result, best.label) | {"command": command}, marker_depth)
        manifest.with_sampling(defaults).save(export)
