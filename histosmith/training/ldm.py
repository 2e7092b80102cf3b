"""Stage 2: train the conditional U-Net on cached VQ latents (``hs-train ldm``).

Latents of every training tile under all 8 flips/rotations are encoded once (pre-quantisation, as LDM
does with VQ first stages) and cached beside the run, keyed by the autoencoder checkpoint's hash.
They are scaled to unit variance (``latent_scale``). The condition is replaced by the learned null
with probability ``cond_drop`` (classifier-free guidance). eps-prediction by default. Optionally, from step
``map_start``, the decoded-map term scores the autoencoder's decoding of the predicted x0 against the tile's labels
(:meth:`LDMStage.map_loss`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from histosmith.config import LDMTrainConfig, UNetConfig, from_dict, override, preset, to_dict, unet_config
from histosmith.data.atomic import sha256_file, write_bytes_atomic
from histosmith.data.conditioning import ConditionSpec
from histosmith.data.provenance import collect_records, training_record
from histosmith.errors import HistoSmithError
from histosmith.models.unet import ConditionalUNet
from histosmith.models.vqvae import VQAutoencoder
from histosmith.runtime.schedule import ScheduleConfig, alphas_cumprod
from histosmith.training import distributed
from histosmith.training.checkpoint import CHECKPOINT_FILE, load_state, resolve
from histosmith.training.common import check_dataset_matches, optimiser_step
from histosmith.training.data import TileStore, split_input
from histosmith.training.loop import LoopResult, step_seed
from histosmith.training.losses import label_map_terms
from histosmith.training.trainer import RunContext, RunOptions, dataset_summary, train_stage
from histosmith.training.vqvae import load_vqvae

log = logging.getLogger(__name__)
LATENT_CACHE = "latents.npz"


@torch.no_grad()
def encode_latents(vq: VQAutoencoder, store: TileStore, batch_size: int = 64, show_progress: bool = True
                   ) -> np.ndarray:
    """Pre-quantisation latents of every tile under the 8 dihedral transforms: (N*8, C, h, w) float32."""
    out = []
    order = [(i, k) for i in range(len(store)) for k in range(8)]
    for start in tqdm(range(0, len(order), batch_size), desc="encode latents", disable=not show_progress):
        chunk = order[start : start + batch_size]
        x = store.inputs(np.array([i for i, _ in chunk]), np.array([k for _, k in chunk]))
        out.append(vq.encode(x).numpy())
    return np.concatenate(out).astype(np.float32)


def cached_latents(run: Path, vq: VQAutoencoder, vq_path: Path, data: Path, store: TileStore,
                   show_progress: bool) -> np.ndarray:
    """Load the latent cache if it was made from this autoencoder and dataset, else encode and save it."""
    key = hashlib.sha256(f"{sha256_file(resolve(vq_path))}|{data.resolve()}|{len(store)}".encode()).hexdigest()
    cache = run / LATENT_CACHE
    if cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    return np.asarray(z["latents"], dtype=np.float32)
            log.info("latent cache %s is stale; re-encoding", cache)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            log.warning("latent cache %s is damaged (truncated?); re-encoding", cache)
    latents = encode_latents(vq, store, show_progress=show_progress)
    write_bytes_atomic(cache, lambda f: np.savez(f, latents=latents, key=np.array(key)))
    return latents


def min_snr_weights(a_bar: torch.Tensor, prediction: str, gamma: float | None) -> torch.Tensor:
    """Per-timestep loss weights of Min-SNR-γ (Hang et al. 2023, eq. 9-10); ones when ``gamma`` is None.

    ``SNR_t = ᾱ_t / (1 - ᾱ_t)``; eps-prediction: ``min(SNR, γ) / SNR``; v-prediction: ``min(SNR, γ) / (SNR + 1)``.
    Down-weighting the easy low-noise steps stops them from dominating the gradient.
    """
    if gamma is None:
        return torch.ones_like(a_bar)
    snr = a_bar / (1 - a_bar)
    clipped = snr.clamp(max=gamma)
    return clipped / snr if prediction == "eps" else clipped / (snr + 1)


class EMA:
    """Exponential moving average of parameters (kept in float32)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # warm start: early steps follow the model
        for e, p in zip(self.model.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach(), 1 - decay)


def optimiser_and_ema(model: torch.nn.Module, lr: float, weight_decay: float, ema_decay: float,
                      ckpt: dict[str, Any] | None, where: str) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer,
                                                                      EMA]:
    """AdamW and the EMA copy of a U-Net, restored (with the weights) from a run's own checkpoint when resuming."""
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    ema = EMA(model, ema_decay)
    if ckpt is not None:
        load_state(model, ckpt["model"], where)
        load_state(ema.model, ckpt["ema"], where)
        optimizer.load_state_dict(ckpt["optimizer"])
    return params, optimizer, ema


class LDMStage:
    """Stage 2 for :func:`~histosmith.training.trainer.train_stage`."""

    kind = "ldm"
    title = "conditional U-Net (eps MSE)"

    def __init__(self, ctx: RunContext, data: Path, vqvae: Path, config: str,
                 schedule: ScheduleConfig = ScheduleConfig()):
        ckpt, opts = ctx.checkpoint, ctx.opts
        self.summary = summary = dataset_summary(data)
        self.vq, self.vq_ckpt = load_vqvae(vqvae)
        self.vqvae = vqvae
        check_dataset_matches(self.vq_ckpt["dataset"], summary["class_names"], summary["tissue_names"],
                              summary["tile_size"], str(data))
        self.spec = ConditionSpec(tuple(summary["class_names"]), tuple(summary["tissue_names"]),
                                  tuple(summary["count_scale"]), tuple(summary["count_max"]))
        if ckpt is not None and ckpt.get("distillation") is not None:
            raise HistoSmithError(f"{ctx.out}: a guidance-distillation run; resume it with hs-train distill")
        if ckpt is not None:
            check_dataset_matches(ckpt["dataset"], summary["class_names"], summary["tissue_names"],
                                  summary["tile_size"], str(data))
            self.model_cfg = from_dict(UNetConfig, ckpt["model_config"])
            train_cfg = from_dict(LDMTrainConfig, ckpt["train_config"])
            schedule = from_dict(ScheduleConfig, ckpt["schedule"])
        else:
            self.model_cfg = unet_config(config, self.vq.cfg, self.spec.n_tissues)
            train_cfg = override(preset(config).ldm_train, batch_size=opts.batch_size, lr=opts.lr)
        self.schedule = schedule
        self.train_cfg = cfg = override(train_cfg, max_steps=opts.max_steps)
        self.max_steps, self.log_every, self.checkpoint_every = cfg.max_steps, cfg.log_every, cfg.checkpoint_every
        self.seed, self.device, self.amp = ctx.seed, ctx.device, ctx.amp
        self.store = store = TileStore.load(data, "train", opts.show_progress)
        self.vq.requires_grad_(False).eval()  # frozen; the decoded-map term backpropagates through it
        # Every tile either stage saw: the generator's provenance, checked by hs-eval downstream for leakage.
        self.training_data = collect_records(self.vq_ckpt.get("training_data"),
                                             training_record(data, "train", store.images, "ldm"))
        latents = cached_latents(ctx.out, self.vq, vqvae, data, store, opts.show_progress)
        self.latent_scale = float(ckpt["latent_scale"]) if ckpt is not None else float(1.0 / latents.std())
        conditions = np.repeat(self.spec.vectors(store.counts, store.tissues), 8, axis=0)  # matches the latent order
        self.latents = torch.from_numpy(latents * self.latent_scale).to(ctx.device)
        self.conditions = torch.from_numpy(conditions).to(ctx.device)
        self.training_conditions = {"counts": torch.from_numpy(store.counts),
                                    "tissues": torch.from_numpy(store.tissues)}
        self.a_bar = torch.from_numpy(alphas_cumprod(schedule)).float().to(ctx.device)
        self.loss_weight = min_snr_weights(self.a_bar, schedule.prediction, cfg.min_snr_gamma)
        self.model = ConditionalUNet(self.model_cfg).to(ctx.device)
        self.params, self.optimizer, self.ema = optimiser_and_ema(self.model, cfg.lr, cfg.weight_decay, cfg.ema_decay,
                                                                  ckpt, str(ctx.out / CHECKPOINT_FILE))
        self.part = ctx.dist.local_slice(cfg.batch_size)  # torchrun: this rank's part of the global batch
        self.forward = distributed.wrap(self.model, ctx.dist, ctx.device)

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        cfg, schedule, device = self.train_cfg, self.schedule, self.device
        rng = np.random.default_rng(step_seed(self.seed, step))
        gen = torch.Generator().manual_seed(step_seed(self.seed, step, 1))
        torch.manual_seed(step_seed(self.seed, step, 2))
        b = cfg.batch_size
        index = torch.from_numpy(rng.integers(0, len(self.latents), b)).to(device)
        x0 = self.latents[index]
        t = torch.from_numpy(rng.integers(0, schedule.num_train_timesteps, b)).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        a = self.a_bar[t][:, None, None, None]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise  # forward process q(x_t | x_0)
        target = noise if schedule.prediction == "eps" else a.sqrt() * noise - (1 - a).sqrt() * x0
        keep = torch.from_numpy((rng.random(b) >= cfg.cond_drop).astype(np.float32)).to(device)
        # The whole global batch is drawn on every rank (same numbers as one process); each keeps its slice.
        part = self.part
        index, t, x_t, target, keep = index[part], t[part], x_t[part], target[part], keep[part]
        self.model.train()
        with self.autocast():
            pred = self.forward(x_t, t, self.conditions[index], keep)
        per_sample = (pred.float() - target).pow(2).mean(dim=(1, 2, 3))  # (B,)
        loss = (self.loss_weight[t] * per_sample).mean()
        terms = {}
        if cfg.map_weight > 0 and step >= cfg.map_start:
            low = t < cfg.map_max_t
            terms["map"] = self.map_loss(x_t[low], pred[low].float(), t[low], index[low])
            loss = loss + cfg.map_weight * terms["map"] * low.float().mean()  # per sample of the batch, like MSE
        optimiser_step(self.optimizer, self.params, loss, step, cfg.lr, cfg.warmup_steps, cfg.max_steps,
                       cfg.grad_clip)
        self.ema.update(self.model, step)
        return {"loss": loss.detach()} | {k: v.detach() for k, v in terms.items()}

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def map_loss(self, x_t: torch.Tensor, pred: torch.Tensor, t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The decoded-map term: L1 on the distance map (+ ``map_classes``: a cross-entropy or Tversky term on the
        class map) of the predicted x0.

        The predicted x0 is unscaled, snapped to the codebook with a straight-through gradient (the runtime
        decodes snapped latents) and decoded by the frozen autoencoder; targets are the tile's labels under the
        latent's flip. Only samples below ``map_max_t`` are scored: at high noise the predicted x0 is the blurred
        mean of many tiles, and asking its decoded maps to match one tile's labels would be unfair. The aim: the
        eps loss alone leaves the nuclei of sampled tiles too small or merged (``hs-eval realism``'s area
        ratios); this term scores their outlines directly.
        """
        if len(t) == 0:
            return torch.zeros((), device=x_t.device)
        a = self.a_bar[t][:, None, None, None]
        if self.schedule.prediction == "eps":
            x0 = (x_t - (1 - a).sqrt() * pred) / a.sqrt()
        else:
            x0 = a.sqrt() * x_t - (1 - a).sqrt() * pred
        z = x0 / self.latent_scale
        zq = z + (self.vq.quantizer.quantize(z.detach()) - z).detach()
        with self.autocast():
            out = self.vq.decoder(zq)
        flat = index.cpu().numpy()
        _, dist, classes = split_input(self.store.inputs(flat // 8, flat % 8).to(x_t.device))  # latent order
        vq = self.vq_ckpt["train_config"]  # the autoencoder's own loss settings
        terms = label_map_terms(out.distance, out.logits, dist, classes, vq["tversky_alpha"], vq["tversky_beta"])
        mode = self.train_cfg.map_classes
        if mode == "autoencoder":  # every term weighted as the autoencoder was trained
            return (vq["distance_weight"] * terms["distance"] + vq["ce_weight"] * terms["ce"]
                    + vq["tversky_weight"] * terms["tversky"])
        return terms["distance"] + (terms[mode] if mode != "none" else 0.0)

    def log_extras(self) -> dict[str, float]:
        return {}

    def config_record(self) -> dict[str, Any]:
        return {"model_config": to_dict(self.model_cfg), "train_config": to_dict(self.train_cfg),
                "schedule": to_dict(self.schedule), "latent_scale": self.latent_scale,
                "condition": self.spec.to_json(), "dataset": self.summary, "vqvae": str(self.vqvae)}

    def state(self) -> dict[str, Any]:
        return {"model_config": to_dict(self.model_cfg), "train_config": to_dict(self.train_cfg),
                "schedule": to_dict(self.schedule), "latent_scale": self.latent_scale,
                "condition": self.spec.to_json(), "dataset": self.summary,
                "training_conditions": self.training_conditions, "training_data": self.training_data,
                "model": self.model.state_dict(),
                "ema": self.ema.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "vqvae": {"model_config": self.vq_ckpt["model_config"], "model": self.vq.state_dict(),
                          "source": str(self.vqvae)}}


def train_ldm(data: Path, vqvae: Path, out: Path, config: str = "small", opts: RunOptions = RunOptions(),
              schedule: ScheduleConfig = ScheduleConfig()) -> LoopResult:
    """Train (or resume) the conditional U-Net; the checkpoint embeds the autoencoder and the schedule."""
    return train_stage("ldm", out, opts, lambda ctx: LDMStage(ctx, data, vqvae, config, schedule))
