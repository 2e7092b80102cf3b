"""TensorRT: what runs everywhere (build script, registration, compatibility checks), and what needs it."""

import importlib.util
import json
import shutil
import subprocess

import pytest

from histosmith.errors import HistoSmithError
from histosmith.export.tensorrt_build import EngineOptions, build_engines, register_engines
from histosmith.export.trtexec import SCRIPT, trtexec_command
from histosmith.runtime.engine import open_engine
from histosmith.runtime.manifest import Manifest
from histosmith.runtime.planning import BatchBuckets
from histosmith.runtime.specs import STEP
from histosmith.runtime.tensorrt_facts import check_engine_facts, engine_facts
from tests.conftest import run_cli

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
NO_TRT = "tensorrt is not installed here (the PyPI wheels only redirect to NVIDIA's unreachable index)"


def test_trtexec_command_has_one_profile_per_bucket(tiny_export):
    spec = Manifest.load(tiny_export).graph(STEP)
    cmd = trtexec_command("step.fp16.onnx", "unet.plan", spec, BatchBuckets((1, 8)), 2.0, "timing.cache")
    text = " ".join(cmd)
    assert "--stronglyTyped" in cmd and "--memPoolSize=workspace:2048M" in cmd and "--skipInference" in cmd
    assert "--fp16" not in text and "--int8" not in text  # precision comes from the graph
    assert text.count("--profile=") == 2
    c, h, w = Manifest.load(tiny_export).latent_shape
    for flag in (f"--minShapes=latent:1x{c}x{h}x{w}", f"--minShapes=latent:2x{c}x{h}x{w}",
                 f"--optShapes=latent:8x{c}x{h}x{w}", f"--maxShapes=latent:8x{c}x{h}x{w}", "condition:8x5"):
        assert flag in text, flag
    assert "step_coefs" not in text  # static inputs need no shapes


@pytest.mark.skipif(HAVE_TRT, reason="checks the behaviour without TensorRT")
def test_without_tensorrt_the_script_is_written_and_the_error_says_how_to_install(tiny_export, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(tiny_export, exp)
    with pytest.raises(HistoSmithError, match="histosmith\\[trt\\].*build_engines.sh"):
        build_engines(exp, EngineOptions("fp16", BatchBuckets((1, 4)), 1.0))
    script = (exp / SCRIPT).read_text()
    assert script.count("${TRTEXEC}") == 2 and "step.fp16.onnx" in script and "decoder.fp16.onnx" in script
    assert "/usr/src/tensorrt/bin/trtexec" in script
    assert subprocess.run(["bash", "-n", str(exp / SCRIPT)], check=False).returncode == 0
    r = run_cli("hs-export", "--out", str(exp), "--trt")
    assert r.returncode == 2 and "pip install 'histosmith[trt]'" in r.stderr and "Traceback" not in r.stderr


def test_register_engines_and_resolve(tiny_export, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(tiny_export, exp)
    with pytest.raises(HistoSmithError, match="engine not found"):
        register_engines(exp, "fp16")
    (exp / "unet.plan").write_bytes(b"plan bytes from trtexec")
    (exp / "decoder.plan").write_bytes(b"decoder plan bytes")
    variant = register_engines(exp, "fp16", buckets=BatchBuckets((1, 16)))
    session = open_engine(exp / "unet.plan")
    found = session.variant
    assert found == variant and found.format == "tensorrt" and found.fused_step == "unet.plan"
    assert session.batch_limits() == (1, 16)
    (exp / "decoder.plan").write_bytes(b"tampered")
    with pytest.raises(HistoSmithError, match="SHA-256 differs"):
        open_engine(exp / "unet.plan")


def test_engine_facts_refuse_another_gpu_or_version():
    built = engine_facts("NVIDIA H200", 9, 0, "10.3.0", [1, 8], "fp16")
    check_engine_facts(built, {"gpu": "NVIDIA H200", "compute_capability": "9.0", "tensorrt": "10.3.0"}, "unet.plan")
    with pytest.raises(HistoSmithError, match="compute capability 9.0 \\(this machine: 8.7\\)"):
        check_engine_facts(built, {"gpu": "Orin", "compute_capability": "8.7", "tensorrt": "10.3.0"}, "unet.plan")
    with pytest.raises(HistoSmithError, match="TensorRT version 10.3.0 \\(this machine: 11.1.0\\)"):
        check_engine_facts(built, {"gpu": "NVIDIA H200", "compute_capability": "9.0", "tensorrt": "11.1.0"},
                           "unet.plan")
    unknown = {"gpu": "unknown", "compute_capability": "unknown", "tensorrt": "unknown"}
    check_engine_facts(unknown, {"gpu": "x", "compute_capability": "8.7", "tensorrt": "10.3.0"}, "unet.plan")


def test_manifest_round_trips_tensorrt_variants(tiny_export, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(tiny_export, exp)
    (exp / "unet.plan").write_bytes(b"a")
    (exp / "decoder.plan").write_bytes(b"b")
    register_engines(exp, "fp16", engine_facts("GPU", 8, 7, "10.3.0", [1, 8], "fp16"))
    data = json.loads((exp / "manifest.json").read_text())
    trt = [v for v in data["variants"] if v["format"] == "tensorrt"]
    assert len(trt) == 1 and trt[0]["tensorrt"]["compute_capability"] == "8.7"
    variant = Manifest.load(exp).variant_for(exp / "unet.plan")
    assert variant.fused_step == "unet.plan" and variant.guided_unet == "" and variant.tensorrt.buckets == (1, 8)


@pytest.mark.skipif(not HAVE_TRT, reason=NO_TRT)
def test_build_and_verify_engines(tiny_export, tmp_path):  # pragma: no cover - needs TensorRT and a GPU
    from histosmith.export.verify_trt import verify_engines

    exp = tmp_path / "exp"
    shutil.copytree(tiny_export, exp)
    variant = build_engines(exp, EngineOptions("fp16", BatchBuckets((1, 4)), 1.0))
    assert (exp / variant.entry).exists() and (exp / "timing.cache").exists()
    assert all("ok" in line for line in verify_engines(exp, "fp16"))
    r = run_cli("hs-generate", "--engine", str(exp / "unet.plan"), "--n", "6", "--batch", "4", "--steps", "5",
                "--out", str(tmp_path / "gen"))
    assert r.returncode == 0, r.stderr[-2000:]
