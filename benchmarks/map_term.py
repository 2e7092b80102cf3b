"""Does the decoded-map term fix nucleus sizes? Fine-tunes of one generator with and without it, measured.

Each arm continues the given ``hs-train ldm`` run for ``--steps`` more steps (its own learning-rate schedule
extended to the new horizon) with one setting of the decoded-map term (``LDMTrainConfig.map_weight``,
``map_classes``, ``map_max_t``); arm "continued, no term" is the control for the extra steps themselves. Every
arm, and the run as it was, then draws the same requests (``hs-sample --from-dataset --seed 0 --guidance G``)
and is compared with the real tiles by ``hs-eval realism``'s code: median nucleus area generated / real per
class and in every tissue, the share of nuclei above the real 99th percentile, and the counts against the
requests (MAE, r). Finished arms are reused from ``--work`` (a rerun only evaluates).

    python benchmarks/map_term.py --run runs/reference/ldm --data runs/reference/data \
        --vqvae runs/reference/vqvae --work runs/map_term --out benchmarks/results/map_term_reference
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from histosmith.data.atomic import write_json_atomic, write_text_atomic
from histosmith.data.reader import Dataset
from histosmith.evaluation.realism import compare
from histosmith.training.checkpoint import CHECKPOINT_FILE, load_checkpoint
from histosmith.training.ldm import train_ldm
from histosmith.training.trainer import RunOptions

ARMS = (  # (label, training-config changes; None: the run as it was)
    ("as trained", None),
    ("continued, no term", {"map_weight": 0.0}),
    ("distance L1", {"map_weight": 2.0, "map_classes": "none", "map_max_t": 500}),
    ("distance L1 + CE", {"map_weight": 2.0, "map_classes": "ce", "map_max_t": 500}),
    ("distance L1 + Tversky", {"map_weight": 2.0, "map_classes": "tversky", "map_max_t": 500}),
    ("autoencoder's mix", {"map_weight": 2.0, "map_classes": "autoencoder", "map_max_t": 500}),
    ("autoencoder's mix, t < 250", {"map_weight": 2.0, "map_classes": "autoencoder", "map_max_t": 250}),
    ("autoencoder's mix, weight 1", {"map_weight": 1.0, "map_classes": "autoencoder", "map_max_t": 500}),
    ("autoencoder's mix, weight 0.5", {"map_weight": 0.5, "map_classes": "autoencoder", "map_max_t": 500}),
)


def fine_tune(run: Path, data: Path, vqvae: Path, changes: dict, steps: int, work: Path) -> Path:
    """Continue a copy of ``run`` with ``changes`` for ``steps`` steps; reuse a finished copy."""
    source = load_checkpoint(run, "ldm")
    target = int(source["step"]) + steps
    if (work / CHECKPOINT_FILE).exists():
        done = load_checkpoint(work, "ldm")
        if int(done["step"]) == target and all(done["train_config"].get(k) == v for k, v in changes.items()):
            return work
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for name in ("latents.npz", "config.json", "log.csv"):  # the latent cache is keyed by autoencoder + data
        if (run / name).exists():
            shutil.copy2(run / name, work / name)
    source["train_config"] |= changes
    torch.save(source, work / CHECKPOINT_FILE)
    train_ldm(data, vqvae, work, opts=RunOptions(resume=True, max_steps=target, show_progress=False))
    return work


def measure(run: Path, real: Dataset, n: int, guidance: float, work: Path) -> dict:
    samples = work / "samples"
    shutil.rmtree(samples, ignore_errors=True)
    cmd = [str(Path(sys.executable).parent / "hs-sample"), "--checkpoint", str(run), "--n", str(n), "--from-dataset",
           "--seed", "0", "--guidance", str(guidance), "--out", str(samples)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    report, _ = compare(real, Dataset.open(samples))
    control = json.loads((samples / "control.json").read_text())
    return {"median_area_ratio": {e["class"]: e["median_area_ratio"] for e in report["classes"]},
            "share_above_real_p99_area": {e["class"]: e["share_above_real_p99_area"] for e in report["classes"]},
            "by_tissue": [{k: r[k] for k in ("tissue", "class", "median_area_ratio")} | {
                "generated_n": r["generated"]["n"]} for r in report["area_by_tissue"]],
            "count_mae": dict(zip(control["class_names"], control["mae"], strict=True)),
            "count_r": dict(zip(control["class_names"], control["pearson_r"], strict=True)),
            "requested_mean": control["requested_mean"], "measured_mean": control["measured_mean"]}


def markdown(result: dict) -> str:
    names = result["class_names"]
    tissues = sorted({r["tissue"] for a in result["arms"] for r in a["by_tissue"]})
    head = ["arm", *[f"area {c}" for c in names], *[f"> p99 {c}" for c in names],
            *[f"area {c} in {t}" for t in tissues for c in names], *[f"MAE {c}" for c in names],
            *[f"r {c}" for c in names], *[f"mean {c} measured / asked" for c in names]]
    lines = [f"`{result['command']}`", "",
             f"{result['n']} tiles per arm (`hs-sample --from-dataset --seed 0 --guidance {result['guidance']}`) "
             f"against {result['real']}; fine-tunes of {result['steps']} steps from `{result['run']}` (step "
             f"{result['start_step']}). Area: median nucleus area generated / real (bar: within ±15 %); > p99: "
             "share of generated nuclei above the real 99th percentile of their class (bar: < 2 %); MAE, r and "
             "means: counts against the requests.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in result["arms"]:
        tissue = {(r["tissue"], r["class"]): r["median_area_ratio"] for r in a["by_tissue"]}
        cells = [a["label"], *[_f(a["median_area_ratio"][c]) for c in names],
                 *[f"{100 * a['share_above_real_p99_area'][c]:.1f} %" for c in names],
                 *[_f(tissue.get((t, c))) for t in tissues for c in names],
                 *[_f(a["count_mae"][c]) for c in names], *[_f(a["count_r"][c], 3) for c in names],
                 *[f"{m:.2f} / {q:.2f}" for m, q in zip(a["measured_mean"], a["requested_mean"], strict=True)]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _f(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def plot(result: dict, path: Path) -> None:
    from histosmith.data.plots import plt, save_figure

    names = result["class_names"]
    panels = (("median_area_ratio", "median area generated / real (band: ±15 %)", (0.85, 1.15)),
              ("share_above_real_p99_area", "share above the real p99 area (bar: < 2 %)", (0.0, 0.02)),
              ("count_mae", "count MAE against the request", None))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.4))
    width = 0.8 / len(result["arms"])
    for ax, (key, title, band) in zip(axes, panels, strict=True):
        for j, a in enumerate(result["arms"]):
            ax.bar([i + j * width for i in range(len(names))], [a[key][c] or 0 for c in names], width,
                   label=a["label"])
        if band:
            ax.axhspan(*band, color="0.9", zorder=0)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names)
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    save_figure(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True, help="The hs-train ldm run to fine-tune.")
    p.add_argument("--data", type=Path, required=True, help="The real dataset it was trained on.")
    p.add_argument("--vqvae", type=Path, required=True, help="Its hs-train vqvae run.")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--work", type=Path, required=True, help="Where the fine-tuned runs and samples are kept.")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    real = Dataset.open(args.data)
    arms = []
    for label, changes in tqdm(ARMS, desc="arms"):
        work = args.work / re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
        run = args.run if changes is None else fine_tune(args.run, args.data, args.vqvae, changes, args.steps,
                                                         work / "ldm")
        arms.append({"label": label, "changes": changes} | measure(run, real, args.n, args.guidance, work))
    result = {"command": shlex.join(["python", "benchmarks/map_term.py", *sys.argv[1:]]),
              "run": str(args.run), "start_step": int(load_checkpoint(args.run, "ldm")["step"]),
              "real": str(args.data), "n": args.n, "steps": args.steps, "guidance": args.guidance,
              "class_names": list(real.meta.class_names), "arms": arms}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "map_term.json", result)
    write_text_atomic(args.out / "map_term.md", markdown(result))
    plot(result, args.out / "map_term.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
