"""Exported torch programs (``torch.export``, ``*.pt2``): loading, and the checks that keep them portable.

An exported program is traced for one dtype (its fp32 islands — normalisation, softmax, the timestep
embedding — cast back to that dtype, which a trace records as a constant), so ``hs-export`` writes one
program per precision: ``unet.pt2`` (fp32), ``unet.fp16.pt2``, ``unet.bf16.pt2``. It must carry no
device: every tensor it creates follows its inputs and parameters, so the same file runs on the CPU
and on any CUDA device; :func:`device_constants` finds what would break that, on the CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from histosmith.errors import HistoSmithError, file_error

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISION_OF = {v: k for k, v in DTYPES.items()}
# Checks a trace inserts for every dtype cast (device included); they hold no computation.
_METADATA_ASSERTS = ("aten._assert_tensor_metadata", "aten::_assert_tensor_metadata")


def _fx_values(node: torch.fx.Node) -> Iterable[Any]:
    for value in (*node.args, *node.kwargs.values()):
        yield from (value if isinstance(value, (list, tuple)) else (value,))


def _script_nodes(block: Any) -> Iterable[Any]:
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from _script_nodes(inner)


def device_constants(graph: torch.fx.Graph | torch._C.Graph) -> list[str]:
    """Every node of an exported (fx) or TorchScript graph that names a device: ``"<op>: <device>"`` each.

    Such a node pins the graph to the device it was traced on (e.g. ``arange(..., device=cpu)``). Pass
    a TorchScript module's ``inlined_graph``, so its submodules' nodes are seen too.
    """
    if isinstance(graph, torch.fx.Graph):
        return [f"{node.target}: {value}" for node in graph.nodes for value in _fx_values(node)
                if isinstance(value, torch.device)]
    hits = []
    for node in _script_nodes(graph):
        if node.kind() == "prim::Constant" and node.outputsSize() == 1 and str(node.output().type()) == "Device":
            users = ", ".join(sorted({use.user.kind() for use in node.output().uses()}))
            hits.append(f"{users or node.kind()}: {node.output().toIValue()}")
    return hits


def strip_metadata_asserts(graph: torch.fx.Graph) -> int:
    """Drop the ``_assert_tensor_metadata`` checks export inserts at dtype casts (they pin the device)."""
    dropped = 0
    for node in list(graph.nodes):
        if str(node.target).startswith(_METADATA_ASSERTS) and not node.users:
            graph.erase_node(node)
            dropped += 1
    return dropped


def program_dtype(program: torch.export.ExportedProgram) -> torch.dtype | None:
    """The dtype of the program's floating-point weights (None when it has none)."""
    dtypes = {t.dtype for t in program.state_dict.values() if t.is_floating_point()}
    dtypes |= {t.dtype for t in program.constants.values() if isinstance(t, torch.Tensor) and t.is_floating_point()}
    if len(dtypes) > 1:
        return None
    return next(iter(dtypes), None)


def load_program(path: Path, device: str, precision: str) -> Callable[..., Any]:
    """Load ``path`` as a callable module on ``device``, refusing a program of another dtype or one that is
    pinned to a device."""
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # torch raises several types for a corrupt or foreign archive
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise file_error(path, f"not a loadable torch.export program ({detail})") from None
    want = DTYPES[precision]
    have = program_dtype(program)
    if have != want:
        label = PRECISION_OF.get(have, "mixed") if have is not None else "unknown"
        raise file_error(path, f"is a {label} program, --precision {precision} needs the {precision} one "
                               f"(see manifest.json)")
    pinned = device_constants(program.graph)
    if pinned:
        raise file_error(path, f"pinned to a device ({pinned[0]}); it cannot run on {device}: re-export it")
    module = program.module()
    try:
        return module.to(device)
    except RuntimeError as exc:
        raise HistoSmithError(f"{path}: cannot move the program to {device} ({str(exc).splitlines()[0]})") from None
