"""Stage 1: train the dual-head VQ autoencoder (``hs-train vqvae``)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histosmith.config import VQConfig, VQTrainConfig, from_dict, override, preset, to_dict, vq_config
from histosmith.data.provenance import training_record
from histosmith.errors import HistoSmithError
from histosmith.models.discriminator import PatchDiscriminator
from histosmith.models.vqvae import VQAutoencoder
from histosmith.training import distributed
from histosmith.training.checkpoint import CHECKPOINT_FILE, load_checkpoint, load_state
from histosmith.training.common import check_dataset_matches, optimiser_step
from histosmith.training.data import TileStore, split_input
from histosmith.training.loop import LoopResult, step_seed
from histosmith.training.losses import hinge_d_loss, hinge_g_loss, label_map_terms, ssim
from histosmith.training.trainer import RunContext, RunOptions, dataset_summary, train_stage

log = logging.getLogger(__name__)


def vq_losses(model: VQAutoencoder, x: torch.Tensor, cfg: VQTrainConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor],
                                                                                  torch.Tensor]:
    """Weighted stage-1 loss, its terms, and the reconstructed RGB+distance (for the GAN)."""
    rgb, dist, classes = split_input(x)
    out, _, commitment = model(x)
    image, distance, logits = out.image.float(), out.distance.float(), out.logits.float()
    terms = {
        "l1": (image - rgb).abs().mean(),
        "mse": (image - rgb).pow(2).mean(),
        "ssim": 1 - ssim(image, rgb),
        **label_map_terms(distance, logits, dist, classes, cfg.tversky_alpha, cfg.tversky_beta),
        "commit": commitment.float(),
    }
    loss = (cfg.l1_weight * terms["l1"] + cfg.mse_weight * terms["mse"] + cfg.ssim_weight * terms["ssim"]
            + cfg.distance_weight * terms["distance"]
            + cfg.ce_weight * terms["ce"] + cfg.tversky_weight * terms["tversky"]
            + distributed.unwrap(model).cfg.commitment * terms["commit"])
    return loss, terms, torch.cat([image, distance], dim=1)


class VQStage:
    """Stage 1 for :func:`~histosmith.training.trainer.train_stage`."""

    kind = "vqvae"

    def __init__(self, ctx: RunContext, data: Path, config: str):
        self.summary = dataset_summary(data)
        ckpt, opts = ctx.checkpoint, ctx.opts
        if ckpt is not None:
            check_dataset_matches(ckpt["dataset"], self.summary["class_names"], self.summary["tissue_names"],
                                  self.summary["tile_size"], str(data))
            self.model_cfg = from_dict(VQConfig, ckpt["model_config"])
            train_cfg = from_dict(VQTrainConfig, ckpt["train_config"])
        else:
            self.model_cfg = vq_config(config, len(self.summary["class_names"]), self.summary["tile_size"])
            train_cfg = override(preset(config).vq_train, batch_size=opts.batch_size, lr=opts.lr)
        self.train_cfg = override(train_cfg, max_steps=opts.max_steps)
        self.max_steps, self.log_every = self.train_cfg.max_steps, self.train_cfg.log_every
        self.checkpoint_every = self.train_cfg.checkpoint_every
        self.title = f"VQ autoencoder ({config if ckpt is None else 'resumed'})"
        self.seed, self.device, self.amp = ctx.seed, ctx.device, ctx.amp
        self.store = TileStore.load(data, "train", opts.show_progress)
        self.training_data = training_record(data, "train", self.store.images, "vqvae")
        # channels_last: oneDNN's fastest convolution layout on CPUs (about 13% per step here).
        self.layout = torch.channels_last if ctx.device.type == "cpu" else torch.contiguous_format
        self.model = VQAutoencoder(self.model_cfg).to(ctx.device, memory_format=self.layout)
        self.params = list(self.model.parameters())
        cfg = self.train_cfg
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=(0.5, 0.9), weight_decay=cfg.weight_decay)
        self.disc = PatchDiscriminator(4).to(ctx.device) if cfg.gan_start is not None else None
        self.disc_opt = (torch.optim.AdamW(self.disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
                         if self.disc is not None else None)
        if ckpt is not None:
            load_state(self.model, ckpt["model"], str(ctx.out / CHECKPOINT_FILE))
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.disc is not None and ckpt.get("discriminator"):
                self.disc.load_state_dict(ckpt["discriminator"])
                self.disc_opt.load_state_dict(ckpt["discriminator_optimizer"])
        if self.disc is not None and ctx.dist.active:
            raise HistoSmithError("torchrun training of the PatchGAN discriminator (configs with gan_start) is not "
                                  "supported; run this config in one process")
        self.part = ctx.dist.local_slice(cfg.batch_size)
        self.forward = distributed.wrap(self.model, ctx.dist, ctx.device)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else contextlib.nullcontext()

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        cfg = self.train_cfg
        rng = np.random.default_rng(step_seed(self.seed, step))
        torch.manual_seed(step_seed(self.seed, step, 1))
        index = rng.integers(0, len(self.store), cfg.batch_size)
        flips = rng.integers(0, 8, cfg.batch_size)
        part = self.part  # torchrun: every rank draws the global batch and keeps its slice
        x = self.store.inputs(index[part], flips[part]).to(self.device, memory_format=self.layout)
        self.model.train()
        gan_on = self.disc is not None and step >= cfg.gan_start
        with self._autocast():
            loss, terms, recon = vq_losses(self.forward, x, cfg)
            if gan_on:
                terms["g_adv"] = hinge_g_loss(self.disc(recon).float())
                loss = loss + cfg.gan_weight * terms["g_adv"]
        terms["loss"] = loss
        optimiser_step(self.optimizer, self.params, loss, step, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.grad_clip)
        if gan_on:
            with self._autocast():
                real = torch.cat([x[:, :3], x[:, 3:4]], dim=1)
                d_loss = hinge_d_loss(self.disc(real).float(), self.disc(recon.detach()).float())
            self.disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_opt.step()
            terms["d_loss"] = d_loss
        return {k: v.detach() for k, v in terms.items()}

    def log_extras(self) -> dict[str, float]:
        return {"perplexity": self.model.quantizer.stats()["perplexity"]}

    def state(self) -> dict[str, Any]:
        return {"model_config": to_dict(self.model_cfg), "train_config": to_dict(self.train_cfg),
                "dataset": self.summary, "training_data": self.training_data, "model": self.model.state_dict(),
                "ema": None,
                "optimizer": self.optimizer.state_dict(),
                "discriminator": self.disc.state_dict() if self.disc else None,
                "discriminator_optimizer": self.disc_opt.state_dict() if self.disc_opt else None}

    def config_record(self) -> dict[str, Any]:
        return {"model_config": to_dict(self.model_cfg), "train_config": to_dict(self.train_cfg),
                "dataset": self.summary}


def train_vqvae(data: Path, out: Path, config: str = "small", opts: RunOptions = RunOptions()) -> LoopResult:
    """Train (or resume) a VQ autoencoder on the ``train`` split of ``data``; checkpoints in ``out``."""
    return train_stage("vqvae", out, opts, lambda ctx: VQStage(ctx, data, config))


def load_vqvae(path: Path) -> tuple[VQAutoencoder, dict]:
    """A trained autoencoder (eval mode, CPU) and its checkpoint dict."""
    ckpt = load_checkpoint(path, "vqvae")
    model = VQAutoencoder(from_dict(VQConfig, ckpt["model_config"]))
    load_state(model, ckpt["model"], str(path))
    return model.eval(), ckpt
