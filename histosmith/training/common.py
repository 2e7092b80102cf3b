"""Pieces both training stages use: device and seed, optimiser steps, config files, dataset checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from histosmith.data.atomic import write_text_atomic
from histosmith.errors import HistoSmithError
from histosmith.training.loop import autocast_dtype, lr_at, pick_device


def start_run(opts: Any, seed: int) -> tuple[torch.device, torch.dtype | None]:
    """Device, autocast dtype, and the global seed, for either stage."""
    device = pick_device(opts.device)
    amp = autocast_dtype(device, opts.precision)
    torch.manual_seed(seed)
    return device, amp


def write_config_json(out: Path, configs: dict[str, Any]) -> None:
    write_text_atomic(out / "config.json", json.dumps(configs, indent=2, default=str) + "\n")


def optimiser_step(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], loss: torch.Tensor,
                   step: int, base_lr: float, warmup: int, total: int, clip: float) -> torch.Tensor:
    """Backward, clip, set the scheduled learning rate, step; returns the gradient norm (on the device)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, clip)
    lr = lr_at(step, base_lr, warmup, total)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    return norm


def check_dataset_matches(ckpt_dataset: dict[str, Any], class_names: list[str], tissue_names: list[str],
                          tile_size: int, what: str) -> None:
    """Refuse a dataset whose classes, tissues or tile size differ from those a checkpoint was trained on."""
    if list(ckpt_dataset["class_names"]) != list(class_names):
        raise HistoSmithError(f"{what}: dataset classes {class_names} differ from the checkpoint's "
                              f"{ckpt_dataset['class_names']}")
    if tissue_names and list(ckpt_dataset["tissue_names"]) != list(tissue_names):
        raise HistoSmithError(f"{what}: dataset tissues {tissue_names} differ from the checkpoint's "
                              f"{ckpt_dataset['tissue_names']}")
    if int(ckpt_dataset["tile_size"]) != tile_size:
        raise HistoSmithError(
            f"{what}: dataset tiles are {tile_size} px, the checkpoint's {ckpt_dataset['tile_size']} px"
        )
