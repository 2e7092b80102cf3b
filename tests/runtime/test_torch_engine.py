"""The exported torch engine (torch.export programs): every precision runs, no graph names a device, the
bf16 program matches fp32 through hs-generate, and bad engines are refused with one line."""

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from histosmith.errors import HistoSmithError
from histosmith.export.torch_export import export_program, save_program
from histosmith.runtime.backends.torch_backend import TorchBackend
from histosmith.runtime.backends.torch_program import device_constants, load_program
from histosmith.runtime.manifest import Manifest, body_digest, sha256_file
from histosmith.runtime.schedule import Scheduler
from histosmith.runtime.seeds import tile_noise
from histosmith.runtime.specs import GraphSpec, TensorSpec
from tests.conftest import run_cli

PROGRAMS = {"unet.pt2": "fp32", "unet.fp16.pt2": "fp16", "unet.bf16.pt2": "bf16",
            "decoder.pt2": "fp32", "decoder.fp16.pt2": "fp16", "decoder.bf16.pt2": "bf16"}
# On the CPU bf16 stands in for the GPU's fp16 path. Stated tolerances, bf16 vs fp32 on the same seeds:
CLASS_AGREEMENT = 0.99  # share of pixels with the same class in labels.npy (the target)
IMAGE_MEAN_ABS = 4.0  # mean |difference| of the uint8 RGB tiles


def _one_error_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


def _generate(engine, out, *extra):
    return run_cli("hs-generate", "--engine", str(engine), "--out", str(out), "--n", "8", "--steps", "6",
                   "--batch", "4", "--device", "cpu", *extra)


def test_bf16_program_through_hs_generate_matches_fp32(tiny_export, tmp_path):
    ref = _generate(tiny_export / "unet.pt2", tmp_path / "fp32")
    assert ref.returncode == 0, ref.stderr[-2000:]
    got = _generate(tiny_export / "unet.bf16.pt2", tmp_path / "bf16", "--precision", "bf16")
    assert got.returncode == 0, got.stderr[-2000:]
    a, b = (np.load(tmp_path / d / "shard-00000" / "labels.npy") for d in ("fp32", "bf16"))
    assert (a[..., 1] == b[..., 1]).mean() >= CLASS_AGREEMENT
    x, y = (np.load(tmp_path / d / "shard-00000" / "images.npy").astype(int) for d in ("fp32", "bf16"))
    assert np.abs(x - y).mean() <= IMAGE_MEAN_ABS
    assert json.loads((tmp_path / "bf16" / "generation.json").read_text())["model"].startswith("unet.bf16.pt2")


def test_every_program_runs_in_its_precision_and_follows_its_device(tiny_export):
    manifest = Manifest.load(tiny_export)
    for name, precision in PROGRAMS.items():
        program = torch.export.load(str(tiny_export / name))
        assert device_constants(program.graph) == [], name
        graph = "unet" if name.startswith("unet") else "decoder"
        spec = manifest.graph(graph)
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        shapes = spec.input_shapes(3)
        # "meta" stands in for another device: tensors made on the tracing device would clash with it.
        module = load_program(tiny_export / name, "meta", precision)
        inputs = [torch.zeros(shapes[t.name], device="meta", dtype=torch.float32 if t.name == "timestep" else dtype)
                  for t in spec.inputs]
        outputs = module(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        assert all(o.device.type == "meta" and o.dtype == dtype for o in outputs), name


def test_fp16_program_samples_on_the_cpu(tiny_export):
    manifest = Manifest.load(tiny_export)
    info = manifest.info
    tables = Scheduler(info.schedule).set_timesteps(3)
    latents, _ = tile_noise(0, np.arange(2), info.latent_shape, 3, False)
    vectors = info.spec.vectors(info.training_counts[:2], info.training_tissues[:2])
    g = np.full(2, 2.0, np.float32)
    out = {}
    for p in ("fp32", "fp16"):
        suffix = "" if p == "fp32" else f".{p}"
        backend = TorchBackend.from_files(tiny_export / f"unet{suffix}.pt2", tiny_export / f"decoder{suffix}.pt2",
                                          tables, "cpu", p)
        out[p] = backend.sample(latents, vectors, g, None)
    assert np.isfinite(out["fp16"].latent).all()
    assert np.abs(out["fp16"].latent - out["fp32"].latent).max() / np.abs(out["fp32"].latent).max() < 0.05
    assert (out["fp16"].semantic.argmax(1) == out["fp32"].semantic.argmax(1)).mean() > 0.97


class _Pinned(nn.Module):
    """What the timestep embedding used to do: a tensor created on the input's device at trace time."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t[:, None] * torch.arange(4, dtype=torch.float32, device=t.device)[None] * self.scale


PINNED_SPEC = GraphSpec("toy", (TensorSpec("latent", ("batch",)),), (TensorSpec("noise_pred", ("batch", 4)),))


def test_device_constant_check_catches_a_pinned_graph():
    with pytest.raises(HistoSmithError, match="names a device"):
        export_program(_Pinned(), PINNED_SPEC, [torch.ones(2)], "fp32", 8)
    traced = torch.jit.trace(_Pinned(), (torch.ones(2),))
    assert any("arange" in hit and "cpu" in hit for hit in device_constants(traced.inlined_graph))
    program = torch.export.export(_Pinned(), (torch.ones(2),))
    assert device_constants(program.graph)


def _replace_program(export, name, program_path, tmp_path):
    """A copy of the export whose ``name`` is another file, with its manifest hash updated."""
    other = tmp_path / "other"
    shutil.copytree(export, other)
    shutil.copy(program_path, other / name)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest.pop("body_sha256")
    manifest["files"][name] = sha256_file(other / name)
    manifest["body_sha256"] = body_digest(manifest)  # a consistent manifest: the check under test is the program's
    (other / "manifest.json").write_text(json.dumps(manifest))
    return other


def test_bad_torch_engines_give_one_error_line(tiny_export, tmp_path):
    line = _one_error_line(_generate(tiny_export / "unet.bf16.pt2", tmp_path / "o", "--precision", "fp32"))
    assert "is the bf16 program" in line and "unet.pt2" in line
    if not torch.cuda.is_available():
        assert "CUDA is not available" in _one_error_line(
            run_cli("hs-generate", "--engine", str(tiny_export / "unet.pt2"), "--out", str(tmp_path / "o"),
                    "--device", "cuda"))
    legacy = tmp_path / "unet.pt"
    legacy.write_bytes(b"torchscript")
    assert "TorchScript engines are no longer" in _one_error_line(_generate(legacy, tmp_path / "o"))
    # A program of another dtype under the fp32 name.
    other = _replace_program(tiny_export, "unet.pt2", tiny_export / "unet.bf16.pt2", tmp_path / "a")
    assert "is a bf16 program" in _one_error_line(_generate(other / "unet.pt2", tmp_path / "o"))
    # A program pinned to the device it was exported on.
    pinned = tmp_path / "pinned.pt2"
    save_program(torch.export.export(_Pinned(), (torch.ones(2),)), pinned)
    other = _replace_program(tiny_export, "unet.pt2", pinned, tmp_path / "b")
    assert "pinned to a device" in _one_error_line(_generate(other / "unet.pt2", tmp_path / "o"))
    assert not (tmp_path / "o").exists()


@pytest.mark.full  # torch.compile: about a minute of inductor compilation on 2 cores
def test_compiled_program_matches_eager_and_is_part_of_the_run_record(tiny_export, tmp_path):
    """hs-generate --compile: the same tiles within the bf16-vs-fp32 tolerances, a batch not a multiple of
    --batch runs padded (one compiled shape), and a resume must keep the choice (kernels round differently)."""
    eager = _generate(tiny_export / "unet.pt2", tmp_path / "eager", "--n", "6")
    assert eager.returncode == 0, eager.stderr[-2000:]
    out = tmp_path / "compiled"
    got = _generate(tiny_export / "unet.pt2", out, "--n", "6", "--compile")
    assert got.returncode == 0, got.stderr[-2000:]
    a, b = (np.load(tmp_path / d / "shard-00000" / "labels.npy") for d in ("eager", "compiled"))
    assert len(b) == 6 and (a[..., 1] == b[..., 1]).mean() >= CLASS_AGREEMENT
    x, y = (np.load(tmp_path / d / "shard-00000" / "images.npy").astype(int) for d in ("eager", "compiled"))
    assert np.abs(x - y).mean() <= IMAGE_MEAN_ABS
    assert json.loads((out / "generation.json").read_text())["model"].endswith("(torch.compile)")
    line = _one_error_line(_generate(tiny_export / "unet.pt2", out, "--n", "6", "--resume"))
    assert "--resume with different settings (model)" in line


def test_compile_is_refused_where_it_does_not_apply(tiny_export, tmp_path):
    line = _one_error_line(_generate(tiny_export / "unet.onnx", tmp_path / "a", "--compile"))
    assert "--compile concerns torch (.pt2) engines" in line and not (tmp_path / "a").exists()
    line = _one_error_line(_generate(tiny_export / "unet.pt2", tmp_path / "b", "--compile", "--ray"))
    assert "--compile: not available with --ray" in line and not (tmp_path / "b").exists()
