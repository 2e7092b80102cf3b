"""``hs-train seg``: train the downstream segmenter on real tiles, optionally mixed with synthetic ones.

Same conventions as the generator's stages: configs in the checkpoint, a step is a function of
(seed, step) so an interrupted run resumes exactly, ``log.csv`` + ``loss.png``, ``--max-steps`` /
``--max-minutes``. Losses: foreground BCE + soft Dice, distance-map MSE, class cross-entropy + Dice.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from histosmith.config import from_dict, override, to_dict
from histosmith.data.provenance import training_record
from histosmith.errors import HistoSmithError
from histosmith.segmentation.config import SegConfig, SegTrainConfig, seg_config, seg_train_config
from histosmith.segmentation.data import load_training_tiles
from histosmith.segmentation.model import Segmenter
from histosmith.training.checkpoint import CHECKPOINT_FILE, load_checkpoint, load_state
from histosmith.training.common import check_dataset_matches, optimiser_step
from histosmith.training.data import split_input
from histosmith.training.loop import LoopResult, step_seed
from histosmith.training.losses import tversky_loss
from histosmith.training.trainer import RunContext, RunOptions, dataset_summary, train_stage

log = logging.getLogger(__name__)
KIND = "seg"


@dataclass(frozen=True)
class SegData:
    """What a segmenter trains on (stored in its checkpoint; a resumed run must use the same)."""

    data: str
    extra: tuple[str, ...] = ()
    extra_ratio: float | None = None
    real_fraction: float = 1.0
    extra_until: float | None = None  # extra tiles only in this first share of the steps (None: throughout)


def seg_losses(model: Segmenter, x: torch.Tensor, cfg: SegTrainConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted loss and its terms for a batch of model inputs (RGB, distance, one-hot classes)."""
    rgb, dist, classes = split_input(x)
    out = model(rgb)
    fg_logit, distance, logits = out.foreground.float(), out.distance.float(), out.logits.float()
    fg = (classes > 0).float()[:, None]  # (B, 1, H, W)
    prob = torch.sigmoid(fg_logit)
    soft_dice = 1 - (2 * (prob * fg).sum() + 1) / (prob.sum() + fg.sum() + 1)
    terms = {
        "bce": F.binary_cross_entropy_with_logits(fg_logit, fg),
        "fg_dice": soft_dice,
        "dist_mse": (distance - dist).pow(2).mean(),
        "ce": F.cross_entropy(logits, classes),
        "cls_dice": tversky_loss(logits, classes, 0.5, 0.5),  # alpha = beta = 0.5: the Dice loss
    }
    loss = (cfg.foreground_weight * (terms["bce"] + terms["fg_dice"]) + cfg.distance_weight * terms["dist_mse"]
            + cfg.class_weight * (terms["ce"] + terms["cls_dice"]))
    return loss, terms


class SegStage:
    """The segmenter for :func:`~histosmith.training.trainer.train_stage`."""

    kind = KIND

    def __init__(self, ctx: RunContext, what: SegData, config: str):
        ckpt, opts = ctx.checkpoint, ctx.opts
        data = Path(what.data)
        self.summary = summary = dataset_summary(data)
        if ckpt is not None:
            check_dataset_matches(ckpt["dataset"], summary["class_names"], summary["tissue_names"],
                                  summary["tile_size"], str(data))
            self.model_cfg = from_dict(SegConfig, ckpt["model_config"])
            train_cfg = from_dict(SegTrainConfig, ckpt["train_config"])
            what = SegData(**{**ckpt["data"], "extra": tuple(ckpt["data"]["extra"])})
        else:
            self.model_cfg = seg_config(config, len(summary["class_names"]), summary["tile_size"])
            train_cfg = override(seg_train_config(config), batch_size=opts.batch_size, lr=opts.lr)
        self.what = what
        self.train_cfg = cfg = override(train_cfg, max_steps=opts.max_steps)
        self.max_steps, self.log_every, self.checkpoint_every = cfg.max_steps, cfg.log_every, cfg.checkpoint_every
        self.seed, self.device, self.amp = ctx.seed, ctx.device, ctx.amp
        self.tiles = tiles = load_training_tiles(Path(what.data), [Path(p) for p in what.extra], what.extra_ratio,
                                                 what.real_fraction, ctx.seed, opts.show_progress)
        self.records = [training_record(Path(what.data), "train", tiles.real.images, "seg")] if tiles.real else []
        self.title = f"segmenter ({tiles.n_real} real + {tiles.n_extra} extra tiles)"
        self.model = Segmenter(self.model_cfg).to(ctx.device)
        self.params = list(self.model.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if ckpt is not None:
            load_state(self.model, ckpt["model"], str(ctx.out / CHECKPOINT_FILE))
            self.optimizer.load_state_dict(ckpt["optimizer"])
        log.info("segmenter: %d real + %d extra training tiles", tiles.n_real, tiles.n_extra)

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        cfg = self.train_cfg
        rng = np.random.default_rng(step_seed(self.seed, step))
        torch.manual_seed(step_seed(self.seed, step, 1))
        real_only = self.what.extra_until is not None and step >= round(self.what.extra_until * cfg.max_steps)
        x = torch.from_numpy(self.tiles.batch(rng, cfg.batch_size, real_only)).to(self.device)
        self.model.train()
        ctx = torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else contextlib.nullcontext()
        with ctx:
            loss, terms = seg_losses(self.model, x, cfg)
        optimiser_step(self.optimizer, self.params, loss, step, cfg.lr, cfg.warmup_steps, cfg.max_steps,
                       cfg.grad_clip)
        return {"loss": loss.detach()} | {k: v.detach() for k, v in terms.items()}

    def log_extras(self) -> dict[str, float]:
        return {}

    def config_record(self) -> dict[str, Any]:
        return {"model_config": to_dict(self.model_cfg), "train_config": to_dict(self.train_cfg),
                "dataset": self.summary, "data": to_dict(self.what),
                "tiles": {"real": self.tiles.n_real, "extra": self.tiles.n_extra}}

    def state(self) -> dict[str, Any]:
        return {"model_config": to_dict(self.model_cfg), "train_config": to_dict(self.train_cfg),
                "dataset": self.summary, "data": to_dict(self.what), "training_data": self.records,
                "model": self.model.state_dict(), "ema": None, "optimizer": self.optimizer.state_dict()}


def check_extra_until(what: SegData) -> None:
    if what.extra_until is None:
        return
    if not what.extra:
        raise HistoSmithError("--extra-until needs --extra tiles to leave behind")
    if not 0 < what.extra_until <= 1:
        raise HistoSmithError(f"--extra-until must lie in (0, 1], got {what.extra_until}")


def train_segmenter(data: Path, out: Path, config: str = "small", opts: RunOptions = RunOptions(),
                    extra: list[Path] | None = None, extra_ratio: float | None = None,
                    real_fraction: float = 1.0, extra_until: float | None = None) -> LoopResult:
    """Train (or resume) a segmenter on the ``train`` split of ``data`` plus every tile of ``extra``.

    ``extra_until``: the ``extra`` tiles are drawn only in that first share of the steps, then real ones alone.
    """
    what = SegData(str(data), tuple(str(p) for p in extra or ()), extra_ratio, real_fraction, extra_until)
    check_extra_until(what)
    return train_stage(KIND, out, opts, lambda ctx: SegStage(ctx, what, config))


def load_segmenter(path: Path) -> tuple[Segmenter, dict]:
    """A trained segmenter (eval mode, CPU) and its checkpoint dict."""
    ckpt = load_checkpoint(path, KIND)
    model = Segmenter(from_dict(SegConfig, ckpt["model_config"]))
    load_state(model, ckpt["model"], str(path))
    return model.eval(), ckpt


def check_segmenter_fits(trained: dict[str, Any], class_names: list[str], tile_size: int, what: str) -> None:
    """Refuse data whose classes or tile size differ from a segmenter's (its checkpoint's ``dataset`` entry)."""
    if list(trained["class_names"]) != list(class_names):
        raise HistoSmithError(f"{what}: classes {list(class_names)} differ from the segmenter's "
                              f"{list(trained['class_names'])}")
    if int(trained["tile_size"]) != tile_size:
        raise HistoSmithError(f"{what}: tiles of {tile_size} px, the segmenter's are {trained['tile_size']} px")
