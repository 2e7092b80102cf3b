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

import numpy as np
import torch
import torch.nn.functional as F

from histosmith.config import from_dict, override, to_dict
from histosmith.data.provenance import training_record
from histosmith.segmentation.config import SegConfig, SegTrainConfig, seg_config, seg_train_config
from histosmith.segmentation.data import load_training_tiles
from histosmith.segmentation.model import Segmenter
from histosmith.training.checkpoint import (
    CHECKPOINT_FILE,
    load_checkpoint,
    load_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from histosmith.training.common import (
    check_dataset_matches,
    optimiser_step,
    prepare_run_dir,
    start_run,
    write_config_json,
)
from histosmith.training.data import split_input
from histosmith.training.loop import LogWriter, LoopResult, run_loop, step_seed
from histosmith.training.losses import tversky_loss
from histosmith.training.vqvae import RunOptions, dataset_summary

log = logging.getLogger(__name__)
KIND = "seg"


@dataclass(frozen=True)
class SegData:
    """What a segmenter trains on (stored in its checkpoint; a resumed run must use the same)."""

    data: str
    extra: tuple[str, ...] = ()
    extra_ratio: float | None = None
    real_fraction: float = 1.0


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


def train_segmenter(data: Path, out: Path, config: str = "small", opts: RunOptions = RunOptions(),
                    extra: list[Path] | None = None, extra_ratio: float | None = None,
                    real_fraction: float = 1.0) -> LoopResult:
    """Train (or resume) a segmenter on the ``train`` split of ``data`` plus every tile of ``extra``."""
    what = SegData(str(data), tuple(str(p) for p in extra or ()), extra_ratio, real_fraction)
    resuming = prepare_run_dir(out, opts.resume)
    summary = dataset_summary(data)
    ckpt = load_checkpoint(out, KIND) if resuming else None
    if ckpt is not None:
        check_dataset_matches(ckpt["dataset"], summary["class_names"], summary["tissue_names"], summary["tile_size"],
                              str(data))
        model_cfg = from_dict(SegConfig, ckpt["model_config"])
        train_cfg = from_dict(SegTrainConfig, ckpt["train_config"])
        what = SegData(**{**ckpt["data"], "extra": tuple(ckpt["data"]["extra"])})
        seed = int(ckpt["seed"])
    else:
        model_cfg = seg_config(config, len(summary["class_names"]), summary["tile_size"])
        train_cfg = override(seg_train_config(config), batch_size=opts.batch_size, lr=opts.lr)
        seed = opts.seed
    train_cfg = override(train_cfg, max_steps=opts.max_steps)
    tiles = load_training_tiles(Path(what.data), [Path(p) for p in what.extra], what.extra_ratio, what.real_fraction,
                                seed, opts.show_progress)
    device, amp = start_run(opts, seed)
    records = [training_record(Path(what.data), "train", tiles.real.images, "seg")] if tiles.real else []
    model = Segmenter(model_cfg).to(device)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    start = 0
    if ckpt is not None:
        load_state(model, ckpt["model"], str(out / CHECKPOINT_FILE))
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        start = int(ckpt["step"])
    header = {"kind": KIND, "model_config": to_dict(model_cfg), "train_config": to_dict(train_cfg),
              "dataset": summary, "data": to_dict(what), "seed": seed}
    write_config_json(out, header | {"tiles": {"real": tiles.n_real, "extra": tiles.n_extra}})
    log_writer = LogWriter.resume(out / "log.csv", start)
    log.info("segmenter: %d real + %d extra training tiles", tiles.n_real, tiles.n_extra)

    def train_step(step: int) -> dict[str, float]:
        rng = np.random.default_rng(step_seed(seed, step))
        torch.manual_seed(step_seed(seed, step, 1))
        x = torch.from_numpy(tiles.batch(rng, train_cfg.batch_size)).to(device)
        model.train()
        ctx = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        with ctx:
            loss, terms = seg_losses(model, x, train_cfg)
        optimiser_step(optimizer, params, loss, step, train_cfg.lr, train_cfg.warmup_steps, train_cfg.max_steps,
                       train_cfg.grad_clip)
        return {"loss": float(loss.detach())} | {k: float(v.detach()) for k, v in terms.items()}

    def save(step: int) -> None:
        save_checkpoint(out / CHECKPOINT_FILE, header | {
            "step": step, "training_data": records, "model": model.state_dict(), "ema": None,
            "optimizer": optimizer.state_dict(), "rng": rng_state(),
        })

    result = run_loop(start_step=start, max_steps=train_cfg.max_steps, max_minutes=opts.max_minutes,
                      train_step=train_step, save=save, log_writer=log_writer, log_every=train_cfg.log_every,
                      checkpoint_every=train_cfg.checkpoint_every, desc="seg", stop_at_step=opts.stop_at_step,
                      show_progress=opts.show_progress)
    log_writer.plot(out / "loss.png", f"segmenter ({tiles.n_real} real + {tiles.n_extra} extra tiles)")
    return result


def load_segmenter(path: Path) -> tuple[Segmenter, dict]:
    """A trained segmenter (eval mode, CPU) and its checkpoint dict."""
    ckpt = load_checkpoint(path, KIND)
    model = Segmenter(from_dict(SegConfig, ckpt["model_config"]))
    load_state(model, ckpt["model"], str(path))
    return model.eval(), ckpt
