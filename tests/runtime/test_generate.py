"""The ONNX Runtime generator against the torch reference, resume, and bad input."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from histosmith.data.reader import Dataset
from histosmith.errors import HistoSmithError
from histosmith.generator import load_generator
from histosmith.runtime import conditions as cond
from histosmith.runtime.backends.onnx_backend import OnnxBackend
from histosmith.runtime.backends.torch_backend import TorchBackend
from histosmith.runtime.engine import open_engine
from histosmith.runtime.generate import GenerationPlan, decode_labels, generate
from histosmith.runtime.manifest import Manifest
from histosmith.runtime.postprocess import PostprocessConfig
from histosmith.runtime.schedule import Scheduler
from histosmith.runtime.seeds import tile_noise
from histosmith.runtime.specs import DECODER, UNET
from tests.conftest import run_cli

SHARD_FILES = ("images.npy", "labels.npy", "counts.csv", "patch_info.csv")


def _batch_inputs(info, n=16, seed=5, steps=10, eta=0.0):
    tables = Scheduler(info.schedule).set_timesteps(steps, eta)
    table = cond.from_dataset(info, n, seed)
    latents, noise = tile_noise(seed, np.arange(n), info.latent_shape, steps, tables.stochastic)
    vectors = info.spec.vectors(table.counts, table.tissues)
    return tables, latents, vectors, np.full(n, 2.0, np.float32), noise


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_onnx_runtime_matches_torch_reference(tiny_runs, tiny_export, eta):
    gen = load_generator(tiny_runs["ldm"])
    tables, latents, vectors, guidance, noise = _batch_inputs(gen.info, eta=eta)
    ref = TorchBackend(gen.guided, gen.decoder, tables).sample(latents, vectors, guidance, noise)
    manifest = Manifest.load(tiny_export)
    ort_backend = OnnxBackend(tiny_export / "unet.onnx", tiny_export / "decoder.onnx", manifest.graph(UNET),
                              manifest.graph(DECODER), tables, manifest.batch.bounds)
    got = ort_backend.sample(latents, vectors, guidance, noise)
    rel = np.abs(got.latent - ref.latent).max() / np.abs(ref.latent).max()
    assert rel < 1e-4
    agree = (got.semantic.argmax(1) == ref.semantic.argmax(1)).mean()
    assert agree >= 0.995
    post = PostprocessConfig()
    n_ref = [lab[..., 0].max() for lab in decode_labels(ref, 3, post)]
    n_got = [lab[..., 0].max() for lab in decode_labels(got, 3, post)]
    assert np.mean(np.array(n_ref) == np.array(n_got)) >= 0.95
    # The decoder, run once per batch, must not leave spinning threads to compete with the U-Net's.
    spinning = "session.intra_op.allow_spinning"
    assert ort_backend.decoder.get_session_options().get_session_config_entry(spinning) == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # the U-Net keeps the default: spin
        ort_backend.unet.get_session_options().get_session_config_entry(spinning)


def test_fp16_graphs_stay_close_to_fp32(tiny_runs, tiny_export):
    """fp16 vs fp32 on the same noise (the numbers themselves are reported by benchmarks/)."""
    manifest = Manifest.load(tiny_export)
    info = manifest.info
    tables, latents, vectors, guidance, noise = _batch_inputs(info)
    outs = {}
    for p in ("", ".fp16"):
        b = OnnxBackend(tiny_export / f"unet{p}.onnx", tiny_export / f"decoder{p}.onnx", manifest.graph(UNET),
                        manifest.graph(DECODER), tables, manifest.batch.bounds)
        outs[p] = b.sample(latents, vectors, guidance, noise)
    rel = np.abs(outs[".fp16"].latent - outs[""].latent).max() / np.abs(outs[""].latent).max()
    assert rel < 0.05
    assert (outs[".fp16"].semantic.argmax(1) == outs[""].semantic.argmax(1)).mean() > 0.97


class _Wrapped:
    """A session whose backend is replaced (e.g. by one that fails mid-run)."""

    def __init__(self, session, wrap):
        self.session, self.wrap = session, wrap
        self.info, self.model_id = session.info, session.model_id

    def batch_limits(self):
        return self.session.batch_limits()

    def backend(self, tables):
        return self.wrap(self.session.backend(tables))


def _generate(engine, out, n=12, shard_size=4, batch=3, resume=False, wrap=None):
    session = open_engine(engine)
    table = cond.from_dataset(session.info, n, 1)
    plan = GenerationPlan(seed=1, steps=4, guidance=2.0, batch=batch, shard_size=shard_size)
    return generate(_Wrapped(session, wrap) if wrap else session, plan, table, out, resume=resume,
                    show_progress=False)


def _same_dataset(a: Path, b: Path) -> None:
    shards = sorted(p.name for p in a.glob("shard-*"))
    assert shards == sorted(p.name for p in b.glob("shard-*")) and shards
    for s in shards:
        for f in SHARD_FILES:
            assert (a / s / f).read_bytes() == (b / s / f).read_bytes(), f"{s}/{f}"


class _FailingBackend:
    """Wraps a backend and raises on the n-th batch (a crash mid-run)."""

    def __init__(self, inner, fail_at, exc):
        self.inner, self.fail_at, self.exc, self.calls = inner, fail_at, exc, 0
        self.name = inner.name

    def batch_sizes(self):
        return self.inner.batch_sizes()

    def sample(self, *args):
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.exc
        return self.inner.sample(*args)


def test_resume_after_crash_gives_identical_bytes(tiny_export, tmp_path):
    engine = tiny_export / "unet.onnx"
    full = _generate(engine, tmp_path / "full")
    assert full.n_tiles == 12 and full.measured.shape == (12, 3)
    with pytest.raises(KeyboardInterrupt):
        _generate(engine, tmp_path / "part", wrap=lambda b: _FailingBackend(b, 4, KeyboardInterrupt()))
    assert sorted(p.name for p in (tmp_path / "part").glob("shard-*")) == ["shard-00000"]
    resumed = _generate(engine, tmp_path / "part", resume=True)
    assert resumed.generated == 8
    _same_dataset(tmp_path / "full", tmp_path / "part")


def test_disk_full_keeps_complete_shards(tiny_export, tmp_path, monkeypatch):
    real_save = np.save
    calls = {"n": 0}

    def save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the second shard's first array
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", save)
    with pytest.raises(HistoSmithError, match="disk full"):
        _generate(tiny_export / "unet.onnx", tmp_path / "d")
    monkeypatch.setattr(np, "save", real_save)
    assert sorted(p.name for p in (tmp_path / "d").iterdir() if not p.name.endswith(".json")) == ["shard-00000"]
    _generate(tiny_export / "unet.onnx", tmp_path / "d", resume=True)
    _generate(tiny_export / "unet.onnx", tmp_path / "ref")
    _same_dataset(tmp_path / "ref", tmp_path / "d")


def test_resume_refuses_other_settings(tiny_export, tmp_path):
    _generate(tiny_export / "unet.onnx", tmp_path / "d", n=4)
    with pytest.raises(HistoSmithError, match="different settings"):
        _generate(tiny_export / "unet.onnx", tmp_path / "d", n=4, batch=2, resume=True)
    with pytest.raises(HistoSmithError, match="pass --resume"):
        _generate(tiny_export / "unet.onnx", tmp_path / "d", n=4)


def _one_error_line(result):
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and "tile/s" not in ln and "|" not in ln]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


def _gen_cli(engine, out, *extra):
    return run_cli("hs-generate", "--engine", str(engine), "--out", str(out), "--n", "4", "--steps", "3", *extra)


def test_cli_generates_with_every_engine_and_writes_reports(tiny_export, tmp_path):
    for name in ("unet.onnx", "unet.fp16.onnx", "unet.pt2"):
        out = tmp_path / name
        r = _gen_cli(tiny_export / name, out, "--counts", "epithelial=2,neutrophil=1", "--tissue", "stroma")
        assert r.returncode == 0, r.stderr[-2000:]
        assert "requested vs measured" in r.stdout
        for f in ("preview.png", "control.png", "control.json", "meta.json"):
            assert (out / f).exists(), f
        rows = (out / "shard-00000" / "patch_info.csv").read_text().splitlines()
        assert "requested_neutrophil" in rows[0] and len(rows) == 5


def test_cli_marker_depth_is_recorded_and_part_of_the_run(tiny_export, tmp_path):
    engine = tiny_export / "unet.onnx"
    runs = {}
    for depth in ("0.4", "0.05"):
        out = tmp_path / depth
        r = _gen_cli(engine, out, "--from-dataset", "--marker-depth", depth)
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads((out / "generation.json").read_text())["postprocess"]["h"] == float(depth)
        runs[depth] = Dataset.open(out)
    (_, img_a, _), = runs["0.4"].iter_shards()
    (_, img_b, _), = runs["0.05"].iter_shards()
    assert np.array_equal(img_a, img_b)  # same noise, same images: the depth only re-cuts the instances
    r = _gen_cli(engine, tmp_path / "0.4", "--from-dataset", "--marker-depth", "0.2", "--resume")
    assert "different settings" in _one_error_line(r)
    assert "--marker-depth" in _one_error_line(_gen_cli(engine, tmp_path / "x", "--marker-depth", "0"))
    assert "--marker-depth" in _one_error_line(_gen_cli(engine, tmp_path / "x", "--marker-depth", "0.2,a=b"))
    # per class: the named class's pixels use its own depth; recorded in generation.json, part of the run
    names = list(runs["0.4"].meta.class_names)
    out = tmp_path / "per-class"
    r = _gen_cli(engine, out, "--from-dataset", "--marker-depth", f"0.4,{names[0]}=0.05")
    assert r.returncode == 0, r.stderr[-2000:]
    post = json.loads((out / "generation.json").read_text())["postprocess"]
    assert post["h"] == 0.4 and post["class_h"] == [0.05] + [0.4] * (len(names) - 1)
    r = _gen_cli(engine, out, "--from-dataset", "--marker-depth", "0.4", "--resume")
    assert "different settings" in _one_error_line(r)
    r = _gen_cli(engine, out, "--from-dataset", "--marker-depth", f"{names[0]}=0.05", "--resume")  # same settings
    assert r.returncode == 0, r.stderr[-2000:]
    line = _one_error_line(_gen_cli(engine, tmp_path / "y", "--from-dataset", "--marker-depth", "0.4,nope=0.1"))
    assert "unknown class 'nope'" in line and not (tmp_path / "y" / "generation.json").exists()
    # area limits: oversized nuclei split at a shallower depth; part of the run as well
    out = tmp_path / "split"
    r = _gen_cli(engine, out, "--from-dataset", "--marker-depth", f"0.4,{names[0]}>5,split=0.05")
    assert r.returncode == 0, r.stderr[-2000:]
    post = json.loads((out / "generation.json").read_text())["postprocess"]
    assert post["split_area"] == [5.0] + [0.0] * (len(names) - 1) and post["split_h"] == 0.05
    (_, img_c, _), = Dataset.open(out).iter_shards()
    assert np.array_equal(img_a, img_c)
    r = _gen_cli(engine, out, "--from-dataset", "--marker-depth", f"0.4,{names[0]}>6,split=0.05", "--resume")
    assert "different settings" in _one_error_line(r)
    for bad in ("0.4,x>0", f"0.4,{names[0]}>5,{names[0]}>6", "0.4,split=0.05"):  # refused before a model loads
        assert "--marker-depth" in _one_error_line(_gen_cli(engine, tmp_path / "z", "--marker-depth", bad))
    line = _one_error_line(_gen_cli(engine, tmp_path / "z", "--from-dataset", "--marker-depth", "0.4,nope>10"))
    assert "unknown class 'nope'" in line and not (tmp_path / "z" / "generation.json").exists()


def test_cli_bad_inputs(tiny_export, tmp_path):
    exp = tiny_export
    assert "engine file not found" in _one_error_line(_gen_cli(exp / "missing.onnx", tmp_path / "o"))
    assert "unknown engine type" in _one_error_line(_gen_cli(exp / "manifest.json", tmp_path / "o"))
    assert "unknown class" in _one_error_line(_gen_cli(exp / "unet.onnx", tmp_path / "o", "--counts", "xyz=3"))
    assert "unknown tissue" in _one_error_line(
        _gen_cli(exp / "unet.onnx", tmp_path / "o", "--counts", "epithelial=3", "--tissue", "liver"))
    assert "beyond the training range" in _one_error_line(
        _gen_cli(exp / "unet.onnx", tmp_path / "o", "--counts", "epithelial=999", "--tissue", "stroma"))
    assert "--batch 65: this export's graphs take batches of 1..64" in _one_error_line(
        _gen_cli(exp / "unet.onnx", tmp_path / "o", "--batch", "65"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "not a directory" in _one_error_line(_gen_cli(exp / "unet.onnx", blocker / "sub"))
    # A modified graph, a missing manifest, a manifest from another export.
    other = tmp_path / "other"
    shutil.copytree(exp, other)
    with open(other / "decoder.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    assert "SHA-256 differs" in _one_error_line(_gen_cli(other / "unet.onnx", tmp_path / "o"))
    manifest = json.loads((exp / "manifest.json").read_text())
    manifest["files"]["unet.onnx"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert "was edited" in _one_error_line(_gen_cli(other / "unet.onnx", tmp_path / "o"))
    (other / "manifest.json").unlink()
    assert "manifest.json: not found" in _one_error_line(_gen_cli(other / "unet.onnx", tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_ctrl_c_then_resume(tiny_export, tmp_path):
    out = tmp_path / "run"
    exe = Path(sys.executable).parent / "hs-generate"
    args = [str(exe), "--engine", str(tiny_export / "unet.onnx"), "--out", str(out), "--n", "96", "--steps", "25",
            "--batch", "2", "--shard-size", "4", "--seed", "3"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "shard-00001").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be interrupted (machine too fast for this check)")
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    done = sorted(p.name for p in out.glob("shard-*"))
    assert done and len(done) < 24
    r = subprocess.run(args + ["--resume"], capture_output=True, text=True, check=False, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = subprocess.run([a if a != str(out) else str(tmp_path / "ref") for a in args], capture_output=True,
                         text=True, check=False, timeout=300)
    assert ref.returncode == 0
    _same_dataset(tmp_path / "ref", out)
    assert os.path.exists(out / "preview.png")


def test_second_writer_is_refused_and_a_stale_lock_is_taken_over(tiny_export, tmp_path):
    """Two runs on one --out: the second is refused before it writes anything; a lock file left by a killed
    writer (nobody holds its flock) does not block the next run."""
    from histosmith.data.lock import exclusive, lock_path

    out = tmp_path / "d"
    with exclusive(out, "dataset"):
        res = _gen_cli(tiny_export / "unet.onnx", out)
        assert "another writer is using this dataset" in _one_error_line(res)
        assert not out.exists()
    assert not lock_path(out).exists()
    lock_path(out).write_text("pid 999999: hs-generate")  # what a SIGKILLed writer leaves behind
    res = _gen_cli(tiny_export / "unet.onnx", out)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(Dataset.open(out)) == 4 and not lock_path(out).exists()
