"""``hs-serve``: a real Triton Inference Server (PyTriton) on free loopback ports, one per test module."""

from __future__ import annotations

import importlib.util
import json
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from histosmith.data.format import Dataset
from tests.conftest import REPO, run_cli

pytest.importorskip("pytriton", reason="the [serve] extra (nvidia-pytriton) is not installed")
http = pytest.importorskip("tritonclient.http", reason="the [serve] extra (tritonclient) is not installed")

STEPS = 4
SEED = 11


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    client = http.InferenceServerClient(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hs-serve exited with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        try:
            if client.is_model_ready("histosmith"):
                return
        except Exception:  # not listening yet
            pass
        time.sleep(0.5)
    raise AssertionError("hs-serve did not become ready")


def start_server(tiny_export: Path) -> tuple[subprocess.Popen, str]:
    port, grpc, metrics = free_ports(3)
    exe = Path(sys.executable).parent / "hs-serve"
    # Two model instances: enough for concurrent requests to meet in the batcher. PyTriton gives each instance
    # one second for its start-up handshake, which a machine under heavy load can miss: one retry.
    proc = subprocess.Popen([str(exe), "--export", str(tiny_export), "--port", str(port), "--grpc-port", str(grpc),
                             "--metrics-port", str(metrics), "--max-batch", "8", "--steps", str(STEPS),
                             "--threads", "1", "--instances", "2", "--max-delay-ms", "50"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, f"127.0.0.1:{port}"


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def server(tiny_export):
    for attempt in range(2):
        proc, url = start_server(tiny_export)
        try:
            wait_ready(url, proc)
            break
        except AssertionError:
            stop_server(proc)
            if attempt:
                raise
    try:
        yield {"url": url, "export": tiny_export}
    finally:
        stop_server(proc)


def _load_client_example():
    spec = importlib.util.spec_from_file_location("triton_client", REPO / "examples" / "triton_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLIENT = _load_client_example()


def request(url, counts, tissues, seeds, indices, steps=None):
    """One request on a client of its own (tritonclient's HTTP client is not thread-safe)."""
    client = http.InferenceServerClient(url, network_timeout=300)
    try:
        return CLIENT.request_tiles(client, np.asarray(counts), tissues, np.asarray(seeds), np.asarray(indices),
                                    steps)
    finally:
        client.close()


def _manifest(export: Path) -> dict:
    return json.loads((export / "manifest.json").read_text())["condition"]


def test_concurrent_tiles_equal_hs_generate(server, tmp_path):
    check_against_hs_generate(server["url"], server["export"], tmp_path)


def check_against_hs_generate(url: str, export: Path, tmp_path: Path, steps: int | None = None) -> None:
    """Concurrent requests for tiles 0..5 return exactly what hs-generate writes for them (``steps``: sent with
    each request; None: the server's default, STEPS)."""
    cond = _manifest(export)
    counts = [min(1, m) for m in cond["count_max"]]
    tissue = cond["tissue_names"][-1]
    text = ",".join(f"{c}={n}" for c, n in zip(cond["class_names"], counts, strict=True))
    n = 6
    out = tmp_path / "gen"
    result = run_cli("hs-generate", "--engine", str(export / "unet.onnx"), "--counts", text, "--tissue",
                     tissue, "--n", str(n), "--steps", str(STEPS), "--batch", "3", "--seed", str(SEED), "--out",
                     str(out))
    assert result.returncode == 0, result.stderr
    shard = Dataset.open(out).shards[0]
    images, labels, expected_counts = shard.images(), shard.labels(), Dataset.open(out).counts()
    # five one-tile requests and one two-tile request, all at once: the batcher mixes them
    jobs = [([i], [i]) for i in range(4)] + [([4, 5], [4, 5])]
    with ThreadPoolExecutor(len(jobs)) as pool:
        replies = list(pool.map(lambda job: (job[1], request(url, [counts] * len(job[0]),
                                                                [tissue] * len(job[0]), [SEED] * len(job[0]),
                                                                job[0], steps)), jobs))
    for indices, reply in replies:
        for k, i in enumerate(indices):
            np.testing.assert_array_equal(reply["image"][k], images[i])
            np.testing.assert_array_equal(reply["instance"][k], labels[i][..., 0])
            np.testing.assert_array_equal(reply["class"][k], labels[i][..., 1])
            np.testing.assert_array_equal(reply["counts"][k], expected_counts[i])


def test_a_failing_request_does_not_fail_its_batch_mates(tiny_export):
    """In process, no Triton: requests rendered together; one whose tiles break the engine batch gets its own
    one-line error, the others their tiles — the same bytes as alone."""
    from histosmith.errors import HistoSmithError
    from histosmith.runtime.serving import ServeDefaults, TileRenderer, TileRequest

    renderer = TileRenderer(tiny_export / "unet.onnx", 8, ServeDefaults(steps=STEPS), threads=1)
    k = renderer.info.n_classes
    good = [[TileRequest(np.zeros(k, np.int64), 0, SEED, i, STEPS, 4.0)] for i in range(3)]
    broken = [TileRequest(np.zeros(k, np.int64), 99, SEED, 7, STEPS, 4.0)]  # a tissue no model has
    results = renderer.render_each([good[0], broken, good[1], good[2]])
    assert isinstance(results[1], HistoSmithError) and "\n" not in str(results[1])
    for request, tiles in zip(good, [results[0], results[2], results[3]], strict=True):
        alone = renderer.render(request)[0]
        np.testing.assert_array_equal(alone.image, tiles[0].image)
        np.testing.assert_array_equal(alone.instance, tiles[0].instance)
    together = renderer.render_each(good)  # no failure: one engine batch, same bytes
    np.testing.assert_array_equal(together[1][0].image, results[2][0].image)


def test_parse_names_every_bad_field(tiny_export, monkeypatch):
    """Every field out of range or of the wrong kind: one line naming it, before any tile is rendered."""
    from histosmith.errors import HistoSmithError
    from histosmith.runtime.serving import ServeDefaults, TileRenderer, parse_tiles

    renderer = TileRenderer(tiny_export / "unet.onnx", 8, ServeDefaults(steps=STEPS), threads=1)
    info, k = renderer.info, renderer.info.n_classes
    good = {"counts": np.zeros((1, k), np.int32), "tissue": np.array([[info.spec.tissue_names[0].encode()]],
                                                                     dtype=object),
            "seed": np.array([[1]], np.int64), "index": np.array([[0]], np.int64)}
    assert len(parse_tiles(info, good, renderer.defaults)) == 1
    cases = {"seed": np.array([[-1]], np.int64), "index": np.array([[2**50]], np.int64),
             "steps": np.array([[0]], np.int32), "guidance": np.array([[np.nan]], np.float32),
             "tissue": np.array([[b"\xff\xfe"]], dtype=object), "counts": np.full((1, k), 10**6, np.int32)}
    for name, value in cases.items():
        with pytest.raises(HistoSmithError, match=f"input '{name}'"):
            parse_tiles(info, dict(good, **{name: value}), renderer.defaults)
    with pytest.raises(HistoSmithError, match="input 'guidance'"):
        parse_tiles(info, dict(good, guidance=np.array([[1000.0]], np.float32)), renderer.defaults)
    with pytest.raises(HistoSmithError, match="input 'seed'"):
        parse_tiles(info, dict(good, seed=np.array([[1.5]])), renderer.defaults)
    import histosmith.runtime.serving as serving

    def unforeseen(*args):
        raise ValueError("boom\nsecond line")

    monkeypatch.setattr(serving, "_parse_tiles", unforeseen)
    with pytest.raises(HistoSmithError, match=r"^request not understood \(ValueError: boom\)$"):  # still one line
        parse_tiles(info, good, renderer.defaults)


def test_renderer_takes_the_marker_depth(tiny_export):
    """hs-serve --marker-depth (and the Ray workers, which render through the same class): per class as in
    hs-generate; a class the model does not have is refused before anything is served."""
    from histosmith.errors import HistoSmithError
    from histosmith.runtime.postprocess import PostprocessConfig
    from histosmith.runtime.serving import ServeDefaults, TileRenderer

    names = _manifest(tiny_export)["class_names"]
    defaults = ServeDefaults(steps=STEPS, marker_depth=f"0.3,{names[-1]}=0.1")
    renderer = TileRenderer(tiny_export / "unet.onnx", 8, defaults, threads=1)
    assert renderer.post == PostprocessConfig(h=0.3, class_h=(0.3,) * (len(names) - 1) + (0.1,))
    split = TileRenderer(tiny_export / "unet.onnx", 8, ServeDefaults(steps=STEPS, marker_depth=f"0.3,{names[0]}>40"),
                         threads=1)
    assert split.post == PostprocessConfig(h=0.3, split_area=(40.0,) + (0.0,) * (len(names) - 1), split_h=0.1)
    with pytest.raises(HistoSmithError, match="unknown class 'nope'"):
        TileRenderer(tiny_export / "unet.onnx", 8, ServeDefaults(steps=STEPS, marker_depth="0.3,nope=0.1"))


def test_bad_requests_fail_alone_and_server_keeps_serving(server):
    url = server["url"]
    cond = _manifest(server["export"])
    k, tissue = len(cond["class_names"]), cond["tissue_names"][0]
    good = dict(counts=[[0] * k], tissues=[tissue], seeds=[1], indices=[0])
    bad = {
        "unknown tissue": dict(good, tissues=["no-such-tissue"]),
        "wrong shape": dict(good, counts=[[0] * (k + 1)]),
        "count out of range": dict(good, counts=[[m + 1 for m in cond["count_max"]]]),
        "negative count": dict(good, counts=[[-1] * k]),
    }
    expected = {"unknown tissue": "unknown tissue", "wrong shape": "shape", "count out of range": "training range",
                "negative count": "negative"}
    with ThreadPoolExecutor(8) as pool:  # bad and good requests at the same time
        futures = {name: pool.submit(request, url, **kw) for name, kw in bad.items()}
        goods = [pool.submit(request, url, **dict(good, indices=[i])) for i in range(3)]
        for name, future in futures.items():
            with pytest.raises(Exception) as info:
                future.result()
            assert expected[name] in str(info.value), (name, str(info.value)[:500])
        for future in goods:
            assert future.result()["image"].shape[0] == 1
    with pytest.raises(Exception, match="input 'steps': must lie in"):
        request(url, **good, steps=0)
    assert request(url, **good)["image"].dtype == np.uint8


@pytest.mark.slow
def test_load_mixed_good_and_malformed_requests(server):
    """6 clients x 8 requests, a third malformed: every good one gets the tiles the renderer makes in process,
    every bad one a 400 with one line naming its field (no traceback), and the server stays healthy."""
    from histosmith.runtime.serving import ServeDefaults, TileRenderer, TileRequest

    url = server["url"]
    cond = _manifest(server["export"])
    k, tissue = len(cond["class_names"]), cond["tissue_names"][0]
    renderer = TileRenderer(server["export"] / "unet.onnx", 8, ServeDefaults(steps=STEPS), threads=1)
    malformed = [dict(seeds=[-5]), dict(tissues=["nope"]), dict(counts=[[0] * (k + 2)]), dict(steps=0),
                 dict(counts=[[-1] * k])]

    def client(c: int) -> list[tuple[str, object]]:
        out = []
        for m in range(8):
            job = dict(counts=[[m % 2] * k], tissues=[tissue], seeds=[100 + c], indices=[m])
            if (c + m) % 3 == 0:
                job |= malformed[(c + m) % len(malformed)]
                try:
                    request(url, **job)
                    out.append(("bad-accepted", job))
                except Exception as exc:  # tritonclient's InferenceServerException
                    out.append(("bad", exc))
            else:
                out.append(("good", (job, request(url, **job))))
        return out

    with ThreadPoolExecutor(6) as pool:
        results = [r for rs in pool.map(client, range(6)) for r in rs]
    assert not [r for r in results if r[0] == "bad-accepted"]
    for kind, value in results:
        if kind == "bad":
            text = str(value)
            assert "Traceback" not in text and "input '" in text, text[:500]
            status = getattr(value, "status", lambda: None)()
            assert status in (None, "400", 400), status
        else:
            job, reply = value
            want = renderer.render([TileRequest(np.array(job["counts"][0], np.int64), 0, job["seeds"][0],
                                                job["indices"][0], STEPS, renderer.defaults.guidance)])[0]
            np.testing.assert_array_equal(reply["image"][0], want.image)
            np.testing.assert_array_equal(reply["instance"][0], want.instance)
    client_ = http.InferenceServerClient(url)
    assert client_.is_server_live() and client_.is_model_ready("histosmith")
    client_.close()


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_stop_signal_stops_tritonserver_and_cleans_up(tiny_export, tmp_path, sig):
    """What docker stop / systemctl stop send: the child server goes, its ports are free and the temporary
    model repository is removed; the same command then starts again."""
    import os

    port, grpc, metrics = free_ports(3)
    exe = Path(sys.executable).parent / "hs-serve"
    env = dict(os.environ, TMPDIR=str(tmp_path))
    cmd = [str(exe), "--export", str(tiny_export), "--port", str(port), "--grpc-port", str(grpc), "--metrics-port",
           str(metrics), "--steps", str(STEPS), "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_ready(f"127.0.0.1:{port}", proc)
        children = _children(proc.pid)
        assert children and list(tmp_path.glob("hs-serve-*"))  # the temporary model repository
        proc.send_signal(sig)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(Path(f"/proc/{c}").exists() for c in children):
        time.sleep(0.2)
    assert not any(Path(f"/proc/{c}").exists() for c in children), "tritonserver outlived hs-serve"
    assert not list(tmp_path.glob("hs-serve-*")), list(tmp_path.iterdir())  # (ONNX Runtime keeps its own .ses)
    for p in (port, grpc, metrics):
        with socket.socket() as s:  # free again: nothing listens (closed connections may linger in TIME_WAIT)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", p))
            s.listen()


@pytest.mark.parametrize("args, needle", [
    (["--port", "65535"], "--grpc-port 65536: ports lie in 1..65535 (derived from --port 65535"),
    (["--port", "65534", "--grpc-port", "9000"], "--metrics-port 65536"),
    (["--port", "9000", "--grpc-port", "9000"], "must differ"),
])
def test_ports_are_range_checked(tiny_export, args, needle):
    result = run_cli("hs-serve", "--export", str(tiny_export), *args, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], result.stderr


def test_port_in_use_is_one_error_line(tiny_export):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = run_cli("hs-serve", "--export", str(tiny_export), "--port", str(port), timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: HTTP port") and "not available" in lines[0]


def test_bad_export_is_one_error_line(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "unet.onnx").write_bytes(b"")
    result = run_cli("hs-serve", "--export", str(tmp_path), "--port", str(free_ports(1)[0]), timeout=120)
    assert result.returncode == 2 and result.stderr.strip().startswith("error: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_triton_repo_layout(tiny_export, tmp_path):
    repo = tmp_path / "repo"
    result = run_cli("hs-export", "--out", str(tiny_export), "--triton-repo", str(repo), "--triton-max-batch", "8")
    assert result.returncode == 0, result.stderr
    model = repo / "histosmith"
    names = {p.name for p in (model / "1").iterdir()}
    assert {"decoder.onnx", "manifest.json", "model.py", "unet.onnx"} <= names, names
    config = (model / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "max_batch_size: 8" in config and "dynamic_batching" in config
    for name in ("counts", "tissue", "seed", "index", "steps", "guidance", "image", "instance", "class"):
        assert f'name: "{name}"' in config
    assert 'key: "marker_depth" value: { string_value: "0.4" }' in config  # the watershed, editable there
    again = run_cli("hs-export", "--out", str(tiny_export), "--triton-repo", str(repo))
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.slow
def test_triton_repo_on_tritonserver(tiny_export, tmp_path):
    """The repository on the tritonserver binary PyTriton ships: Triton's dynamic batcher, per-request errors."""
    repo = tmp_path / "repo"
    assert run_cli("hs-export", "--out", str(tiny_export), "--triton-repo", str(repo)).returncode == 0
    port, grpc, metrics = free_ports(3)
    exe = Path(sys.executable).parent / "hs-serve"
    proc = subprocess.Popen([str(exe), "--repo", str(repo), "--port", str(port), "--grpc-port", str(grpc),
                             "--metrics-port", str(metrics)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    url = f"127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        check_against_hs_generate(url, tiny_export, tmp_path, steps=STEPS)
        k = len(_manifest(tiny_export)["class_names"])
        with pytest.raises(Exception, match="unknown tissue"):
            request(url, [[0] * k], ["no-such-tissue"], [1], [0], steps=STEPS)
        assert request(url, [[0] * k], [_manifest(tiny_export)["tissue_names"][0]], [1], [0],
                       steps=STEPS)["image"].shape[0] == 1
    finally:
        stop_server(proc)


@pytest.mark.parametrize("args, needle", [
    (["--marker-depth", "0.2,x"], "--marker-depth"),  # bad text: refused before anything starts
    (["--repo", "REPO", "--marker-depth", "0.2"], "a --repo model carries its own"),
])
def test_bad_marker_depth_is_one_error_line(tmp_path, args, needle):
    args = [str(tmp_path) if a == "REPO" else a for a in args]
    port = str(free_ports(3)[0])
    result = run_cli("hs-serve", *([] if "--repo" in args else ["--export", str(tmp_path)]), *args, "--port", port,
                     timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], result.stderr
