"""hs-calibrate on the tiny model: Q/DQ graphs, hs-eval gate's quality gate (passing, and failing on a broken
calibration with the export untouched), manifest records and hashes, hs-generate on the INT8 engine, bad input."""

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from histosmith.calibration.calibrate import (
    GATE_REPORT,
    INT8_STEP,
    INT8_UNET,
    CalibrateOptions,
    CalibrationGate,
    calibrate,
)
from histosmith.calibration.quantize import needs_reduce_range, recipe
from histosmith.calibration.sensitivity import REQUESTED, block_of
from histosmith.calibration.trajectories import TrajectoryOptions
from histosmith.data.atomic import sha256_file
from histosmith.errors import HistoSmithError
from histosmith.export.fp16 import remove_unused_initializers
from histosmith.runtime.manifest import Manifest
from histosmith.runtime.schedule import SamplerSettings
from tests.conftest import run_cli

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
NO_TRT = "tensorrt is not installed here (the PyPI wheels only redirect to NVIDIA's unreachable index)"
# The gate on 48 requests per run at DDIM 10 (the tiny export's default is 50): a quick look, not a verdict.
SAMPLING = SamplerSettings("ddim", 10)


def _opts(tmp: Path, segmenter: Path, **kw) -> CalibrateOptions:
    gate = CalibrationGate(segmenter, n=48, allow_small=True, sampling=SAMPLING, runs=tmp / "gate-runs")
    return CalibrateOptions(TrajectoryOptions(samples=6, steps=4, chunk=4), gate=gate, sensitivity_rows=12,
                            cache=tmp / "cache", show_progress=False, **kw)


def _snapshot(directory: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def calibrated(tiny_export, tiny_runs, tiny_segmenter, tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("calibrated") / "exp"
    shutil.copytree(tiny_export, exp)
    calibrate(exp, tiny_runs["data"], _opts(exp.parent, tiny_segmenter, keep_float=("down.0",)))  # one block float
    return exp


def test_calibration_writes_qdq_graphs_and_records_them(calibrated):
    manifest = Manifest.load(calibrated)
    int8 = [v for v in manifest.variants if v.precision == "int8"]
    assert len(int8) == 1 and int8[0].entry == int8[0].guided_unet == INT8_UNET and int8[0].fused_step == INT8_STEP
    record = int8[0].calibration
    assert record["passed"] and record["method"] == "minmax" and record["samples"] == 6 and record["steps"] == 4
    for name in (INT8_UNET, INT8_STEP):
        assert manifest.files[name] == sha256_file(calibrated / name) == record["sha256"][name]
    assert record["trajectories"]["timesteps"][0] > 900 and record["trajectories"]["timesteps"][-1] < 300
    parts = {row["part"] for row in record["kept_float"]}
    assert {"conv_in", "conv_out", "time_mlp", "condition"} <= parts
    assert any("sampler update" in row["reason"] for row in record["kept_float"])
    assert {"part": "down.0", "reason": REQUESTED} in record["kept_float"]
    for name, activation in ((INT8_UNET, onnx.TensorProto.UINT8), (INT8_STEP, onnx.TensorProto.INT8)):
        model = onnx.load(str(calibrated / name))
        produced = {o: n for n in model.graph.node for o in n.output}
        quantised = {n.name for n in model.graph.node if n.op_type == "Conv"
                     and produced.get(n.input[0]) is not None and produced[n.input[0]].op_type == "DequantizeLinear"}
        assert quantised, name
        assert not any(block_of(n) in ("conv_in", "conv_out", "down.0") for n in quantised)
        zero_points = [t for t in model.graph.initializer if t.name.endswith("_zero_point") and t.dims == []]
        assert {t.data_type for t in zero_points} == {activation}
        if name == INT8_STEP:  # symmetric s8 for TensorRT: every zero point is 0
            assert all(not onnx.numpy_helper.to_array(t).any() for t in zero_points)
        assert remove_unused_initializers(model) == 0
    report = json.loads((calibrated / "calibration.json").read_text())
    assert report["sensitivity"] and all(e["rel_error"] >= 0 for e in report["sensitivity"])
    assert (calibrated / "calibration.md").exists() and (calibrated / "calibration.png").exists()
    # hs-eval gate's verdict on both graphs: the CPU graph in the host loop, the TensorRT one in the step loop
    gate = record["gate"]
    assert gate["n"] == 48 and gate["reference"] == "unet.onnx-ddim-50-g4"
    assert set(gate["verdicts"]) == {"unet.int8.onnx-ddim-10-g4", "unet.int8.onnx-step-ddim-10-g4"}
    assert all(v["passed"] for v in gate["verdicts"].values())
    full = json.loads((calibrated / f"{GATE_REPORT}.json").read_text())
    assert {c["label"] for c in full["candidates"]} == set(gate["verdicts"])
    assert all(any(m["metric"] == "kid" for m in c["metrics"]) for c in full["candidates"])
    assert "gate" not in manifest.verification  # 48 tiles: a quick look, not kept among the verdicts
    assert not (calibrated / "staged").exists()


def test_a_calibrated_export_is_reexported_from_its_cache(calibrated, tiny_runs, tmp_path):
    """hs-calibrate's report is the export's own: re-running hs-export on it (as a rerun of `make reference`
    does) reuses the export, INT8 variant included, instead of refusing the directory."""
    from histosmith.export.exporter import ExportOptions, export_generator

    exp = tmp_path / "exp"
    shutil.copytree(calibrated, exp)
    before = _snapshot(exp)
    manifest, cached = export_generator(tiny_runs["ldm"], exp, ExportOptions(max_batch=64))
    assert cached and any(v.precision == "int8" for v in manifest.variants) and _snapshot(exp) == before


def test_reduce_range_only_without_vnni():
    assert not needs_reduce_range({"avx512f", "avx512_vnni"}, "x86_64")
    assert needs_reduce_range({"avx2", "avx512f"}, "x86_64")
    assert not needs_reduce_range(set(), "aarch64")
    assert recipe("tensorrt").symmetric_activations and not recipe("tensorrt").reduce_range


def test_hs_generate_runs_the_int8_engine(calibrated, tmp_path):
    r = run_cli("hs-generate", "--engine", str(calibrated / INT8_UNET), "--n", "3", "--batch", "2", "--steps", "2",
                "--out", str(tmp_path / "gen"))
    assert r.returncode == 0, r.stderr
    assert "wrote 3 tiles" in r.stdout


def test_hash_mismatch_is_refused(calibrated, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(calibrated, exp)
    model = onnx.load(str(exp / INT8_UNET))
    model.doc_string = "edited"
    onnx.save(model, str(exp / INT8_UNET))
    r = run_cli("hs-generate", "--engine", str(exp / INT8_UNET), "--n", "2", "--steps", "2", "--out",
                str(tmp_path / "gen"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "SHA-256" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "gen").exists()


def test_gate_fails_on_a_broken_calibration_and_leaves_the_export_untouched(tiny_export, tiny_runs, tiny_segmenter,
                                                                           tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(tiny_export, exp)
    before = _snapshot(exp)

    def broken(cset):  # only the first (pure-noise) step, its ranges widened 10^4-fold: every activation rounds to 0
        rows = np.flatnonzero(cset.step == 0)
        sub = cset.subset(rows)
        return type(sub)(sub.latent * 1e4, sub.timestep, sub.condition, sub.guidance, sub.step, sub.noise_pred)

    with pytest.raises(HistoSmithError, match="quality gate failed.*export is unchanged"):
        calibrate(exp, tiny_runs["data"], _opts(tmp_path, tiny_segmenter, target="cpu"), transform=broken)
    assert _snapshot(exp) == before
    reports = list((tmp_path / "cache").rglob(f"{GATE_REPORT}.md"))
    assert len(reports) == 1 and "fails" in reports[0].read_text()


def test_calibration_needs_the_gate_or_force(tiny_export, tiny_runs, tiny_segmenter, tmp_path):
    """Without a segmenter the graphs are refused before any work, unless forced (then recorded ungated); a
    guidance-distilled export must name its teacher's export as the reference."""
    exp = tmp_path / "exp"
    shutil.copytree(tiny_export, exp)
    before = _snapshot(exp)
    r = run_cli("hs-calibrate", "--export", str(exp), "--data", str(tiny_runs["data"]), "--cache", str(tmp_path / "c"))
    assert r.returncode == 2 and "--segmenter" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert _snapshot(exp) == before and not (tmp_path / "c").exists()
    manifest = Manifest.load(exp)
    student = dataclasses.replace(manifest, models={**manifest.models, "distillation": {"teacher": "t"}})
    student.save(exp)
    r = run_cli("hs-calibrate", "--export", str(exp), "--data", str(tiny_runs["data"]), "--segmenter",
                str(tiny_segmenter), "--cache", str(tmp_path / "c"))
    assert r.returncode == 2 and "--reference" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_bad_input(tiny_export, tiny_runs, tmp_path):
    data = tiny_runs["data"]
    for args, message in (
        (["--samples", "0"], "--samples must be >= 1"),
        (["--keep-float", "down.0,nope"], "--keep-float nope: no such block"),
        (["--export", str(tmp_path / "nothing")], "not an export directory"),
        (["--segmenter", str(tmp_path), "--gate-n", "100"], "--gate-n 100: the gate judges a set of at least 500"),
    ):
        base = {"--export": str(tiny_export), "--data": str(data)}
        extra = list(args)
        if extra[0] in base:
            base[extra[0]] = extra[1]
            extra = []
        r = run_cli("hs-calibrate", *[x for kv in base.items() for x in kv], *extra, "--cache", str(tmp_path / "c"))
        assert r.returncode == 2 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1

    other = tmp_path / "other"
    shutil.copytree(data, other)
    meta = json.loads((other / "meta.json").read_text())
    meta["class_names"] = ["a", "b", "c"]
    (other / "meta.json").write_text(json.dumps(meta))
    for shard in other.glob("shard-*"):
        lines = (shard / "counts.csv").read_text().splitlines()
        (shard / "counts.csv").write_text("\n".join(["a,b,c", *lines[1:]]) + "\n")
    r = run_cli("hs-calibrate", "--export", str(tiny_export), "--data", str(other), "--cache", str(tmp_path / "c"))
    assert r.returncode == 2 and "differ from the export's" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    no_fp32 = tmp_path / "nofp32"
    shutil.copytree(tiny_export, no_fp32)
    (no_fp32 / "unet.onnx").unlink()
    before = _snapshot(no_fp32)
    r = run_cli("hs-calibrate", "--export", str(no_fp32), "--data", str(data), "--cache", str(tmp_path / "c"))
    assert r.returncode == 2 and "unet.onnx" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert _snapshot(no_fp32) == before


def test_tensorrt_int8_build_uses_the_qdq_step_graph(calibrated, tmp_path):
    from histosmith.export.tensorrt_build import EngineOptions, build_engines, onnx_sources
    from histosmith.export.trtexec import SCRIPT
    from histosmith.runtime.planning import BatchBuckets

    exp = tmp_path / "exp"
    shutil.copytree(calibrated, exp)
    assert onnx_sources(Manifest.load(exp), "int8", exp) == (INT8_STEP, "decoder.fp16.onnx")
    if HAVE_TRT:
        variant = build_engines(exp, EngineOptions("int8", BatchBuckets((1, 4)), 1.0))
        assert variant.unet == "unet.int8.plan" and variant.precision == "int8"
        return
    with pytest.raises(HistoSmithError, match="build_engines.sh"):
        build_engines(exp, EngineOptions("int8", BatchBuckets((1, 4)), 1.0))
    script = (exp / SCRIPT).read_text()
    assert f"--onnx={INT8_STEP}" in script and "--saveEngine=unet.int8.plan" in script
    assert "--stronglyTyped" in script and "--int8" not in script


def test_tensorrt_int8_needs_a_calibrated_export(tiny_export, tmp_path):
    from histosmith.export.tensorrt_build import onnx_sources

    with pytest.raises(HistoSmithError, match="hs-calibrate"):
        onnx_sources(Manifest.load(tiny_export), "int8", tiny_export)


@pytest.mark.skipif(not HAVE_TRT, reason=NO_TRT)
def test_int8_engine_generates_on_tensorrt(calibrated, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(calibrated, exp)
    r = run_cli("hs-export", "--out", str(exp), "--trt", "--precision", "int8", "--batch-buckets", "1,4")
    assert r.returncode == 0, r.stderr
    r = run_cli("hs-generate", "--engine", str(exp / "unet.int8.plan"), "--n", "4", "--batch", "4", "--steps", "3",
                "--out", str(tmp_path / "gen"))
    assert r.returncode == 0, r.stderr
