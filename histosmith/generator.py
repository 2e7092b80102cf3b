"""A trained generator loaded from an LDM checkpoint: the two inference modules and what they need."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histosmith.config import UNetConfig, VQConfig, from_dict
from histosmith.data.conditioning import ConditionSpec
from histosmith.data.provenance import collect_records
from histosmith.errors import HistoSmithError
from histosmith.models.unet import ConditionalUNet
from histosmith.models.vqvae import VQAutoencoder
from histosmith.models.wrappers import DistilledUNet, GuidedUNet, LatentDecoder, guided_unet
from histosmith.runtime.backends.base import Backend
from histosmith.runtime.info import GeneratorInfo
from histosmith.runtime.schedule import SamplerTables, ScheduleConfig
from histosmith.training.checkpoint import load_checkpoint, load_state, resolve


@dataclass
class TrainedGenerator:
    guided: GuidedUNet | DistilledUNet  # EMA weights, eval mode
    decoder: LatentDecoder
    unet_config: UNetConfig
    vq_config: VQConfig
    info: GeneratorInfo
    checkpoint: Path
    step: int
    distillation: dict | None = None  # a guidance-distilled student: its teacher, steps and scales


def load_generator(path: Path) -> TrainedGenerator:
    """Load an ``hs-train ldm`` checkpoint (run directory or file) for sampling or export."""
    ckpt = load_checkpoint(path, "ldm")
    file = resolve(path)
    unet_cfg = from_dict(UNetConfig, ckpt["model_config"])
    vq_cfg = from_dict(VQConfig, ckpt["vqvae"]["model_config"])
    unet = ConditionalUNet(unet_cfg)
    load_state(unet, ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"], str(file))
    vq = VQAutoencoder(vq_cfg)
    load_state(vq, ckpt["vqvae"]["model"], f"{file} (embedded autoencoder)")
    spec = ConditionSpec.from_json(ckpt["condition"])
    if spec.n_classes != vq_cfg.n_classes or spec.dim != unet_cfg.cond_dim:
        raise HistoSmithError(f"{file}: condition spec does not fit the models (corrupt checkpoint?)")
    conditions = ckpt["training_conditions"]
    info = GeneratorInfo(
        spec=spec,
        schedule=from_dict(ScheduleConfig, ckpt["schedule"]),
        latent_shape=(unet_cfg.latent_channels, unet_cfg.latent_size, unet_cfg.latent_size),
        tile_size=vq_cfg.tile_size,
        training_counts=conditions["counts"].numpy().astype(np.int64),
        training_tissues=conditions["tissues"].numpy().astype(np.int64),
        count_margin=int(ckpt.get("dataset", {}).get("count_margin", 0)),  # the counting rule of the training set
        source=f"HistoSmith generator {file} (step {int(ckpt['step'])})",
        provenance=tuple(collect_records(ckpt.get("training_data"))),
        guidance_range=unet_cfg.guidance_range,
    )
    return TrainedGenerator(guided_unet(unet).eval(), LatentDecoder(vq, ckpt["latent_scale"]).eval(), unet_cfg,
                            vq_cfg, info, file, int(ckpt["step"]),
                            ckpt.get("distillation"))


@dataclass
class CheckpointSession:
    """A trained generator as a generation session (``hs-sample``): the torch reference sampler."""

    generator: TrainedGenerator
    device: str = "cpu"
    precision: str = "fp32"
    cuda_graph: bool = False
    compile_modules: bool = False
    batch: int | None = None

    @property
    def info(self) -> GeneratorInfo:
        return self.generator.info

    @property
    def model_id(self) -> str:
        return f"{self.generator.checkpoint} step {self.generator.step}"

    def batch_limits(self) -> tuple[int, int]:
        return 1, 2**31 - 1

    def backend(self, tables: SamplerTables) -> Backend:
        from histosmith.runtime.backends.torch_backend import DTYPES, TorchBackend
        from histosmith.runtime.planning import BatchBuckets

        dtype = DTYPES[self.precision]
        gen = self.generator
        buckets = BatchBuckets.ladder(self.batch) if self.batch else None  # full batches never padded
        return TorchBackend(gen.guided.to(self.device, dtype), gen.decoder.to(self.device, dtype), tables,
                            self.device, dtype, self.cuda_graph, buckets, compile_modules=self.compile_modules)
