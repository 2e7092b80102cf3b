"""One declarative spec per exported graph: names, dtypes, shapes, dynamic axes, TensorRT profiles.

Export, engine building, buffer allocation and the manifest all read these; tensor names exist only
here as constants.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Tensor names (the ONNX / TensorRT I/O contract).
LATENT = "latent"
TIMESTEP = "timestep"
CONDITION = "condition"
GUIDANCE = "guidance"
NOISE_PRED = "noise_pred"
STEP_COEFS = "step_coefs"  # (7,) solver coefficients (A, B, σ, P, Q, C1, C2) of this step (runtime.schedule)
STEP_NOISE = "step_noise"  # (B, C, h, w) fresh noise of this step (zeros when eta = 0)
NEXT_LATENT = "next_latent"
X0_HISTORY = "x0_history"  # (B, 2, C, h, w) the data predictions x̂_0 of the two previous steps
NEXT_X0_HISTORY = "next_x0_history"  # (B, 2, C, h, w) this step's x̂_0, then the previous one
IMAGE = "image"
DISTANCE = "distance"
SEMANTIC = "semantic"

UNET = "unet"
DECODER = "decoder"
STEP = "step"  # the guided U-Net fused with the sampler update (GPU backends)
BATCH = "batch"  # the symbolic batch dimension

Shape = tuple[int, ...]
ProfileShapes = tuple[Shape, Shape, Shape]  # TensorRT (min, opt, max)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # BATCH for the batch axis
    dtype: str = "float32"

    def concrete(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else int(d) for d in self.shape)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(data["name"], tuple(data["shape"]), data["dtype"])


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export`` dynamic axes: every batch axis named ``batch``."""
        return {t.name: {i: BATCH for i, d in enumerate(t.shape) if d == BATCH} for t in (*self.inputs, *self.outputs)}

    def input_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        return {t.name: t.concrete(batch) for t in self.inputs}

    def output_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        return {t.name: t.concrete(batch) for t in self.outputs}

    def profile(self, low: int, opt: int, high: int) -> dict[str, ProfileShapes]:
        """TensorRT min/opt/max shapes of every input for one batch bucket."""
        return {t.name: (t.concrete(low), t.concrete(opt), t.concrete(high)) for t in self.inputs}

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "inputs": [t.to_json() for t in self.inputs],
                "outputs": [t.to_json() for t in self.outputs]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GraphSpec:
        return cls(data["name"], tuple(TensorSpec.from_json(t) for t in data["inputs"]),
                   tuple(TensorSpec.from_json(t) for t in data["outputs"]))


def unet_spec(latent_shape: tuple[int, int, int], cond_dim: int) -> GraphSpec:
    """The guided U-Net: (latent, timestep, condition, guidance) -> guided noise prediction."""
    c, h, w = latent_shape
    return GraphSpec(
        UNET,
        inputs=(TensorSpec(LATENT, (BATCH, c, h, w)), TensorSpec(TIMESTEP, (BATCH,)),
                TensorSpec(CONDITION, (BATCH, cond_dim)), TensorSpec(GUIDANCE, (BATCH,))),
        outputs=(TensorSpec(NOISE_PRED, (BATCH, c, h, w)),),
    )


def step_spec(latent_shape: tuple[int, int, int], cond_dim: int) -> GraphSpec:
    """One whole sampler step: guided U-Net + ``x̂_0 = P x + Q ε̂``, ``A x + B ε̂ + C1 x̂_0' + C2 x̂_0'' + σ z``
    (histosmith.runtime.schedule), so the loop of any solver stays on the device."""
    c, h, w = latent_shape
    return GraphSpec(
        STEP,
        inputs=(TensorSpec(LATENT, (BATCH, c, h, w)), TensorSpec(TIMESTEP, (BATCH,)),
                TensorSpec(CONDITION, (BATCH, cond_dim)), TensorSpec(GUIDANCE, (BATCH,)),
                TensorSpec(STEP_COEFS, (7,)), TensorSpec(STEP_NOISE, (BATCH, c, h, w)),
                TensorSpec(X0_HISTORY, (BATCH, 2, c, h, w))),
        outputs=(TensorSpec(NEXT_LATENT, (BATCH, c, h, w)), TensorSpec(NEXT_X0_HISTORY, (BATCH, 2, c, h, w))),
    )


def step_coef_count(spec: GraphSpec) -> int:
    """How many per-step coefficients a step graph takes: 7 (any solver), or 3 (DDIM only: exports made before
    the multistep solvers, which have no x̂_0 history)."""
    return int(next(t.shape[0] for t in spec.inputs if t.name == STEP_COEFS))


def decoder_spec(latent_shape: tuple[int, int, int], tile_size: int, n_classes: int) -> GraphSpec:
    """The dual-head decoder: latent -> image, distance, class probabilities."""
    c, h, w = latent_shape
    return GraphSpec(
        DECODER,
        inputs=(TensorSpec(LATENT, (BATCH, c, h, w)),),
        outputs=(TensorSpec(IMAGE, (BATCH, 3, tile_size, tile_size)),
                 TensorSpec(DISTANCE, (BATCH, 1, tile_size, tile_size)),
                 TensorSpec(SEMANTIC, (BATCH, n_classes + 1, tile_size, tile_size))),
    )
