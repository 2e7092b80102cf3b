"""``hs-serve``: a generator behind Triton Inference Server, on the ``tritonserver`` PyTriton ships.

Both forms serve one Triton model repository with the Python-backend model of :mod:`histosmith.runtime.triton_model`:
``--repo`` one written by ``hs-export --triton-repo``, ``--export`` one written for the run into a temporary
directory (never inside the export). Triton's dynamic batcher groups concurrent requests; the model validates each
request alone (a bad one gets one error line naming the field, HTTP 400, and never fails its batch-mates).

The server is one child process. SIGTERM (``docker stop``, ``systemctl stop``), SIGHUP and Ctrl-C stop it and
remove the temporary files; on Linux the child is also told to stop should ``hs-serve`` itself be killed. Every
port — HTTP, and the gRPC and metrics ports derived from it — is range-checked and probed before it starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histosmith.errors import HistoSmithError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    verbose: bool = False


MAX_PORT = 65535


def server_ports(port: int, grpc_port: int | None, metrics_port: int | None) -> tuple[int, int, int]:
    """HTTP, gRPC (default ``port`` + 1) and metrics (default ``port`` + 2) ports, each checked to lie in
    1..65535 and to differ from the others."""
    given = {"--port": port, "--grpc-port": grpc_port, "--metrics-port": metrics_port}
    ports = {"--port": port, "--grpc-port": port + 1 if grpc_port is None else grpc_port,
             "--metrics-port": port + 2 if metrics_port is None else metrics_port}
    for option, value in ports.items():
        if not 1 <= value <= MAX_PORT:
            how = "" if given[option] is not None else f" (derived from --port {port}; give {option} or a lower --port)"
            raise HistoSmithError(f"{option} {value}: ports lie in 1..{MAX_PORT}{how}")
    if len(set(ports.values())) < 3:
        raise HistoSmithError("--port, --grpc-port and --metrics-port must differ (got "
                              f"{', '.join(str(v) for v in ports.values())})")
    return ports["--port"], ports["--grpc-port"], ports["--metrics-port"]


def check_port_free(host: str, port: int, what: str) -> None:
    """Raise the standard error if ``port`` cannot be bound on ``host``. Bound as servers bind (SO_REUSEADDR):
    connections of a server that just stopped, still in TIME_WAIT, do not block a restart; a listener does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
                            stderr=subprocess.PIPE, text=True, preexec_fn=_stop_with_parent)


def _stop_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGTERM when its parent dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt (as Ctrl-C does), so every ``finally`` and ``with`` runs."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_process(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; waits until it is gone."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_server(write_repo: Callable[[Path], Path], options: ServerOptions,
               ready: Callable[[subprocess.Popen], None]) -> None:
    """Write the model repository (``write_repo(workdir) -> repo``; may return one that exists elsewhere) and run
    ``tritonserver`` on it until it exits or a stop signal arrives; the temporary directory and the child go
    either way. A server that exits on its own is reported in one line."""
    with stop_signals(), tempfile.TemporaryDirectory(prefix="hs-serve-") as tmp:
        work = Path(tmp)
        repo = write_repo(work)
        proc = start_tritonserver(repo, options, work)
        try:
            ready(proc)
            _, err = proc.communicate()
        finally:
            stop_process(proc)
        if proc.returncode:
            last = [line for line in (err or "").splitlines() if line.strip()][-1:] or ["no output"]
            raise HistoSmithError(f"tritonserver exited with {proc.returncode}: {last[0][:300]}")

