"""Configs of the downstream segmenter: the model and its training, saved in every checkpoint.

Presets: ``tiny`` (unit tests, seconds) and ``small`` (64 px tiles on CPUs: 16-256 channels over five
levels, 2.0 M parameters; the wide levels sit at low resolution, so a step costs about half that of a
1.1 M-parameter four-level net with 24 base channels).
"""

from __future__ import annotations

from dataclasses import dataclass

from histosmith.errors import HistoSmithError

SEG_PRESETS: tuple[str, ...] = ("tiny", "small")


@dataclass(frozen=True)
class SegConfig:
    """A U-Net encoder-decoder with three HoVer-Net-style heads: foreground, distance map, class logits."""

    n_classes: int  # K, without background
    tile_size: int
    base_channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2, 4, 8, 16)  # one 2x downsampling between consecutive levels

    @property
    def levels(self) -> int:
        return len(self.channel_mult)


@dataclass(frozen=True)
class SegTrainConfig:
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_steps: int = 800
    warmup_steps: int = 50
    grad_clip: float = 1.0
    foreground_weight: float = 1.0  # BCE + soft Dice on the nucleus mask
    distance_weight: float = 2.0  # MSE on the distance map (it seeds the watershed)
    class_weight: float = 1.0  # cross-entropy + Dice over background + K classes
    log_every: int = 25
    checkpoint_every: int = 250


_MODEL = {
    "tiny": dict(base_channels=8, channel_mult=(1, 2)),
    "small": dict(base_channels=16, channel_mult=(1, 2, 4, 8, 16)),
}
_TRAIN = {
    "tiny": SegTrainConfig(batch_size=8, lr=3e-3, max_steps=30, warmup_steps=5, log_every=5, checkpoint_every=10),
    "small": SegTrainConfig(),
}


def seg_config(name: str, n_classes: int, tile_size: int) -> SegConfig:
    if name not in _MODEL:
        raise HistoSmithError(f"unknown segmenter config {name!r}; choose from {list(SEG_PRESETS)}")
    cfg = SegConfig(n_classes=n_classes, tile_size=tile_size, **_MODEL[name])
    if tile_size % 2 ** (cfg.levels - 1):
        raise HistoSmithError(f"tile size {tile_size} is not divisible by {2 ** (cfg.levels - 1)} "
                              f"(the {name} segmenter's {cfg.levels} levels)")
    return cfg


def seg_train_config(name: str) -> SegTrainConfig:
    if name not in _TRAIN:
        raise HistoSmithError(f"unknown segmenter config {name!r}; choose from {list(SEG_PRESETS)}")
    return _TRAIN[name]
