"""``hs-eval downstream``: does the synthetic data help? Segmenters trained on real vs real + synthetic tiles.

Every arm trains the same segmenter for the same number of optimiser steps, once per seed, and is
scored on the held-out (``val``) tiles of the real dataset only. Arms:

* ``real``            the ``train`` split of the real dataset;
* ``real+synthetic``  the same real tiles plus every synthetic tile (uniform over the union unless an
                      extra ratio fixes each batch's synthetic share; with ``extra_until`` only in that
                      first share of the steps, then real tiles alone);
* ``synthetic``       synthetic tiles only.

With several real fractions the real arms are repeated on nested, seeded subsets of the real training
tiles: the learning curve with and without synthetic data. Runs are trained in ``OUT.partial`` (an
interrupted experiment continues there when rerun); ``OUT`` appears only when the report is complete.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histosmith.data.format import Dataset
from histosmith.data.provenance import check_no_leakage, dataset_digests
from histosmith.errors import HistoSmithError
from histosmith.evaluation.conic import TileScores
from histosmith.segmentation.config import SEG_PRESETS, seg_train_config
from histosmith.segmentation.data import check_compatible
from histosmith.segmentation.evaluate import evaluate_model, load_split
from histosmith.segmentation.statistics import bootstrap, flat_metrics
from histosmith.segmentation.train import load_segmenter, train_segmenter
from histosmith.training.checkpoint import CHECKPOINT_FILE, load_checkpoint
from histosmith.training.trainer import RunOptions

log = logging.getLogger(__name__)
ARMS = ("real", "real+synthetic", "synthetic")
REFERENCE = "real"
EVAL_SPLIT, TRAIN_SPLIT = "val", "train"


@dataclass(frozen=True)
class DownstreamPlan:
    real: Path
    synthetic: tuple[Path, ...]
    arms: tuple[str, ...] = ARMS
    seeds: int = 3
    steps: int | None = None  # None: the config's step budget
    real_fractions: tuple[float, ...] = (1.0,)
    config: str = "small"
    extra_ratio: float | None = None
    extra_until: float | None = None  # real+synthetic: synthetic tiles only in this first share of the steps
    batch_size: int | None = None
    n_boot: int = 1000
    allow_unknown_provenance: bool = False
    device: str = "auto"
    jobs: int = 1  # runs trained at once, in separate processes
    command: str = ""  # how the experiment was started (for the report)
    notes: list[str] = field(default_factory=list)

    @property
    def budget(self) -> int:
        return self.steps or seg_train_config(self.config).max_steps


def parse_arms(text: str) -> tuple[str, ...]:
    arms = tuple(a.strip() for a in text.split(",") if a.strip())
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise HistoSmithError(f"--arms: unknown arm {unknown[0]!r}; choose from {', '.join(ARMS)}")
    if not arms or len(set(arms)) != len(arms):
        raise HistoSmithError(f"--arms: give distinct arms from {', '.join(ARMS)}, got {text!r}")
    if REFERENCE not in arms:
        raise HistoSmithError(f"--arms: the '{REFERENCE}' arm is the reference every difference is taken against")
    return arms


def parse_fractions(text: str) -> tuple[float, ...]:
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise HistoSmithError(f"--real-fraction: expected comma-separated numbers, got {text!r}") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise HistoSmithError(f"--real-fraction: fractions must lie in (0, 1], got {text!r}")
    return tuple(values)


def _check_dataset(path: Path, what: str) -> None:
    if not path.is_dir():
        raise HistoSmithError(f"{path}: {what} dataset not found")
    if not (path / "meta.json").exists():
        empty = " (the directory is empty)" if not any(path.iterdir()) else ""
        raise HistoSmithError(f"{path}: {what} dataset has no meta.json{empty}")
    if len(Dataset.open(path)) == 0:
        raise HistoSmithError(f"{path}: {what} dataset holds no tiles")


def validate(plan: DownstreamPlan, out: Path) -> None:
    """Every check before any training: options, datasets, their compatibility, leakage, the output path."""
    if plan.seeds < 1:
        raise HistoSmithError(f"--seeds must be at least 1, got {plan.seeds}")
    if plan.steps is not None and plan.steps < 1:
        raise HistoSmithError(f"--steps must be at least 1, got {plan.steps}")
    if plan.config not in SEG_PRESETS:
        raise HistoSmithError(f"--config: unknown segmenter config {plan.config!r}; choose from {list(SEG_PRESETS)}")
    if plan.extra_ratio is not None and not 0 < plan.extra_ratio < 1:
        raise HistoSmithError(f"--extra-ratio must lie in (0, 1), got {plan.extra_ratio}")
    if plan.extra_until is not None and not 0 < plan.extra_until <= 1:
        raise HistoSmithError(f"--extra-until must lie in (0, 1], got {plan.extra_until}")
    if plan.jobs < 1:
        raise HistoSmithError(f"--jobs must be at least 1, got {plan.jobs}")
    if plan.n_boot < 100:
        raise HistoSmithError(f"--bootstrap must be at least 100 replicates, got {plan.n_boot}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HistoSmithError(f"{out}: already exists and is not empty; choose a new --out")
    _check_dataset(plan.real, "real")
    needs_synthetic = any(a != REFERENCE for a in plan.arms)
    if needs_synthetic and not plan.synthetic:
        raise HistoSmithError("--synthetic: the arms " + ", ".join(a for a in plan.arms if a != REFERENCE)
                              + " need at least one synthetic dataset")
    for path in plan.synthetic:
        _check_dataset(path, "synthetic")
    check_compatible(plan.real, list(plan.synthetic))
    held_out = dataset_digests(plan.real, EVAL_SPLIT)
    if not held_out:
        raise HistoSmithError(f"{plan.real}: no held-out tiles (patch_info split '{EVAL_SPLIT}') to evaluate on")
    training = dataset_digests(plan.real, TRAIN_SPLIT)
    if not training:
        raise HistoSmithError(f"{plan.real}: no training tiles (patch_info split '{TRAIN_SPLIT}')")
    for path in plan.synthetic:
        check_not_real(path, held_out, training)
        check_no_leakage(path, plan.real, EVAL_SPLIT, plan.allow_unknown_provenance)


def check_not_real(synthetic: Path, held_out: dict[str, str], training: dict[str, str]) -> None:
    """Refuse a "synthetic" set holding tiles of the real data itself: held-out tiles would be scored after being
    trained on, training tiles would count twice and be credited to the generator."""
    tiles = dataset_digests(synthetic, None)
    for split, real in ((EVAL_SPLIT, held_out), (TRAIN_SPLIT, training)):
        shared = sorted(real[d] for d in tiles.keys() & real.keys())
        if shared:
            raise HistoSmithError(f"--synthetic {synthetic}: {len(shared)} of its {len(tiles)} tiles are tiles of the "
                                  f"real {split!r} split (e.g. {shared[0]}); point --synthetic at generated data")


@dataclass(frozen=True)
class Run:
    arm: str
    fraction: float  # share of the real training tiles; 0 for the synthetic-only arm
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arm.replace('+', '_')}-f{self.fraction:g}-s{self.seed}"

    @property
    def group(self) -> tuple[str, float]:
        return self.arm, self.fraction


def planned_runs(plan: DownstreamPlan) -> list[Run]:
    runs = []
    for fraction in plan.real_fractions:
        for arm in plan.arms:
            if arm == "synthetic":
                continue
            runs += [Run(arm, fraction, s) for s in range(plan.seeds)]
    if "synthetic" in plan.arms:
        runs += [Run("synthetic", 0.0, s) for s in range(plan.seeds)]
    return runs


def _train(plan: DownstreamPlan, run: Run, run_dir: Path, show_progress: bool) -> None:
    if run.arm == "synthetic":
        data, extra = plan.synthetic[0], list(plan.synthetic[1:])
    else:
        data, extra = plan.real, list(plan.synthetic) if run.arm == "real+synthetic" else []
    mixed = run.arm == "real+synthetic"
    extra_ratio, extra_until = (plan.extra_ratio, plan.extra_until) if mixed else (None, None)
    resume = (run_dir / CHECKPOINT_FILE).exists()
    if resume:  # a run left by an interrupted experiment: reuse it only if it is the same run
        ckpt = load_checkpoint(run_dir, "seg")
        expected = {"data": str(data), "extra": [str(p) for p in extra], "seed": run.seed, "steps": plan.budget,
                    "batch_size": plan.batch_size or seg_train_config(plan.config).batch_size,
                    "extra_ratio": extra_ratio, "extra_until": extra_until}
        found = {"data": ckpt["data"]["data"], "extra": list(ckpt["data"]["extra"]), "seed": int(ckpt["seed"]),
                 "steps": ckpt["train_config"]["max_steps"], "batch_size": ckpt["train_config"]["batch_size"],
                 "extra_ratio": ckpt["data"].get("extra_ratio"), "extra_until": ckpt["data"].get("extra_until")}
        if found != expected:
            raise HistoSmithError(f"{run_dir}: left by an experiment with other settings ({found}); delete "
                                  f"{run_dir.parent.parent} to start over")
    opts = RunOptions(seed=run.seed, device=plan.device, max_steps=plan.budget, batch_size=plan.batch_size,
                      resume=resume, show_progress=show_progress)
    train_segmenter(data, run_dir, plan.config, opts, extra=extra, extra_ratio=extra_ratio,
                    real_fraction=run.fraction if run.arm != "synthetic" else 1.0, extra_until=extra_until)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def train_all(plan: DownstreamPlan, runs: list[Run], work: Path, show_progress: bool) -> int:
    """Train every run (``plan.jobs`` at a time); returns the torch threads each run used.

    A run's numbers depend only on its seed and settings, and on the thread count (the order of
    floating-point reductions); with ``jobs`` > 1 each process gets ``threads // jobs`` of them.
    """
    import torch

    threads = torch.get_num_threads()
    if plan.jobs == 1:
        for i, run in enumerate(runs):
            log.info("run %d of %d: %s (%d steps)", i + 1, len(runs), run.name, plan.budget)
            _train(plan, run, work / "runs" / run.name, show_progress)
        return threads
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm import tqdm

    per_job = max(1, threads // plan.jobs)
    with ProcessPoolExecutor(plan.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(per_job,)) as pool:
        futures = [pool.submit(_train, plan, run, work / "runs" / run.name, False) for run in runs]
        bar = tqdm(total=len(runs), desc=f"downstream runs ({plan.jobs} at a time)", unit="run",
                   disable=not show_progress)
        for future in as_completed(futures):
            future.result()
            bar.update(1)
        bar.close()
    return per_job


def run_downstream(plan: DownstreamPlan, out: Path, show_progress: bool = True) -> dict[str, Any]:
    """Train every run, score it on the held-out real tiles, and write the report into ``out``."""
    from histosmith.segmentation.report import write_report

    validate(plan, out)
    work = out.with_name(out.name + ".partial")
    try:
        (work / "runs").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HistoSmithError(f"{work}: cannot create the working directory ({exc.strerror})") from None
    class_names = Dataset.open(plan.real).meta.class_names
    images, labels, _ = load_split(plan.real, EVAL_SPLIT)
    runs = planned_runs(plan)
    scores: dict[tuple[str, float], list[TileScores]] = {}
    records = []
    threads = train_all(plan, runs, work, show_progress)
    for run in runs:
        model, ckpt = load_segmenter(work / "runs" / run.name)
        if int(ckpt["step"]) != plan.budget:
            raise HistoSmithError(f"{work / 'runs' / run.name}: stopped at step {ckpt['step']} of {plan.budget}")
        tile_scores = evaluate_model(model, class_names, images, labels)
        scores.setdefault(run.group, []).append(tile_scores)
        records.append({"arm": run.arm, "real_fraction": run.fraction, "seed": run.seed, "run": f"runs/{run.name}"}
                       | flat_metrics(tile_scores.result()))
    top = max(plan.real_fractions)
    pairs = {g: (REFERENCE, top if g[0] == "synthetic" else g[1]) for g in scores if g[0] != REFERENCE}
    keys, groups, diffs = bootstrap(scores, pairs, plan.n_boot)
    report = {
        "command": plan.command,
        "real": str(plan.real), "synthetic": [str(p) for p in plan.synthetic],
        "arms": list(plan.arms), "seeds": list(range(plan.seeds)), "steps": plan.budget, "config": plan.config,
        "batch_size": plan.batch_size or seg_train_config(plan.config).batch_size,
        "threads_per_run": threads, "extra_ratio": plan.extra_ratio,
        "extra_until": plan.extra_until, "real_fractions": list(plan.real_fractions),
        "bootstrap": plan.n_boot,
        "class_names": class_names,
        "eval": {"dataset": str(plan.real), "split": EVAL_SPLIT, "n_tiles": len(images)},
        "train_tiles": {"real": len(dataset_digests(plan.real, TRAIN_SPLIT)),
                        "synthetic": sum(len(Dataset.open(p)) for p in plan.synthetic)},
        "metrics": keys,
        "runs": records,
        "groups": [{"arm": a, "real_fraction": f, **{k: iv.to_json() for k, iv in groups[(a, f)].items()}}
                   for a, f in scores],
        "differences": [{"arm": a, "real_fraction": f, "reference": {"arm": r[0], "real_fraction": r[1]},
                         **{k: iv.to_json() for k, iv in diffs[(a, f)].items()}} for (a, f), r in pairs.items()],
        "notes": plan.notes,
    }
    write_report(report, work)
    if out.exists():
        out.rmdir()  # validated empty above
    shutil.move(str(work), str(out))
    return report
