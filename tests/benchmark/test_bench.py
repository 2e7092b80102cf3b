"""hs-bench on the tiny export: its three files, FLOPs from the graph, probes, peers, profiles; bad input."""

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from histosmith.benchmark.flops import count_flops
from histosmith.export.onnx_export import to_onnx
from histosmith.runtime.manifest import Manifest
from histosmith.runtime.specs import BATCH, GraphSpec, TensorSpec
from tests.conftest import run_cli


def test_flops_are_counted_from_the_graph(tmp_path):
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)).eval()
    spec = GraphSpec("m", (TensorSpec("x", (BATCH, 3, 4, 4)),), (TensorSpec("y", (BATCH, 5)),))
    path = tmp_path / "m.onnx"
    onnx.save(to_onnx(module, spec, [torch.randn(2, 3, 4, 4)], dynamic_batch=True), str(path))
    flops = count_flops(path, 3)
    assert flops["Conv"] == 2 * 3 * 8 * 4 * 4 * 3 * 3 * 3
    assert flops["Conv"] + flops["Gemm"] + flops["MatMul"] == flops["total"]
    assert flops["Gemm"] + flops["MatMul"] == 2 * 3 * 5 * 128


def test_ort_convolution_probes_run_the_int8_recipe(monkeypatch):
    import histosmith.calibration.quantize as q
    from histosmith.benchmark import probes

    quantised, original = [], q.quantize  # the probe imports the quantiser at call time
    monkeypatch.setattr(q, "quantize", lambda *a, **k: quantised.append(a[2]) or original(*a, **k))
    fp32 = probes.ort_conv_probe("fp32", batch=1, channels=8, size=8, repeats=2, threads=1)
    int8 = probes.ort_conv_probe("int8", batch=1, channels=8, size=8, repeats=2, threads=1)
    assert (fp32.dtype, int8.dtype) == ("ort-fp32", "ort-int8") and fp32.gflops_per_s > 0 and int8.gflops_per_s > 0
    assert len(quantised) == 1 and quantised[0].target == "cpu"
    with pytest.raises(ValueError, match="unknown probe dtype"):
        probes.ort_conv_probe("bf16")


def test_hs_bench_writes_json_markdown_and_png(tiny_export, tiny_runs, tmp_path):
    out = tmp_path / "bench"
    r = run_cli("hs-bench", "--export", str(tiny_export), "--batches", "1,2", "--steps", "2", "--repeats", "1",
                "--threads", "1", "--peers", "--checkpoint", str(tiny_runs["ldm"]), "--out", str(out), timeout=900)
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "bench.json").read_text())
    assert (out / "bench.md").read_text().startswith("`hs-bench ")
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = {row["contender"] for row in result["rows"]}
    assert {"unet.onnx (onnxruntime-cpu)", "unet.fp16.onnx (onnxruntime-cpu)", "torch-eager-fp32",
            "torch-bf16-autocast"} <= names
    assert any(n.startswith("unet.pt") for n in names)
    assert len(result["rows"]) == 2 * len(names)
    assert {p["dtype"] for p in result["probes"]} == {"fp32", "bf16", "ort-fp32", "ort-int8"}
    assert "INT8 / fp32 on ONNX Runtime for that convolution" in (out / "bench.md").read_text()
    assert all(p["gflops_per_s"] > 0 for p in result["probes"])
    assert result["flops_per_guided_call"]["2"]["total"] == pytest.approx(
        2 * result["flops_per_guided_call"]["1"]["total"], rel=1e-6)
    for row in result["rows"]:
        for key in ("unet_ms_p50", "unet_ms_p95", "decoder_ms_p50", "postprocess_ms_per_tile", "write_ms_per_tile",
                    "ddim_update_ms", "tiles_per_s", "stages_tiles_per_s", "gflops_per_s", "peak_rss_mb",
                    "dataset_fixed_ms"):
            assert np.isfinite(row[key]) and row[key] > 0, (row["contender"], key)
        assert row["e2e_tiles"] == 32  # whole batches, at least 32 tiles: a run's fixed cost is spread
        assert row["unet_speedup_vs_torch_fp32"] is not None
    ops = result["profiles"]["unet.onnx (onnxruntime-cpu)"]["top_ops"]
    assert ops and ops[0]["share"] > 0 and sum(o["share"] for o in ops) <= 1.0 + 1e-9


def test_hs_bench_bad_input(tiny_export, tmp_path):
    for args, message in ((["--batches", "0,x"], "--batches"), (["--engines", "unet.plan"], "not an engine"),
                          (["--steps", "0"], "--steps must be >= 1")):
        r = run_cli("hs-bench", "--export", str(tiny_export), "--out", str(tmp_path / "b"), *args)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("native_bf16", [True, False])
def test_default_engines_add_the_bf16_program_only_with_native_bf16(tiny_export, monkeypatch, native_bf16):
    from histosmith.benchmark import bench
    from histosmith.runtime.manifest import Manifest

    monkeypatch.setattr("histosmith.training.loop.cpu_has_native_bf16", lambda: native_bf16)
    names = [p.name for p in bench.cpu_engines(tiny_export, Manifest.load(tiny_export), ())]
    assert "unet.onnx" in names and "unet.pt2" in names and "unet.fp16.pt2" not in names
    assert ("unet.bf16.pt2" in names) == native_bf16
    assert [p.name for p in bench.cpu_engines(tiny_export, Manifest.load(tiny_export), ("unet.onnx",))] == \
        ["unet.onnx"]


def test_hs_bench_gates_every_engine_and_names_the_fastest_that_passes(tiny_export, tiny_runs, tiny_segmenter,
                                                                     tmp_path):
    out = tmp_path / "bench"
    args = ("hs-bench", "--export", str(tiny_export), "--engines", "unet.onnx,unet.pt2", "--batches", "2",
            "--steps", "2", "--repeats", "1", "--threads", "1", "--no-profile", "--compile", "--gate")
    refused = run_cli(*args, "--out", str(out))
    assert refused.returncode == 2 and "--real" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    small = run_cli(*args, "--real", str(tiny_runs["data"]), "--segmenter", str(tiny_segmenter), "--gate-n", "48",
                    "--out", str(out))
    assert small.returncode == 2 and "--gate-n 48" in small.stderr and len(small.stderr.strip().splitlines()) == 1
    assert not out.exists()
    r = run_cli(*args, "--real", str(tiny_runs["data"]), "--segmenter", str(tiny_segmenter), "--gate-n", "48",
                "--allow-small", "--out", str(out), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "bench.json").read_text())
    names = [row["contender"] for row in result["rows"]]
    assert names == ["unet.onnx (onnxruntime-cpu)", "unet.pt2 (torch)", "unet.pt2 (torch-compiled)"]
    gate = result["gate"]
    assert list(gate["results"]) == names and gate["n"] == 48 and gate["reference"] == "unet.onnx-ddim-50-g4"
    assert [g["label"] for g in gate["results"].values()] == \
        ["unet.onnx-ddim-50-g4", "unet.pt2-ddim-50-g4", "unet.pt2-compiled-ddim-50-g4"]
    assert gate["results"]["unet.onnx (onnxruntime-cpu)"]["passed"]  # the reference configuration itself
    report = json.loads((out / "gate" / "gate.json").read_text())
    assert len(report["candidates"]) == 3 and all(c["metrics"] for c in report["candidates"])
    assert "gate" not in Manifest.load(tiny_export).verification  # 48 tiles: not recorded
    text = (out / "bench.md").read_text()
    assert "Quality gate (hs-eval gate's) of every runtime engine" in text
    assert "* batch 2: fastest runtime engine at the gate:" in text


def test_fastest_engine_at_the_gate_skips_failures_and_peers():
    from histosmith.benchmark.gate import best_at_gate

    rows = [{"contender": "fast", "kind": "engine", "batch": 16, "unet_ms_p50": 10.0},
            {"contender": "ok", "kind": "engine", "batch": 16, "unet_ms_p50": 20.0},
            {"contender": "slow", "kind": "engine", "batch": 16, "unet_ms_p50": 30.0},
            {"contender": "peer", "kind": "peer", "batch": 16, "unet_ms_p50": 1.0},
            {"contender": "ok", "kind": "engine", "batch": 1, "unet_ms_p50": 2.0}]
    gate = {"results": {"fast": {"passed": False}, "ok": {"passed": True}, "slow": {"passed": True},
                        "peer": {"passed": True}}}
    assert best_at_gate(rows, gate, 16)["contender"] == "ok"
    assert best_at_gate(rows, gate, 1)["contender"] == "ok"
    assert best_at_gate(rows, {"results": {}}, 16) is None


def test_headline_measures_configurations_against_the_paper_pipeline(tiny_export, tiny_runs, tmp_path):
    """hs-bench --headline: the paper's pipeline and each configuration end to end, the manifest's gate verdicts."""
    from histosmith.evaluation.gate import Configuration
    from histosmith.evaluation.gate_report import summary
    from histosmith.runtime.manifest import Manifest, record_verification
    from histosmith.runtime.schedule import SamplerSettings

    manifest = Manifest.load(tiny_export)
    guidance = manifest.sampling.guidance
    passing = Configuration(tiny_export / "unet.onnx", SamplerSettings("unipc", 3), guidance)

    class _Result:  # a recorded verdict, as hs-eval gate leaves it
        n = 500
        reference = passing

        @staticmethod
        def failures(label):
            return []

    export = tmp_path / "exp"
    import shutil

    shutil.copytree(tiny_export, export)
    record_verification(manifest, "gate", {passing.label: summary(_Result, passing.label)}).save(export)
    out = tmp_path / "h"
    res = run_cli("hs-bench", "--export", str(export), "--headline", "unet.onnx:unipc:3,unet.onnx:ddim:4",
                  "--batches", "1,4", "--repeats", "1", "--checkpoint", str(tiny_runs["ldm"]), "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((out / "headline.json").read_text())
    rows = result["rows"]
    assert [r["batch"] for r in rows] == [1, 1, 1, 4, 4, 4]
    assert [r["gate"] for r in rows[:3]] == ["reference", "pass", "not gated"]
    assert all(r["tiles_per_s"] > 0 for r in rows) and rows[0]["speedup"] == 1.0
    assert result["fastest_passing"]["4"]["label"] == passing.label and "stages" in result["fastest_passing"]["4"]
    assert (out / "headline.png").stat().st_size > 0 and "fastest passing" in (out / "headline.md").read_text()
    bad = run_cli("hs-bench", "--export", str(export), "--headline", "unet.onnx:euler:3", "--out", str(out / "x"))
    assert bad.returncode == 2 and "--headline" in bad.stderr
