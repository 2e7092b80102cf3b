"""Bad input, tried as a careless or hostile user would, through the command line.

The promise every case checks: the command ends with exit code 2 and exactly one line on stderr,
``error: <what>: <problem>`` (Ctrl-C: ``interrupted: ...`` and 130, see tests/runtime/test_generate.py);
nothing half-written appears and nothing already on disk changes (its bytes are compared before and
after); options and paths are refused before any expensive work. A few cases that used to corrupt data
silently check the corrected success path instead (said so in their docstring).

Commands run in-process through the same ``run()`` the console scripts use (seconds, not a Python start
per case); the file-size-limit case needs a child process with its own limit.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from histosmith.cli import common
from histosmith.runtime.manifest import MANIFEST_FILE, body_digest
from tests.conftest import write_conic_dir

CLASSES = ["epithelial", "lymphocyte", "neutrophil"]


# ------------------------------------------------------------------------------------------- helpers


def _cli(name: str):
    from importlib import import_module

    return import_module(f"histosmith.cli.{name}").cli


def run(capsys, command: str, *args: str | Path) -> tuple[int, str, str]:
    """Run ``hs-<command>`` in-process; returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        common.run(_cli(command), [str(a) for a in args])
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def snapshot(*paths: Path) -> dict[str, str | None]:
    """SHA-256 of every file under ``paths`` (None for a missing path): what 'nothing lost' compares."""
    state: dict[str, str | None] = {}
    for root in paths:
        if not root.exists():
            state[str(root)] = None
            continue
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            state[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return state


def refused(capsys, command: str, *args: str | Path, match: str, keep: tuple[Path, ...] = (),
            absent: tuple[Path, ...] = ()) -> str:
    """Assert the promise: exit 2, one ``error:`` line naming the problem, ``keep`` unchanged, ``absent`` absent."""
    before = snapshot(*keep)
    code, _, err = run(capsys, command, *args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err[-2000:]
    assert lines and lines[-1].startswith("error: "), err[-2000:]
    errors = [ln for ln in lines if ln.startswith(("error:", "Error", "Traceback", "Usage"))]
    assert errors == [lines[-1]], err[-2000:]
    assert "\r" not in lines[-1] and "|" not in lines[-1], "error glued to a progress bar"
    assert match.lower() in lines[-1].lower(), lines[-1]
    assert snapshot(*keep) == before, "existing data changed"
    for path in absent:
        assert not path.exists(), f"{path} was written"
    return lines[-1]


def generate_args(engine: Path, out: Path, *extra: str) -> list[str | Path]:
    return ["--engine", engine, "--out", out, "--n", "3", "--steps", "2", "--batch", "3", *extra]


def _with_digest(data: dict) -> dict:
    """A manifest edited by someone who also recomputes its body digest (defeats the checksum on purpose)."""
    body = {k: v for k, v in data.items() if k != "body_sha256"}
    return {**body, "body_sha256": body_digest(body)}


@pytest.fixture
def export(tiny_export: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny export, free to tamper with."""
    copy = tmp_path / "export"
    shutil.copytree(tiny_export, copy)
    return copy


@pytest.fixture
def conic_src(tmp_path: Path):
    """Write a 2-tile CoNIC directory with chosen arrays."""
    from histosmith.data.sources.synthetic import synthetic_tile

    tiles = [synthetic_tile(0, i, 32) for i in range(2)]
    images = np.stack([t.image for t in tiles])
    labels = np.stack([t.labels for t in tiles])

    def make(images=images, labels=labels) -> Path:
        return write_conic_dir(tmp_path / "src", images, labels, CLASSES, ["a_1", "a_2"])

    return make


# ------------------------------------------------------------------------------------------- generation


def test_generate_never_writes_into_an_existing_dataset(capsys, export, synthetic_dir, tmp_path):
    """``--out`` of real data without --resume (any shard size) is refused before anything is written."""
    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    refused(capsys, "generate", *generate_args(export / "unet.onnx", data), match="not empty", keep=(data,))
    refused(capsys, "generate", *generate_args(export / "unet.onnx", data, "--shard-size", "7"), match="not empty",
            keep=(data,), absent=(data / "generation.json",))
    refused(capsys, "generate", *generate_args(export / "unet.onnx", data, "--resume"), match="nothing to resume",
            keep=(data,))


def test_generate_resume_of_a_finished_run_keeps_its_metadata(capsys, export, tmp_path):
    """Success path: --resume on a finished one-shard run leaves n_tiles (it used to rewrite it as 0)."""
    out = tmp_path / "gen"
    assert run(capsys, "generate", *generate_args(export / "unet.onnx", out))[0] == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["n_tiles"] == 3
    shards = snapshot(out / "shard-00000")
    assert run(capsys, "generate", *generate_args(export / "unet.onnx", out, "--resume"))[0] == 0
    assert json.loads((out / "meta.json").read_text())["n_tiles"] == 3
    assert snapshot(out / "shard-00000") == shards
    refused(capsys, "generate", *generate_args(export / "unet.onnx", out, "--resume", "--seed", "5"),
            match="different settings", keep=(out,))


@pytest.mark.parametrize("name", ["../../outside.onnx", "/etc/passwd"])
def test_manifest_paths_stay_inside_the_export(capsys, export, tmp_path, name):
    """A file name that leaves the export directory is refused even when the digest was recomputed."""
    data = json.loads((export / MANIFEST_FILE).read_text())
    data["variants"][0]["decoder"] = name
    data["files"][name] = "0" * 64
    (export / MANIFEST_FILE).write_text(json.dumps(_with_digest(data)))
    refused(capsys, "generate", *generate_args(export / data["variants"][0]["entry"], tmp_path / "o"),
            match="not a plain name inside the export", absent=(tmp_path / "o",))


def test_manifest_link_out_of_the_export_is_refused(capsys, export, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(export / "decoder.onnx", outside)
    (export / "decoder.onnx").unlink()
    (export / "decoder.onnx").symlink_to(outside)
    refused(capsys, "generate", *generate_args(export / "unet.onnx", tmp_path / "o"), match="outside the export",
            absent=(tmp_path / "o",))


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["condition"].__setitem__("class_names", ["a", "b", "c"]), "was edited"),
    (lambda m: m.__setitem__("latent_shape", [9, 9, 9]), "was edited"),
])
def test_edited_manifest_is_refused(capsys, export, tmp_path, edit, match):
    """Class names or shapes edited in manifest.json: refused before any tile (would relabel or crash)."""
    data = json.loads((export / MANIFEST_FILE).read_text())
    edit(data)
    (export / MANIFEST_FILE).write_text(json.dumps(data))
    refused(capsys, "generate", *generate_args(export / "unet.onnx", tmp_path / "o"), match=match,
            absent=(tmp_path / "o",))


def test_manifest_shapes_checked_against_graph_specs(capsys, export, tmp_path):
    """Even with a recomputed digest, a latent shape that the graph specs contradict is refused."""
    data = json.loads((export / MANIFEST_FILE).read_text())
    data["latent_shape"] = [9, 9, 9]
    (export / MANIFEST_FILE).write_text(json.dumps(_with_digest(data)))
    refused(capsys, "generate", *generate_args(export / "unet.onnx", tmp_path / "o"), match="does not fit",
            absent=(tmp_path / "o",))


@pytest.mark.parametrize("option, value, match", [
    ("--guidance", "nan", "--guidance"),
    ("--guidance", "inf", "--guidance"),
    ("--eta", "nan", "--eta"),
    ("--seed", "-1", "--seed"),
    ("--steps", "many", "--steps"),
    ("--counts", "epithelial=99999999999999999999", "beyond any tile"),
    ("--counts", "epithelial=1.5", "not a whole number"),
])
def test_generate_refuses_nonsense_options(capsys, export, tmp_path, option, value, match):
    refused(capsys, "generate", *generate_args(export / "unet.onnx", tmp_path / "o", option, value), match=match,
            absent=(tmp_path / "o",))


def test_condition_csv_with_extra_fields(capsys, export, tmp_path):
    csv_file = tmp_path / "c.csv"
    csv_file.write_text("epithelial,tissue\n3,stroma,EXTRA\n")
    refused(capsys, "generate", *generate_args(export / "unet.onnx", tmp_path / "o", "--conditions", str(csv_file)),
            match="more fields than the header", absent=(tmp_path / "o",))


def test_generate_output_under_a_file(capsys, export, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    refused(capsys, "generate", *generate_args(export / "unet.onnx", blocker / "out"), match="not a directory",
            keep=(blocker,))


# ------------------------------------------------------------------------------------------- export


def test_export_force_deletes_only_an_export(capsys, tiny_runs, synthetic_dir, tmp_path):
    """``--force`` on a directory that is not an export leaves it alone (it used to delete it)."""
    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    refused(capsys, "export", "--checkpoint", tiny_runs["ldm"], "--out", data, "--force",
            match="not an hs-export directory", keep=(data,))


def test_export_force_keeps_foreign_files_in_an_export(capsys, tiny_runs, export):
    (export / "my-notes.txt").write_text("mine")
    refused(capsys, "export", "--checkpoint", tiny_runs["ldm"], "--out", export, "--force",
            match="not part of the export", keep=(export,))


def test_export_out_is_a_file(capsys, tiny_runs, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    refused(capsys, "export", "--checkpoint", tiny_runs["ldm"], "--out", target, match="not a directory",
            keep=(target,))


# ------------------------------------------------------------------------------------------- data


def _prepare_refused(capsys, src: Path, tmp_path: Path, match: str, *extra: str) -> None:
    refused(capsys, "data", "prepare", "--source", extra[0] if extra else "conic", "--path", src,
            "--out", tmp_path / "out", match=match, keep=(src,), absent=(tmp_path / "out",))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "temporary left behind"


def test_float_labels_are_not_truncated(capsys, conic_src, tmp_path):
    src = conic_src()
    labels = np.load(src / "labels.npy").astype(np.float64)
    labels[0, 3, 3, 0] = 1.5
    np.save(src / "labels.npy", labels)
    _prepare_refused(capsys, src, tmp_path, "not whole ids")


def test_non_uint8_image_is_not_clipped(capsys, conic_src, tmp_path):
    src = conic_src()
    images = np.load(src / "images.npy").astype(np.float32) * 1.5  # values above 255
    np.save(src / "images.npy", images)
    _prepare_refused(capsys, src, tmp_path, "outside the whole numbers 0..255")


def test_nucleus_without_class_is_refused(capsys, conic_src, tmp_path):
    src = conic_src()
    labels = np.load(src / "labels.npy")
    first = labels[0, ..., 0] == labels[0, ..., 0].max()
    labels[0, ..., 1][first] = 0
    np.save(src / "labels.npy", labels)
    _prepare_refused(capsys, src, tmp_path, "have no class")


def test_object_array_is_refused(capsys, conic_src, tmp_path):
    src = conic_src()
    images = np.load(src / "images.npy")
    np.save(src / "images.npy", np.array(list(images) + [None], dtype=object)[:-1], allow_pickle=True)
    _prepare_refused(capsys, src, tmp_path, "python objects")


@pytest.mark.parametrize("value", ["inf", "1e30", "nan", "-1", "2.5"])
def test_counts_csv_values(capsys, conic_src, tmp_path, value):
    src = conic_src()
    (src / "counts.csv").write_text(",".join(CLASSES) + f"\n1,2,{value}\n1,1,1\n")
    _prepare_refused(capsys, src, tmp_path, "counts.csv")


def test_counts_csv_extra_fields(capsys, conic_src, tmp_path):
    src = conic_src()
    (src / "counts.csv").write_text(",".join(CLASSES) + "\n1,2,3,4\n1,1,1\n")
    _prepare_refused(capsys, src, tmp_path, "4 fields")


@pytest.mark.parametrize("name", ["classes.txt", "tissues.csv"])
def test_folder_text_files_not_utf8(capsys, tmp_path, name):
    import cv2

    src = tmp_path / "folder"
    for sub in ("images", "instances", "classes"):
        (src / sub).mkdir(parents=True)
    cv2.imwrite(str(src / "images" / "a.png"), np.zeros((16, 16, 3), np.uint8))
    cv2.imwrite(str(src / "instances" / "a.png"), np.zeros((16, 16), np.uint8))
    cv2.imwrite(str(src / "classes" / "a.png"), np.zeros((16, 16), np.uint8))
    (src / "classes.txt").write_text("epithelial\n")
    (src / name).write_bytes(b"a,\xff\xfe stroma\n")
    _prepare_refused(capsys, src, tmp_path, "not UTF-8", "folder")


@pytest.mark.parametrize("key, value", [("tile_size", "sixty-four"), ("class_names", "epithelial"),
                                        ("count_scale", ["x", 1, 2])])
def test_meta_json_wrong_types(capsys, synthetic_dir, tmp_path, key, value):
    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    meta = json.loads((data / "meta.json").read_text())
    meta[key] = value
    (data / "meta.json").write_text(json.dumps(meta))
    refused(capsys, "data", "info", data, "--plot", tmp_path / "info.png", match=key, keep=(data,),
            absent=(tmp_path / "info.png",))


def test_outputs_checked_before_work(capsys, synthetic_dir, tmp_path):
    """--plot / --json that cannot be written are refused before the dataset is read."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    refused(capsys, "data", "info", synthetic_dir, "--plot", blocker / "x.png", match="not a directory",
            keep=(synthetic_dir,))
    refused(capsys, "evaluate", "conic", "--true", tmp_path / "missing", "--pred", tmp_path / "missing",
            "--json", blocker / "x.json", match="not a directory")
    refused(capsys, "evaluate", "conic", "--true", synthetic_dir, "--pred", synthetic_dir, "--json", tmp_path,
            match="is a directory")


def test_error_after_a_progress_bar_is_on_its_own_line(capsys, conic_src, tmp_path):
    """The error line is not glued to the bar of the work it interrupted (tile 2 of 2 is bad)."""
    src = conic_src()
    labels = np.load(src / "labels.npy")
    labels[1, 0, 0] = (50, 9)  # class 9 of 3, in the second tile
    np.save(src / "labels.npy", labels)
    _prepare_refused(capsys, src, tmp_path, "class ids must lie")


def test_click_usage_errors_are_one_line(capsys, tmp_path):
    refused(capsys, "data", "prepare", "--source", "nope", "--out", tmp_path / "o", match="--source")
    refused(capsys, "data", "prepare", "--source", "synthetic", match="--out")
    refused(capsys, "data", "prepare", "--source", "synthetic", "--seed", "-1", "--out", tmp_path / "o",
            match="--seed", absent=(tmp_path / "o",))
    refused(capsys, "train", "vqvae", "--data", tmp_path, "--out", tmp_path / "o", "--seed", "-1", match="--seed",
            absent=(tmp_path / "o",))


def test_full_file_system_says_so(tmp_path):
    """A file-size limit (like a full disk) ends in one line that says so, and no partial dataset."""
    exe = Path(sys.executable).parent / "hs-data"
    out = tmp_path / "out"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    r = subprocess.run([str(exe), "prepare", "--source", "synthetic", "--n-tiles", "64", "--tile-size", "64",
                        "--shard-size", "64", "--out", str(out)], capture_output=True, text=True,
                       preexec_fn=limit, timeout=300, check=False, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr[-2000:]
    assert lines[-1].startswith("error: ") and ("file-size limit" in lines[-1] or "disk full" in lines[-1]), lines
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------------- training


def test_ldm_resume_rebuilds_a_truncated_latent_cache_and_keeps_whole_steps(capsys, tiny_runs, tmp_path):
    """Success path: a damaged latents.npz is re-encoded on --resume; log.csv steps stay whole numbers."""
    run_dir = tmp_path / "ldm"
    shutil.copytree(tiny_runs["ldm"], run_dir)
    cache = run_dir / "latents.npz"
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    code, _, err = run(capsys, "train", "ldm", "--data", tiny_runs["data"], "--vqvae", tiny_runs["vq"], "--config",
                       "tiny", "--out", run_dir, "--resume", "--max-steps", "31", "--device", "cpu")
    assert code == 0, err[-2000:]
    assert "damaged" in err
    steps = [line.split(",")[0] for line in (run_dir / "log.csv").read_text().splitlines()[1:]]
    assert steps and all(s.isdigit() for s in steps), steps


def test_ldm_refuses_changed_lr_on_resume(capsys, tiny_runs, tmp_path):
    run_dir = tmp_path / "ldm"
    shutil.copytree(tiny_runs["ldm"], run_dir)
    refused(capsys, "train", "ldm", "--data", tiny_runs["data"], "--vqvae", tiny_runs["vq"], "--config", "tiny",
            "--out", run_dir, "--resume", "--lr", "0.5", "--device", "cpu", match="--lr 0.5", keep=(run_dir,))
    refused(capsys, "train", "ldm", "--data", tiny_runs["data"], "--vqvae", tiny_runs["vq"], "--config", "tiny",
            "--out", run_dir, "--resume", "--batch-size", "999", "--device", "cpu", match="--batch-size 999",
            keep=(run_dir,))


def test_pickle_that_is_not_a_checkpoint_is_refused(capsys, tmp_path):
    """A pickle with code in it is refused by safe loading, in one line (no torch warning around it)."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo should-never-run",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"kind": Payload()}))
    refused(capsys, "sample", "--checkpoint", evil, "--out", tmp_path / "o", match="safe (weights_only) loading",
            keep=(evil,), absent=(tmp_path / "o",))
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    refused(capsys, "export", "--checkpoint", text, "--out", tmp_path / "e", match="not a PyTorch checkpoint",
            absent=(tmp_path / "e",))


def test_failed_training_start_leaves_no_run_directory(capsys, tiny_runs, tmp_path):
    out = tmp_path / "run"
    refused(capsys, "train", "ldm", "--data", tiny_runs["data"], "--vqvae", tiny_runs["ldm"], "--config", "tiny",
            "--out", out, "--device", "cpu", match="expected vqvae", absent=(out,))
