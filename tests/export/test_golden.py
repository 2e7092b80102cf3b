"""Golden numbers: the tiny U-Net, the tiny decoder and a full tiny sampling loop on fixed inputs.

The weights are not trained and not drawn by torch: every tensor of the models' state comes from a
fixed numpy generator (``_deterministic_weights``), and so do the inputs. The outputs were computed once
with the torch reference (fp32, CPU) and stored in ``golden_tiny.npz``; every backend that runs here is
checked against them, so a change in the model code, the exporter, a backend or the sampler that moves a
number shows up as a failure instead of passing through unnoticed.

Tolerance: ``max |got - golden| / max |golden|`` per output, at most ``TOLERANCE[backend]`` (fp32 paths
1e-5 / 1e-4 for operator reordering; fp16 graphs 3e-2). Regenerate (only after a deliberate change to the
models or the sampler, stating why in the commit):
``HISTOSMITH_WRITE_GOLDEN=1 python -m pytest tests/export/test_golden.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from histosmith.config import unet_config, vq_config
from histosmith.export.onnx_export import clean, save_onnx, to_fp16, to_onnx
from histosmith.export.torch_export import export_program, save_program
from histosmith.models.unet import ConditionalUNet
from histosmith.models.vqvae import VQAutoencoder
from histosmith.models.wrappers import GuidedUNet, LatentDecoder
from histosmith.runtime.backends.onnx_backend import OnnxBackend
from histosmith.runtime.backends.torch_backend import TorchBackend
from histosmith.runtime.schedule import ScheduleConfig, Scheduler
from histosmith.runtime.seeds import tile_noise
from histosmith.runtime.specs import decoder_spec, unet_spec

GOLDEN = Path(__file__).with_name("golden_tiny.npz")
WRITE = os.environ.get("HISTOSMITH_WRITE_GOLDEN") == "1"
TOLERANCE = {"torch": 1e-5, "torch-export": 1e-5, "onnxruntime-fp32": 1e-4, "onnxruntime-fp16": 3e-2}
N_CLASSES, N_TISSUES, TILE = 3, 2, 16
STEPS, ETA, SEED = 4, 0.5, 11


def _deterministic_weights(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every floating tensor of the state from numpy: matrices ~ U(±sqrt(3 / fan_in)), vectors that
    torch initialises to a constant (norm scales, zero biases) keep it, other vectors ~ U(±0.1)."""
    rng = np.random.default_rng(seed)
    state = module.state_dict()
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        if tensor.dim() >= 2:
            fan_in = int(np.prod(tensor.shape[1:]))
            bound = np.sqrt(3.0 / fan_in)
            values = rng.uniform(-bound, bound, tuple(tensor.shape))
        elif tensor.numel() and bool((tensor == tensor.flatten()[0]).all()):
            continue
        else:
            values = rng.uniform(-0.1, 0.1, tuple(tensor.shape))
        state[name] = torch.from_numpy(values.astype(np.float32))
    module.load_state_dict(state)
    return module.eval()


def _models() -> tuple[GuidedUNet, LatentDecoder]:
    vq_cfg = vq_config("tiny", N_CLASSES, TILE)
    vq = _deterministic_weights(VQAutoencoder(vq_cfg), 1)
    unet = _deterministic_weights(ConditionalUNet(unet_config("tiny", vq_cfg, N_TISSUES)), 2)
    return GuidedUNet(unet).eval(), LatentDecoder(vq, latent_scale=0.7).eval()


def _inputs(latent_shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    condition = np.zeros((2, N_CLASSES + N_TISSUES), np.float32)
    condition[:, :N_CLASSES] = rng.uniform(0, 2, (2, N_CLASSES))
    condition[[0, 1], [N_CLASSES, N_CLASSES + 1]] = 1.0
    return {"latent": rng.standard_normal((2, *latent_shape)).astype(np.float32),
            "timestep": np.array([999.0, 321.0], np.float32), "condition": condition,
            "guidance": np.array([1.0, 3.5], np.float32)}


def _torch_outputs(guided: GuidedUNet, decoder: LatentDecoder, feeds: dict[str, np.ndarray], tables, sample_in
                   ) -> dict[str, np.ndarray]:
    with torch.no_grad():
        eps = guided(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        image, distance, semantic = (t.numpy() for t in decoder(torch.from_numpy(feeds["latent"])))
    done = TorchBackend(guided, decoder, tables).sample(*sample_in)
    return {"noise_pred": eps, "image": image, "distance": distance, "semantic": semantic,
            "loop_latent": done.latent, "loop_image": done.image, "loop_distance": done.distance,
            "loop_semantic": done.semantic}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    guided, decoder = _models()
    cfg = guided.unet.cfg
    latent_shape = (cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    feeds = _inputs(latent_shape)
    tables = Scheduler(ScheduleConfig()).set_timesteps(STEPS, ETA)
    latents, step_noise = tile_noise(SEED, np.arange(2), latent_shape, STEPS, tables.stochastic)
    sample_in = (latents, feeds["condition"], feeds["guidance"], step_noise)
    if WRITE:
        np.savez_compressed(GOLDEN, **_torch_outputs(guided, decoder, feeds, tables, sample_in))
    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN} is missing; it is committed with the tests")
    with np.load(GOLDEN) as z:
        golden = dict(z)
    root = tmp_path_factory.mktemp("golden")
    specs = {"unet": unet_spec(latent_shape, N_CLASSES + N_TISSUES), "decoder": decoder_spec(latent_shape, TILE,
                                                                                          N_CLASSES)}
    example = {"unet": [torch.from_numpy(v) for v in feeds.values()], "decoder": [torch.from_numpy(feeds["latent"])]}
    modules = {"unet": guided, "decoder": decoder}
    for graph in ("unet", "decoder"):
        fp32 = clean(to_onnx(modules[graph], specs[graph], example[graph], dynamic_batch=True))
        save_onnx(fp32, root / f"{graph}.onnx")
        save_onnx(to_fp16(fp32), root / f"{graph}.fp16.onnx")
        save_program(export_program(modules[graph], specs[graph], example[graph], "fp32", 8), root / f"{graph}.pt2")
    return {"guided": guided, "decoder": decoder, "feeds": feeds, "tables": tables, "sample_in": sample_in,
            "golden": golden, "root": root, "specs": specs}


def _backend(name: str, s: dict):
    root, tables = s["root"], s["tables"]
    if name == "torch":
        return TorchBackend(s["guided"], s["decoder"], tables)
    if name == "torch-export":
        return TorchBackend.from_files(root / "unet.pt2", root / "decoder.pt2", tables)
    suffix = ".fp16" if name.endswith("fp16") else ""
    return OnnxBackend(root / f"unet{suffix}.onnx", root / f"decoder{suffix}.onnx", s["specs"]["unet"],
                       s["specs"]["decoder"], tables, (1, 8))


def _check(name: str, label: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape, (label, got.shape, want.shape)
    err = float(np.abs(got.astype(np.float64) - want).max() / max(float(np.abs(want).max()), 1e-12))
    assert err <= TOLERANCE[name], f"{name} {label}: relative error {err:.2e} > {TOLERANCE[name]:.0e}"


def test_golden_values_are_not_trivial(setup):
    g = setup["golden"]
    assert np.abs(g["noise_pred"]).max() > 0.1 and g["semantic"].std() > 1e-3
    assert not np.allclose(g["loop_latent"], setup["sample_in"][0], atol=1e-3)  # the loop moved the latent
    assert np.allclose(g["semantic"].sum(1), 1.0, atol=1e-5)  # class probabilities


@pytest.mark.parametrize("name", list(TOLERANCE))
def test_forward_passes_match_golden(setup, name):
    feeds, g = setup["feeds"], setup["golden"]
    backend = _backend(name, setup)
    if name in ("torch", "torch-export"):
        guided = backend.guided
        decoder = backend.decoder
        with torch.no_grad():
            eps = guided(*(torch.from_numpy(v) for v in feeds.values())).float().numpy()
            outs = [t.float().numpy() for t in decoder(torch.from_numpy(feeds["latent"]))]
    else:
        eps = backend.unet.run(None, feeds)[0]
        outs = backend.decoder.run(None, {"latent": feeds["latent"]})
    _check(name, "U-Net", eps, g["noise_pred"])
    for label, got in zip(("image", "distance", "semantic"), outs, strict=True):
        _check(name, label, got, g[label])


@pytest.mark.parametrize("name", list(TOLERANCE))
def test_sampling_loop_matches_golden(setup, name):
    done = _backend(name, setup).sample(*setup["sample_in"])
    g = setup["golden"]
    _check(name, "loop latent", done.latent, g["loop_latent"])
    for label in ("image", "distance", "semantic"):
        _check(name, f"loop {label}", getattr(done, label), g[f"loop_{label}"])
