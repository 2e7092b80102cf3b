"""The torch engine: ``torch.export`` programs, one per precision, with no device baked in.

Why torch.export and not TorchScript: see ``benchmarks/results/torch_engine_cpu.md`` (measured by
``benchmarks/bench_torch_engine.py``). A trace records dtypes as constants, so each precision is
exported from a copy of the module in that dtype; the dtype-cast checks export inserts name the
tracing device and are removed, and the result is checked to carry no device constant at all.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.export import Dim, ExportedProgram

from histosmith.errors import HistoSmithError
from histosmith.runtime.backends.torch_program import DTYPES, device_constants, strip_metadata_asserts
from histosmith.runtime.specs import BATCH, TIMESTEP, GraphSpec

log = logging.getLogger(__name__)
PRECISIONS = tuple(DTYPES)


def program_name(graph: str, precision: str) -> str:
    return f"{graph}.pt2" if precision == "fp32" else f"{graph}.{precision}.pt2"


def cast_inputs(spec: GraphSpec, inputs: Sequence[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """The program's inputs in ``dtype``; timesteps stay float32 (bf16 would round 999 to 1000)."""
    return tuple(x if name == TIMESTEP else x.to(dtype) for name, x in zip(spec.input_names, inputs, strict=True))


def export_program(module: torch.nn.Module, spec: GraphSpec, example: Sequence[torch.Tensor], precision: str,
                   max_batch: int | None) -> ExportedProgram:
    """Export ``module`` in ``precision`` (a dynamic batch up to ``max_batch``, or the example's fixed batch)."""
    dtype = DTYPES[precision]
    typed = copy.deepcopy(module).eval().to(dtype)
    if max_batch:  # a batch of 1 would specialise the batch axis to 1: trace with two rows
        example = [torch.cat([x, x]) if BATCH in t.shape[:1] and len(x) == 1 else x
                   for t, x in zip(spec.inputs, example, strict=True)]
    args = cast_inputs(spec, example, dtype)
    batch = Dim(BATCH, min=1, max=max_batch) if max_batch else None
    dynamic = tuple({i: batch for i, d in enumerate(t.shape) if d == BATCH} if batch else None for t in spec.inputs)
    with torch.no_grad():
        program = torch.export.export(typed, args, dynamic_shapes=dynamic, strict=False)
    # Kept in export's default IR: ``run_decompositions`` would double the export time for no speed-up
    # (the same ATen kernels run either way).
    dropped = strip_metadata_asserts(program.graph)
    program.graph_module.recompile()
    pinned = device_constants(program.graph)
    if pinned:
        raise HistoSmithError(f"{spec.name} ({precision}): the exported graph names a device ({pinned[0]}); "
                              "create tensors from inputs or buffers instead")
    log.debug("%s %s: exported, %d dtype-cast checks removed", spec.name, precision, dropped)
    return program


def save_program(program: ExportedProgram, path: Path) -> None:
    torch.export.save(program, str(path))
