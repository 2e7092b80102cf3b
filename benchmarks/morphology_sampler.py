"""Does the sampler decide nucleus size? Median area per class and tissue, generated / real, per sampler setting.

For each setting (guidance scale, DDIM eta, DDIM steps) the same requests are generated (``hs-generate
--from-dataset --seed 0``, the draw of ``make reference``'s realism report) and compared with the real tiles by
``hs-eval realism``'s code (no KID). A size miss that stays put across settings is the U-Net's, not the
sampler's; the autoencoder's share is measured separately by ``hs-eval vqvae`` (``median_area_ratio``).

    python benchmarks/morphology_sampler.py --engine runs/reference/export/unet.onnx \
        --data runs/reference/data --out benchmarks/results/morphology_sampler_reference
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from histosmith.data.atomic import write_json_atomic, write_text_atomic
from histosmith.data.reader import Dataset
from histosmith.evaluation.realism import compare

SETTINGS = (  # (label, hs-generate options)
    ("guidance 1.5", ["--guidance", "1.5"]),
    ("guidance 3 (reference)", ["--guidance", "3"]),
    ("guidance 5", ["--guidance", "5"]),
    ("guidance 3, eta 1", ["--guidance", "3", "--eta", "1"]),
    ("guidance 3, 100 steps", ["--guidance", "3", "--steps", "100"]),
)


def measure(engine: Path, real: Dataset, n: int, threads: int, options: list[str], work: Path) -> dict:
    out = work / "samples"
    cmd = [str(Path(sys.executable).parent / "hs-generate"), "--engine", str(engine), "--n", str(n),
           "--from-dataset", "--seed", "0", "--threads", str(threads), "--out", str(out), *options]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    report, _ = compare(real, Dataset.open(out))
    return {"overall": {e["class"]: e["median_area_ratio"] for e in report["classes"]},
            "by_tissue": [{k: r[k] for k in ("tissue", "class", "median_area_ratio")} | {
                "real_median": r["real"]["median"], "generated_median": r["generated"]["median"],
                "generated_n": r["generated"]["n"]} for r in report["area_by_tissue"]]}


def markdown(result: dict) -> str:
    names = result["class_names"]
    tissues = sorted({r["tissue"] for s in result["settings"] for r in s["by_tissue"]})
    head = ["setting", *[f"{c} (all)" for c in names], *[f"{c} in {t}" for t in tissues for c in names]]
    lines = [f"`{result['command']}`", "",
             f"{result['n']} generated tiles per setting (`--from-dataset --seed 0`) against {result['real']}; "
             "median nucleus area generated / real.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in result["settings"]:
        tissue = {(r["tissue"], r["class"]): r for r in s["by_tissue"]}
        cells = [s["label"], *[_ratio(s["overall"][c]) for c in names]]
        cells += [_ratio(tissue[t, c]["median_area_ratio"]) for t in tissues for c in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ratio(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def plot(result: dict, path: Path) -> None:
    from histosmith.data.plots import plt, save_figure

    names = result["class_names"]
    tissues = sorted({r["tissue"] for s in result["settings"] for r in s["by_tissue"]})
    fig, axes = plt.subplots(1, len(tissues), figsize=(5 * len(tissues), 3.4), squeeze=False)
    width = 0.8 / len(result["settings"])
    for ax, t in zip(axes[0], tissues, strict=True):
        for j, s in enumerate(result["settings"]):
            ratio = {r["class"]: r["median_area_ratio"] for r in s["by_tissue"] if r["tissue"] == t}
            ax.bar([i + j * width for i in range(len(names))], [ratio[c] or 0 for c in names], width,
                   label=s["label"])
        ax.axhspan(0.85, 1.15, color="0.9", zorder=0)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names)
        ax.set_title(f"{t}: median area generated / real (band: ±15 %)", fontsize=9)
    axes[0][0].legend(fontsize=7)
    save_figure(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--engine", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="The real dataset the model was trained on.")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    real = Dataset.open(args.data)
    settings = []
    for label, options in tqdm(SETTINGS, desc="settings"):
        with tempfile.TemporaryDirectory() as tmp:
            settings.append({"label": label, "options": options} |
                            measure(args.engine, real, args.n, args.threads, options, Path(tmp)))
    result = {"command": shlex.join(["python", "benchmarks/morphology_sampler.py", *sys.argv[1:]]),
              "engine": str(args.engine), "real": str(args.data), "n": args.n,
              "class_names": list(real.meta.class_names), "settings": settings}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "morphology_sampler.json", result)
    write_text_atomic(args.out / "morphology_sampler.md", markdown(result))
    plot(result, args.out / "morphology_sampler.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
