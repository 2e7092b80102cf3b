"""``--device openvino``: the export's ONNX graphs in OpenVINO's CPU plugin, through the runtime's own loop."""

import numpy as np
import pytest

from histosmith.errors import HistoSmithError
from histosmith.runtime import conditions as cond
from histosmith.runtime.engine import EngineOptions, open_engine
from histosmith.runtime.generate import GenerationPlan, generate
from tests.conftest import run_cli

pytest.importorskip("openvino", reason="OpenVINO is the [openvino] extra (in [all]); not installed here")


def _run(engine, out, device, batch, n=6, sampler="dpmpp-2m", steps=4, resume=False):
    session = open_engine(engine, EngineOptions(device, batch=batch))
    try:
        plan = GenerationPlan(seed=5, steps=steps, sampler=sampler, guidance=2.0, batch=batch)
        table = cond.from_dataset(session.info, n, 3)
        return generate(session, plan, table, out, resume=resume, show_progress=False)
    finally:
        session.close()


def test_openvino_follows_onnx_runtime_and_is_batch_independent(tiny_export, tmp_path):
    engine = tiny_export / "unet.onnx"
    _run(engine, tmp_path / "ort", "cpu", 3)
    _run(engine, tmp_path / "ov3", "openvino", 3)
    _run(engine, tmp_path / "ov1", "openvino", 1)
    ort, ov3, ov1 = (np.load(tmp_path / d / "shard-00000" / "images.npy") for d in ("ort", "ov3", "ov1"))
    assert np.array_equal(ov3, ov1)  # tile i depends on (seed, i) only
    assert np.abs(ov3.astype(int) - ort.astype(int)).mean() < 0.5  # f32 in both: a few rounding steps apart
    labels = [np.load(tmp_path / d / "shard-00000" / "labels.npy") for d in ("ort", "ov3")]
    assert (labels[0][..., 1] == labels[1][..., 1]).mean() > 0.98
    assert "(OpenVINO)" in (tmp_path / "ov3" / "generation.json").read_text()


def test_a_run_is_resumed_only_on_the_runtime_that_began_it(tiny_export, tmp_path):
    engine = tiny_export / "unet.onnx"
    _run(engine, tmp_path / "run", "openvino", 3)
    with pytest.raises(HistoSmithError, match="different settings.*model"):
        _run(engine, tmp_path / "run", "cpu", 3, resume=True)


def test_openvino_refuses_what_it_cannot_run(tiny_export, tmp_path):
    r = run_cli("hs-generate", "--engine", str(tiny_export / "unet.pt2"), "--device", "openvino", "--n", "2",
                "--out", str(tmp_path / "g"))
    assert r.returncode == 2 and "--device openvino" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "g").exists()
