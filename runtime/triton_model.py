"""The Triton Python-backend model that ``hs-export --triton-repo`` writes as ``histosmith/1/model.py``.

It runs the DDIM loop with the lean runtime (``pip install histosmith`` in the Python environment of
Triton's Python backend) on the ONNX graphs beside it. Triton's dynamic batcher hands it several requests
at once: each is validated on its own (a bad one gets its own error response), and the tiles of all valid
ones run through the engine together. Tiles equal ``hs-generate``'s for the same seed and index.
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
                                     int(config["max_batch_size"]), defaults, threads=threads)

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

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
                parsed.append(pb_utils.TritonError(str(exc)))
        valid = [tiles for tiles in parsed if isinstance(tiles, list)]
        rendered = self.renderer.render([t for tiles in valid for t in tiles])  # one pass over every request
        responses, start = [], 0
        for tiles in parsed:
            if not isinstance(tiles, list):
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=tiles))
                continue
            outputs = stack_tiles(rendered[start:start + len(tiles)])
            start += len(tiles)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, value) for name, value in outputs.items()]))
        return responses

    def finalize(self) -> None:
        self.renderer = None
