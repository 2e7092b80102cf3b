"""``hs-serve``: the generator behind Triton Inference Server, through PyTriton (which ships ``tritonserver``).

Triton receives the requests (HTTP, gRPC, metrics) and hands each one to one of ``instances`` model
instances (a Python-backend process each, forwarding to a thread of this process); each validates its
request alone — a bad request gets its own error — and waits on the shared
:class:`~histosmith.runtime.serving.DynamicBatcher`, which runs the tiles of concurrent requests as
engine batches. Triton's own dynamic batcher is left off here because
PyTriton can only fail a whole batch of requests, never one of them; the ``--triton-repo`` model, which
answers every request separately, uses it.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histosmith.errors import HistoSmithError
from histosmith.runtime.serving import (
    IN_COUNTS,
    IN_GUIDANCE,
    IN_INDEX,
    IN_SEED,
    IN_STEPS,
    IN_TISSUE,
    MODEL_NAME,
    OUT_CLASS,
    OUT_COUNTS,
    OUT_IMAGE,
    OUT_INSTANCE,
    DynamicBatcher,
    TileRenderer,
    parse_tiles,
    stack_tiles,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    instances: int = 8  # requests handled at once (their tiles are batched together)
    max_delay_s: float = 0.005
    verbose: bool = False


def check_port_free(host: str, port: int, what: str) -> None:
    """Raise the standard error if ``port`` cannot be bound on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise HistoSmithError(f"{what} port {port} on {host} is not available ({exc.strerror})") from None


def use_interpreter_libpython() -> None:
    """Make the process Triton starts for each Python-backend model load this interpreter's libpython.

    That executable is linked against the shared libpython of the Python minor version it was built for (for
    3.11, ``libpython3.11.so``); without a hint the dynamic loader may pick the system's copy of another patch
    release (e.g. Debian's 3.11.2 under a pyenv 3.11.7), whose built-in modules do not match this
    interpreter's standard library.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and any(Path(libdir).glob(f"libpython{sys.version_info.major}.{sys.version_info.minor}*.so*")):
        current = os.environ.get("LD_LIBRARY_PATH", "")
        if libdir not in current.split(":"):
            os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir


def model_tensors(n_classes: int, tile_size: int) -> tuple[list[Any], list[Any]]:
    """PyTriton input and output declarations (shapes without the tile axis)."""
    from pytriton.model_config import Tensor

    inputs = [Tensor(name=IN_COUNTS, dtype=np.int32, shape=(n_classes,)),
              Tensor(name=IN_TISSUE, dtype=bytes, shape=(1,)),
              Tensor(name=IN_SEED, dtype=np.int64, shape=(1,)),
              Tensor(name=IN_INDEX, dtype=np.int64, shape=(1,)),
              Tensor(name=IN_STEPS, dtype=np.int32, shape=(1,), optional=True),
              Tensor(name=IN_GUIDANCE, dtype=np.float32, shape=(1,), optional=True)]
    outputs = [Tensor(name=OUT_IMAGE, dtype=np.uint8, shape=(tile_size, tile_size, 3)),
               Tensor(name=OUT_INSTANCE, dtype=np.int32, shape=(tile_size, tile_size)),
               Tensor(name=OUT_CLASS, dtype=np.int32, shape=(tile_size, tile_size)),
               Tensor(name=OUT_COUNTS, dtype=np.int32, shape=(n_classes,))]
    return inputs, outputs


def make_infer(batcher: DynamicBatcher) -> Any:
    """The PyTriton inference callable: one request in, its tiles out; bad input -> that request's error."""
    from pytriton.exceptions import PyTritonBadParameterError

    renderer = batcher.renderer

    def infer(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        parsed = []
        for request in requests:
            try:
                parsed.append(parse_tiles(renderer.info, dict(request.items()), renderer.defaults))
            except HistoSmithError as exc:
                raise PyTritonBadParameterError(str(exc)) from None
        futures = [batcher.submit(tiles) for tiles in parsed]
        return [stack_tiles(f.result()) for f in futures]

    return infer


def serve(renderer: TileRenderer, options: ServerOptions) -> None:
    """Start Triton with the generator bound as model ``histosmith`` and serve until interrupted."""
    for what, port in (("HTTP", options.http_port), ("gRPC", options.grpc_port), ("metrics", options.metrics_port)):
        check_port_free(options.host, port, what)
    use_interpreter_libpython()
    from pytriton.model_config import ModelConfig
    from pytriton.triton import Triton, TritonConfig

    batcher = DynamicBatcher(renderer, options.max_delay_s)
    inputs, outputs = model_tensors(renderer.info.n_classes, renderer.info.tile_size)
    config = TritonConfig(http_address=options.host, http_port=options.http_port, grpc_address=options.host,
                          grpc_port=options.grpc_port, metrics_address=options.host,
                          metrics_port=options.metrics_port, log_verbose=1 if options.verbose else 0)
    infer = make_infer(batcher)
    try:
        with Triton(config=config) as triton:
            # Triton batching on (each request carries up to max_batch tiles), its dynamic batcher off.
            try:
                triton.bind(model_name=MODEL_NAME, infer_func=[infer] * options.instances, inputs=inputs,
                            outputs=outputs, config=ModelConfig(max_batch_size=renderer.max_batch, batcher=None),
                            strict=True)
            except Exception as exc:  # PyTriton and tritonclient raise their own types
                reason = [line for line in str(exc).splitlines() if line.strip()][-1:] or [type(exc).__name__]
                raise HistoSmithError(f"Triton could not load the model ({reason[0][:300]}); on a busy machine "
                                      "retry or lower --instances") from None
            log.info("serving %s on http://%s:%d (gRPC %d, metrics %d); max batch %d, %d instances",
                     MODEL_NAME, options.host, options.http_port, options.grpc_port, options.metrics_port,
                     renderer.max_batch, options.instances)
            triton.serve()
    finally:
        batcher.close()


def start_tritonserver(repo: Path, options: ServerOptions, workdir: Path) -> subprocess.Popen:
    """Run PyTriton's bundled ``tritonserver`` on a model repository (``hs-export --triton-repo``).

    The bundle is copied to ``workdir`` with the Python-backend stub of this interpreter's version, as
    PyTriton does for its own models; the stub finds this environment's packages through ``PATH``.
    """
    for what, port in (("HTTP", options.http_port), ("gRPC", options.grpc_port), ("metrics", options.metrics_port)):
        check_port_free(options.host, port, what)
    from pytriton.utils.distribution import get_libs_path, get_root_module_path, get_stub_path

    server = workdir / "tritonserver"
    shutil.copytree(get_root_module_path() / "tritonserver", server,
                    ignore=shutil.ignore_patterns("python_backend_stubs", "triton_python_backend_stub"))
    shutil.copy2(get_stub_path(f"{sys.version_info.major}.{sys.version_info.minor}"),
                 server / "backends" / "python" / "triton_python_backend_stub")
    use_interpreter_libpython()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (env.get("LD_LIBRARY_PATH", ""), str(get_libs_path())) if p)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    cmd = [str(server / "bin" / "tritonserver"), f"--model-repository={repo}",
           f"--backend-directory={server / 'backends'}", f"--http-address={options.host}",
           f"--http-port={options.http_port}", f"--grpc-address={options.host}", f"--grpc-port={options.grpc_port}",
           f"--metrics-address={options.host}", f"--metrics-port={options.metrics_port}",
           f"--log-verbose={1 if options.verbose else 0}"]
    log.info("starting %s", " ".join(cmd))
    return subprocess.Popen(cmd, env=env, stdout=None if options.verbose else subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
