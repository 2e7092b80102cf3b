"""What the runtime needs to know about a generator, whether it comes from a manifest or a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from histosmith.data.conditioning import ConditionSpec
from histosmith.errors import HistoSmithError
from histosmith.runtime.schedule import SamplingDefaults, ScheduleConfig


@dataclass(frozen=True)
class GeneratorInfo:
    spec: ConditionSpec
    schedule: ScheduleConfig
    latent_shape: tuple[int, int, int]  # (C, h, w)
    tile_size: int
    training_counts: np.ndarray  # (N, K) per-tile counts of the training set (for --from-dataset, --balance)
    training_tissues: np.ndarray  # (N,)
    count_margin: int = 0
    source: str = ""
    provenance: tuple[dict, ...] = ()  # training records of the generator (histosmith.data.provenance)
    sampling: SamplingDefaults = SamplingDefaults()  # sampler, steps and guidance unless told otherwise
    guidance_range: tuple[float, float] | None = None  # a guidance-distilled U-Net: the scales it was trained on

    def check_guidance(self, guidance: float, what: str = "--guidance") -> None:
        """Refuse a guidance scale a distilled U-Net was not trained for (it would extrapolate silently)."""
        if self.guidance_range is None:
            return
        low, high = self.guidance_range
        if not low <= guidance <= high:
            raise HistoSmithError(f"{what} {guidance:g}: this U-Net is guidance-distilled for scales {low:g}..{high:g} "
                                  "only; choose one in that range or use the two-pass teacher's export")

    @property
    def n_classes(self) -> int:
        return self.spec.n_classes
