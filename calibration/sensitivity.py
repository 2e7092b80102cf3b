"""Which parts of the U-Net stay in float, and the per-block sensitivity sweep that justifies it.

A *block* is a top-level module of the U-Net (``conv_in``, ``time_mlp``, ``condition``, ``down.3``,
``mid.0``, ``up.7``, ``conv_out`` …), read from the exported node names. The sweep quantises one block
at a time (everything else float) with the calibrated ranges and measures the relative RMS error of the
guided noise prediction against fp32 on recorded trajectory inputs, overall and at the worst DDIM step.

Kept in float by design (docs/int8.md): everything before the first convolution (timestep embedding,
condition MLP), the first and last convolutions, normalisation and softmax (the quantiser leaves them: only
Conv/MatMul/Gemm are quantised), and the DDIM update of the fused step graph. Blocks whose single-block error
exceeds ``AUTO_FACTOR`` times the median block error are added to that list, and so are the blocks the
user names (``hs-calibrate --keep-float down.0,up.5``: accuracy bought with speed).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from histosmith.calibration.quantize import QUANTIZED_OPS, FeedReader, Method, Recipe, quantize
from histosmith.calibration.trajectories import CalibrationSet
from histosmith.errors import HistoSmithError
from histosmith.export.fp16 import before_first_conv, in_scopes
from histosmith.runtime.specs import NOISE_PRED

log = logging.getLogger(__name__)
DESIGN_FLOAT = {"conv_in": "first convolution", "conv_out": "last convolution", "time_mlp": "time embedding",
                "condition": "condition MLP"}
FLOAT_SCOPES = {"solver_update": "sampler update of the fused step graph (the latent accumulates over every step)"}
FLOAT_OPS = {"normalisation (GroupNormalization / InstanceNormalization)": "not in the quantised op set",
             "attention softmax": "not in the quantised op set (ONNX Runtime may still fuse it between the "
                                  "Q/DQ pairs of the attention matmuls into QLinearSoftmax at load time)"}
AUTO_FACTOR = 5.0
REQUESTED = "requested (--keep-float)"


def block_of(node_name: str) -> str:
    """``/guided/unet/down.3/res/conv1/Conv`` -> ``down.3``; nodes outside the U-Net -> ``graph``."""
    parts = [p for p in node_name.split("/") if p]
    if "unet" in parts[:-1]:
        rest = parts[parts.index("unet") + 1:]
        return rest[0] if len(rest) > 1 else "graph"
    return parts[0] if len(parts) > 1 else "graph"


EMBEDDING_PROJECTIONS = "emb projections"  # each residual block's Linear on the time embedding


def quantizable_blocks(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Block -> names of its Conv/MatMul/Gemm nodes, in graph order. The residual blocks' projections of
    the time embedding (which depend on no convolution) form a block of their own."""
    preamble = set(before_first_conv(model))
    blocks: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS:
            block = block_of(node.name)
            if node.name in preamble and block not in DESIGN_FLOAT:
                block = EMBEDDING_PROJECTIONS
            blocks.setdefault(block, []).append(node.name)
    return blocks


def design_float_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> reason, for the nodes kept float by design."""
    keep: dict[str, str] = {}
    for name in before_first_conv(model):
        keep[name] = "time embedding (projections in every block; no convolution before them)"
    for node in model.graph.node:
        block = block_of(node.name)
        if block in DESIGN_FLOAT:
            keep[node.name] = DESIGN_FLOAT[block]
        for scope, reason in FLOAT_SCOPES.items():
            if in_scopes(node.name, (scope,)):
                keep[node.name] = reason
    return keep


@dataclass(frozen=True)
class BlockError:
    block: str
    nodes: int
    rel_error: float  # relative RMS error of the noise prediction, all evaluated steps
    worst_step_error: float  # the same at the worst DDIM step
    kept_float: str  # "" = quantised; else the reason


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(np.mean((got - ref) ** 2)) / max(np.sqrt(np.mean(ref ** 2)), 1e-12))


def evaluate(path: Path, cset: CalibrationSet, rows: np.ndarray, threads: int | None) -> tuple[float, float]:
    """(relative error, worst per-step relative error) of the graph at ``path`` on ``rows``."""
    from histosmith.runtime.backends.onnx_backend import make_session

    session = make_session(path, "cpu", threads)
    out = np.concatenate([session.run([NOISE_PRED], cset.feeds(rows[i:i + 32]))[0] for i in range(0, len(rows), 32)])
    ref = cset.noise_pred[rows]
    steps = cset.step[rows]
    per_step = [relative_error(out[steps == s], ref[steps == s]) for s in np.unique(steps)]
    return relative_error(out, ref), max(per_step)


def float_nodes(model: onnx.ModelProto, blocks: set[str]) -> dict[str, str]:
    """Node name -> reason for every node of ``model`` (the U-Net or the fused step graph) that stays float:
    the design list plus the Conv/MatMul/Gemm nodes of ``blocks`` (added by the sweep)."""
    keep = design_float_nodes(model)
    for block, nodes in quantizable_blocks(model).items():
        if block in blocks:
            keep.update({n: keep.get(n, "sensitivity sweep") for n in nodes})
    return keep


def check_blocks(model: Path, names: tuple[str, ...]) -> None:
    """Refuse ``--keep-float`` names that are not quantisable blocks of the U-Net graph at ``model``."""
    blocks = quantizable_blocks(onnx.load(str(model)))
    unknown = [n for n in names if n not in blocks]
    if unknown:
        raise HistoSmithError(f"--keep-float {','.join(unknown)}: no such block in {model.name}; blocks: "
                              f"{', '.join(blocks)}")


def sweep(model: Path, cset: CalibrationSet, rec: Recipe, method: Method, reader: FeedReader, ranges: Path,
          rows: np.ndarray, work: Path, threads: int | None = None,
          show_progress: bool = True, requested: tuple[str, ...] = ()) -> tuple[list[BlockError], set[str]]:
    """Quantise one block at a time; returns per-block errors and the names of the blocks kept float (by
    design, by sensitivity, or ``requested`` by the user)."""
    proto = onnx.load(str(model))
    blocks = quantizable_blocks(proto)
    keep = design_float_nodes(proto)
    probe = work / "sensitivity_probe.onnx"
    results: list[tuple[str, list[str], float, float]] = []
    for block, nodes in tqdm(blocks.items(), desc="sensitivity (one block at a time)", unit="block",
                             disable=not show_progress, dynamic_ncols=True):
        quantize(model, probe, rec, method, reader, ranges, only=nodes)
        err, worst = evaluate(probe, cset, rows, threads)
        results.append((block, nodes, err, worst))
    probe.unlink(missing_ok=True)
    quantised = [err for _, nodes, err, _ in results if not all(n in keep for n in nodes)]
    median = float(np.median(quantised)) if quantised else 0.0
    errors: list[BlockError] = []
    kept: set[str] = set()
    for block, nodes, err, worst in results:
        reason = keep[nodes[0]] if all(n in keep for n in nodes) else ""
        if not reason and block in requested:
            reason = REQUESTED
        if not reason and median > 0 and err > AUTO_FACTOR * median:
            reason = f"sensitivity: {err / median:.1f}x the median block error"
        if reason:
            kept.add(block)
        errors.append(BlockError(block, len(nodes), err, worst, reason))
    return errors, kept


def float_list(errors: list[BlockError]) -> list[dict[str, str]]:
    """The manifest's record of what stayed float: one row per block or op class, with its reason."""
    rows = [{"part": e.block, "reason": e.kept_float} for e in errors if e.kept_float]
    rows += [{"part": k, "reason": v} for k, v in FLOAT_OPS.items()]
    rows += [{"part": k, "reason": v} for k, v in FLOAT_SCOPES.items()]
    return rows


def errors_json(errors: list[BlockError]) -> list[dict[str, object]]:
    return [asdict(e) for e in errors]
