"""Model and training configs: one dataclass per model, saved in every checkpoint and manifest.

Presets (docs/model.md): ``tiny`` for unit tests (seconds), ``small`` for the CPU demo (64 px tiles, minutes
on 2 cores), ``reference`` for the reference example model (``make reference``: the small networks, the
count condition also as cross-attention tokens, three to seven times the demo's steps; under an hour),
``paper`` for GPU training (256 px tiles, f = 4, 64x64x3 latents, codebook 8192, U-Net ~200 base
channels). Data-dependent fields (classes, tissues, tile size) are filled from the dataset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, TypeVar

from histosmith.errors import HistoSmithError
from histosmith.runtime.schedule import ScheduleConfig

PresetName = Literal["tiny", "small", "reference", "paper"]
PRESETS: tuple[str, ...] = ("tiny", "small", "reference", "paper")


@dataclass(frozen=True)
class VQConfig:
    """The dual-head VQ autoencoder over RGB + distance + one-hot classes."""

    n_classes: int  # K, without background
    tile_size: int
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)  # one downsampling between consecutive levels
    n_res_blocks: int = 1
    mid_attention: bool = False
    latent_channels: int = 3
    codebook_size: int = 512
    commitment: float = 0.25
    ema_decay: float = 0.99
    dead_code_threshold: float = 0.03  # EMA assignments per step below which a code is restarted
    norm_groups: int = 16
    head_channels: int = 32

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def latent_size(self) -> int:
        return self.tile_size // self.downsample

    @property
    def in_channels(self) -> int:
        return 3 + 1 + self.n_classes + 1  # RGB, distance, one-hot incl. background


@dataclass(frozen=True)
class UNetConfig:
    """The conditional latent U-Net (LDM style)."""

    latent_channels: int
    latent_size: int
    n_classes: int
    n_tissues: int
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    n_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (1, 2)  # indices into channel_mult that get self-attention
    head_channels: int = 32
    cross_attention: bool = False  # condition also as tokens (one per class + one for the tissue)
    norm_groups: int = 16
    dropout: float = 0.0
    # A guidance-distilled student (hs-train distill): the guidance scale is an input, one pass replaces the
    # conditional + null pair, and these are the scales it was trained on. None: the classifier-free U-Net.
    guidance_range: tuple[float, float] | None = None

    @property
    def cond_dim(self) -> int:
        return self.n_classes + self.n_tissues

    @property
    def time_dim(self) -> int:
        return 4 * self.base_channels


@dataclass(frozen=True)
class VQTrainConfig:
    batch_size: int = 32
    lr: float = 4e-4
    weight_decay: float = 0.0
    max_steps: int = 3000
    warmup_steps: int = 100
    grad_clip: float = 1.0
    l1_weight: float = 1.0
    mse_weight: float = 0.0  # an L2 term on RGB (PSNR is an L2 measure)
    ssim_weight: float = 0.2
    distance_weight: float = 1.0
    ce_weight: float = 1.0
    tversky_weight: float = 0.5
    tversky_alpha: float = 0.3  # weight of false positives
    tversky_beta: float = 0.7  # weight of false negatives (recall of small nuclei matters more)
    gan_start: int | None = None  # step at which the PatchGAN loss switches on; None: never
    gan_weight: float = 0.1
    log_every: int = 25
    checkpoint_every: int = 250


@dataclass(frozen=True)
class LDMTrainConfig:
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.0
    max_steps: int = 6000
    warmup_steps: int = 200
    grad_clip: float = 1.0
    cond_drop: float = 0.1  # classifier-free guidance: the condition is replaced by the learned null
    ema_decay: float = 0.999
    min_snr_gamma: float | None = 5.0  # Min-SNR-γ loss weighting (Hang et al. 2023); None: plain MSE
    # Decoded-map term: for samples with t < map_max_t the predicted x0 goes through the frozen autoencoder's
    # decoder and its distance map (L1) and class map (``map_classes``) are scored against the tile's labels
    # (0: off; benchmarks/map_term.py measures what it does to nucleus sizes and counts).
    map_weight: float = 0.0
    map_start: int = 0  # step from which the term is on (it costs about half a step more)
    map_max_t: int = 500
    map_classes: Literal["autoencoder", "ce", "tversky", "none"] = "autoencoder"  # autoencoder: its own mix
    log_every: int = 50
    checkpoint_every: int = 500


@dataclass(frozen=True)
class DistillTrainConfig:
    """``hs-train distill``: the student starts from its teacher, so a short run at a low rate suffices."""

    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    max_steps: int = 3000
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    guidance_min: float = 1.0  # the student serves guidance scales in [guidance_min, guidance_max]
    guidance_max: float = 5.0
    log_every: int = 50
    checkpoint_every: int = 250


@dataclass(frozen=True)
class Preset:
    vq: dict[str, Any] = field(default_factory=dict)
    unet: dict[str, Any] = field(default_factory=dict)
    vq_train: VQTrainConfig = field(default_factory=VQTrainConfig)
    ldm_train: LDMTrainConfig = field(default_factory=LDMTrainConfig)


_PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        vq=dict(base_channels=8, channel_mult=(1, 2), n_res_blocks=1, codebook_size=32, latent_channels=3,
                norm_groups=4, head_channels=8),
        unet=dict(base_channels=16, channel_mult=(1, 2), n_res_blocks=1, attention_levels=(1,), head_channels=8,
                  norm_groups=4, cross_attention=True),
        vq_train=VQTrainConfig(batch_size=8, lr=2e-3, max_steps=30, warmup_steps=5, log_every=5, checkpoint_every=10),
        ldm_train=LDMTrainConfig(batch_size=16, lr=2e-3, max_steps=30, warmup_steps=5, ema_decay=0.9,
                                 log_every=5, checkpoint_every=10),
    ),
    "small": Preset(
        vq=dict(base_channels=32, channel_mult=(1, 2, 2), n_res_blocks=1, codebook_size=1024, latent_channels=4,
                norm_groups=16, head_channels=32),
        unet=dict(base_channels=64, channel_mult=(1, 2, 2), n_res_blocks=1, attention_levels=(1, 2),
                  head_channels=32, norm_groups=16),
        # Sized for the CPU demo: about 8 minutes per stage on 2 cores with bf16 autocast.
        vq_train=VQTrainConfig(batch_size=12, lr=8e-4, max_steps=1300, warmup_steps=50, log_every=25,
                               checkpoint_every=260),
        ldm_train=LDMTrainConfig(batch_size=32, lr=3e-4, max_steps=1500, warmup_steps=50, ema_decay=0.995,
                                 log_every=25, checkpoint_every=250),
    ),
    "reference": Preset(
        vq=dict(base_channels=32, channel_mult=(1, 2, 2), n_res_blocks=1, codebook_size=1024, latent_channels=4,
                norm_groups=16, head_channels=32),
        unet=dict(base_channels=64, channel_mult=(1, 2, 2), n_res_blocks=1, attention_levels=(1, 2),
                  head_channels=32, norm_groups=16, cross_attention=True),
        # The PatchGAN term from step 1,000: without it the decoder draws smooth nuclei that train a poor
        # segmenter (docs/results/vq_roundtrip). About 15 + 27 minutes on 2 idle cores with bf16 autocast.
        vq_train=VQTrainConfig(batch_size=12, lr=8e-4, max_steps=4000, warmup_steps=50, gan_start=1000,
                               gan_weight=0.1, log_every=25, checkpoint_every=400),
        ldm_train=LDMTrainConfig(batch_size=32, lr=3e-4, max_steps=10000, warmup_steps=100, ema_decay=0.999,
                                 log_every=50, checkpoint_every=500),
    ),
    "paper": Preset(
        vq=dict(base_channels=128, channel_mult=(1, 2, 4), n_res_blocks=2, mid_attention=True, codebook_size=8192,
                latent_channels=3, norm_groups=32, head_channels=64),
        unet=dict(base_channels=192, channel_mult=(1, 2, 3, 4), n_res_blocks=2, attention_levels=(1, 2, 3),
                  head_channels=32, norm_groups=32, cross_attention=True, dropout=0.0),
        vq_train=VQTrainConfig(batch_size=16, lr=1e-4, max_steps=200_000, warmup_steps=2000, gan_start=50_000,
                               log_every=100, checkpoint_every=5000),
        ldm_train=LDMTrainConfig(batch_size=48, lr=1e-4, max_steps=400_000, warmup_steps=5000, ema_decay=0.9999,
                                 log_every=100, checkpoint_every=5000),
    ),
}


def preset(name: str) -> Preset:
    if name not in _PRESETS:
        raise HistoSmithError(f"unknown config {name!r}; choose from {list(_PRESETS)}")
    return _PRESETS[name]


def vq_config(name: str, n_classes: int, tile_size: int) -> VQConfig:
    cfg = VQConfig(n_classes=n_classes, tile_size=tile_size, **preset(name).vq)
    if tile_size % cfg.downsample:
        raise HistoSmithError(f"tile size {tile_size} is not divisible by the downsampling factor {cfg.downsample}")
    return cfg


def unet_config(name: str, vq: VQConfig, n_tissues: int) -> UNetConfig:
    cfg = UNetConfig(latent_channels=vq.latent_channels, latent_size=vq.latent_size, n_classes=vq.n_classes,
                     n_tissues=n_tissues, **preset(name).unet)
    if cfg.latent_size % 2 ** (len(cfg.channel_mult) - 1):
        raise HistoSmithError(f"latent size {cfg.latent_size} too small for {len(cfg.channel_mult)} U-Net levels")
    return cfg


T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a config dataclass (tuples become lists)."""
    return asdict(cfg)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a config dataclass; list fields whose default is a tuple become tuples again."""
    names = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - set(names)
    if unknown:
        raise HistoSmithError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kwargs)


def override(cfg: T, **changes: Any) -> T:
    """``dataclasses.replace`` that ignores ``None`` values (unset CLI options)."""
    return replace(cfg, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[type-var]


__all__ = [
    "PRESETS", "DistillTrainConfig", "LDMTrainConfig", "Preset", "ScheduleConfig", "UNetConfig", "VQConfig",
    "VQTrainConfig", "from_dict", "override", "preset", "to_dict", "unet_config", "vq_config",
]
