"""``hs-serve``: an exported generator behind Triton Inference Server (PyTriton's tritonserver); the [serve] extra."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from histosmith.cli.common import entry_point, marker_depth_option
from histosmith.cli.generation import sampler_option_decorators
from histosmith.errors import HistoSmithError
from histosmith.extras import require

if TYPE_CHECKING:
    from histosmith.runtime.postprocess import MarkerDepth


@click.command(help="Serve an hs-export directory through Triton Inference Server (HTTP, gRPC), model 'histosmith'.")
@click.option("--export", "export_dir", type=click.Path(path_type=Path), default=None,
              help="hs-export directory: served through a model repository written to a temporary directory.")
@click.option("--repo", type=click.Path(path_type=Path), default=None,
              help="Or a model repository from hs-export --triton-repo.")
@click.option("--engine", default="unet.onnx", show_default=True, help="U-Net graph in --export.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="HTTP port.")
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=None, help="gRPC port (default: --port + 1).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Prometheus metrics port (default: --port + 2).")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="Largest engine batch; Triton batches concurrent requests up to it  [default: 16, or the nearest "
                   "the export's graphs take]")
@click.option("--max-delay-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long a batch waits for more requests.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Model instances, each a process with its own engine (more: more memory, parallel batches).")
@sampler_option_decorators
@click.option("--allow-extrapolation", is_flag=True, help="Accept counts above the training range.")
@click.option("--device", default="auto", show_default=True, help="cpu | cuda | tensorrt (ONNX Runtime providers).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--verbose", is_flag=True, help="Triton's log on stdout.")
@marker_depth_option
def cli(export_dir: Path | None, repo: Path | None, engine: str, host: str, port: int, grpc_port: int | None,
        metrics_port: int | None, max_batch: int | None, max_delay_ms: float, instances: int, sampler: str | None,
        steps: int | None, eta: float, guidance: float | None, corrector: bool | None, allow_extrapolation: bool,
        device: str, threads: int | None, verbose: bool,
        marker_depth: MarkerDepth) -> None:
    require("hs-serve", "serve")
    from histosmith.runtime.serving import ServeDefaults
    from histosmith.runtime.triton_repo import RepoOptions, write_triton_repo
    from histosmith.runtime.triton_server import ServerOptions, check_port_free, run_server, server_ports

    if (export_dir is None) == (repo is None):
        raise HistoSmithError("give one of --export (an hs-export directory) or --repo (a Triton model repository)")
    port, grpc_port, metrics_port = server_ports(port, grpc_port, metrics_port)
    for what, p in (("HTTP", port), ("gRPC", grpc_port), ("metrics", metrics_port)):
        check_port_free(host, p, what)
    options = ServerOptions(host, port, grpc_port, metrics_port, verbose)
    where = f"http://{host}:{port} (gRPC {grpc_port}, metrics {metrics_port})"
    if repo is not None:
        if click.get_current_context().get_parameter_source("marker_depth") == ParameterSource.COMMANDLINE:
            raise HistoSmithError("--marker-depth: a --repo model carries its own (parameter marker_depth in its "
                                  "config.pbtxt)")
        if not (repo / "histosmith" / "config.pbtxt").exists():
            raise HistoSmithError(f"{repo}: not a model repository from hs-export --triton-repo "
                                  "(no histosmith/config.pbtxt)")
        run_server(lambda work: repo, options, lambda proc: click.echo(
            f"hs-serve: tritonserver on {repo} at {where}, pid {proc.pid}; Ctrl-C stops", err=True))
        return
    assert export_dir is not None
    path = export_dir / engine
    defaults = ServeDefaults(steps, guidance, eta, allow_extrapolation, str(marker_depth), sampler, corrector)
    repo_options = RepoOptions(max_batch, round(max_delay_ms * 1000), instances, threads or 0, device, defaults)
    run_server(lambda work: write_triton_repo(export_dir, work / "repo", repo_options, engine),
               options, lambda proc: click.echo(f"hs-serve: model 'histosmith' from {path} at {where}, pid "
                                                f"{proc.pid}; Ctrl-C stops", err=True))


main = entry_point(cli)
