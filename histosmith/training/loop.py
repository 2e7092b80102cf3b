"""The loop both stages share: steps, time limits, Ctrl-C, logs, plots, checkpoints, resume.

Every step is a pure function of the model state and ``(seed, step)``: the batch, augmentations and
noise come from generators seeded with both, so a run interrupted and resumed from its checkpoint
produces the same losses as one that never stopped.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from histosmith.data.atomic import write_text_atomic
from histosmith.errors import HistoSmithError
from histosmith.training.distributed import any_rank, mean_over_ranks

log = logging.getLogger(__name__)


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed for (run seed, step, stream)."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def lr_at(step: int, base: float, warmup: int, total: int, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to ``floor * base`` at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HistoSmithError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 / AMX)."""
    return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """Mixed precision: bf16 on CUDA; on CPUs with native bf16 (AVX512-BF16/AMX) when asked or 'auto'."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16
    native = cpu_has_native_bf16()
    if precision == "bf16" and not native:
        log.warning("this CPU has no native bf16; training in fp32")
    return torch.bfloat16 if native else None


@dataclass
class LogWriter:
    """CSV log of (step, losses...) kept in memory and rewritten atomically; a loss-curve PNG beside it."""

    path: Path
    rows: list[dict[str, float | int]] = field(default_factory=list)
    keep: bool = True  # False: rows are collected but never written (torchrun ranks other than 0)

    @classmethod
    def discard(cls) -> LogWriter:
        return cls(Path("log.csv"), keep=False)

    @classmethod
    def resume(cls, path: Path, up_to_step: int) -> LogWriter:
        rows: list[dict[str, float | int]] = []
        if path.exists():
            try:
                with open(path, newline="", encoding="utf-8") as f:
                    # Columns that start later (the GAN losses) are empty in earlier rows; steps stay whole.
                    rows = [{k: int(v) if k == "step" else float(v) for k, v in r.items() if k and v not in ("", None)}
                            for r in csv.DictReader(f)]
            except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
                raise HistoSmithError(f"{path}: unreadable training log ({exc})") from None
        return cls(path, [r for r in rows if "step" in r and r["step"] <= up_to_step])

    def add(self, row: dict[str, float]) -> None:
        self.rows.append(row)

    def flush(self) -> None:
        if not self.rows or not self.keep:
            return
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(self.path, buf.getvalue())

    def plot(self, path: Path, title: str) -> None:
        from histosmith.data.plots import plt, save_figure

        if not self.rows:
            return
        keys = [k for k in self.rows[0] if k not in ("step", "lr", "seconds")]
        steps = [r["step"] for r in self.rows]
        fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            ax.plot(steps, [r.get(key, float("nan")) for r in self.rows], lw=1)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            if key.endswith("loss") or key == "loss":
                ax.set_yscale("log")
        fig.suptitle(title, fontsize=10)
        save_figure(fig, path)


class StopFlag:
    """Turns the first Ctrl-C into a request to stop after the current step (a second one aborts)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopFlag:
        def handler(signum: int, frame: Any) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        try:
            self._previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class LoopResult:
    step: int
    interrupted: bool
    seconds: float


class LoopStage(Protocol):
    """What the loop drives (see :class:`histosmith.training.trainer.Stage`)."""

    kind: str
    max_steps: int
    log_every: int
    checkpoint_every: int

    def train_step(self, step: int) -> dict[str, torch.Tensor]: ...

    def log_extras(self) -> dict[str, float]: ...


def run_loop(
    stage: LoopStage,
    *,
    start_step: int,
    max_minutes: float | None,
    save: Callable[[int], None],
    log_writer: LogWriter,
    stop_at_step: int | None = None,
    show_progress: bool = True,
) -> LoopResult:
    """Run ``stage.train_step(step)`` from ``start_step`` to ``stage.max_steps``, saving on schedule and on exit.

    Losses stay on the device between log steps: reading them is a host sync, done once per log row.
    Stops early (after a checkpoint) when ``max_minutes`` pass, on Ctrl-C (``interrupted``), or at
    ``stop_at_step`` (tests use it to simulate a crash).
    """
    started = time.monotonic()
    step = start_step
    interrupted = False
    bar = tqdm(total=stage.max_steps, initial=start_step, desc=stage.kind, unit="step", disable=not show_progress,
               dynamic_ncols=True)
    try:
        with StopFlag() as stop:
            while step < stage.max_steps:
                losses = stage.train_step(step)
                step += 1
                bar.update(1)
                if step % stage.log_every == 0 or step == stage.max_steps:
                    losses = mean_over_ranks(losses)  # torchrun: the global batch's loss (all ranks, same steps)
                    values = {k: float(v) for k, v in losses.items()} | stage.log_extras()  # the host sync
                    log_writer.add({"step": step, **values, "seconds": time.monotonic() - started})
                    bar.set_postfix({k: f"{v:.4g}" for k, v in list(values.items())[:3]})
                if step % stage.checkpoint_every == 0:
                    save(step)
                    log_writer.flush()
                out_of_time = max_minutes is not None and time.monotonic() - started > 60 * max_minutes
                if any_rank(stop.requested or out_of_time):  # torchrun: every rank stops at the same step
                    interrupted = stop.requested or not out_of_time
                    if out_of_time:
                        log.info("--max-minutes reached at step %d", step)
                    break
                if stop_at_step is not None and step >= stop_at_step:
                    break
    finally:
        bar.close()
    if step % stage.checkpoint_every:
        save(step)
    log_writer.flush()
    return LoopResult(step, interrupted, time.monotonic() - started)
