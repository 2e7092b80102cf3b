"""The Triton Python-backend model that ``hs-export --triton-repo`` writes as ``histosmith/1/model.py``.

``hs-serve`` serves an export through the same model (a repository written to a temporary directory). It runs
the sampling loop with the lean runtime (``pip install histosmith`` in the Python environment of Triton's Python
backend) on the graphs beside it. Triton's dynamic batcher hands it several requests at once: each is validated
on its own (a bad one gets its own error response: one line naming the field, code INVALID_ARG, HTTP 400), and
the tiles of all valid ones run through the engine together — or, should that fail, each request alone
(:meth:`TileRenderer.render_each`). Tiles equal ``hs-generate``'s for the same seed and index.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from histosmith.errors import HistoSmithError
from histosmith.runtime.postprocess import MarkerDepth
from histosmith.runtime.serving import (
    IN_COUNTS,
    IN_GUIDANCE,
    IN_INDEX,
    IN_SEED,
    IN_STEPS,
    IN_TISSUE,
    ServeDefaults,
    TileRenderer,
    parse_tiles,
    stack_tiles,
)

INPUTS = (IN_COUNTS, IN_TISSUE, IN_SEED, IN_INDEX, IN_STEPS, IN_GUIDANCE)


def _parameter(config: dict[str, Any], name: str, default: str) -> str:
    return config.get("parameters", {}).get(name, {}).get("string_value", default)


class TritonPythonModel:
    """Triton's Python-backend entry points: initialize, execute, finalize."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        defaults = ServeDefaults(steps=int(_parameter(config, "steps", "50")),
                                 guidance=float(_parameter(config, "guidance", "4")),
                                 eta=float(_parameter(config, "eta", "0")),
                                 sampler=_parameter(config, "sampler", "ddim"),
                                 corrector=_parameter(config, "corrector", "true") == "true",
                                 allow_extrapolation=_parameter(config, "allow_extrapolation", "false") == "true",
                                 marker_depth=_parameter(config, "marker_depth", str(MarkerDepth())))
        threads = int(_parameter(config, "threads", "0")) or None
        self.renderer = TileRenderer(version_dir / _parameter(config, "engine", "unet.onnx"),
                                     int(config["max_batch_size"]), defaults,
                                     device=_parameter(config, "device", "auto"), threads=threads)

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        def error(exc: HistoSmithError, invalid: bool) -> Any:
            code = getattr(pb_utils.TritonError, "INVALID_ARG" if invalid else "INTERNAL", None)
            return pb_utils.TritonError(str(exc)) if code is None else pb_utils.TritonError(str(exc), code)

        parsed: list[Any] = []
        for request in requests:
            arrays = {}
            for name in INPUTS:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    arrays[name] = tensor.as_numpy()
            try:
                parsed.append(parse_tiles(self.renderer.info, arrays, self.renderer.defaults))
            except HistoSmithError as exc:
                parsed.append(error(exc, invalid=True))
        valid = [tiles for tiles in parsed if isinstance(tiles, list)]
        rendered = iter(self.renderer.render_each(valid))  # one pass over every valid request
        responses = []
        for tiles in parsed:
            result = next(rendered) if isinstance(tiles, list) else tiles
            if isinstance(result, HistoSmithError):
                result = error(result, invalid=False)
            if not isinstance(result, list):
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=result))
                continue
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, value) for name, value in stack_tiles(result).items()]))
        return responses

    def finalize(self) -> None:
        self.renderer = None
