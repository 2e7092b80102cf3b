"""Guidance distillation (``hs-train distill``): one U-Net pass instead of the conditional + null pair.

Stage 1 of Meng et al., "On Distillation of Guided Diffusion Models" (CVPR 2023): a student U-Net that
takes the guidance scale ``w`` as one more input is trained to give, in one pass, what its teacher gives with
classifier-free guidance in two, ``ε_null + w (ε_cond − ε_null)``, for ``w`` drawn uniformly from the range it
is meant to serve. The student starts as a copy of the teacher's EMA weights plus a zero-initialised guidance
embedding (so at step 0 it is the teacher's conditional branch), and sees the teacher's own training latents
under the forward process at every timestep, so every sampler and step count keep working.

The checkpoint is an ordinary ``ldm`` checkpoint (``hs-export``, ``hs-sample`` and every backend take it as
they are) whose model config carries ``guidance_range`` and whose ``distillation`` record names the teacher.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histosmith.config import DistillTrainConfig, UNetConfig, VQConfig, from_dict, override, to_dict
from histosmith.data.atomic import sha256_file
from histosmith.data.conditioning import ConditionSpec
from histosmith.data.provenance import collect_records
from histosmith.errors import HistoSmithError
from histosmith.models.unet import ConditionalUNet
from histosmith.models.vqvae import VQAutoencoder
from histosmith.models.wrappers import GuidedUNet
from histosmith.runtime.schedule import ScheduleConfig, alphas_cumprod
from histosmith.training import distributed
from histosmith.training.checkpoint import CHECKPOINT_FILE, load_checkpoint, load_state, resolve
from histosmith.training.common import check_dataset_matches, optimiser_step
from histosmith.training.data import TileStore
from histosmith.training.ldm import cached_latents, min_snr_weights, optimiser_and_ema
from histosmith.training.loop import LoopResult, step_seed
from histosmith.training.trainer import RunContext, RunOptions, dataset_summary, train_stage

log = logging.getLogger(__name__)


def load_teacher(path: Path) -> tuple[dict[str, Any], ConditionalUNet, VQAutoencoder]:
    """The teacher's checkpoint, its EMA U-Net (frozen) and its embedded autoencoder; a student is refused."""
    ckpt = load_checkpoint(path, "ldm")
    file = resolve(path)
    cfg = from_dict(UNetConfig, ckpt["model_config"])
    if cfg.guidance_range is not None:
        raise HistoSmithError(f"{file}: already a guidance-distilled student; distil from its two-pass teacher")
    unet = ConditionalUNet(cfg)
    load_state(unet, ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"], str(file))
    vq = VQAutoencoder(from_dict(VQConfig, ckpt["vqvae"]["model_config"]))
    load_state(vq, ckpt["vqvae"]["model"], f"{file} (embedded autoencoder)")
    return ckpt, unet.eval().requires_grad_(False), vq.eval().requires_grad_(False)


def student_from_teacher(teacher: ConditionalUNet, guidance_range: tuple[float, float]) -> ConditionalUNet:
    """A student with the teacher's weights and a new, zero-initialised guidance embedding."""
    student = ConditionalUNet(replace(teacher.cfg, guidance_range=guidance_range))
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any(not k.startswith("guidance_mlp.") for k in missing):
        raise HistoSmithError(f"teacher weights do not fit the student (missing {missing}, unexpected {unexpected})")
    return student


class DistillStage:
    """Guidance distillation for :func:`~histosmith.training.trainer.train_stage` (checkpoint kind ``ldm``)."""

    kind = "ldm"
    title = "guidance-distilled U-Net (MSE to the guided teacher)"

    def __init__(self, ctx: RunContext, teacher: Path, data: Path | None, guidance_range: tuple[float, float] | None):
        ckpt, opts = ctx.checkpoint, ctx.opts
        self.teacher_ckpt, teacher_unet, self.vq = load_teacher(teacher)
        teacher_file = resolve(teacher)
        teacher_sha = sha256_file(teacher_file)
        tc = self.teacher_ckpt
        if ckpt is not None:
            record = ckpt.get("distillation")
            if record is None:
                raise HistoSmithError(f"{ctx.out}: not a distillation run (resume it with hs-train ldm)")
            if record["teacher_sha256"] != teacher_sha:
                raise HistoSmithError(f"--teacher {teacher}: not the teacher this run was distilled from "
                                      f"({record['teacher']})")
            cfg = from_dict(DistillTrainConfig, ckpt["train_config"])
            if guidance_range is not None and tuple(guidance_range) != (cfg.guidance_min, cfg.guidance_max):
                raise HistoSmithError(f"--guidance-range: a resumed run keeps its own "
                                      f"({cfg.guidance_min:g},{cfg.guidance_max:g})")
        else:
            low, high = guidance_range or (DistillTrainConfig.guidance_min, DistillTrainConfig.guidance_max)
            cfg = DistillTrainConfig(batch_size=opts.batch_size or int(tc["train_config"]["batch_size"]),
                                     lr=opts.lr or DistillTrainConfig.lr, guidance_min=low, guidance_max=high)
        if not 0 <= cfg.guidance_min < cfg.guidance_max <= 100:
            raise HistoSmithError(f"--guidance-range {cfg.guidance_min:g},{cfg.guidance_max:g}: needs 0 <= low < "
                                  "high <= 100")
        self.train_cfg = cfg = override(cfg, max_steps=opts.max_steps)
        self.max_steps, self.log_every, self.checkpoint_every = cfg.max_steps, cfg.log_every, cfg.checkpoint_every
        data = data if data is not None else Path(tc["dataset"]["path"])
        if not (data / "meta.json").exists():
            raise HistoSmithError(f"{data}: the teacher's dataset is not here (no meta.json); pass --data")
        self.summary = summary = dataset_summary(data)
        check_dataset_matches(tc["dataset"], summary["class_names"], summary["tissue_names"], summary["tile_size"],
                              str(data))
        self.spec = ConditionSpec.from_json(tc["condition"])
        self.schedule = from_dict(ScheduleConfig, tc["schedule"])
        self.latent_scale = float(tc["latent_scale"])
        self.seed, self.device, self.amp = ctx.seed, ctx.device, ctx.amp
        self.store = store = TileStore.load(data, "train", opts.show_progress)
        latents = cached_latents(ctx.out, self.vq, teacher_file, data, store, opts.show_progress)
        conditions = np.repeat(self.spec.vectors(store.counts, store.tissues), 8, axis=0)  # matches the latent order
        self.latents = torch.from_numpy(latents * self.latent_scale).to(ctx.device)
        self.conditions = torch.from_numpy(conditions).to(ctx.device)
        self.a_bar = torch.from_numpy(alphas_cumprod(self.schedule)).float().to(ctx.device)
        gamma = tc["train_config"].get("min_snr_gamma")  # the teacher's own loss weighting
        self.loss_weight = min_snr_weights(self.a_bar, self.schedule.prediction, gamma)
        self.teacher = GuidedUNet(teacher_unet).to(ctx.device)
        self.model = student_from_teacher(teacher_unet, (cfg.guidance_min, cfg.guidance_max)).to(ctx.device)
        self.model_cfg = self.model.cfg
        self.params, self.optimizer, self.ema = optimiser_and_ema(self.model, cfg.lr, cfg.weight_decay, cfg.ema_decay,
                                                                  ckpt, str(ctx.out / CHECKPOINT_FILE))
        self.distillation = {"teacher": str(teacher_file), "teacher_sha256": teacher_sha,
                             "teacher_step": int(tc["step"]), "guidance_range": [cfg.guidance_min, cfg.guidance_max],
                             "method": "guidance distillation, stage 1 (Meng et al. 2023)"}
        self.part = ctx.dist.local_slice(cfg.batch_size)
        self.forward = distributed.wrap(self.model, ctx.dist, ctx.device)

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        cfg, device = self.train_cfg, self.device
        rng = np.random.default_rng(step_seed(self.seed, step))
        gen = torch.Generator().manual_seed(step_seed(self.seed, step, 1))
        b = cfg.batch_size
        index = torch.from_numpy(rng.integers(0, len(self.latents), b)).to(device)
        t = torch.from_numpy(rng.integers(0, self.schedule.num_train_timesteps, b)).to(device)
        w = torch.from_numpy(rng.uniform(cfg.guidance_min, cfg.guidance_max, b).astype(np.float32)).to(device)
        noise = torch.randn(self.latents[index].shape, generator=gen).to(device)
        a = self.a_bar[t][:, None, None, None]
        x_t = a.sqrt() * self.latents[index] + (1 - a).sqrt() * noise  # forward process q(x_t | x_0)
        part = self.part  # torchrun: the global batch is drawn on every rank, each keeps its slice
        index, t, w, x_t = index[part], t[part], w[part], x_t[part]
        cond = self.conditions[index]
        with torch.no_grad(), self.autocast():
            target = self.teacher(x_t, t, cond, w).float()  # the two-pass guided output at scale w
        self.model.train()
        with self.autocast():
            pred = self.forward(x_t, t, cond, torch.ones_like(w), w)
        per_sample = (pred.float() - target).pow(2).mean(dim=(1, 2, 3))
        loss = (self.loss_weight[t] * per_sample).mean()
        optimiser_step(self.optimizer, self.params, loss, step, cfg.lr, cfg.warmup_steps, cfg.max_steps,
                       cfg.grad_clip)
        self.ema.update(self.model, step)
        return {"loss": loss.detach()}

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def log_extras(self) -> dict[str, float]:
        return {}

    def config_record(self) -> dict[str, Any]:
        return {"model_config": to_dict(self.model_cfg), "train_config": to_dict(self.train_cfg),
                "schedule": to_dict(self.schedule), "latent_scale": self.latent_scale,
                "condition": self.spec.to_json(), "dataset": self.summary, "distillation": self.distillation}

    def state(self) -> dict[str, Any]:
        tc = self.teacher_ckpt
        return {"model_config": to_dict(self.model_cfg), "train_config": to_dict(self.train_cfg),
                "schedule": to_dict(self.schedule), "latent_scale": self.latent_scale,
                "condition": self.spec.to_json(), "dataset": self.summary,
                "training_conditions": tc["training_conditions"],
                "training_data": collect_records(tc.get("training_data")),
                "model": self.model.state_dict(), "ema": self.ema.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "vqvae": tc["vqvae"], "distillation": self.distillation}


def distill(teacher: Path, out: Path, data: Path | None = None, guidance_range: tuple[float, float] | None = None,
            opts: RunOptions = RunOptions()) -> LoopResult:
    """Distil (or resume distilling) ``teacher``'s classifier-free guidance into a one-pass student in ``out``."""
    return train_stage("ldm", out, opts, lambda ctx: DistillStage(ctx, teacher, data, guidance_range))
