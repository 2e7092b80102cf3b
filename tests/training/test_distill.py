"""Guidance distillation: the student starts as its teacher's conditional branch, learns the guided output,
resumes exactly, exports as a one-pass graph, and refuses scales it was not trained for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from histosmith.generator import load_generator
from histosmith.models.wrappers import DistilledUNet, GuidedUNet
from histosmith.training.checkpoint import load_checkpoint
from histosmith.training.distill import distill, load_teacher, student_from_teacher
from histosmith.training.trainer import RunOptions
from tests.conftest import run_cli

OPTS = RunOptions(seed=3, device="cpu", precision="fp32", max_steps=40, show_progress=False)


@pytest.fixture(scope="module")
def student(tiny_runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distill") / "student"
    distill(tiny_runs["ldm"], out, tiny_runs["data"], (1.0, 5.0), OPTS)
    return out


def _inputs(teacher, n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = teacher.cfg
    x = torch.randn(n, cfg.latent_channels, cfg.latent_size, cfg.latent_size, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    cond = torch.rand(n, cfg.cond_dim, generator=g)
    return x, t, cond


def test_a_new_student_is_its_teachers_conditional_branch(tiny_runs):
    _, teacher, _ = load_teacher(tiny_runs["ldm"])
    new = student_from_teacher(teacher, (1.0, 5.0)).eval()
    x, t, cond = _inputs(teacher)
    w = torch.full((len(x),), 3.0)
    with torch.no_grad():
        conditional = teacher(x, t, cond, torch.ones_like(w))
        one_pass = DistilledUNet(new)(x, t, cond, w)
        guided_at_1 = GuidedUNet(teacher)(x, t, cond, torch.ones_like(w))
    torch.testing.assert_close(one_pass, conditional, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one_pass, guided_at_1, rtol=1e-4, atol=1e-4)


def test_the_student_learns_the_guided_output(tiny_runs, student):
    _, teacher, _ = load_teacher(tiny_runs["ldm"])
    trained = load_generator(student).guided
    untrained = DistilledUNet(student_from_teacher(teacher, (1.0, 5.0))).eval()
    assert isinstance(trained, DistilledUNet)
    x, t, cond = _inputs(teacher, 64, seed=1)
    w = torch.full((len(x),), 4.0)
    with torch.no_grad():
        target = GuidedUNet(teacher)(x, t, cond, w)
        before = (untrained(x, t, cond, w) - target).pow(2).mean().item()
        after = (trained(x, t, cond, w) - target).pow(2).mean().item()
    assert after < 0.8 * before, (before, after)


def test_checkpoint_records_the_teacher(tiny_runs, student):
    ckpt = load_checkpoint(student, "ldm")
    record = ckpt["distillation"]
    assert record["teacher_step"] == load_checkpoint(tiny_runs["ldm"])["step"]
    assert record["guidance_range"] == [1.0, 5.0]
    assert tuple(ckpt["model_config"]["guidance_range"]) == (1.0, 5.0)
    assert load_generator(student).info.guidance_range == (1.0, 5.0)


def test_interrupted_then_resumed_equals_uninterrupted(tiny_runs, tmp_path):
    opts = RunOptions(seed=5, device="cpu", precision="fp32", max_steps=20, show_progress=False)
    distill(tiny_runs["ldm"], tmp_path / "whole", tiny_runs["data"], None, opts)
    distill(tiny_runs["ldm"], tmp_path / "split", tiny_runs["data"], None,
            RunOptions(**{**opts.__dict__, "stop_at_step": 10}))
    distill(tiny_runs["ldm"], tmp_path / "split", tiny_runs["data"], None, RunOptions(**{**opts.__dict__,
                                                                                         "resume": True}))
    whole = load_checkpoint(tmp_path / "whole")["ema"]
    split = load_checkpoint(tmp_path / "split")["ema"]
    for k in whole:
        torch.testing.assert_close(whole[k], split[k], rtol=0, atol=0)


def test_cli_refusals(tiny_runs, student, tmp_path):
    again = run_cli("hs-train", "distill", "--teacher", str(student), "--out", str(tmp_path / "s2"))
    assert again.returncode == 2 and "already a guidance-distilled student" in again.stderr
    assert not (tmp_path / "s2").exists()
    as_ldm = run_cli("hs-train", "ldm", "--data", str(tiny_runs["data"]), "--vqvae", str(tiny_runs["vq"]),
                     "--out", str(student), "--resume", "--config", "tiny")
    assert as_ldm.returncode == 2 and "resume it with hs-train distill" in as_ldm.stderr
    bad = run_cli("hs-train", "distill", "--teacher", str(tiny_runs["ldm"]), "--out", str(tmp_path / "s3"),
                  "--guidance-range", "5,1")
    assert bad.returncode == 2 and "--guidance-range" in bad.stderr


def test_export_is_one_pass_and_guards_its_scales(student, tmp_path):
    from histosmith.export.exporter import ExportOptions, export_generator

    manifest, _ = export_generator(student, tmp_path / "exp", ExportOptions(max_batch=8, fp16=False,
                                                                            torch_programs=()))
    assert manifest.guidance_range == (1.0, 5.0)
    assert manifest.distillation["teacher_step"] > 0
    body = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    assert body["models"]["distillation"]["guidance_range"] == [1.0, 5.0]
    import onnx

    graph = onnx.load(str(tmp_path / "exp" / "unet.onnx")).graph
    # one pass: the U-Net's input convolution runs once, on a batch of B (a two-pass graph concatenates 2B)
    assert sum(n.op_type == "Concat" and "latent" in n.input for n in graph.node) == 0
    engine = str(tmp_path / "exp" / "unet.onnx")
    ok = run_cli("hs-generate", "--engine", engine, "--out", str(tmp_path / "ok"), "--n", "3", "--guidance", "3",
                 "--steps", "3")
    assert ok.returncode == 0, ok.stderr
    out = tmp_path / "refused"
    refused = run_cli("hs-generate", "--engine", engine, "--out", str(out), "--n", "3", "--guidance", "7")
    assert refused.returncode == 2
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and "guidance-distilled for scales 1..5" in lines[-1]
    assert not out.exists() or not any(out.iterdir())


def test_all_cpu_backends_run_the_student(student, tmp_path):
    """The torch loop and ONNX Runtime give the same student tiles (one pass: the backends need nothing new)."""
    from histosmith.export.exporter import ExportOptions, export_generator
    from histosmith.runtime.engine import open_engine
    from histosmith.runtime.generate import GenerationPlan
    from histosmith.runtime.schedule import Scheduler

    export_generator(student, tmp_path / "exp", ExportOptions(max_batch=8, fp16=False, torch_programs=("fp32",)))
    plan = GenerationPlan(seed=1, steps=4, sampler="unipc", guidance=3.0)
    tables = Scheduler(load_generator(student).info.schedule).settings_tables(plan.sampling)
    rng = np.random.default_rng(0)
    results = []
    for name in ("unet.onnx", "unet.pt2"):
        session = open_engine(tmp_path / "exp" / name)
        backend = session.backend(tables)
        shape = (2, *session.info.latent_shape)
        latents = rng.standard_normal(shape).astype(np.float32) if not results else results[0][0]
        cond = np.tile(session.info.spec.vectors(np.array([[3, 1, 0]]), np.array([0])), (2, 1))
        out = backend.sample(latents, cond, np.full(2, 3.0, np.float32), None)
        results.append((latents, out.image))
    np.testing.assert_allclose(results[0][1], results[1][1], atol=2e-3)
