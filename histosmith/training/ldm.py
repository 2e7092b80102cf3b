"""Stage 2: train the conditional U-Net on cached VQ latents (``hs-train ldm``).

Latents of every training tile under all 8 flips/rotations are encoded once (pre-quantisation, as LDM
does with VQ first stages) and cached beside the run, keyed by the autoencoder checkpoint's hash.
They are scaled to unit variance (``latent_scale``). The condition is replaced by the learned null
with probability ``cond_drop`` (classifier-free guidance). eps-prediction by default.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from histosmith.config import LDMTrainConfig, UNetConfig, from_dict, override, preset, to_dict, unet_config
from histosmith.data.atomic import sha256_file, write_bytes_atomic
from histosmith.data.conditioning import ConditionSpec
from histosmith.data.provenance import collect_records, training_record
from histosmith.models.unet import ConditionalUNet
from histosmith.models.vqvae import VQAutoencoder
from histosmith.runtime.schedule import ScheduleConfig, alphas_cumprod
from histosmith.training.checkpoint import (
    CHECKPOINT_FILE,
    load_checkpoint,
    load_state,
    resolve,
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
from histosmith.training.data import TileStore
from histosmith.training.loop import LogWriter, LoopResult, run_loop, step_seed
from histosmith.training.vqvae import RunOptions, dataset_summary, load_vqvae

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
        with np.load(cache) as z:
            if str(z["key"]) == key:
                return z["latents"]
        log.info("latent cache %s is stale; re-encoding", cache)
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


def train_ldm(data: Path, vqvae: Path, out: Path, config: str = "small", opts: RunOptions = RunOptions(),
              schedule: ScheduleConfig = ScheduleConfig()) -> LoopResult:
    """Train (or resume) the conditional U-Net; the checkpoint embeds the autoencoder and the schedule."""
    resuming = prepare_run_dir(out, opts.resume)
    summary = dataset_summary(data)
    vq, vq_ckpt = load_vqvae(vqvae)
    check_dataset_matches(vq_ckpt["dataset"], summary["class_names"], summary["tissue_names"],
                          summary["tile_size"], str(data))
    spec = ConditionSpec(tuple(summary["class_names"]), tuple(summary["tissue_names"]),
                         tuple(summary["count_scale"]), tuple(summary["count_max"]))
    ckpt = load_checkpoint(out, "ldm") if resuming else None
    if ckpt is not None:
        check_dataset_matches(ckpt["dataset"], summary["class_names"], summary["tissue_names"],
                              summary["tile_size"], str(data))
        model_cfg = from_dict(UNetConfig, ckpt["model_config"])
        train_cfg = from_dict(LDMTrainConfig, ckpt["train_config"])
        schedule = from_dict(ScheduleConfig, ckpt["schedule"])
        seed = int(ckpt["seed"])
    else:
        model_cfg = unet_config(config, vq.cfg, spec.n_tissues)
        train_cfg = override(preset(config).ldm_train, batch_size=opts.batch_size, lr=opts.lr)
        seed = opts.seed
    train_cfg = override(train_cfg, max_steps=opts.max_steps)
    device, amp = start_run(opts, seed)
    store = TileStore.load(data, "train", opts.show_progress)
    # Every tile either stage saw: the generator's provenance, checked by hs-eval downstream for leakage.
    training_data = collect_records(vq_ckpt.get("training_data"), training_record(data, "train", store.images, "ldm"))
    latents = cached_latents(out, vq, vqvae, data, store, opts.show_progress)
    latent_scale = float(ckpt["latent_scale"]) if ckpt is not None else float(1.0 / latents.std())
    conditions = np.repeat(spec.vectors(store.counts, store.tissues), 8, axis=0)  # matches the latent order
    latents_t = torch.from_numpy(latents * latent_scale).to(device)
    conditions_t = torch.from_numpy(conditions).to(device)
    a_bar = torch.from_numpy(alphas_cumprod(schedule)).float().to(device)
    loss_weight = min_snr_weights(a_bar, schedule.prediction, train_cfg.min_snr_gamma)

    model = ConditionalUNet(model_cfg).to(device)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    ema = EMA(model, train_cfg.ema_decay)
    start = 0
    if ckpt is not None:
        load_state(model, ckpt["model"], str(out / CHECKPOINT_FILE))
        load_state(ema.model, ckpt["ema"], str(out / CHECKPOINT_FILE))
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        start = int(ckpt["step"])
    training_conditions = {"counts": torch.from_numpy(store.counts), "tissues": torch.from_numpy(store.tissues)}
    write_config_json(out, {"kind": "ldm", "model_config": to_dict(model_cfg), "train_config": to_dict(train_cfg),
                            "schedule": to_dict(schedule), "latent_scale": latent_scale,
                            "condition": spec.to_json(), "dataset": summary, "vqvae": str(vqvae), "seed": seed})
    log_writer = LogWriter.resume(out / "log.csv", start)

    def train_step(step: int) -> dict[str, float]:
        rng = np.random.default_rng(step_seed(seed, step))
        gen = torch.Generator().manual_seed(step_seed(seed, step, 1))
        torch.manual_seed(step_seed(seed, step, 2))
        b = train_cfg.batch_size
        index = torch.from_numpy(rng.integers(0, len(latents_t), b)).to(device)
        x0 = latents_t[index]
        t = torch.from_numpy(rng.integers(0, schedule.num_train_timesteps, b)).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        a = a_bar[t][:, None, None, None]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise  # forward process q(x_t | x_0)
        target = noise if schedule.prediction == "eps" else a.sqrt() * noise - (1 - a).sqrt() * x0
        keep = torch.from_numpy((rng.random(b) >= train_cfg.cond_drop).astype(np.float32)).to(device)
        model.train()
        ctx = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        with ctx:
            pred = model(x_t, t, conditions_t[index], keep)
        per_sample = (pred.float() - target).pow(2).mean(dim=(1, 2, 3))  # (B,)
        loss = (loss_weight[t] * per_sample).mean()
        optimiser_step(optimizer, params, loss, step, train_cfg.lr, train_cfg.warmup_steps, train_cfg.max_steps,
                       train_cfg.grad_clip)
        ema.update(model, step)
        return {"loss": float(loss.detach())}

    def save(step: int) -> None:
        save_checkpoint(out / CHECKPOINT_FILE, {
            "kind": "ldm", "model_config": to_dict(model_cfg), "train_config": to_dict(train_cfg),
            "schedule": to_dict(schedule), "latent_scale": latent_scale, "condition": spec.to_json(),
            "dataset": summary, "training_conditions": training_conditions, "training_data": training_data,
            "seed": seed, "step": step,
            "model": model.state_dict(), "ema": ema.model.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": rng_state(),
            "vqvae": {"model_config": vq_ckpt["model_config"], "model": vq.state_dict(), "source": str(vqvae)},
        })

    result = run_loop(start_step=start, max_steps=train_cfg.max_steps, max_minutes=opts.max_minutes,
                      train_step=train_step, save=save, log_writer=log_writer, log_every=train_cfg.log_every,
                      checkpoint_every=train_cfg.checkpoint_every, desc="ldm", stop_at_step=opts.stop_at_step,
                      show_progress=opts.show_progress)
    log_writer.plot(out / "loss.png", "conditional U-Net (eps MSE)")
    return result
