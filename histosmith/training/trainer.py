"""The one training template both stages run: run directory, resume, seeds, loop, logs, checkpoints.

A stage (:class:`Stage`) only builds its models from a :class:`RunContext` and says what one step does
and what its checkpoint holds; :func:`train_stage` does everything else the same way for both.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from histosmith.data.lock import exclusive
from histosmith.data.reader import Dataset
from histosmith.errors import HistoSmithError
from histosmith.training import distributed
from histosmith.training.checkpoint import CHECKPOINT_FILE, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from histosmith.training.common import start_run, write_config_json
from histosmith.training.distributed import DistContext
from histosmith.training.loop import LogWriter, LoopResult, pick_device, run_loop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """How to run (not what to train): shared by both stages' entry points."""

    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # fp32 | bf16 | auto
    max_steps: int | None = None  # overrides the config's horizon (and the LR schedule)
    max_minutes: float | None = None
    batch_size: int | None = None  # new runs only: a resumed run keeps its own (a different one is refused)
    lr: float | None = None  # idem
    resume: bool = False
    show_progress: bool = True
    stop_at_step: int | None = None  # tests: simulate an interruption


@dataclass(frozen=True)
class RunContext:
    """What a stage is built from."""

    out: Path
    opts: RunOptions
    checkpoint: dict[str, Any] | None  # the run's own checkpoint when resuming
    seed: int
    device: torch.device
    amp: torch.dtype | None  # autocast dtype, None for fp32
    dist: DistContext = DistContext()  # torchrun rank (one process: rank 0 of 1)


class Stage(Protocol):
    """One training stage: its models, one step, and what its checkpoint and config.json hold."""

    kind: str  # "vqvae" | "ldm" (the checkpoint kind)
    title: str  # loss-curve title
    max_steps: int
    log_every: int
    checkpoint_every: int

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        """One optimiser step; returns detached scalar tensors (read on the host only at log steps)."""
        ...

    def log_extras(self) -> dict[str, float]:
        """Extra columns for a log row (computed only at log steps)."""
        ...

    def state(self) -> dict[str, Any]:
        """The checkpoint payload: configs, weights, optimiser states (step, seed and RNG are added)."""
        ...

    def config_record(self) -> dict[str, Any]:
        """``config.json``: the configs and the dataset this run trains on."""
        ...


def dataset_summary(root: Path) -> dict[str, Any]:
    """What a checkpoint records about its dataset (and checks again on resume)."""
    meta = Dataset.open(root).meta
    return {"path": str(root), "class_names": meta.class_names, "tissue_names": meta.tissue_names,
            "tile_size": meta.tile_size, "count_scale": meta.count_scale, "count_max": meta.count_max,
            "count_margin": meta.count_margin}


def check_resume_overrides(checkpoint: dict[str, Any], opts: RunOptions) -> None:
    """``--lr`` / ``--batch-size`` on ``--resume``: honoured only when equal to the run's own, else refused.

    Changing them mid-run would break the promise that a resumed run equals an uninterrupted one.
    """
    train_cfg = checkpoint["train_config"]
    for flag, given, key in (("--lr", opts.lr, "lr"), ("--batch-size", opts.batch_size, "batch_size")):
        if given is not None and given != train_cfg[key]:
            raise HistoSmithError(f"{flag} {given}: a resumed run keeps its own {key} ({train_cfg[key]}); drop "
                                  f"{flag} or start a new run with --out elsewhere")


@contextlib.contextmanager
def run_directory(out: Path, resume: bool) -> Iterator[bool]:
    """Check and create the run directory; yields whether there is a checkpoint to resume from.

    A directory this call created is removed again if the run fails before its first checkpoint, so a
    failed start leaves nothing behind.
    """
    ckpt = out / CHECKPOINT_FILE
    if out.exists() and not out.is_dir():
        raise HistoSmithError(f"{out}: exists and is not a directory")
    if ckpt.exists() and not resume:
        raise HistoSmithError(f"{out}: already holds a checkpoint; pass --resume to continue it or use a new --out")
    if resume and not ckpt.exists():
        raise HistoSmithError(f"{ckpt}: nothing to resume (no checkpoint)")
    if not resume and out.exists() and any(out.iterdir()):
        raise HistoSmithError(f"{out}: exists and is not empty; use a new --out (training never mixes runs)")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HistoSmithError(f"{out}: cannot create the run directory ({exc.strerror})") from None
    try:
        yield resume
    except BaseException:
        if created and not ckpt.exists():
            shutil.rmtree(out, ignore_errors=True)
        raise


def train_stage(kind: str, out: Path, opts: RunOptions, build: Callable[[RunContext], Stage]) -> LoopResult:
    """Train (or resume) one stage in ``out``: the template both ``hs-train`` stages share.

    Under ``torchrun`` every rank runs this; rank 0 checks and owns the run directory (and holds its lock: a
    second job on the same ``out`` is refused), the others wait for it (a failed check on rank 0 ends the job)
    and write nothing."""
    dctx = distributed.from_environment()
    owner = run_directory(out, opts.resume) if dctx.is_main else contextlib.nullcontext(opts.resume)
    writer = exclusive(out, "training run") if dctx.is_main else contextlib.nullcontext()  # one writer per run
    with writer, owner as resuming:
        if dctx.active:
            distributed.start(dctx, pick_device(opts.device))  # join the group: the barrier needs it
            dctx.barrier()  # rank 0 has checked (and made) the run directory
        checkpoint = load_checkpoint(out, kind) if resuming else None
        if checkpoint is not None:
            check_resume_overrides(checkpoint, opts)
        seed = int(checkpoint["seed"]) if checkpoint is not None else opts.seed
        device, amp = start_run(opts, seed)
        device = distributed.start(dctx, device)
        stage = build(RunContext(out, opts, checkpoint, seed, device, amp, dctx))
        start = 0
        if checkpoint is not None:
            set_rng_state(checkpoint["rng"])
            start = int(checkpoint["step"])
        if dctx.is_main:
            write_config_json(out, {"kind": kind, **stage.config_record(), "seed": seed})
        log_writer = LogWriter.resume(out / "log.csv", start) if dctx.is_main else LogWriter.discard()

        def save(step: int) -> None:
            if dctx.is_main:
                save_checkpoint(out / CHECKPOINT_FILE, {"kind": kind, **stage.state(), "seed": seed, "step": step,
                                                        "rng": rng_state()})

        result = run_loop(stage, start_step=start, max_minutes=opts.max_minutes, save=save, log_writer=log_writer,
                          stop_at_step=opts.stop_at_step, show_progress=opts.show_progress and dctx.is_main)
        if dctx.is_main:
            log_writer.plot(out / "loss.png", stage.title)
        dctx.barrier()  # the checkpoint is on disk before any rank reports
        return result
